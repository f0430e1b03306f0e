"""Selection of kept image tokens (pure numpy), the oracle of llama_fastv_finish."""

import numpy as np
import pytest

from fastv_edge.config import PruneConfig
from fastv_edge.pruning import make_pruner, n_keep, n_keep_for_ratio, select_random, select_top_k


@pytest.mark.parametrize(
    "scores, k, kept",
    [
        ([0.1, 0.9, 0.5, 0.3], 2, [1, 2]),  # top half, returned in prompt order
        ([0.2, 0.2, 0.2, 0.2], 2, [0, 1]),  # ties break toward earlier tokens
        ([0.5, 0.9, 0.5, 0.5], 2, [0, 1]),  # a tie at the boundary keeps the earlier one
        ([0.7, 0.1], 2, [0, 1]),  # keep everything
        ([0.7, 0.1, 0.3], 0, []),  # keep nothing
        ([3.0, -1.0, 2.0, 5.0, 4.0], 3, [0, 3, 4]),  # unsorted input, ascending output
        ([1e-9, 2e-9, 1e-9], 1, [1]),  # tiny margins still rank
    ],
)
def test_select_top_k(scores, k, kept):
    out = select_top_k(scores, k)
    assert out.tolist() == kept
    assert out.dtype == np.int32


@pytest.mark.parametrize(
    "scores, k",
    [
        ([0.1, float("nan")], 1),  # NaN means the attention export is broken
        ([0.1, 0.2], 3),  # more kept than tokens
        ([[0.1, 0.2]], 1),  # not one-dimensional
    ],
)
def test_select_top_k_rejects(scores, k):
    with pytest.raises(ValueError):
        select_top_k(scores, k)


@pytest.mark.parametrize(
    "n, r, expected",
    [
        (576, 0.5, 288),  # the paper's R=50% on LLaVA
        (576, 0.75, 144),  # R=75%
        (576, 0.0, 576),  # R=0 keeps all
        (10, 0.9, 1),  # float32(0.9) < 0.9: 10*(1-R) = 1.0000002 -> 1 (a double R would give 0)
        (7, 0.5, 3),  # floor, not round
        (0, 0.5, 0),  # no image tokens
    ],
)
def test_n_keep_for_ratio_follows_the_c_float_path(n, r, expected):
    assert n_keep_for_ratio(n, r) == expected


def test_n_keep_absolute_budget():
    assert n_keep(PruneConfig(keep=5), 64) == 5
    assert n_keep(PruneConfig(keep=64), 64) == 64
    with pytest.raises(ValueError, match="larger than the 10 image tokens"):
        n_keep(PruneConfig(keep=11), 10)


def test_select_random_is_seeded_and_sorted():
    a = select_random(100, 10, seed=3)
    assert a.tolist() == select_random(100, 10, seed=3).tolist()
    assert a.tolist() != select_random(100, 10, seed=4).tolist()
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 10


def test_make_pruner_per_strategy():
    scores = np.array([0.1, 0.9, 0.5, 0.3, 0.8, 0.2])
    assert make_pruner(PruneConfig(drop_ratio=0.5))(scores).tolist() == [1, 2, 4]
    assert make_pruner(PruneConfig(keep=2))(scores).tolist() == [1, 4]
    random = make_pruner(PruneConfig(keep=2, strategy="random", seed=1))
    assert random(scores).tolist() == select_random(6, 2, 1).tolist()
    with pytest.raises(ValueError):
        make_pruner(PruneConfig(strategy="none"))
