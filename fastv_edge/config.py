"""Configuration as data: one frozen dataclass per concern.

PruneConfig  - FastV pruning (arXiv 2403.06764): layer K, budget R or keep, strategy.
RuntimeConfig - the llama.cpp context: n_ctx, threads, batch sizes, flash attention.
SamplingConfig - how the next token is chosen.

Each class checks its own fields in __post_init__ and raises ValueError with the value.
Checks that need the model (K < n_layer, keep <= N) live in `check_layer` / pruning.n_keep.
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("fastv", "random", "none")
DEFAULT_DROP_RATIO = 0.5


def _is_int(value) -> bool:
    # bool is an int subclass; PruneConfig(layer=True) is a mistake, not K=1
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class PruneConfig:
    """FastV pruning of image tokens.

    Image tokens are ranked by the attention the last prompt token pays them in layer K-1;
    layers K.. see only the kept ones. Give the budget as `drop_ratio` (R, share removed)
    or as `keep` (absolute number of image tokens kept), never both; with neither, R=0.5.

    strategy: 'fastv' (rank by attention), 'random' (seeded random keep set at the same
    layer K, a baseline for comparisons) or 'none' (stock llama.cpp path, no FastV calls;
    layer and budget are ignored).
    """

    layer: int = 2  # K: layers [0, K) see every image token
    drop_ratio: float | None = None  # R: share of image tokens removed from layer K on
    keep: int | None = None  # absolute number of image tokens kept (instead of R)
    strategy: str = "fastv"
    seed: int = 0  # only used by strategy='random'

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not _is_int(self.layer) or self.layer < 1:
            raise ValueError(f"layer K must be an integer >= 1, got {self.layer!r}")
        if self.drop_ratio is not None and self.keep is not None:
            raise ValueError(f"give drop_ratio or keep, not both (drop_ratio={self.drop_ratio}, keep={self.keep})")
        if self.keep is None and self.drop_ratio is None:
            object.__setattr__(self, "drop_ratio", DEFAULT_DROP_RATIO)
        if self.drop_ratio is not None:
            r = self.drop_ratio
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
                raise ValueError(f"drop_ratio must be in [0, 1), got {r!r}")
            object.__setattr__(self, "drop_ratio", float(r))
        if self.keep is not None and (not _is_int(self.keep) or self.keep < 0):
            raise ValueError(f"keep must be an integer >= 0, got {self.keep!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @property
    def enabled(self) -> bool:
        """True when the prefill goes through the FastV calls."""
        return self.strategy != "none"

    def check_layer(self, n_layer: int) -> None:
        """Raise ValueError unless 1 <= K < n_layer (FastV needs at least one deep layer).

        Args:
            n_layer: number of transformer layers of the text model.
        """
        if self.enabled and not 1 <= self.layer < n_layer:
            raise ValueError(
                f"layer K must be in [1, {n_layer - 1}] for a model with {n_layer} layers, got {self.layer}"
            )

    def describe(self) -> str:
        """Short human description, e.g. 'fastv K=2 R=0.50'."""
        if not self.enabled:
            return "none (stock)"
        budget = f"keep={self.keep}" if self.keep is not None else f"R={self.drop_ratio:.2f}"
        return f"{self.strategy} K={self.layer} {budget}"


@dataclass(frozen=True)
class RuntimeConfig:
    """llama.cpp context settings (names follow llama-cpp-python's Llama arguments)."""

    n_ctx: int = 4096
    n_threads: int | None = None  # decode and prompt; None: llama-cpp-python's defaults (half / all cores)
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool = False
    n_gpu_layers: int = 0
    verbose: bool = False

    def __post_init__(self):
        for name in ("n_ctx", "n_batch", "n_ubatch"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.n_threads is not None and (not _is_int(self.n_threads) or self.n_threads < 1):
            raise ValueError(f"n_threads must be an integer >= 1 or None, got {self.n_threads!r}")
        if not _is_int(self.n_gpu_layers):
            raise ValueError(f"n_gpu_layers must be an integer, got {self.n_gpu_layers!r}")


@dataclass(frozen=True)
class SamplingConfig:
    """Token choice: greedy when temp == 0, else llama.cpp's seeded sampler chain."""

    temp: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.temp, bool) or not isinstance(self.temp, (int, float)) or self.temp < 0:
            raise ValueError(f"temp must be >= 0, got {self.temp!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        for name in ("top_p", "min_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
