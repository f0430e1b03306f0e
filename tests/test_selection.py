"""Pre-LLM selectors on small synthetic embeddings whose right answer is known (pure numpy)."""

import numpy as np
import pytest

from fastv_edge.selection import SELECTORS, dart, divprune, select
from fastv_edge.selection.dart import pivots
from fastv_edge.selection.divprune import first_token

D = 16


def clusters(n_clusters: int, per_cluster: int, noise: float = 0.01, seed: int = 0):
    """Rows around orthogonal directions e_0..e_{C-1}, cluster by cluster; returns (embd, labels)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_clusters), per_cluster)  # (N,)
    embd = np.eye(D)[labels] + noise * rng.standard_normal((labels.size, D))  # (N, D)
    return embd.astype(np.float32), labels


def random_embd(n: int, d: int = D, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


TEXT = random_embd(3, seed=99)


def run(strategy, embd, k, **kw):
    return select(strategy, embd, k, text_embd=TEXT[:, : np.shape(embd)[1]], **kw)


# ---- what every selector promises ---------------------------------------------------------------


@pytest.mark.parametrize("strategy", sorted(SELECTORS))
@pytest.mark.parametrize(
    "n, k",
    [
        (20, 0),  # keep nothing
        (20, 1),  # keep one
        (20, 7),  # a typical cut
        (20, 20),  # keep all
        (1, 1),  # a one-token image
        (1, 0),
        (0, 0),  # an image without tokens
        (64, 63),  # drop a single token
    ],
)
def test_contract(strategy, n, k):
    out = run(strategy, random_embd(n), k)
    assert out.dtype == np.int32 and out.shape == (k,)
    assert out.tolist() == sorted(set(out.tolist()))  # distinct, ascending
    assert all(0 <= i < n for i in out.tolist())
    if k == n:
        assert out.tolist() == list(range(n))


@pytest.mark.parametrize("strategy", sorted(SELECTORS))
def test_deterministic(strategy):
    embd = random_embd(50, seed=3)
    assert run(strategy, embd, 12).tolist() == run(strategy, embd.copy(), 12).tolist()


@pytest.mark.parametrize("strategy", ["divprune", "dart", "cdpruner"])
def test_scale_invariant(strategy):
    # cosine geometry and L1 ranking do not change when every row is scaled by the same factor
    embd = random_embd(40, seed=4)
    assert run(strategy, embd, 9).tolist() == run(strategy, 3.0 * embd, 9).tolist()


@pytest.mark.parametrize("strategy", ["divprune", "dart", "cdpruner"])
def test_float32_and_float64_inputs_agree(strategy):
    embd = random_embd(40, seed=5)
    assert run(strategy, embd, 9).tolist() == run(strategy, embd.astype(np.float64), 9).tolist()


def test_random_is_seeded():
    embd = random_embd(100)
    a = select("random", embd, 10, seed=3)
    assert a.tolist() == select("random", embd, 10, seed=3).tolist()
    assert a.tolist() != select("random", embd, 10, seed=4).tolist()


def test_random_matches_the_in_llm_baseline():
    from fastv_edge.pruning import select_random

    assert select("random", random_embd(30), 8, seed=5).tolist() == select_random(30, 8, 5).tolist()


@pytest.mark.parametrize("strategy", sorted(SELECTORS))
@pytest.mark.parametrize(
    "embd, k, message",
    [
        (np.zeros((5, 4)), 6, r"n_keep must be an integer in \[0, 5\]"),  # more than N
        (np.zeros((5, 4)), -1, "n_keep"),  # negative
        (np.zeros((5, 4)), 2.0, "n_keep"),  # a float budget
        (np.zeros((5, 4)), True, "n_keep"),  # bool is not a count
        (np.zeros(5), 1, r"shape \(N, d\)"),  # one-dimensional
        (np.zeros((5, 0)), 1, r"shape \(N, d\)"),  # zero-width rows
        (np.zeros((2, 3, 4)), 1, r"shape \(N, d\)"),  # three-dimensional
        (np.array([[0.0, np.nan]]), 1, "NaN or inf"),  # broken embeddings
        ([["a", "b"]], 1, "real"),  # not numbers
    ],
)
def test_rejects(strategy, embd, k, message):
    with pytest.raises(ValueError, match=message):
        select(strategy, embd, k, text_embd=np.ones((2, 4)))


@pytest.mark.parametrize(
    "strategy, message",
    [("fastv", "inside the LLM"), ("none", "pre-LLM selection"), ("topk", "pre-LLM selection")],
)
def test_unknown_strategy(strategy, message):
    with pytest.raises(ValueError, match=message):
        select(strategy, random_embd(4), 2)


# ---- divprune ------------------------------------------------------------------------------------


def test_divprune_picks_one_token_per_far_apart_cluster():
    embd, labels = clusters(n_clusters=5, per_cluster=8)
    kept = divprune(embd, 5)
    assert sorted(labels[kept].tolist()) == [0, 1, 2, 3, 4]


def test_divprune_first_token_is_the_most_isolated():
    embd, _ = clusters(n_clusters=3, per_cluster=4)
    outlier = np.zeros((1, D), np.float32)
    outlier[0, 9] = 1.0  # a direction of its own, near no other row
    embd = np.concatenate([embd, outlier, embd[:2]])  # the outlier sits at row 12
    dist = 1.0 - (embd @ embd.T) / np.outer(np.linalg.norm(embd, axis=1), np.linalg.norm(embd, axis=1))
    assert first_token(dist) == 12
    assert 12 in divprune(embd, 1).tolist()


def test_divprune_takes_exact_duplicates_last():
    base = random_embd(6, seed=1)
    embd = np.concatenate([base, base[[0, 2, 4]]])  # rows 6, 7, 8 copy rows 0, 2, 4
    assert divprune(embd, 6).tolist() == [0, 1, 2, 3, 4, 5]


def test_divprune_tied_candidates_go_to_the_earliest():
    embd = np.eye(6, dtype=np.float32)  # every pair at distance 1: all ties
    assert divprune(embd, 3).tolist() == [0, 1, 2]


def test_divprune_greedy_maximises_the_nearest_distance_at_each_step():
    embd = random_embd(30, seed=7)
    unit = embd / np.linalg.norm(embd, axis=1, keepdims=True)
    dist = 1.0 - unit.astype(np.float64) @ unit.T.astype(np.float64)
    kept = divprune(embd, 6).tolist()
    # replay: each kept token after the first was a farthest-from-the-set choice
    chosen = [first_token(dist)]
    for _ in range(5):
        nearest = dist[:, chosen].min(axis=1)
        nearest[chosen] = -np.inf
        chosen.append(int(np.argmax(nearest)))
    assert sorted(chosen) == kept


# ---- dart ----------------------------------------------------------------------------------------


def test_dart_drops_duplicates_of_the_pivot_first():
    base = random_embd(10, seed=2)
    base[4] *= 3.0  # the largest L1 norm: the single pivot
    copies = 0.5 * base[[4, 4, 4]]  # same direction, smaller norm: cosine 1 with the pivot
    embd = np.concatenate([base[:6], copies, base[6:]])  # copies at rows 6, 7, 8
    kept = dart(embd, 10, n_pivots=1).tolist()
    assert kept == [0, 1, 2, 3, 4, 5, 9, 10, 11, 12]


def test_dart_pivots_are_the_largest_l1_rows_and_are_kept():
    embd = random_embd(20, seed=3)
    l1 = np.abs(embd).sum(axis=1)
    top = np.argsort(-l1)[:4]
    assert sorted(pivots(embd.astype(np.float64), 4).tolist()) == sorted(top.tolist())
    assert dart(embd, 4, n_pivots=4).tolist() == sorted(top.tolist())  # k = P: only the pivots
    assert set(top.tolist()) <= set(dart(embd, 9, n_pivots=4).tolist())


def test_dart_completes_with_the_least_duplicated_rows():
    embd, labels = clusters(n_clusters=4, per_cluster=5)
    embd[7] *= 4.0  # cluster 1 holds the pivot
    kept = dart(embd, 6, n_pivots=1)
    # the pivot, then 5 rows from the other clusters (cosine ~0 to it), none from cluster 1
    assert 7 in kept.tolist()
    assert (labels[kept] == 1).sum() == 1


def test_dart_more_pivots_than_budget():
    embd = random_embd(10)
    assert dart(embd, 2, n_pivots=8).size == 2  # P = min(n_pivots, k)


@pytest.mark.parametrize("n_pivots", [0, -1, 1.5, True])
def test_dart_rejects_bad_pivot_counts(n_pivots):
    with pytest.raises(ValueError, match="n_pivots"):
        dart(random_embd(5), 2, n_pivots=n_pivots)


@pytest.mark.parametrize("strategy", sorted(SELECTORS))
def test_zero_rows_are_a_direction_of_their_own(strategy):
    # an all-zero row has cosine 0 with every row: far from everything, never a crash or NaN
    embd = np.concatenate([random_embd(6, seed=8), np.zeros((2, D), np.float32)])
    out = run(strategy, embd, 5)
    assert out.shape == (5,) and out.tolist() == sorted(set(out.tolist()))
    if strategy == "divprune":
        assert {6, 7} <= set(out.tolist())  # distance 1 to all: the most isolated rows
