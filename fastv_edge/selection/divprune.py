"""DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175): keep a maximally diverse subset.

Selection as a Max-Min Diversity Problem: choose k of the N image tokens so that the smallest
pairwise distance inside the chosen set is as large as possible, with distance
d(i, j) = 1 - cos(e_i, e_j). Solved greedily, farthest-point style: after a first token, add
the token whose distance to its nearest chosen token is largest. One N x N cosine matrix
(a matmul) and k passes over one row of it.
"""

from __future__ import annotations

import numpy as np

from ._common import argmax_first, ascending, check_embd, check_n_keep, cosine_matrix


def first_token(dist: np.ndarray) -> int:
    """The first pick: the token whose nearest other token is farthest (the most isolated one).

    The max-min objective says nothing about a single token; this rule starts from an outlier,
    which is in its own cluster whichever clusters there are, and is what the greedy step does
    when every other token is treated as already chosen. Ties go to the earliest token.

    Args:
        dist: (N, N) pairwise distances, N >= 2.

    Returns:
        The index of the first token.
    """
    others = dist.copy()  # (N, N)
    np.fill_diagonal(others, np.inf)  # a token is not its own neighbour
    return argmax_first(others.min(axis=1))


def divprune(embd, n_keep: int) -> np.ndarray:
    """Greedy max-min diversity selection of image tokens.

    First token: `first_token` (most isolated). Then each step adds the not-yet-chosen token
    whose distance (1 - cosine) to its nearest chosen token is largest; ties (within 1e-12)
    go to the earliest token. Exact duplicates of a chosen token have distance 0 and are
    therefore taken last.

    Args:
        embd: (N, d) image embeddings.
        n_keep: how many to keep, 0 <= n_keep <= N.

    Returns:
        (n_keep,) int32 indices, ascending.
    """
    embd = check_embd(embd)
    n = embd.shape[0]
    k = check_n_keep(n_keep, n)
    if k == 0 or k == n:
        return ascending(np.arange(k))
    dist = 1.0 - cosine_matrix(embd)  # (N, N)
    chosen = [first_token(dist)]  # 0 < k < N, so N >= 2
    nearest = dist[chosen[0]].copy()  # (N,) distance of each token to its nearest chosen token
    nearest[chosen[0]] = -np.inf
    for _ in range(k - 1):
        j = argmax_first(nearest)
        chosen.append(j)
        np.minimum(nearest, dist[j], out=nearest)
        nearest[j] = -np.inf  # -inf stays -inf under minimum: chosen tokens stay excluded
    return ascending(chosen)
