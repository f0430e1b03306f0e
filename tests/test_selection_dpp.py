"""CDPruner: greedy MAP of the conditional DPP against brute force, relevance, and its edge rules."""

import numpy as np
import pytest

from fastv_edge.selection import cdpruner, relevance
from fastv_edge.selection._common import cosine_matrix
from fastv_edge.selection.cdpruner import conditional_kernel
from fastv_edge.selection.dpp import greedy_map

D = 8


def sequential_logdet_argmax(kernel: np.ndarray, k: int) -> list[int]:
    """The greedy MAP by definition: each step adds argmax_i log det L[Y+i, Y+i], computed directly."""
    chosen: list[int] = []
    for _ in range(k):
        scores = np.full(kernel.shape[0], -np.inf)
        for i in range(kernel.shape[0]):
            if i not in chosen:
                sign, logdet = np.linalg.slogdet(kernel[np.ix_(chosen + [i], chosen + [i])])
                scores[i] = logdet if sign > 0 else -np.inf
        chosen.append(int(np.argmax(scores)))
    return chosen


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_map_matches_brute_force_on_random_psd_kernels(seed, k):
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((8, 8))
    kernel = basis @ basis.T  # (8, 8) full rank PSD
    assert greedy_map(kernel, k) == sequential_logdet_argmax(kernel, k)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("theta", [0.0, 0.5, 0.9])
def test_cdpruner_kernel_greedy_matches_brute_force(seed, theta):
    rng = np.random.default_rng(100 + seed)
    embd = rng.standard_normal((8, D))  # N=8, k=3 as in the paper's setting of a tiny case
    text = rng.standard_normal((4, D))
    kernel = conditional_kernel(embd, relevance(embd, text), theta)
    picks = greedy_map(kernel, 3)
    assert picks == sequential_logdet_argmax(kernel, 3)
    assert cdpruner(embd, 3, text_embd=text, relevance_weight=theta).tolist() == sorted(picks)


def test_greedy_map_stops_when_the_rank_is_exhausted():
    rng = np.random.default_rng(1)
    embd = rng.standard_normal((8, 3))  # rank 3
    assert len(greedy_map(cosine_matrix(embd), 6)) == 3


def test_theta_zero_is_the_pure_diversity_dpp():
    rng = np.random.default_rng(2)
    embd = rng.standard_normal((40, 16))  # rank 16 >= k: the DPP alone picks all 10
    expected = sorted(greedy_map(cosine_matrix(embd), 10))
    for text in (rng.standard_normal((5, 16)), rng.standard_normal((1, 16)), np.zeros((0, 16))):
        assert cdpruner(embd, 10, text_embd=text, relevance_weight=0.0).tolist() == expected


def clusters(seed=0):
    """Four clusters of 6 rows around e_0..e_3 (rows 0-5, 6-11, 12-17, 18-23)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 6)
    return np.eye(D)[labels] + 0.05 * rng.standard_normal((24, D)), labels


def test_cdpruner_prefers_rows_aligned_with_the_prompt():
    embd, labels = clusters()
    text = np.eye(D)[[2, 2, 2]] + 0.01  # three instruction tokens about direction 2
    assert labels[cdpruner(embd, 1, text_embd=text)][0] == 2
    assert labels[cdpruner(embd, 1, text_embd=text, relevance_weight=0.0)][0] != 2  # no relevance: no preference
    counts = [
        (labels[cdpruner(embd, 8, text_embd=text, relevance_weight=theta)] == 2).sum() for theta in (0.0, 0.5, 0.95)
    ]
    assert counts[0] < counts[2] and counts == sorted(counts)  # a larger theta keeps more of the relevant cluster


def test_cdpruner_still_covers_every_cluster_when_the_budget_allows():
    embd, labels = clusters()
    text = np.eye(D)[[2]]
    assert sorted(set(labels[cdpruner(embd, 4, text_embd=text)].tolist())) == [0, 1, 2, 3]


def test_cdpruner_completes_by_relevance_when_the_gain_vanishes():
    # three directions, each row three times: rank 3, so the DPP stops after 3 picks
    embd = np.repeat(np.eye(D)[[0, 1, 2]], 3, axis=0)  # rows 0-2: A, 3-5: B, 6-8: C
    text = np.eye(D)[[1]]  # about B
    # B first (largest quality), then A and C (orthogonal, tie: earliest), then the rest of B by relevance
    assert cdpruner(embd, 5, text_embd=text).tolist() == [0, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "text, expected",
    [
        (np.eye(4)[[0]], [1.0, 0.0, 0.0]),  # aligned with row 0, orthogonal to the others
        (np.eye(4)[[0, 1]], [1.0, 1.0, 0.0]),  # mean over instruction tokens: rows 0 and 1 tie
        (np.array([[-1.0, 0, 0, 0]]), [0.0, 1.0, 1.0]),  # the sign is kept: opposite rows score lowest
        (np.zeros((0, 4)), [0.0, 0.0, 0.0]),  # no instruction: no relevance
        (np.ones((1, 4)) * [1, 1, 1, 0], [0.0, 0.0, 0.0]),  # every row equally relevant: flat
    ],
)
def test_relevance(text, expected):
    embd = np.eye(4)[:3]  # (3, 4) rows e_0, e_1, e_2
    assert relevance(embd, text) == pytest.approx(expected, abs=1e-12)


def test_relevance_uses_the_leading_columns_of_wider_rows():
    # deepstack rows [main | extra]: the text is compared with the main part only
    main = np.eye(4)[:3]
    extra = np.random.default_rng(0).standard_normal((3, 8))
    text = np.eye(4)[[2]]
    assert relevance(np.hstack([main, extra]), text) == pytest.approx(relevance(main, text), abs=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(text_embd=None), "text features"),  # cdpruner cannot run without the prompt
        (dict(text_embd=np.ones((2, 9))), "columns"),  # text wider than the image rows
        (dict(text_embd=np.array([[np.inf] * 8])), "NaN or inf"),  # broken text features
        (dict(text_embd=np.ones((2, 8)), relevance_weight=1.0), "theta"),  # alpha would be infinite
        (dict(text_embd=np.ones((2, 8)), relevance_weight=-0.5), "theta"),
    ],
)
def test_cdpruner_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cdpruner(np.eye(8), 2, **kwargs)
