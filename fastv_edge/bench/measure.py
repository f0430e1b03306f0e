"""Measure one model file over the grid: warm-up, then repetitions in which stock and every
pruned configuration alternate, all in one process with a fixed thread count.

Per run: image encode, pre-LLM selection time, phase-1 (shallow) and phase-2 (deep) prefill, time to first token
(tokenize + encode + prefill + first argmax), decode tokens/s over a fixed number of tokens
(EOS ignored, teacher-forced on the stock run's greedy tokens so every configuration decodes
the same tokens), peak RSS (system.PeakRSS), KV cells hidden, N and kept.
CPU time (time.process_time over the TTFT span) is recorded too: with one thread it is the
work done, nearly immune to other processes on a shared machine; with more threads it also
counts ggml's spin-waits at barriers, which grow when cores are contended.
Round 0 is the fidelity pass: stock runs first and sets the continuation; it is never timed.
The order of the configurations rotates from one repetition to the next, so a slow phase of
a shared machine does not always hit the same configuration.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from .. import _native
from ..config import PruneConfig, RuntimeConfig
from ..decode import TokenBatch
from ..model import load, read_model_info
from ..pruning import stage_budgets
from .fidelity import Comparison, Reference
from .grid import BenchSettings, GridPoint, ModelSpec, expand_grid
from .system import PeakRSS
from .workload import make_workload

SYNTHETIC_KEY = "fastv_edge.synthetic_weights"  # written by models/make_shapes.py


@dataclass
class RunRecord:
    """One timed run of one configuration."""

    encode_ms: float
    select_ms: float  # choosing the kept rows outside llama.cpp (pre-LLM selection, random's draw)
    shallow_ms: float
    deep_ms: float
    prefill_ms: float
    ttft_ms: float
    ttft_cpu_ms: float  # process CPU time over the TTFT span (all threads; spin-waits included)
    prefill_cpu_ms: float  # ttft_cpu_ms minus the workload's encode CPU time (measured once per model)
    decode_tps: float
    peak_rss_mb: float
    rss_before_mb: float
    n_kept: int
    n_hidden: int
    n_cells: int  # KV cells the prompt occupies: text + the image rows that entered the LLM


@dataclass
class ModelRun:
    """Everything measured on one model file."""

    spec: ModelSpec
    info: dict
    synthetic: bool
    workload: str
    n_prompt_tokens: int
    n_image_tokens: int
    points: list[GridPoint]
    records: dict[str, list[RunRecord]] = field(default_factory=dict)
    fidelity: dict[str, tuple[float, float]] = field(default_factory=dict)  # label -> (agreement, KL)
    notes: list[str] = field(default_factory=list)


def is_synthetic(path: str, name: str) -> bool:
    """True for generated weights: make_shapes' key, or make_tiny's 'tiny-*' names."""
    from ..gguf_header import read_header

    return bool(read_header(path).get(SYNTHETIC_KEY)) or name.startswith("tiny")


class Runner:
    """Runs one configuration on a loaded model: prefill, first token, decode."""

    def __init__(self, model, workload, settings: BenchSettings):
        self.model = model
        self.workload = workload
        self.settings = settings
        self.ctx = model.ctx
        self.n_vocab = model.llm.n_vocab()
        self.batch = TokenBatch(model.llm.n_batch)
        self.rss = PeakRSS()

    def close(self) -> None:
        self.batch.close()

    def logits(self) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))  # (n_vocab,) view, valid until next decode

    def run(
        self, prune: PruneConfig, teacher: list[int] | None, observe: Callable[[np.ndarray], None] | None = None
    ) -> tuple[RunRecord, list[int]]:
        """One request; returns its record and the decoded tokens (greedy unless teacher-forced)."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        self.rss.reset()
        rss_before = self.rss.current_mb()
        t0, c0 = time.perf_counter(), time.process_time()
        n_past, stats = self.workload.prefill(prune)
        logits = self.logits()
        token = int(np.argmax(logits))
        ttft, ttft_cpu = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3
        n_hidden = _native.n_hidden(self.ctx) if _native.HAS_FASTV else 0
        if observe:
            observe(logits)
        tokens, t_decode = [], 0.0
        for i in range(self.settings.n_decode):
            token = teacher[i] if teacher is not None else token
            tokens.append(token)
            t1 = time.perf_counter()
            n_past = self.batch.decode(self.ctx, [token], n_past, logits_last=True)
            logits = self.logits()
            token = int(np.argmax(logits))  # the sampling a real decode loop does
            t_decode += time.perf_counter() - t1
            if observe:
                observe(logits)
        record = RunRecord(
            encode_ms=stats.encode_ms,
            select_ms=stats.select_ms,
            shallow_ms=stats.shallow_ms,
            deep_ms=stats.deep_ms,
            prefill_ms=stats.prefill_ms,
            ttft_ms=ttft,
            ttft_cpu_ms=ttft_cpu,
            prefill_cpu_ms=max(ttft_cpu - self.workload.encode_cpu_ms, 0.0),
            decode_tps=len(tokens) / t_decode,
            peak_rss_mb=self.rss.peak_mb(),
            rss_before_mb=rss_before,
            n_kept=stats.n_kept,
            n_hidden=n_hidden,
            n_cells=stats.n_cells,
        )
        return record, tokens


def _shape_notes(path: str) -> list[str]:
    # models/make_shapes.py leaves a shape.json saying how its mmproj differs from the real model's
    manifest = Path(path).with_name("shape.json")
    if not manifest.is_file():
        return []
    shape = json.loads(manifest.read_text())
    return [
        f"shape of {shape['source']}",
        f"vision: {shape['vision_note']}",
        f"tokenizer: {shape['tokenizer']}",
        *shape.get("notes", []),
    ]


def _usable(points: list[GridPoint], n_image: int, notes: list[str]) -> list[GridPoint]:
    kept = []
    for p in points:
        try:
            stage_budgets(p.prune(0), n_image)  # a keep above N, or above what a first stage leaves
        except ValueError as e:
            notes.append(f"skipped {p.label}: {e}")
            continue
        kept.append(p)
    return kept


def _fidelity_pass(runner: Runner, points: list[GridPoint], fidelity: bool, seed: int, run: ModelRun) -> list[int]:
    """Untimed round 0: stock sets the continuation, the others are compared to it (or, without
    fidelity, only warm up with stock)."""
    reference = Reference()
    _, teacher = runner.run(PruneConfig(strategy="none"), None, reference.add if fidelity else None)
    reference.tokens = teacher
    if not fidelity:
        return teacher  # the stock run alone warms up the model and sets the continuation
    for p in points:
        if p.is_stock:
            continue
        cmp = Comparison(reference)
        runner.run(p.prune(seed), teacher, cmp.add)
        run.fidelity[p.label] = (cmp.agreement, cmp.mean_kl)
    run.fidelity["stock"] = (1.0, 0.0)
    return teacher


def bench_model(
    spec: ModelSpec,
    settings: BenchSettings,
    tick: Callable[[int], None] = lambda n: None,
    grow: Callable[[int], None] = lambda n: None,
) -> ModelRun:
    """Measure every grid point on one model file.

    Args:
        spec: the model file, its mmproj (or pseudo image) and image count.
        settings: grid and measurement settings.
        tick: called with the number of finished runs (progress bar update).
        grow: called once with the number of runs this model will do (progress bar total).

    Returns:
        The raw records, fidelity and notes of this model.
    """
    info = read_model_info(spec.path)
    runtime = RuntimeConfig(
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_ubatch,
        flash_attn=settings.flash_attn,
        image_min_tokens=settings.image_min_tokens,
        image_max_tokens=settings.image_max_tokens,
        embedding_cache=False,  # every configuration pays its own encode, as a first request would
    )
    with load(spec.path, spec.mmproj, runtime=runtime, prune=PruneConfig(strategy="none")) as model:
        workload = make_workload(model, spec, settings.seed)
        run = ModelRun(
            spec,
            asdict(info),
            is_synthetic(spec.path, info.name),
            workload.kind,
            workload.n_prompt_tokens,
            workload.n_image_tokens,
            [],
        )
        run.points = _usable(expand_grid(settings, info.n_layer, run.notes), workload.n_image_tokens, run.notes)
        if run.synthetic:
            run.notes.append("synthetic weights: speed is representative, fidelity is not reported")
            run.notes += _shape_notes(spec.path)
        run.records = {p.label: [] for p in run.points}
        # fidelity of random weights means nothing: skip its pass unless asked (harness tests)
        fidelity = settings.fidelity and (not run.synthetic or settings.fidelity_on_synthetic)
        n_round0 = len(run.points) if fidelity else 1
        grow(n_round0 + len(run.points) * (settings.warmup + settings.reps - 1))
        runner = Runner(model, workload, settings)
        try:
            teacher = _fidelity_pass(runner, run.points, fidelity, settings.seed, run)
            tick(n_round0)
            for rnd in range(1, settings.warmup + settings.reps):
                shift = rnd % len(run.points)
                for p in run.points[shift:] + run.points[:shift]:
                    record, _ = runner.run(p.prune(settings.seed), teacher)
                    if rnd >= settings.warmup:
                        run.records[p.label].append(record)
                    tick(1)
        finally:
            runner.close()
    run.notes.append(f"peak RSS method: {runner.rss.method}")
    return run
