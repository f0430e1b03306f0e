"""The pruning settings the yardstick sweep evaluates, read from fastv_edge at run time.

Every strategy in fastv_edge.config.STRATEGIES is swept, so strategies added to the package later
are picked up without editing this file:

- 'none': the stock llama.cpp path, once ('stock').
- 'fastv': at K in {2, L/4, L/2} (deduplicated; L = the LM's layer count), plus any K the sweep's
  --fastv-layers asks for.
- 'random': at K = 0 (before the LLM) and K = 2 (FastV's two-phase prefill, random keep set), plus
  any K the sweep's --random-layers asks for (the chance line of a FastV K added with --fastv-layers:
  the same full first K layers, a random keep set).
- any other strategy: before the LLM, PruneConfig(strategy=s, layer=0, keep=N).
- two stages: PreSelect(s, keep=N1) before the LLM, then FastV at K = 2 down to N, with
  N1 = min(2 N, 256), for s in TWO_STAGE_PRE (DivPrune: one two-stage line keeps the sweep's
  cost down; add names there to sweep more).

A setting whose configuration the package rejects (ValueError, TypeError, or a FastVEdgeError
such as UnsupportedModelError at generation time) is recorded as skipped with the reason, never
a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

N_IMAGE = 256
# 192 / 128 / 64 / 32 kept of LLaVA-1.5's 576 image tokens, scaled to 256 (x 256/576, rounded)
BUDGETS = (85, 57, 28, 14)
RANDOM_LAYERS = (0, 2)
TWO_STAGE_LAYER = 2
TWO_STAGE_PRE = ("divprune",)


@dataclass(frozen=True)
class Setting:
    """One evaluated configuration: a family (a line of the plot) at one budget."""

    name: str  # unique key in the shard files, e.g. 'fastv K=2 keep=28'
    family: str  # e.g. 'FastV K=2', 'random K=0', 'divprune', 'divprune+FastV K=2'
    keep: int  # image tokens left for the deep layers (N_IMAGE for stock)
    make: Callable[[int], object]  # question index -> PruneConfig (random strategies seed by question)


def fastv_layers(n_layer: int) -> list[int]:
    """K in {2, L/4, L/2}, deduplicated and valid (1 <= K < L)."""
    return sorted({k for k in (2, n_layer // 4, n_layer // 2) if 1 <= k < n_layer})


def _prune(**kwargs) -> Callable[[int], object]:
    def make(q: int):
        from fastv_edge import PruneConfig

        seeded = {"seed": q} if kwargs.get("strategy") == "random" else {}
        return PruneConfig(**kwargs, **seeded)

    return make


def _two_stage(pre: str, keep1: int, keep: int) -> Callable[[int], object]:
    def make(q: int):
        from fastv_edge.config import PreSelect, PruneConfig

        seeded = {"seed": q} if pre == "random" else {}
        stage = PreSelect(pre, keep=keep1, **seeded)
        return PruneConfig(strategy="fastv", layer=TWO_STAGE_LAYER, keep=keep, pre=stage)

    return make


def settings(
    n_layer: int,
    strategies: tuple[str, ...] | None = None,
    extra_fastv: tuple[int, ...] = (),
    extra_random: tuple[int, ...] = (),
) -> list[Setting]:
    """Every setting to evaluate, stock first.

    Args:
        n_layer: layers of the LM (for K = L/4, L/2).
        strategies: strategy names; None reads fastv_edge.config.STRATEGIES now.
        extra_fastv: more FastV layers K to sweep besides {2, L/4, L/2} (1 <= K < L).
        extra_random: more layers K for random selection besides RANDOM_LAYERS (0 <= K < L).

    Returns:
        The settings in table order.
    """
    bad = [k for k in extra_fastv if not 1 <= k < n_layer]
    if bad:
        raise ValueError(f"FastV layers {bad} out of range: 1 <= K < {n_layer}")
    bad = [k for k in extra_random if not 0 <= k < n_layer]
    if bad:
        raise ValueError(f"random layers {bad} out of range: 0 <= K < {n_layer}")
    if strategies is None:
        from fastv_edge.config import STRATEGIES as strategies
    out = [Setting("stock", "stock", N_IMAGE, _prune(strategy="none"))]
    pre_llm = []
    for s in strategies:
        if s == "none":
            continue
        if s == "fastv":
            layers = sorted(set(fastv_layers(n_layer)) | set(extra_fastv))
        elif s == "random":
            layers = sorted(set(RANDOM_LAYERS) | set(extra_random))
        else:
            layers = [0]
        for k in layers:
            family = f"FastV K={k}" if s == "fastv" else (f"{s} K={k}" if s == "random" else s)
            if k == 0:
                pre_llm.append(s)
            for n in BUDGETS:
                out.append(Setting(f"{s} K={k} keep={n}", family, n, _prune(strategy=s, layer=k, keep=n)))
    for s in (s for s in pre_llm if s in TWO_STAGE_PRE):
        for n in BUDGETS:
            keep1 = min(2 * n, N_IMAGE)
            name = f"{s} keep={keep1} + fastv K={TWO_STAGE_LAYER} keep={n}"
            out.append(Setting(name, f"{s}+FastV K={TWO_STAGE_LAYER}", n, _two_stage(s, keep1, n)))
    return out
