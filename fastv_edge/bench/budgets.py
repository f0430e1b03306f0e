"""TTFT budgets measured: what the planner chose, what it predicted, what the first token really took.

    fastv-edge bench -m M.gguf --mmproj P.gguf --image photo.jpg --ttft-budget 5 --ttft-budget 10 -t 1

Per image: stock (no cap, no pruning) and, for each budget, the plan (or the refusal with the
smallest achievable time), each a whole request through stream_generate with one generated
token, the configurations alternating over the repetitions. The model is loaded without the
embedding cache unless asked, so every request pays its own encode, as a first request does.
`run_budgets` is also what the planner-accuracy study (bench/planner_accuracy.py) calls.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import PruneConfig
from ..planner import BudgetTooSmallError


@dataclass
class Measured:
    """One request: its TTFT and where the time went (ms)."""

    ttft_ms: float
    encode_ms: float
    select_ms: float
    prefill_ms: float
    n_image: int
    n_kept: int
    cached: bool
    ttft_cpu_ms: float = 0.0  # process CPU time of the request (one thread: its work, whatever the neighbours do)
    major_faults: int = 0  # pages read back from disk during it (weights evicted by memory pressure)


@dataclass
class BudgetRow:
    """One (image, configuration) of a budget run."""

    image: str
    size: tuple[int, int]
    budget_s: float | None  # None: stock
    plan: dict | None = None  # planner.Plan as a dict (family, cap, n_image, n_kept, predicted_ms, parts)
    refused_min_s: float | None = None  # the budget was below what the machine can do
    runs: list[Measured] = field(default_factory=list)

    @property
    def measured_ms(self) -> float | None:
        return statistics.median(r.ttft_ms for r in self.runs) if self.runs else None

    @property
    def error(self) -> float | None:
        """(predicted - measured) / measured."""
        if self.plan is None or not self.runs:
            return None
        return (self.plan["predicted_ms"] - self.measured_ms) / self.measured_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "measured_ms": self.measured_ms, "error": self.error}


PROMPT = "Describe this picture in detail. What objects are there, what colours do they have?"


def request(model, image, prompt: str, *, budget_s=None, prune=None, apply_template: bool = False):
    """One whole request with one generated token; with budget_s the plan is in the response.

    Args:
        model: the loaded Model.
        image: a decoded RGBImage.
        prompt: the question (raw prompt after the image unless apply_template).
        budget_s: a TTFT budget (prune then narrows the plan, None: the planner's choice).
        prune: the pruning without a budget (None: stock).
        apply_template: wrap in the model's chat template.

    Returns:
        (Measured, the last GenerationResponse).
    """
    from ..generate import stream_generate

    text = prompt if apply_template else f"{model.marker}\n{prompt}\n"
    c0, f0 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    last = list(
        stream_generate(
            model,
            text,
            [image],
            prune=prune if budget_s is not None else (prune or PruneConfig(strategy="none")),
            max_tokens=1,
            apply_template=apply_template,
            ttft_budget=budget_s,
        )
    )[-1]
    cpu_ms = (time.process_time() - c0) * 1e3  # one generated token: about the TTFT span
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt - f0
    st = last.stats
    cached = any(img.cached for img in st.images)
    m = Measured(last.ttft_ms, st.encode_ms, st.select_ms, st.prefill_ms, st.n_image_tokens, st.n_kept, cached)
    m.ttft_cpu_ms, m.major_faults = cpu_ms, faults
    return m, last


def run_budgets(model, images, budgets, *, reps: int = 1, stock: bool = True, prompt: str = PROMPT, log=None):
    """Stock and one plan per budget on each image, alternating over reps.

    Args:
        model: a loaded Model (with its calibration stored: budget.ensure_calibration).
        images: decoded RGBImage objects.
        budgets: TTFT budgets in seconds.
        reps: timed repetitions of each configuration.
        stock: measure the unpruned, uncapped request too.
        prompt: the question after the image (raw prompt: synthetic models have no chat template).
        log: callable(str) for one line per finished request.

    Returns:
        A list of BudgetRow.
    """
    say = log or (lambda _msg: None)
    rows = []
    for img in images:
        name = Path(img.name).name
        mine = ([BudgetRow(name, (img.nx, img.ny), None)] if stock else []) + [
            BudgetRow(name, (img.nx, img.ny), float(b)) for b in budgets
        ]
        rows += mine
        for rep in range(reps):
            shift = rep % len(mine)
            for row in mine[shift:] + mine[:shift]:
                if row.refused_min_s is not None:
                    continue
                try:
                    m, last = request(model, img, prompt, budget_s=row.budget_s, prune=None)
                except BudgetTooSmallError as e:
                    row.refused_min_s = e.minimum_s
                    say(f"{name} budget {row.budget_s:g} s: refused (needs {e.minimum_s:.2f} s)")
                    continue
                row.runs.append(m)
                if last.plan is not None:
                    row.plan = asdict(last.plan)
                what = "stock" if row.budget_s is None else f"budget {row.budget_s:g} s: {last.plan.describe()}"
                say(f"{name} {what}; measured {m.ttft_ms / 1e3:.2f} s")
    return rows


def format_rows(rows) -> str:
    """The budget table: image, budget, plan, predicted, measured, error."""
    out = [
        "| image | budget | plan | image tokens kept | predicted TTFT | measured TTFT | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = f"{r.image} {r.size[0]}x{r.size[1]}"
        if r.budget_s is None:
            m = r.runs[0] if r.runs else None
            kept = f"{m.n_kept}/{m.n_image}" if m else "-"
            out.append(f"| {size} | stock | no cap, no pruning | {kept} | - | {_s(r.measured_ms)} | - |")
        elif r.refused_min_s is not None:
            out.append(f"| {size} | {r.budget_s:g} s | refused: needs {r.refused_min_s:.2f} s | - | - | - | - |")
        else:
            p = r.plan
            cap = "no cap" if p["cap"] is None else f"cap {p['cap']}"
            what = p["family"] if p["family"] != "none" else "all kept"
            out.append(
                f"| {size} | {r.budget_s:g} s | {cap}, {what} | {p['n_kept']}/{p['n_image']} | "
                f"{_s(p['predicted_ms'])} | {_s(r.measured_ms)} | {r.error:+.0%} |"
            )
    return "\n".join(out)


def _s(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1e3:.2f} s"


def cmd_budgets(args) -> int:
    """`fastv-edge bench --ttft-budget ...`: load, calibrate if needed, run, print, write budgets.json."""
    from ..cli_args import calibration_announced
    from ..config import RuntimeConfig
    from ..console import StepLines
    from ..images import load_image
    from ..model import load
    from .workload import synthetic_picture

    if len(args.model) != 1 or not args.mmproj:
        raise ValueError("--ttft-budget plans image tokens: give one -m MODEL.gguf and its --mmproj")
    runtime = RuntimeConfig(
        n_ctx=args.ctx_size,
        n_threads=args.threads or 1,
        n_batch=args.batch_size,
        n_ubatch=args.ubatch_size,
        flash_attn=args.flash_attn,
        image_min_tokens=args.image_min_tokens,
        image_max_tokens=args.image_max_tokens,
        embedding_cache=False,  # each request pays its encode, as a first request does
    )
    images = [load_image(p) for p in args.image] or [synthetic_picture(0)]
    steps = StepLines(not args.quiet)
    with load(args.model[0], args.mmproj, runtime=runtime, prune=PruneConfig(strategy="none")) as model:
        calibration_announced(model, steps)
        log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
        rows = run_budgets(model, images, args.ttft_budget, reps=args.reps, log=log)
    result = {"rows": [r.to_dict() for r in rows], "threads": runtime.threads, "loadavg": list(os.getloadavg())}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "budgets.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2) if args.json else format_rows(rows))
    if not args.json:
        print(f"\nwrote budgets.json to {out}")
    return 0
