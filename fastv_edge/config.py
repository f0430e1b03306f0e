"""Configuration as data: one frozen dataclass per concern.

PruneConfig  - which image tokens the LLM sees: FastV (arXiv 2403.06764) at layer K, a
               selection from the image embeddings before the LLM (DivPrune, DART, CDPruner,
               random), or both in two stages (PreSelect then FastV).
RuntimeConfig - the llama.cpp context: n_ctx, threads, batch sizes, flash attention; mtmd's
               image-token limits and the image-embedding cache.
SamplingConfig - how the next token is chosen.

Each class checks its own fields in __post_init__ and raises ValueError with the value.
Checks that need the model (K < n_layer, keep <= N) live in `check_layer` / the pruning helpers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STRATEGIES = ("fastv", "random", "divprune", "dart", "cdpruner", "none")
PRE_LLM_STRATEGIES = ("divprune", "dart", "cdpruner")  # select from the embeddings: layer 0 only
IN_LLM_STRATEGIES = ("fastv", "random")  # at layer K >= 1 ('random' at K=0 selects before the LLM)
DEFAULT_DROP_RATIO = 0.5
DEFAULT_LAYER = 2  # FastV's K=2
DEFAULT_RELEVANCE_WEIGHT = 0.5  # CDPruner's theta (OpenVINO GenAI's default)
PRE_PARSE_KEYS = ("keep", "r", "seed", "theta")
THREADS_PER_CORE = 4  # a thread count above this many per core is a typo, not a setting
GGML_MAX_THREADS = 512  # ggml's GGML_MAX_N_THREADS: its thread pool aborts above it
MAX_CONTEXT = 2**31 - 256  # n_ctx / n_batch / n_ubatch: llama.cpp's uint32 padding must not wrap
MAX_SEED = 2**32 - 2  # llama.cpp's seeds are uint32, and 2**32 - 1 (LLAMA_DEFAULT_SEED) means "random"


def _is_int(value) -> bool:
    # bool is an int subclass; PruneConfig(layer=True) is a mistake, not K=1
    return isinstance(value, int) and not isinstance(value, bool)


def _check_budget(obj) -> None:
    """Validate obj.drop_ratio / obj.keep (at most one); neither means R = DEFAULT_DROP_RATIO."""
    if obj.drop_ratio is not None and obj.keep is not None:
        raise ValueError(f"give drop_ratio or keep, not both (drop_ratio={obj.drop_ratio}, keep={obj.keep})")
    if obj.keep is None and obj.drop_ratio is None:
        object.__setattr__(obj, "drop_ratio", DEFAULT_DROP_RATIO)
    if obj.drop_ratio is not None:
        r = obj.drop_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
            raise ValueError(f"drop_ratio must be in [0, 1), got {r!r}")
        object.__setattr__(obj, "drop_ratio", float(r))
    if obj.keep is not None and (not _is_int(obj.keep) or obj.keep < 0):
        raise ValueError(f"keep must be an integer >= 0, got {obj.keep!r}")


def _check_seed_and_weight(obj) -> None:
    if not _is_int(obj.seed) or obj.seed < 0:  # numpy's Generator takes seeds >= 0
        raise ValueError(f"seed must be an integer >= 0, got {obj.seed!r}")
    w = obj.relevance_weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w < 1.0:
        raise ValueError(f"relevance_weight (CDPruner's theta) must be in [0, 1), got {w!r}; 0 is pure diversity")
    object.__setattr__(obj, "relevance_weight", float(w))


def _describe(obj, layer: int | None) -> str:
    """'divprune K=0 keep=192', 'fastv K=2 R=0.50', 'cdpruner keep=64 theta=0.50' (layer None: no K)."""
    budget = f"keep={obj.keep}" if obj.keep is not None else f"R={obj.drop_ratio:.2f}"
    theta = f" theta={obj.relevance_weight:.2f}" if obj.strategy == "cdpruner" else ""
    k = "" if layer is None else f" K={layer}"
    return f"{obj.strategy}{k} {budget}{theta}"


@dataclass(frozen=True)
class PreSelect:
    """The pre-LLM stage of a two-stage PruneConfig: keep B1 image tokens chosen from their embeddings.

    strategy: 'divprune', 'dart', 'cdpruner' or 'random' (seeded). Budget as `keep` (B1) or
    `drop_ratio` (share of the image tokens removed), never both; with neither, R=0.5.
    relevance_weight is CDPruner's theta in [0, 1) (0: pure diversity); the other strategies ignore it.
    """

    strategy: str
    keep: int | None = None
    drop_ratio: float | None = None
    seed: int = 0
    relevance_weight: float = DEFAULT_RELEVANCE_WEIGHT

    def __post_init__(self):
        allowed = (*PRE_LLM_STRATEGIES, "random")
        if self.strategy not in allowed:
            why = {
                "fastv": "FastV ranks by attention at layer K >= 1; make it the main stage",
                "none": "a stage that keeps everything is no stage; leave pre=None",
            }.get(self.strategy, "unknown strategy")
            raise ValueError(f"a pre-LLM stage takes one of {allowed}, got {self.strategy!r} ({why})")
        _check_budget(self)
        _check_seed_and_weight(self)

    @classmethod
    def parse(cls, text: str) -> PreSelect:
        """Parse 'STRATEGY[:ITEM,ITEM...]', an ITEM being a bare integer (keep) or keep=, r=, seed=, theta=.

        Examples: 'divprune:192', 'divprune:r=0.5', 'cdpruner:144,theta=0.3', 'random:keep=100,seed=3', 'dart'.

        Args:
            text: the specification (what a CLI flag receives).

        Returns:
            The PreSelect it describes.

        Raises:
            ValueError: malformed text or invalid values, naming the expected form.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"pre-stage spec must be a non-empty string like 'divprune:192', got {text!r}")
        strategy, _, spec = text.strip().partition(":")
        kwargs: dict = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip() if eq else "keep"
            value = value if eq else item
            if key not in PRE_PARSE_KEYS or key in kwargs:
                raise ValueError(
                    f"pre-stage spec {text!r}: bad item {item!r}; expected STRATEGY[:N|keep=N|r=R][,seed=S][,theta=T]"
                )
            kwargs[key] = value.strip()
        try:
            converted = {
                "keep": int(kwargs["keep"]) if "keep" in kwargs else None,
                "drop_ratio": float(kwargs["r"]) if "r" in kwargs else None,
                "seed": int(kwargs.get("seed", 0)),
                "relevance_weight": float(kwargs.get("theta", DEFAULT_RELEVANCE_WEIGHT)),
            }
        except ValueError as exc:
            raise ValueError(
                f"pre-stage spec {text!r}: {exc}; keep and seed are integers, r and theta numbers"
            ) from None
        return cls(strategy.strip(), **converted)

    def describe(self) -> str:
        """Short description, e.g. 'divprune keep=192' or 'cdpruner R=0.50 theta=0.50'."""
        return _describe(self, None)


@dataclass(frozen=True)
class PruneConfig:
    """Which image tokens the LLM sees, and where they are chosen.

    - 'fastv' (K >= 1): image tokens are ranked by the attention the last prompt token pays them
      in layer K-1; layers K.. see only the kept ones. Default K=2, R=0.5.
    - 'divprune', 'dart', 'cdpruner': chosen from the projected image embeddings before the LLM
      (layer 0, "-k 0"); dropped tokens never enter the KV cache. Layer >= 1 is refused: for a
      pre-LLM cut followed by FastV, use two stages (`pre=`).
    - 'random': a seeded random keep set, the comparison baseline: before the LLM at layer 0,
      at layer K >= 1 inside it (like FastV, attention-free).
    - 'none': stock llama.cpp path, no pruning; layer and budget are ignored.

    Give the budget as `drop_ratio` (R, share removed) or as `keep` (absolute number of image
    tokens kept), never both; with neither, R=0.5. With several images the budget is shared in
    proportion to each image's token count.

    Two stages: `pre=PreSelect('divprune', keep=192)` (or the string 'divprune:192') selects B1
    tokens before the LLM, then FastV (or random) at layer K keeps B2 of those B1 (`keep` is B2,
    `drop_ratio` removes that share of B1). Only with an in-LLM main stage (K >= 1).
    """

    layer: int | None = None  # K: layers [0, K) see every image token; None: 2, or 0 for pre-LLM strategies
    drop_ratio: float | None = None  # R: share of image tokens removed
    keep: int | None = None  # absolute number of image tokens kept (instead of R)
    strategy: str = "fastv"
    seed: int = 0  # only used by strategy='random'
    pre: PreSelect | str | None = None  # a pre-LLM stage before the in-LLM one (two stages)
    relevance_weight: float = DEFAULT_RELEVANCE_WEIGHT  # CDPruner's theta; other strategies ignore it

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        self._check_layer_value()
        _check_budget(self)
        _check_seed_and_weight(self)
        self._check_pre()

    def _check_layer_value(self) -> None:
        s, k = self.strategy, self.layer
        if k is None:
            k = 0 if s in PRE_LLM_STRATEGIES else DEFAULT_LAYER
            object.__setattr__(self, "layer", k)
        lowest = 1 if s == "fastv" else 0
        if not _is_int(k) or k < lowest:
            hint = "; K=0 (before the LLM) takes strategy random, divprune, dart or cdpruner" if s == "fastv" else ""
            raise ValueError(f"layer K must be an integer >= {lowest} for strategy {s!r}, got {k!r}{hint}")
        if s in PRE_LLM_STRATEGIES and k != 0:
            raise ValueError(
                f"{s} selects before the LLM (layer 0, -k 0), got layer={k}; for FastV at layer {k} after it, "
                f"use two stages: PruneConfig(strategy='fastv', layer={k}, keep=B2, pre=PreSelect('{s}', keep=B1))"
            )

    def _check_pre(self) -> None:
        if self.pre is None:
            return
        if isinstance(self.pre, str):
            object.__setattr__(self, "pre", PreSelect.parse(self.pre))
        if not isinstance(self.pre, PreSelect):
            raise ValueError(f"pre must be a PreSelect or a spec like 'divprune:192', got {self.pre!r}")
        if not self.in_llm:
            raise ValueError(
                f"pre={self.pre.describe()!r} adds a stage before an in-LLM one (fastv or random at layer K >= 1), "
                f"but the main stage is {self.strategy!r} at layer {self.layer}; "
                f"for one pre-LLM selection use PruneConfig(strategy={self.pre.strategy!r}, ...) without pre"
            )
        if self.keep is not None and self.pre.keep is not None and self.keep > self.pre.keep:
            raise ValueError(
                f"the layer-{self.layer} stage keeps keep={self.keep} of the {self.pre.keep} tokens the "
                f"{self.pre.strategy} stage leaves; use keep <= {self.pre.keep}"
            )

    @property
    def enabled(self) -> bool:
        """True unless strategy='none' (some image tokens may be dropped)."""
        return self.strategy != "none"

    @property
    def in_llm(self) -> bool:
        """True when image tokens are cut inside the LLM at layer K >= 1 (the FastV calls: fastv, random)."""
        return self.strategy in IN_LLM_STRATEGIES and self.layer >= 1

    @property
    def pre_llm(self) -> bool:
        """True when image tokens are selected from their embeddings before the LLM (own strategy or `pre`)."""
        return self.pre_stage is not None

    @property
    def pre_stage(self) -> PreSelect | None:
        """The selection made before the LLM as a PreSelect (strategy, budget, seed, theta), or None."""
        if self.pre is not None:
            return self.pre
        if self.strategy in PRE_LLM_STRATEGIES or (self.strategy == "random" and self.layer == 0):
            return PreSelect(self.strategy, self.keep, self.drop_ratio, self.seed, self.relevance_weight)
        return None

    def check_layer(self, n_layer: int) -> None:
        """Raise ValueError unless an in-LLM stage has 1 <= K < n_layer (at least one deep layer).

        Args:
            n_layer: number of transformer layers of the text model.
        """
        if self.in_llm and not 1 <= self.layer < n_layer:
            raise ValueError(
                f"layer K must be in [1, {n_layer - 1}] for a model with {n_layer} layers, got {self.layer}"
            )

    def describe(self) -> str:
        """Short human description, e.g. 'fastv K=2 R=0.50' or 'divprune K=0 keep=192 + fastv K=2 keep=64'."""
        if not self.enabled:
            return "none (stock)"
        if self.pre is not None:
            return f"{_describe(self.pre, 0)} + {_describe(self, self.layer)}"
        return _describe(self, self.layer)


@dataclass(frozen=True)
class RuntimeConfig:
    """llama.cpp context settings (names follow llama-cpp-python's Llama arguments).

    llama.cpp rounds n_ctx up to a multiple of 256 (at least 256): Model.n_ctx is the size the
    context got. load() warns when n_ctx exceeds the model's training context.
    """

    n_ctx: int = 4096
    n_threads: int | None = None  # decode, prefill (batch) and vision-encoder threads; None: default_threads()
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool = False
    n_gpu_layers: int = 0
    verbose: bool = False
    # mtmd's bounds on the tokens of one image (dynamic-resolution projectors resize the image to
    # fit; fixed-resolution ones ignore them, see Model.image_tokens_honoured); None: the projector's own
    image_min_tokens: int | None = None
    image_max_tokens: int | None = None
    embedding_cache: bool = True  # reuse an image's embeddings: per model in memory and on disk (embedding_cache.py)
    embedding_cache_dir: str | None = None  # None: $FASTV_EDGE_EMBEDDING_CACHE, else ~/.cache/fastv-edge/embeddings

    def __post_init__(self):
        for name in ("n_ctx", "n_batch", "n_ubatch"):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= MAX_CONTEXT:
                # llama.cpp keeps them in uint32 and pads n_ctx up to a multiple of 256: larger values wrap
                raise ValueError(f"{name} must be an integer in [1, {MAX_CONTEXT}], got {value!r}")
        if self.n_threads is not None and (not _is_int(self.n_threads) or self.n_threads < 1):
            raise ValueError(f"n_threads must be an integer >= 1 or None, got {self.n_threads!r}")
        if self.n_threads is not None and self.n_threads > max_threads():
            raise ValueError(
                f"n_threads={self.n_threads} is more than {max_threads()} ({THREADS_PER_CORE} per CPU core of this "
                f"machine, at most ggml's {GGML_MAX_THREADS}): ggml's threads spin at barriers, so threads beyond the "
                f"cores only slow it down, and each one costs memory; use at most {default_threads()} (-t)"
            )
        if not _is_int(self.n_gpu_layers):
            raise ValueError(f"n_gpu_layers must be an integer, got {self.n_gpu_layers!r}")
        check_image_tokens(self.image_min_tokens, self.image_max_tokens)
        if not isinstance(self.embedding_cache, bool):
            raise ValueError(f"embedding_cache must be True or False, got {self.embedding_cache!r}")

    @property
    def threads(self) -> int:
        """The thread count llama.cpp and mtmd get: n_threads, or default_threads()."""
        return self.n_threads if self.n_threads is not None else default_threads()


def max_threads() -> int:
    """The largest thread count accepted: THREADS_PER_CORE per CPU core, at most GGML_MAX_THREADS."""
    import os

    return min(THREADS_PER_CORE * (os.cpu_count() or 1), GGML_MAX_THREADS)


MAX_IMAGE_TOKENS = 16384  # above any projector's default (Qwen-VL: 4096); more would exhaust memory in the ViT


def check_image_tokens(min_tokens: int | None, max_tokens: int | None) -> None:
    """Raise ValueError unless each limit is None or an integer in [1, MAX_IMAGE_TOKENS] and min <= max.

    Args:
        min_tokens: image_min_tokens (mtmd upscales smaller images to it).
        max_tokens: image_max_tokens (mtmd downscales larger images to it).
    """
    for name, value in (("image_min_tokens", min_tokens), ("image_max_tokens", max_tokens)):
        if value is not None and (not _is_int(value) or not 1 <= value <= MAX_IMAGE_TOKENS):
            raise ValueError(f"{name} must be an integer in [1, {MAX_IMAGE_TOKENS}] or None, got {value!r}")
    if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
        raise ValueError(f"image_min_tokens={min_tokens} is above image_max_tokens={max_tokens}; give min <= max")


def default_threads() -> int:
    """Physical cores this process may use (ggml's threads spin at barriers, so never more)."""
    import os

    try:  # optional: not a declared dependency
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    physical = physical or max(1, (os.cpu_count() or 2) // 2)
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        available = os.cpu_count() or 1
    return max(1, min(physical, available))


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
        for name in ("temp", "top_p", "min_p", "repeat_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.temp < 0:
            raise ValueError(f"temp must be >= 0, got {self.temp!r}")
        if not _is_int(self.top_k) or not 0 <= self.top_k <= 2**31 - 1:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        for name in ("top_p", "min_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty!r}")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(
                f"seed must be an integer in [0, {MAX_SEED}] (llama.cpp's seeds are 32-bit, and {MAX_SEED + 1} "
                f"means a random seed), got {self.seed!r}"
            )
