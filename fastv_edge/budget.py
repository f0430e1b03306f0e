"""A request with a TTFT budget: the stored calibration, the planner's view of the request, the plan applied.

    cost, fresh = ensure_calibration(model, progress)   # calibrates and stores when there is none yet
    chosen, prune = plan_request(model, images, text, budget_s, cost)
    with image_cap(model, chosen.cap):                  # mtmd re-opened with the plan's cap, restored after
        ... prefill with `prune` ...

The planner (planner.py) is pure; this module asks the model what it needs: the images' token
counts under each candidate cap (cap_tokens' copy of mtmd's resize rule where fastv_edge knows
it, the calibrated fixed count for fixed-resolution projectors, else one tokenization), whether
each image is already in the embedding cache under that cap, and the text's token count.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .calibration_store import load_calibration, save_calibration
from .cap_tokens import rule_for
from .config import PRE_LLM_STRATEGIES, PruneConfig
from .cost_model import CostModel
from .planner import DEFAULT_CAPS, DEFAULT_FAMILIES, CapOption, Plan, Request, plan

if TYPE_CHECKING:
    from .prefill import Progress


def no_progress(_message: str):
    """The default progress hook: does nothing (prefill's, without importing llama.cpp here)."""
    return nullcontext()


def ensure_calibration(model, progress: Progress = no_progress) -> tuple[CostModel, bool]:
    """The stored calibration of the model pair, measuring and storing it first when there is none.

    Args:
        model: a loaded Model with an mmproj.
        progress: progress hook; the calibration announces itself through it.

    Returns:
        (cost model, True when it was measured just now).
    """
    cost = load_calibration(model)
    if cost is not None:
        return cost, False
    from .calibrate import calibrate

    name = Path(model.info.path).name
    with progress(f"no calibration of {name} with {model.runtime.threads} thread(s) on this machine: calibrating"):
        cost = calibrate(model, progress)
    save_calibration(model, cost)
    return cost, True


def calibration_for(model, context_empty: bool, progress: Progress = no_progress) -> CostModel:
    """ensure_calibration for a request: refused mid-conversation, where measuring would clear the context.

    Raises:
        ValueError: no stored calibration and the context holds a conversation.
    """
    cost = load_calibration(model)
    if cost is not None:
        return cost
    if not context_empty:
        raise ValueError(
            "a TTFT budget needs this machine's calibration, and measuring it would clear the conversation; "
            "calibrate first (fastv-edge calibrate, or ChatSession(..., ttft_budget=...) before the first turn)"
        )
    return ensure_calibration(model, progress)[0]


def families_for(model, prune: PruneConfig | None) -> tuple[tuple[str, ...], int]:
    """The planner's families and FastV layer for a request's pruning (None: the planner's free choice).

    A given PruneConfig names the strategy (and K, and a pre stage) the plan may use; its budget
    is the planner's to choose. Keeping every token ('none') is always allowed.

    Raises:
        ValueError: in-LLM random selection (a baseline, not planned), or FastV on an architecture without it.
    """
    from .model import FASTV_ARCHITECTURES

    fastv_ok = model.info.architecture in FASTV_ARCHITECTURES
    if prune is None:
        fams = tuple(f for f in DEFAULT_FAMILIES if fastv_ok or "fastv" not in f)
        return fams, 2
    if not prune.enabled:
        return ("none",), 2
    if prune.strategy == "random" and prune.in_llm:
        raise ValueError(
            "a TTFT budget plans fastv, divprune, dart, cdpruner, random before the LLM (-k 0) and two stages; "
            "in-LLM random selection is a baseline: drop --ttft-budget or pick another --strategy"
        )
    if prune.in_llm and not fastv_ok:
        raise ValueError(f"FastV does not support {model.info.architecture!r}; pick a pre-LLM --strategy")
    if prune.pre is not None:
        return ("none", f"{prune.pre.strategy}+{prune.strategy}"), prune.layer
    if prune.strategy in (*PRE_LLM_STRATEGIES, "random"):
        return ("none", prune.strategy), 2
    return ("none", "fastv"), prune.layer


@dataclass(frozen=True)
class _KeyPiece:
    """What EncoderKeys.key reads of an ImagePiece, for an image not tokenized yet."""

    digest: str
    n_tokens: int
    grid: tuple[int, int] | None


def _is_cached(model, digest: str, n_tokens: int, grid, cap: int | None) -> bool:
    cache = model.embedding_cache
    if cache is None:
        return False
    from .embedding_cache import EncoderKeys, preprocessing

    runtime = replace(model.runtime, image_max_tokens=cap) if model.image_tokens_honoured else model.runtime
    keys = EncoderKeys(model.mmproj.path, preprocessing(runtime, model.image_tokens_honoured), cache.memo_dir)
    return cache.contains(keys.key(_KeyPiece(digest, n_tokens, grid)))


def _mmproj_rule(model):
    from .gguf_header import read_header

    if not model.image_tokens_honoured:
        return None
    header = read_header(model.mmproj.path)
    return rule_for(
        model.mmproj.projector_type, header.get("clip.vision.patch_size"), header.get("clip.vision.spatial_merge_size")
    )


def cap_options(model, images, cost: CostModel) -> tuple[CapOption, ...]:
    """The images' token counts (and cache state) under the open cap and each smaller candidate cap.

    Args:
        model: the loaded Model.
        images: decoded RGBImage objects of the request.
        cost: the calibration (its fixed token count for fixed-resolution projectors).

    Returns:
        One CapOption per distinct token count, the open cap first.
    """
    from .embedding_cache import pixel_digest

    digests = [pixel_digest(img.nx, img.ny, img.data) + ":0" for img in images]
    rule = _mmproj_rule(model)
    if rule is None:
        return (_measured_option(model, images, cost, digests),)
    rt = model.runtime
    current = rt.image_max_tokens
    top = current or rule.default_max_tokens
    caps = [current] + [c for c in DEFAULT_CAPS if c < top and (rt.image_min_tokens or 0) <= c]
    options, seen = [], set()
    for cap in caps:
        grids = [rule.grid(img.nx, img.ny, cap, rt.image_min_tokens) for img in images]
        tokens = tuple(nx * ny for nx, ny in grids)
        if tokens in seen:
            continue
        seen.add(tokens)
        cached = tuple(_is_cached(model, d, n, g, cap) for d, n, g in zip(digests, tokens, grids, strict=True))
        options.append(CapOption(cap, tokens, cached, reopen=cap != current))
    return tuple(options)


def _measured_option(model, images, cost: CostModel, digests) -> CapOption:
    """A projector without a known resize rule: the calibrated fixed count, else mtmd's own count."""
    cap = model.runtime.image_max_tokens
    if cost.encode.fixed_tokens is not None:
        n = cost.encode.fixed_tokens
        cached = tuple(_is_cached(model, d, n, None, cap) for d in digests)
        return CapOption(cap, (n,) * len(images), cached)
    from .prompt import tokenize

    with tokenize(model.llm, model.mtmd_ctx, model.marker * len(images), list(images), add_special=False) as p:
        pieces = p.images
        keys = model.encoder.keys
        cached = tuple(bool(keys and p.digest and model.embedding_cache.contains(keys.key(p))) for p in pieces)
        return CapOption(cap, tuple(p.n_tokens for p in pieces), cached)


def build_request(model, images, text: str, cost: CostModel, *, n_past: int = 0, add_bos: bool = True) -> Request:
    """The planner's Request for a prompt text (with media markers) and its decoded images."""
    words = text.replace(model.marker, "").encode("utf-8")
    n_text = len(model.llm.tokenize(words, add_bos=add_bos, special=True))
    return Request(
        n_text=n_text,
        options=cap_options(model, images, cost),
        n_past=n_past,
        n_ctx=model.n_ctx,
        n_pixels=sum(img.nx * img.ny for img in images),
    )


def plan_request(
    model,
    images,
    text: str,
    budget_s: float,
    cost: CostModel,
    prune: PruneConfig | None = None,
    *,
    n_past: int = 0,
    add_bos: bool = True,
) -> tuple[Plan, PruneConfig]:
    """Plan one request: the cap and pruning with the most image tokens whose predicted TTFT fits.

    Args:
        model: the loaded Model.
        images: the request's decoded images (at least one).
        text: the prompt text with one media marker per image.
        budget_s: the TTFT budget in seconds.
        cost: the calibration (ensure_calibration).
        prune: the strategy the plan may use (None: the planner's choice among all).
        n_past: KV cells already used (a chat's earlier turns).
        add_bos: the prompt starts the context.

    Returns:
        (the Plan, the PruneConfig that runs it).

    Raises:
        ValueError: no images, bad budget or strategy; planner.BudgetTooSmallError when nothing fits.
    """
    if not images:
        raise ValueError("a TTFT budget plans image tokens, but the request has no image")
    families, layer = families_for(model, prune)
    req = build_request(model, images, text, cost, n_past=n_past, add_bos=add_bos)
    factor = speed_factor(model)
    chosen = replace(plan(cost.scaled(factor), req, budget_s, families=families, layer=layer), speed_factor=factor)
    seed = prune.seed if prune is not None else 0
    theta = prune.relevance_weight if prune is not None else 0.5
    return chosen, chosen.prune_config(seed, theta)


_SPEED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> measured / calibrated time
SPEED_WEIGHT = 0.5  # weight of the newest request in the running (geometric) mean
SPEED_LIMITS = (0.25, 4.0)


def speed_factor(model) -> float:
    """How much slower (> 1) or faster than its calibration this model's recent budgeted requests ran.

    A machine's speed drifts after calibration (other processes, thermal limits, memory pressure):
    each budgeted request's measured TTFT against its unscaled prediction updates a running geometric
    mean, and the next plan scales the calibrated times by it. 1.0 before the first request.
    """
    return _SPEED.get(model, 1.0)


def observe(model, chosen: Plan, ttft_ms: float) -> None:
    """Fold a budgeted request's measured TTFT into speed_factor(model)."""
    raw = chosen.predicted_ms / chosen.speed_factor
    if raw <= 0 or ttft_ms <= 0:
        return
    ratio = min(max(ttft_ms / raw, SPEED_LIMITS[0]), SPEED_LIMITS[1])
    old = speed_factor(model)
    _SPEED[model] = min(max(old ** (1 - SPEED_WEIGHT) * ratio**SPEED_WEIGHT, SPEED_LIMITS[0]), SPEED_LIMITS[1])


@contextmanager
def image_cap(model, cap: int | None):
    """Open mtmd with image_max_tokens=cap for the block, then restore the caps it had (no-op when equal)."""
    before = (model.runtime.image_min_tokens, model.runtime.image_max_tokens)
    if cap == before[1] or not model.image_tokens_honoured:
        yield
        return
    model.set_image_tokens(before[0], cap)
    try:
        yield
    finally:
        model.set_image_tokens(*before)
