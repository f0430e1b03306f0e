"""A fake backend for the CLI, in the spirit of simonw/llm's MockModel: canned answers, the
real GenerationResponse / PrefillStats objects (fastv_edge.response needs no llama.cpp), and a
record of every call,
so parsing, output, exit codes and the chat loop are tested in-process without llama.cpp.

Only pure-Python logic is tested with it; everything native runs real GGUFs elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from fastv_edge.config import PruneConfig, RuntimeConfig
from fastv_edge.flops import flops_ratio
from fastv_edge.planner import Plan
from fastv_edge.pruning import stage_budgets
from fastv_edge.response import GenerationResponse, PrefillStats, ThreadCounts


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

    @property
    def threads(self) -> ThreadCounts:
        n = self.runtime.n_threads or 4
        return ThreadCounts(n, n, n)

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
        self.generate_prunes: list = []  # the prune each stream_generate got (None: a budget's free choice)
        self.ttft_ms = 15.0  # every response's time to first token

    def load(self, model, mmproj=None, *, runtime, prune, template=None):
        self.calls.append(("load", dict(model=model, mmproj=mmproj, runtime=runtime, prune=prune, template=template)))
        if self.fail_load is not None:
            raise self.fail_load
        self.models.append(FakeModel(str(model), prune, runtime))
        return self.models[-1]

    def stream_generate(self, model, prompt, images=(), *, prune=None, max_tokens=256, **kwargs):
        self.calls.append(("generate", dict(prompt=prompt, images=list(images), max_tokens=max_tokens, **kwargs)))
        self.generate_prunes.append(prune)
        budget = kwargs.get("ttft_budget")
        plan = None
        if budget is not None:  # a plan keeping every token, predicted at 90% of the budget
            n = self.image_tokens * len(images)
            plan = Plan("none", None, n, n, n, 0, predicted_ms=900.0 * budget, budget_ms=1000.0 * budget)
        for r in self.respond(prune or model.prune, len(images), max_tokens, prompt_tokens=20):
            yield replace(r, plan=plan)

    def respond(self, prune: PruneConfig, n_images: int, max_tokens: int, prompt_tokens: int):
        """The canned answer with statistics consistent with prune and the number of images
        (budgets from the real stage_budgets, so a bad budget raises its real ValueError)."""
        n = self.image_tokens * n_images
        b1, n_kept = stage_budgets(prune, n)
        in_llm = prune.in_llm and n > 0
        layer = prune.layer if in_llm else 0
        ratio = 1.0
        if n_kept < n:
            ratio = flops_ratio(
                prompt_tokens + n, n, n_kept, n_layer=4, layer=layer, n_embd=64, n_ff=128, n_entered=prompt_tokens + b1
            )
        stats = PrefillStats(
            strategy=prune.describe() if n else "none (no image)",
            n_prompt_tokens=prompt_tokens + n,
            n_image_tokens=n,
            n_cells=prompt_tokens + b1,
            n_kept=n_kept,
            layer=layer,
            encode_ms=3.0 * n_images,
            select_ms=1.5 if prune.pre_llm and n else 0.0,
            shallow_ms=4.0,
            deep_ms=6.0 if in_llm else 0.0,
            pruned=in_llm,
        )
        step = dict(stats=stats, ttft_ms=self.ttft_ms, decode_tps=50.0, flops_ratio=ratio)
        pieces = self.pieces[:max_tokens]
        for i, text in enumerate(pieces):
            last = i == len(pieces) - 1
            reason = ("length" if len(pieces) == max_tokens else "stop") if last else None
            yield GenerationResponse(text=text, token=100 + i, generation_tokens=i + 1, finish_reason=reason, **step)

    def calibration(self, model, progress):
        self.calls.append(("calibration", dict(model=model.path)))
        return None

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
