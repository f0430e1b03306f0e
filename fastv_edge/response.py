"""What a request reports: PrefillStats (the prefill) and GenerationResponse (each streamed step).

Plain dataclasses with no llama.cpp import, so code that only reads results (the CLI's output,
tests with a fake backend) does not need the native library.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ImageStats:
    """One image of a prefill.

    grid is the (nx, ny) token grid: mtmd's own for dynamic-resolution (M-RoPE) projectors, where a
    cap reshapes it; (s, s) for a fixed-resolution projector whose n_tokens is s * s (every image
    is resized to one square); None when neither is known (tiles, pseudo images without a grid).
    cached: the rows came from the embedding cache (encode_ms is then the lookup's time).
    """

    name: str
    n_tokens: int  # rows the encoder produced
    grid: tuple[int, int] | None  # (nx, ny) token grid, see above
    n_decoded: int  # rows decoded into the LLM (after any pre-LLM selection)
    encode_ms: float
    cached: bool = False


@dataclass(frozen=True)
class ThreadCounts:
    """The threads a model runs on, as llama.cpp and mtmd were given them."""

    decode: int  # llama_n_threads: one token at a time
    batch: int  # llama_n_threads_batch: the prompt (prefill)
    encoder: int | None  # mtmd's vision encoder; None without an mmproj

    def describe(self) -> str:
        """'threads 1 decode / 1 batch / 1 encoder'."""
        enc = f" / {self.encoder} encoder" if self.encoder is not None else ""
        return f"threads {self.decode} decode / {self.batch} batch{enc}"


@dataclass
class PrefillStats:
    """What one prefill did and how long it took."""

    strategy: str = "none (stock)"  # PruneConfig.describe()
    n_prompt_tokens: int = 0  # text + image tokens before any pruning
    n_image_tokens: int = 0  # N
    n_cells: int = 0  # KV cells the prompt occupies (text + decoded image rows)
    n_kept: int = 0  # image tokens the deep layers see (N when nothing is pruned)
    layer: int = 0  # K of in-LLM pruning (0: none ran)
    encode_ms: float = 0.0  # vision encoder, all images
    select_ms: float = 0.0  # pre-LLM selection and the in-LLM keep choice, outside llama.cpp
    shallow_ms: float = 0.0  # LLM decode of every piece (layers [0, K) when FastV runs, else all)
    deep_ms: float = 0.0  # FastV phase 2: layers [K, L) on the kept tokens
    pruned: bool = False  # in-LLM pruning (llama_fastv_*) ran
    kept: list[int] = field(default_factory=list)  # kept image-token indices into all N, ascending
    n_unranked: int = 0  # image tokens a sliding-window layer K-1 could not see (ranked last)
    images: list[ImageStats] = field(default_factory=list)

    @property
    def prefill_ms(self) -> float:
        """LLM prefill time, both phases (the vision encoder excluded)."""
        return self.shallow_ms + self.deep_ms


@dataclass
class GenerationResponse:
    """One streamed step.

    text: the new text of this step ('' while a UTF-8 character is incomplete).
    token: the token id of this step.
    finish_reason: None while generating; 'stop' (end-of-generation token) or 'length'
        (max_tokens or a full context) on the last response.
    stats: what the prefill of this request did (the same object in every step); the
        properties below read it.
    """

    text: str
    token: int
    stats: PrefillStats
    generation_tokens: int = 0
    ttft_ms: float = 0.0  # request start -> first token sampled (encode + prefill + sampling)
    decode_tps: float = 0.0  # generated tokens per second after the first
    flops_ratio: float = 1.0  # paper eq. 5, this prefill vs. stock (1.0 = no saving)
    finish_reason: str | None = None
    plan: object | None = None  # planner.Plan of a request with a TTFT budget (its prediction), else None

    @property
    def prompt_tokens(self) -> int:
        """Text + image tokens of this prompt before pruning."""
        return self.stats.n_prompt_tokens

    @property
    def n_image_tokens(self) -> int:
        """N."""
        return self.stats.n_image_tokens

    @property
    def n_kept(self) -> int:
        """Image tokens the deep layers see (N when nothing was pruned)."""
        return self.stats.n_kept

    @property
    def n_unranked(self) -> int:
        """Image tokens layer K-1 could not see (sliding window): ranked last."""
        return self.stats.n_unranked

    @property
    def encode_ms(self) -> float:
        return self.stats.encode_ms

    @property
    def prefill_ms(self) -> float:
        return self.stats.prefill_ms

    @property
    def shallow_ms(self) -> float:
        return self.stats.shallow_ms

    @property
    def deep_ms(self) -> float:
        return self.stats.deep_ms

    def summary(self) -> dict:
        """The request's statistics as one flat JSON-ready dict (the CLI's --json)."""
        stats = asdict(self.stats)
        stats.pop("kept")  # indices: too long for a summary; response.stats.kept has them
        stats["prefill_ms"] = self.stats.prefill_ms
        step = {k: v for k, v in asdict(self).items() if k not in ("text", "token", "stats")}
        return {"prompt_tokens": self.prompt_tokens, **step, **stats}
