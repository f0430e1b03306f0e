"""Pure numpy: how many image tokens to keep, and which ones.

These functions are the Python oracle of the selection the patched llama.cpp makes in
llama_fastv_finish(), and the selector used when the caller picks the keep set itself
(absolute `keep` budgets and the 'random' strategy go through finish_with_keep).
The budget helpers also serve the pre-LLM selections (fastv_edge.selection): `stage_budgets`
gives both budgets of a two-stage configuration, `split_budget` shares one across images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .config import PreSelect, PruneConfig


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


def n_keep(config: PruneConfig | PreSelect, n_image: int) -> int:
    """Budget of kept image tokens for `config` and N image tokens.

    Args:
        config: pruning configuration or pre-LLM stage (drop_ratio or absolute keep).
        n_image: N, the number of image tokens that stage sees.

    Returns:
        The number of image tokens that stage keeps.

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


def stage_budgets(config: PruneConfig, n_image: int) -> tuple[int, int]:
    """Both budgets of `config` for N image tokens: (B1, B2).

    B1 is the number of image tokens that enter the LLM (after the pre-LLM selection, N when
    there is none); B2 the number kept from layer K on (B1 when there is no in-LLM stage).
    In two stages the in-LLM budget applies to the B1 remaining tokens: keep is B2 itself,
    a drop ratio R gives B2 = floor(B1 (1 - R)).

    Args:
        config: the pruning configuration.
        n_image: N, all image tokens of the prompt (every image together).

    Returns:
        (B1, B2) with 0 <= B2 <= B1 <= N.

    Raises:
        ValueError: a budget larger than the tokens its stage receives.
    """
    if not _is_count(n_image):
        raise ValueError(f"n_image must be an integer >= 0, got {n_image!r}")
    if not config.enabled or n_image == 0:  # a text-only prompt (a later chat turn) has nothing to prune
        return n_image, n_image
    pre = config.pre_stage
    b1 = n_image if pre is None else n_keep(pre, n_image)
    if not config.in_llm:
        return b1, b1
    if pre is not None and config.keep is not None and config.keep > b1:
        raise ValueError(
            f"the layer-{config.layer} stage keeps keep={config.keep} image tokens but only {b1} of {n_image} "
            f"enter the LLM after the {pre.strategy} stage; use keep <= {b1} or a larger pre-stage budget"
        )
    return b1, n_keep(config, b1)


def split_budget(n_tokens: Sequence[int], n_keep: int) -> list[int]:
    """Share a budget across images in proportion to their token counts (largest remainder).

    Image i first gets floor(n_keep * n_i / N); the tokens still missing go, one each, to the
    images with the largest remainders (n_keep * n_i mod N), ties to the earlier image. Integer
    arithmetic throughout, so the shares sum to exactly n_keep and no share exceeds its n_i.

    Args:
        n_tokens: the image token count of each image, in prompt order.
        n_keep: the total budget, 0 <= n_keep <= sum(n_tokens).

    Returns:
        One budget per image.
    """
    counts = list(n_tokens)
    if not all(_is_count(n) for n in counts):
        raise ValueError(f"image token counts must be integers >= 0, got {counts}")
    total = sum(counts)
    if not _is_count(n_keep) or n_keep > total:
        raise ValueError(f"n_keep must be an integer in [0, {total}] for images of {counts} tokens, got {n_keep!r}")
    if total == 0:
        return [0] * len(counts)
    shares = [n_keep * n // total for n in counts]
    remainders = [n_keep * n % total for n in counts]
    missing = n_keep - sum(shares)  # < len(counts): each floor lost less than one token
    for i in sorted(range(len(counts)), key=lambda i: -remainders[i])[:missing]:  # stable: earlier image first
        shares[i] += 1
    return shares


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0


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
        config: a PruneConfig with an in-LLM stage ('fastv' or 'random' at layer K >= 1).

    Returns:
        pruner(scores) returning ascending int32 indices of the kept image tokens.
    """
    if not config.enabled:
        raise ValueError("strategy 'none' prunes nothing; there is no pruner for it")
    if not config.in_llm:
        raise ValueError(
            f"{config.describe()} selects before the LLM from the image embeddings, not from attention scores; "
            "use fastv_edge.selection.select_stage"
        )

    def pruner(scores) -> np.ndarray:
        scores = np.asarray(scores)  # (N,)
        k = n_keep(config, scores.shape[0])
        if config.strategy == "random":
            return select_random(scores.shape[0], k, config.seed)
        return select_top_k(scores, k)

    return pruner
