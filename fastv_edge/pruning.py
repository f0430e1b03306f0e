"""Pure numpy: how many image tokens to keep, and which ones.

These functions are the Python oracle of the selection the patched llama.cpp makes in
llama_fastv_finish(), and the selector used when the caller picks the keep set itself
(absolute `keep` budgets and the 'random' strategy go through finish_with_keep).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .config import PruneConfig


def n_keep_for_ratio(n_image: int, drop_ratio: float) -> int:
    """Number of image tokens kept for a drop ratio R: the budget llama_fastv_finish() takes.

    R is a float32 in the presets and the papers' tables, so it goes through float32 before
    floor(N * (1 - R)); with a Python double, R=0.9 can give a different count.

    Args:
        n_image: N, the number of prunable image tokens.
        drop_ratio: R in [0, 1).

    Returns:
        floor(N * (1 - R)) with R rounded to float32.
    """
    if n_image < 0:
        raise ValueError(f"n_image must be >= 0, got {n_image}")
    if not 0.0 <= drop_ratio < 1.0:
        raise ValueError(f"drop_ratio must be in [0, 1), got {drop_ratio!r}")
    return int(n_image * (1.0 - float(np.float32(drop_ratio))))


def n_keep(config: PruneConfig, n_image: int) -> int:
    """Budget of kept image tokens for `config` and N image tokens.

    Args:
        config: pruning configuration (drop_ratio or absolute keep).
        n_image: N, the number of image tokens in the prompt.

    Returns:
        The number of image tokens kept from layer K on.

    Raises:
        ValueError: if an absolute keep is larger than N.
    """
    if config.keep is None:
        return n_keep_for_ratio(n_image, config.drop_ratio)
    if config.keep > n_image:
        raise ValueError(
            f"keep={config.keep} is larger than the {n_image} image tokens of this prompt; "
            f"use keep <= {n_image} or a drop ratio"
        )
    return config.keep


def select_top_k(scores, n_keep: int) -> np.ndarray:
    """Indices of the n_keep highest scores, ascending (prompt order).

    Ties go to the earlier token (a stable sort on the negated scores), like the C side's
    std::stable_sort.

    Args:
        scores: (N,) attention of the last prompt token to each image token.
        n_keep: how many to keep, 0 <= n_keep <= N.

    Returns:
        (n_keep,) int32 indices into the N image tokens, ascending.
    """
    scores = np.asarray(scores, dtype=np.float64)  # (N,)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf; the attention export is broken")
    if not 0 <= n_keep <= scores.shape[0]:
        raise ValueError(f"n_keep must be in [0, {scores.shape[0]}], got {n_keep}")
    order = np.argsort(-scores, kind="stable")  # (N,) best first, ties in prompt order
    return np.sort(order[:n_keep]).astype(np.int32)


def select_random(n_image: int, n_keep: int, seed: int) -> np.ndarray:
    """A seeded random keep set (the comparison baseline), ascending.

    Args:
        n_image: N.
        n_keep: how many to keep, 0 <= n_keep <= N.
        seed: numpy Generator seed; the same seed gives the same set.

    Returns:
        (n_keep,) int32 indices, ascending.
    """
    if not 0 <= n_keep <= n_image:
        raise ValueError(f"n_keep must be in [0, {n_image}], got {n_keep}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_image, size=n_keep, replace=False)).astype(np.int32)


def make_pruner(config: PruneConfig) -> Callable[[np.ndarray], np.ndarray]:
    """A function scores -> kept indices for `config` (strategy and budget).

    Args:
        config: an enabled PruneConfig ('fastv' or 'random').

    Returns:
        pruner(scores) returning ascending int32 indices of the kept image tokens.
    """
    if not config.enabled:
        raise ValueError("strategy 'none' prunes nothing; there is no pruner for it")

    def pruner(scores) -> np.ndarray:
        scores = np.asarray(scores)  # (N,)
        k = n_keep(config, scores.shape[0])
        if config.strategy == "random":
            return select_random(scores.shape[0], k, config.seed)
        return select_top_k(scores, k)

    return pruner
