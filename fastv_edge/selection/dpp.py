"""Greedy MAP inference of a determinantal point process (Chen, Zhang & Zhou, NeurIPS 2018,
"Fast Greedy MAP Inference for Determinantal Point Process to Improve Recommendation Diversity").

For a PSD kernel L the greedy step adds the item j that maximises log det(L[Y+j, Y+j]). With
the Cholesky factor of L[Y, Y] grown one row per step, the gain of every candidate i is
log d_i^2 where d_i^2 = L_ii - |c_i|^2 is the squared residual of item i after projection on
the chosen items; after choosing j every candidate's factor grows by one entry
e_i = (L_ji - <c_j, c_i>) / d_j and d_i^2 drops by e_i^2. One step costs O(N t), k steps
O(N k^2), on top of the kernel itself.
"""

from __future__ import annotations

import numpy as np

from ._common import argmax_first

# Stop when the best remaining d_j^2 is below this share of the largest diagonal entry: the
# chosen rows then span the candidate (up to rounding) and log det would fall by ~23 or more.
GAIN_FLOOR = 1e-10
TIE_REL = 1e-12  # relative tie tolerance on d^2: the earliest of near-equal gains wins


def greedy_map(kernel: np.ndarray, k: int) -> list[int]:
    """Greedy MAP selection of up to k items, in the order they are chosen.

    Stops early when the marginal gain vanishes (best d_j^2 <= GAIN_FLOOR * max diag L): the
    kernel's numerical rank is exhausted, e.g. by duplicated rows, and any further item would
    make det L[Y, Y] zero. Callers complete the set with their own rule.

    Args:
        kernel: (N, N) symmetric positive semi-definite float64 matrix.
        k: 0 <= k <= N.

    Returns:
        The chosen indices in selection order (length <= k).
    """
    n = kernel.shape[0]
    d2 = np.diagonal(kernel).astype(np.float64, copy=True)  # (N,) squared residuals
    if n == 0 or k == 0:
        return []
    floor = GAIN_FLOOR * float(d2.max())
    factors = np.zeros((k, n))  # (k, N) row t holds entry t of every candidate's Cholesky row
    gains = d2.copy()  # (N,) d^2 of the candidates, -inf once chosen
    chosen: list[int] = []
    for t in range(k):
        j = argmax_first(gains, TIE_REL * max(float(gains.max()), 0.0))
        if not gains[j] > floor:
            break
        chosen.append(j)
        e = (kernel[j] - factors[:t, j] @ factors[:t]) / np.sqrt(gains[j])  # (N,)
        factors[t] = e
        gains -= e * e
        gains[chosen] = -np.inf
    return chosen
