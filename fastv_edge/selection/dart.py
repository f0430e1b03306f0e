"""DART (Wen et al., arXiv 2502.11494, "Duplication matters more"), embedding-level variant.

DART picks a few pivot tokens and keeps the tokens least duplicated by them (lowest cosine
similarity), so what the pivots already carry is not kept twice. The paper works on layer-2
hidden states with pivots by key-state L1 norm plus text pivots; before the LLM only the
projected image embeddings exist, so this variant (like TensorRT-Edge-LLM's) works on them:

- pivots: the `n_pivots` image rows of highest L1 norm (ties: earlier row); kept.
- duplication of every other row: its largest cosine similarity to any pivot.
- the kept set is completed with the rows of lowest duplication (ties: earlier row).

No text pivots: at layer 0 the prompt's token embeddings come from another distribution
(another scale, Gemma multiplies them by sqrt(n_embd)), so the pivots are all image rows.
"""

from __future__ import annotations

import numpy as np

from ._common import TIE_TOL, ascending, check_embd, check_n_keep, unit_rows

DEFAULT_N_PIVOTS = 8  # DART's LLaVA setting uses 4 image + 4 text pivots; here all 8 are image rows


def pivots(embd: np.ndarray, n_pivots: int) -> np.ndarray:
    """The n_pivots rows of largest L1 norm, largest first (ties: earlier row).

    Args:
        embd: (N, d) float64.
        n_pivots: 0 <= n_pivots <= N.

    Returns:
        (n_pivots,) int64 row indices.
    """
    l1 = np.abs(embd).sum(axis=1)  # (N,)
    return np.argsort(-l1, kind="stable")[:n_pivots]


def duplication(embd: np.ndarray, pivot_rows: np.ndarray) -> np.ndarray:
    """Each row's largest cosine similarity to a pivot (1 for an exact copy of a pivot).

    Args:
        embd: (N, d) float64.
        pivot_rows: (P,) indices, P >= 1.

    Returns:
        (N,) float64.
    """
    unit = unit_rows(embd)  # (N, d)
    return (unit @ unit[pivot_rows].T).max(axis=1)  # (N, P) -> (N,)


def dart(embd, n_keep: int, *, n_pivots: int = DEFAULT_N_PIVOTS) -> np.ndarray:
    """Keep the pivots and the image tokens least duplicated by them.

    With P = min(n_pivots, n_keep) pivots, the other n_keep - P kept tokens are those with
    the lowest `duplication`; duplicates of a pivot (cosine 1) are dropped first. Values
    within 1e-12 count as equal, so ties go to the earlier token whatever the BLAS rounding.

    Args:
        embd: (N, d) image embeddings.
        n_keep: how many to keep, 0 <= n_keep <= N.
        n_pivots: number of pivot tokens, >= 1 (default 8).

    Returns:
        (n_keep,) int32 indices, ascending.
    """
    embd = check_embd(embd)
    n = embd.shape[0]
    k = check_n_keep(n_keep, n)
    if isinstance(n_pivots, bool) or not isinstance(n_pivots, (int, np.integer)) or n_pivots < 1:
        raise ValueError(f"n_pivots must be an integer >= 1, got {n_pivots!r}")
    if k == 0 or k == n:
        return ascending(np.arange(k))
    pivot_rows = pivots(embd, min(int(n_pivots), k))  # (P,)
    dup = np.round(duplication(embd, pivot_rows) / TIE_TOL) * TIE_TOL  # (N,) ties exact below TIE_TOL
    dup[pivot_rows] = np.inf  # already kept
    rest = np.argsort(dup, kind="stable")[: k - pivot_rows.size]
    return ascending(np.concatenate([pivot_rows, rest]))
