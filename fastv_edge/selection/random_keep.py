"""The seeded random keep set before the LLM ('random' at layer 0), the baseline every
selection method is compared with (UniPruneBench finds it strong)."""

from __future__ import annotations

import numpy as np

from ..pruning import select_random
from ._common import check_embd, check_n_keep


def random_keep(embd, n_keep: int, *, seed: int = 0) -> np.ndarray:
    """A uniformly random subset of the image tokens; the embeddings only give N.

    The same generator as the in-LLM random baseline (pruning.select_random), so the same seed
    and N give the same set at layer 0 and at layer K.

    Args:
        embd: (N, d) image embeddings.
        n_keep: how many to keep, 0 <= n_keep <= N.
        seed: numpy Generator seed (integer >= 0); the same seed gives the same set.

    Returns:
        (n_keep,) int32 indices, ascending.
    """
    embd = check_embd(embd)
    k = check_n_keep(n_keep, embd.shape[0])
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return select_random(embd.shape[0], k, int(seed))
