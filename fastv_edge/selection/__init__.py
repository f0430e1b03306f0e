"""Attention-free selection of image tokens before the LLM, from their projected embeddings.

Each strategy takes the (N, d) embeddings one image's chunk gives the LLM (mtmd's output
embeddings) and returns which rows to decode, as ascending int32 indices; kept rows keep their
original positions, dropped rows never enter the KV cache. Pure NumPy, no llama.cpp.

    from fastv_edge.selection import select, select_stage
    keep = select("divprune", embd, 64)                                   # one image
    keeps = select_stage(config.pre_stage, [embd_a, embd_b], text_embd=t)  # a PruneConfig's stage

Strategies: 'divprune' (max-min diversity), 'dart' (pivots + least duplicated), 'cdpruner'
(conditional DPP: relevance to the prompt's text features x diversity) and 'random' (seeded).
Several images share the budget in proportion to their token counts (pruning.split_budget);
each image is then selected on its own.

Selection time at N=576, 1 thread (`python -m fastv_edge.selection.timing`, table there):
d=2048 divprune ~40-50 ms, dart ~4-12 ms, cdpruner ~55-65 ms, random ~1 ms; d=4096 roughly
twice that; N=1024 about three times the N=576 figures (the N x N cosine matrix dominates).
A prefill of 576 image tokens through a 2-7B LLM on one CPU core costs on the order of
2 * params * 576 = 1.7-8 TFLOP, tens of seconds or more: selection is well under 1% of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import PRE_LLM_STRATEGIES, PreSelect
from ..pruning import n_keep as stage_n_keep
from ..pruning import split_budget
from .cdpruner import DEFAULT_RELEVANCE_WEIGHT, cdpruner, relevance
from .dart import DEFAULT_N_PIVOTS, dart
from .divprune import divprune
from .random_keep import random_keep

SELECTORS = {"random": random_keep, "divprune": divprune, "dart": dart, "cdpruner": cdpruner}
assert set(SELECTORS) == {*PRE_LLM_STRATEGIES, "random"}  # config.py names the same strategies

__all__ = ["SELECTORS", "select", "select_images", "select_stage", "divprune", "dart", "cdpruner", "relevance"]


def select(
    strategy: str,
    embd,
    n_keep: int,
    *,
    text_embd=None,
    seed: int = 0,
    relevance_weight: float = DEFAULT_RELEVANCE_WEIGHT,
    n_pivots: int = DEFAULT_N_PIVOTS,
) -> np.ndarray:
    """Select n_keep of one image's N tokens with `strategy`.

    Args:
        strategy: 'divprune', 'dart', 'cdpruner' or 'random'.
        embd: (N, d) the image's embeddings (float32 from mtmd, any real dtype).
        n_keep: how many to keep, 0 <= n_keep <= N.
        text_embd: (T, d_text) the prompt's token input embeddings; required by cdpruner,
            ignored by the others.
        seed: random's seed (integer >= 0); ignored by the others.
        relevance_weight: cdpruner's theta in [0, 1).
        n_pivots: dart's pivot count (>= 1).

    Returns:
        (n_keep,) int32 indices into the N rows, ascending, distinct.
    """
    if strategy == "random":
        return random_keep(embd, n_keep, seed=seed)
    if strategy == "divprune":
        return divprune(embd, n_keep)
    if strategy == "dart":
        return dart(embd, n_keep, n_pivots=n_pivots)
    if strategy == "cdpruner":
        return cdpruner(embd, n_keep, text_embd=text_embd, relevance_weight=relevance_weight)
    raise ValueError(
        f"pre-LLM selection takes one of {tuple(SELECTORS)}, got {strategy!r}"
        + ("; fastv ranks by attention inside the LLM (layer K >= 1)" if strategy == "fastv" else "")
    )


def select_images(strategy: str, embds: Sequence, n_keep: int, *, seed: int = 0, **options) -> list[np.ndarray]:
    """Select n_keep tokens over several images, each image's share proportional to its tokens.

    The budget is split by `pruning.split_budget` (largest remainder, total exactly n_keep),
    then each image is selected on its own; image i uses seed + i, so two images of one
    prompt do not get the same random pattern.

    Args:
        strategy: as in `select`.
        embds: one (N_i, d) array per image, in prompt order.
        n_keep: total budget, 0 <= n_keep <= sum N_i.
        seed: base seed for 'random'.
        **options: text_embd, relevance_weight, n_pivots as in `select`.

    Returns:
        One ascending int32 index array per image, into that image's rows.
    """
    shares = split_budget(_image_counts(embds), n_keep)
    pairs = enumerate(zip(embds, shares, strict=True))
    return [select(strategy, e, k, seed=seed + i, **options) for i, (e, k) in pairs]


def select_stage(stage: PreSelect, embds: Sequence, *, text_embd=None) -> list[np.ndarray]:
    """Run a configuration's pre-LLM stage (PruneConfig.pre_stage) over the prompt's images.

    The stage's budget (keep, or drop_ratio of all image tokens together) is computed for the
    total N, then shared across the images as in `select_images`.

    Args:
        stage: the PreSelect (strategy, budget, seed, relevance_weight).
        embds: one (N_i, d) array per image, in prompt order.
        text_embd: (T, d_text) the prompt's token input embeddings (cdpruner).

    Returns:
        One ascending int32 index array per image.

    Raises:
        ValueError: a keep larger than the prompt's image tokens, or bad embeddings.
    """
    if not isinstance(stage, PreSelect):
        raise ValueError(f"stage must be a PreSelect (PruneConfig.pre_stage), got {stage!r}")
    total = sum(_image_counts(embds))
    return select_images(
        stage.strategy,
        embds,
        stage_n_keep(stage, total),
        seed=stage.seed,
        text_embd=text_embd,
        relevance_weight=stage.relevance_weight,
    )


def _image_counts(embds) -> list[int]:
    if isinstance(embds, np.ndarray) or not isinstance(embds, Sequence):
        raise ValueError(f"embds must be a list of (N, d) arrays, one per image, got {type(embds).__name__}")
    if any(np.ndim(e) != 2 for e in embds):
        raise ValueError(f"every image's embeddings must be an (N, d) array, got shapes {[np.shape(e) for e in embds]}")
    return [int(np.shape(e)[0]) for e in embds]
