"""What a benchmark measures: the models, the grid of pruning configurations and the settings.

Config is data: BenchSettings holds every knob of a run, ModelSpec one GGUF (+ mmproj),
GridPoint one pruning configuration. The stock configuration (strategy 'none') is always
measured: every ratio and every fidelity number is relative to it.

Strategies and K: fastv runs at every K >= 1 of `layers`; divprune, dart and cdpruner select
before the LLM, at K = 0 only; random runs at every K of `layers`, K = 0 included (before the
LLM). Each `pre` spec ('divprune:192') adds two-stage points: that pre-LLM stage, then FastV at
every K >= 1 and every budget, the budget applying to what the first stage left.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import PRE_LLM_STRATEGIES, STRATEGIES, PreSelect, PruneConfig

STOCK = "stock"


@dataclass(frozen=True)
class ModelSpec:
    """One text GGUF; with an mmproj the image goes through mtmd, without one a pseudo image is used.

    n_images: image chunks per prompt (SmolVLM's tiles: 17). pseudo_image_tokens: rows of the
    pseudo image when there is no mmproj. images / prompt: a real picture and question (e.g. an
    easy-vqa test question) instead of the synthetic picture and the default prompt.
    """

    path: str
    mmproj: str | None = None
    n_images: int = 1
    pseudo_image_tokens: int = 576
    images: tuple[str, ...] = ()  # image files instead of the synthetic picture (then n_images = len)
    prompt: str | None = None  # raw prompt text with one media marker per image, instead of the default

    def __post_init__(self):
        if self.n_images < 1:
            raise ValueError(f"n_images must be >= 1, got {self.n_images}")
        if self.pseudo_image_tokens < 1:
            raise ValueError(f"pseudo_image_tokens must be >= 1, got {self.pseudo_image_tokens}")


@dataclass(frozen=True)
class BenchSettings:
    """Every setting of a benchmark run (one object instead of many keyword arguments)."""

    layers: tuple[int, ...] = (2,)  # K values
    drop_ratios: tuple[float, ...] = (0.5, 0.75, 0.9)  # R values
    keeps: tuple[int, ...] = ()  # absolute budgets (image tokens kept), in addition to R
    strategies: tuple[str, ...] = ("fastv", "random")  # pruned strategies; stock is always added
    pre: tuple[str, ...] = ()  # first stages of two-stage points, e.g. ("divprune:192",)
    reps: int = 3  # timed repetitions
    warmup: int = 1  # untimed rounds; the first one is also the fidelity pass
    n_decode: int = 32  # tokens decoded after the prompt (EOS ignored)
    n_threads: int = 2
    n_ctx: int = 2048
    n_batch: int = 2048
    n_ubatch: int = 512
    flash_attn: bool = False
    image_min_tokens: int | None = None  # mtmd's bounds on an image's tokens (dynamic-resolution projectors)
    image_max_tokens: int | None = None
    fidelity: bool = True
    fidelity_on_synthetic: bool = False  # measure and report fidelity of random weights (harness tests only)
    seed: int = 0  # pseudo image, random strategy

    def __post_init__(self):
        for name in ("reps", "warmup", "n_decode", "n_threads", "n_ctx", "n_batch", "n_ubatch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise ValueError(f"unknown strategies {bad}; known: {STRATEGIES}")
        if not self.layers:
            raise ValueError("give at least one K (layers)")
        for spec in self.pre:
            PreSelect.parse(spec)  # ValueError naming the expected form
        for r in self.drop_ratios:
            if not 0.0 <= r < 1.0:
                raise ValueError(f"drop ratios must be in [0, 1), got {r!r}")
        for k in self.keeps:
            if k < 0:
                raise ValueError(f"keep budgets must be >= 0, got {k!r}")


@dataclass(frozen=True)
class GridPoint:
    """One pruning configuration of the grid."""

    strategy: str  # 'none' for stock
    layer: int = 0  # K (0: before the LLM)
    drop_ratio: float | None = None
    keep: int | None = None
    pre: str | None = None  # the first stage of a two-stage point, e.g. 'divprune:192'

    @property
    def is_stock(self) -> bool:
        return self.strategy == "none"

    @property
    def label(self) -> str:
        if self.is_stock:
            return STOCK
        budget = f"keep={self.keep}" if self.keep is not None else f"R={self.drop_ratio:.2f}"
        first = f"{self.pre} + " if self.pre else ""
        return f"{first}{self.strategy} K={self.layer} {budget}"

    def prune(self, seed: int) -> PruneConfig:
        """The PruneConfig that runs this point."""
        if self.is_stock:
            return PruneConfig(strategy="none")
        return PruneConfig(
            layer=self.layer,
            drop_ratio=self.drop_ratio,
            keep=self.keep,
            strategy=self.strategy,
            seed=seed,
            pre=self.pre,
        )


def _layers(strategy: str, layers: tuple[int, ...], n_layer: int) -> list[int]:
    """The K values a strategy runs at (see the module docstring)."""
    if strategy in PRE_LLM_STRATEGIES:
        return [0]
    lowest = 0 if strategy == "random" else 1
    return [k for k in dict.fromkeys(layers) if (k == 0 and lowest == 0) or 1 <= k < n_layer]


def expand_grid(settings: BenchSettings, n_layer: int, notes: list[str] | None = None) -> list[GridPoint]:
    """Stock first, then strategy x K x budget, then the two-stage points; K values a model cannot
    take are skipped and noted.

    Args:
        settings: the benchmark settings.
        n_layer: the model's layer count (FastV needs 1 <= K < n_layer).
        notes: each skipped point is noted here, with the reason (the report prints them).

    Returns:
        The grid points, stock first.
    """
    points = [GridPoint("none")]

    def budgets(strategy: str, k: int, pre: str | None = None) -> list[GridPoint]:
        return [GridPoint(strategy, k, drop_ratio=r, pre=pre) for r in settings.drop_ratios] + [
            GridPoint(strategy, k, keep=n, pre=pre) for n in settings.keeps
        ]

    for strategy in settings.strategies:
        if strategy == "none":
            continue
        usable = _layers(strategy, settings.layers, n_layer)
        for k in dict.fromkeys(settings.layers):
            if k not in usable and strategy not in PRE_LLM_STRATEGIES:
                reason = f"a {n_layer}-layer model takes K in [1, {n_layer - 1}]"
                skipped = budgets(strategy, k)
                (notes if notes is not None else []).extend(f"skipped {p.label}: {reason}" for p in skipped)
        points += [p for k in usable for p in budgets(strategy, k)]
    for pre in settings.pre:
        points += [p for k in settings.layers if 1 <= k < n_layer for p in budgets("fastv", k, pre)]
    return points
