"""A fake backend for the CLI, in the spirit of simonw/llm's MockModel: canned answers, the
real GenerationResponse / PrefillStats objects (fastv_edge.response needs no llama.cpp), and a
record of every call,
so parsing, output, exit codes and the chat loop are tested in-process without llama.cpp.

Only pure-Python logic is tested with it; everything native runs real GGUFs elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastv_edge.config import PruneConfig, RuntimeConfig
from fastv_edge.flops import flops_ratio
from fastv_edge.response import GenerationResponse, PrefillStats


@dataclass
class FakeInfo:
    n_layer: int = 4
    n_embd: int = 64


@dataclass
class FakeModel:
    """What the commands use of a Model: prune, n_ctx (rounded up to 256 like llama.cpp), info."""

    path: str
    prune: PruneConfig
    runtime: RuntimeConfig
    info: FakeInfo = field(default_factory=FakeInfo)
    closed: bool = False

    @property
    def n_ctx(self) -> int:
        return -(-self.runtime.n_ctx // 256) * 256

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FakeBackend:
    """load / stream_generate / chat_session with canned pieces; records calls in .calls.

    Args:
        pieces: the answer, streamed piece by piece ('' pieces stand for incomplete UTF-8).
        image_tokens: N per image.
        fail_load: raise this from load() instead of loading.
    """

    def __init__(self, pieces=("Two", " cats", "", " é", "."), image_tokens: int = 64, fail_load=None):
        self.pieces = list(pieces)
        self.image_tokens = image_tokens
        self.fail_load = fail_load
        self.calls: list[tuple[str, dict]] = []
        self.models: list[FakeModel] = []
        self.sessions: list[FakeSession] = []

    def load(self, model, mmproj=None, *, runtime, prune, template=None):
        self.calls.append(("load", dict(model=model, mmproj=mmproj, runtime=runtime, prune=prune, template=template)))
        if self.fail_load is not None:
            raise self.fail_load
        self.models.append(FakeModel(str(model), prune, runtime))
        return self.models[-1]

    def stream_generate(self, model, prompt, images=(), *, prune=None, max_tokens=256, **kwargs):
        self.calls.append(("generate", dict(prompt=prompt, images=list(images), max_tokens=max_tokens, **kwargs)))
        yield from self.respond(prune or model.prune, len(images), max_tokens, prompt_tokens=20)

    def respond(self, prune: PruneConfig, n_images: int, max_tokens: int, prompt_tokens: int):
        """The canned answer with statistics consistent with prune and the number of images."""
        n = self.image_tokens * n_images
        n_kept = n
        if prune.enabled and n:
            n_kept = prune.keep if prune.keep is not None else int(n * (1 - prune.drop_ratio))
        ratio = flops_ratio(prompt_tokens + n, n, n_kept, n_layer=4, layer=prune.layer, n_embd=64, n_ff=128)
        stats = PrefillStats(
            strategy=prune.describe(),
            n_prompt_tokens=prompt_tokens + n,
            n_image_tokens=n,
            n_cells=prompt_tokens + n,
            n_kept=n_kept,
            layer=prune.layer if prune.enabled else 0,
            encode_ms=3.0 * n_images,
            shallow_ms=4.0,
            deep_ms=6.0 if prune.enabled else 0.0,
            pruned=prune.enabled and n > 0,
        )
        step = dict(stats=stats, ttft_ms=15.0, decode_tps=50.0, flops_ratio=ratio if prune.enabled else 1.0)
        pieces = self.pieces[:max_tokens]
        for i, text in enumerate(pieces):
            last = i == len(pieces) - 1
            reason = ("length" if len(pieces) == max_tokens else "stop") if last else None
            yield GenerationResponse(text=text, token=100 + i, generation_tokens=i + 1, finish_reason=reason, **step)

    def chat_session(self, model, **kwargs):
        self.calls.append(("chat_session", kwargs))
        self.sessions.append(
            FakeSession(self, model, kwargs.get("prune") or model.prune, kwargs.get("max_tokens", 256))
        )
        return self.sessions[-1]


class FakeSession:
    """ChatSession's surface: send, reset, n_used, model, prune."""

    def __init__(self, backend: FakeBackend, model: FakeModel, prune: PruneConfig, max_tokens: int):
        self.backend, self.model, self.prune, self.max_tokens = backend, model, prune, max_tokens
        self.n_used = 0
        self.sent: list[tuple[str, int]] = []

    def reset(self) -> None:
        self.n_used = 0
        self.sent.clear()

    def send(self, text, images=(), *, max_tokens=None):
        self.sent.append((text, len(images)))
        for r in self.backend.respond(self.prune, len(images), max_tokens or self.max_tokens, prompt_tokens=10):
            self.n_used = r.prompt_tokens + r.generation_tokens  # per turn; enough for the context line
            yield r
