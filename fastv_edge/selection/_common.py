"""Input checks and the cosine geometry every selector shares.

Selectors take float32 (or any real) embeddings and do their arithmetic in float64, so a
selection does not depend on the BLAS's float32 summation order.
"""

from __future__ import annotations

import numpy as np

# Candidates whose score is within TIE_TOL of the best count as tied; the earliest wins.
# Rounding noise of the float64 matmuls (~1e-15) stays far below it, so tie-breaking does not
# depend on the BLAS; real differences between tokens are far above it.
TIE_TOL = 1e-12


def check_embd(embd, name: str = "embd") -> np.ndarray:
    """Validate an embedding matrix.

    Args:
        embd: (N, d) real array, N >= 0, d >= 1, finite.
        name: the argument's name for error messages.

    Returns:
        The same values as a float64 array.
    """
    try:
        array = np.asarray(embd, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a real (N, d) array, got {type(embd).__name__}: {exc}") from None
    if array.ndim != 2 or array.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, d) with d >= 1, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = int(np.argwhere(~np.isfinite(array))[0][0])
        raise ValueError(f"{name} contains NaN or inf (row {bad}); the image embeddings are broken")
    return array


def check_n_keep(n_keep, n: int) -> int:
    """Raise ValueError unless n_keep is an integer in [0, n]; return it as int."""
    if isinstance(n_keep, bool) or not isinstance(n_keep, (int, np.integer)) or not 0 <= n_keep <= n:
        raise ValueError(f"n_keep must be an integer in [0, {n}] for {n} image tokens, got {n_keep!r}")
    return int(n_keep)


def unit_rows(embd: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; an all-zero row stays zero (cosine 0 with every row).

    Args:
        embd: (N, d) float64.

    Returns:
        (N, d) float64.
    """
    norms = np.linalg.norm(embd, axis=1, keepdims=True)  # (N, 1)
    return np.divide(embd, norms, out=np.zeros_like(embd), where=norms > 0)


def cosine_matrix(embd: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity S with an exact unit diagonal.

    Args:
        embd: (N, d) float64.

    Returns:
        (N, N) float64, symmetric, S_ii = 1 (also for zero rows: a zero row is its own direction).
    """
    unit = unit_rows(embd)  # (N, d)
    sim = unit @ unit.T  # (N, N)
    np.fill_diagonal(sim, 1.0)
    return sim


def argmax_first(values: np.ndarray, tol: float = TIE_TOL) -> int:
    """Index of the largest value; among values within `tol` of it, the earliest.

    Args:
        values: (N,) float64 with at least one finite entry (-inf marks excluded entries).
        tol: absolute tie tolerance.

    Returns:
        The chosen index.
    """
    best = values.max()
    return int(np.flatnonzero(values >= best - tol)[0])


def ascending(indices) -> np.ndarray:
    """Kept indices as the selectors return them: sorted, int32."""
    return np.sort(np.asarray(indices, dtype=np.int64)).astype(np.int32)
