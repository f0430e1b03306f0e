"""The whole wait, end to end: time to first token of stock defaults against caps, selection, the planner
and a cached image, per photo and thread count.

    python -m fastv_edge.bench.ttft_table -m M.gguf --mmproj P.gguf --image a.jpg --image b.jpg -t 1 -t 2 \\
        [--cap 256] [--keep-share 0.25] [--speedup 4] [--reps 1] [--label NAME] [--out table.json]

Rows per (photo, threads), each a whole request with one generated token through stream_generate:
    stock            no cap, no pruning
    cap only         --image-max-tokens CAP (dynamic-resolution projectors only)
    selection only   DivPrune keeping --keep-share of the image tokens, before the LLM
    cap + selection  both
    planner          --ttft-budget = stock TTFT / --speedup (if refused: 1.05 x the smallest it names)
    cached image     the planner's budget again, on a second request for the same image: its rows come
                     from the embedding cache, so the first token costs (about) the prefill alone
The embedding cache is a fresh folder, emptied before every row but the last. Calibrations (one per
thread count) are reused from the store or measured first. Repetitions: --reps for every row, except
that a stock request over 60 s runs once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import PruneConfig, RuntimeConfig
from ..planner import BudgetTooSmallError
from .budgets import PROMPT, request

SLOW_STOCK_MS = 60_000


@dataclass
class Row:
    label: str
    image: str
    size: tuple[int, int]
    threads: int
    cap: int | None = None
    budget_s: float | None = None
    note: str = ""
    runs: list = field(default_factory=list)  # budgets.Measured
    plan: dict | None = None

    def median(self, key: str) -> float | None:
        return statistics.median(getattr(m, key) for m in self.runs) if self.runs else None


def _clear(model) -> None:
    cache = model.embedding_cache
    cache.clear_memory()
    cache.store.clear()


def _measure(model, row: Row, img, reps: int, *, prune=None, budget=None, clear: bool = True) -> None:
    from ..budget import image_cap

    for _ in range(reps):
        if clear:
            _clear(model)
        with image_cap(model, row.cap):
            m, last = request(model, img, PROMPT, budget_s=budget, prune=prune)
        row.runs.append(m)
        if last.plan is not None:
            row.plan = asdict(last.plan)
        if budget is None and m.ttft_ms > SLOW_STOCK_MS:
            break


def _planner_rows(model, img, base: Row, stock_ms: float, speedup: float, reps: int) -> list[Row]:
    budget = round(stock_ms / 1e3 / speedup, 2)
    planned = Row("planner", base.image, base.size, base.threads, budget_s=budget)
    try:
        _measure(model, planned, img, reps, budget=budget)
    except BudgetTooSmallError as e:
        planned.note = f"stock/{speedup:g} = {budget} s refused (needs {e.minimum_s:.2f} s); at 1.05x that"
        planned.budget_s = round(e.minimum_s * 1.05, 2)
        _measure(model, planned, img, reps, budget=planned.budget_s)
    cached = Row("cached image", base.image, base.size, base.threads, budget_s=budget)
    _clear(model)
    # the first request encodes and stores the rows (no cap); a few of them enter the LLM, which is all it needs
    request(model, img, PROMPT, prune=PruneConfig(strategy="random", layer=0, keep=8))
    try:
        _measure(model, cached, img, reps, budget=budget, clear=False)
    except BudgetTooSmallError as e:
        cached.note = f"refused even cached (needs {e.minimum_s:.2f} s)"
    return [planned, cached]


def table_for(model, img, threads: int, args, log) -> list[Row]:
    """Every row of one photo on one loaded model."""
    base = Row("stock", Path(img.name).name, (img.nx, img.ny), threads)
    stock = Row(**{**base.__dict__, "runs": []})
    _measure(model, stock, img, args.reps)
    n = stock.runs[0].n_image
    rows = [stock]
    log(f"{base.image} t={threads}: stock {stock.median('ttft_ms') / 1e3:.2f} s, {n} image tokens")
    cap_ok = model.image_tokens_honoured
    share = args.keep_share
    if cap_ok:
        rows.append(Row("cap only", base.image, base.size, threads, cap=args.cap))
        _measure(model, rows[-1], img, args.reps)
    rows.append(Row("selection only", base.image, base.size, threads))
    _measure(model, rows[-1], img, args.reps, prune=PruneConfig(strategy="divprune", keep=max(1, int(n * share))))
    if cap_ok:
        rows.append(Row("cap + selection", base.image, base.size, threads, cap=args.cap))
        n_cap = rows[1].runs[0].n_image
        _measure(
            model, rows[-1], img, args.reps, prune=PruneConfig(strategy="divprune", keep=max(1, int(n_cap * share)))
        )
    rows += _planner_rows(model, img, base, stock.median("ttft_ms"), args.speedup, args.reps)
    for r in rows[1:]:
        if r.runs:
            log(f"{base.image} t={threads}: {r.label} {r.median('ttft_ms') / 1e3:.2f} s {r.note}")
    return rows


def format_table(rows: list[Row], label: str) -> str:
    head = ("model", "photo", "threads", "configuration", "image tokens kept", "encode", "prefill", "TTFT")
    tail = ("speed-up", "predicted", "CPU time", "CPU speed-up")
    out = ["| " + " | ".join((*head, *tail)) + " |", "|---" * (len(head) + len(tail)) + "|"]
    stock = {}
    for r in rows:
        if not r.runs:
            out.append(f"| {label} | {r.image} | {r.threads} | {r.label} | {r.note} |" + " |" * 9)
            continue
        m = r.runs[0]
        ttft = r.median("ttft_ms")
        cpu = r.median("ttft_cpu_ms")
        if r.label == "stock":
            stock[(r.image, r.threads)] = (ttft, cpu)
        what = r.label + (f" (cap {r.cap})" if r.cap else "") + (f" @ {r.budget_s:g} s" if r.budget_s else "")
        if r.plan:
            cap = "no cap" if r.plan["cap"] is None else f"cap {r.plan['cap']}"
            what += f": {cap}, {r.plan['family'] if r.plan['family'] != 'none' else 'all kept'}"
        if r.note:
            what += f" ({r.note})"
        pred = f"{r.plan['predicted_ms'] / 1e3:.2f} s" if r.plan else ""
        speed, cpu_speed = stock[(r.image, r.threads)][0] / ttft, stock[(r.image, r.threads)][1] / cpu
        enc = r.median("encode_ms") / 1e3
        out.append(
            f"| {label} | {r.image} {r.size[0]}x{r.size[1]} | {r.threads} | {what} | {m.n_kept}/{m.n_image} | "
            f"{enc:.2f} s{' (cached)' if m.cached else ''} | {r.median('prefill_ms') / 1e3:.2f} s | "
            f"{ttft / 1e3:.2f} s | {speed:.2f}x | {pred} | {cpu / 1e3:.2f} s | {cpu_speed:.2f}x |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastv_edge.bench.ttft_table", description=__doc__)
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--mmproj", required=True)
    parser.add_argument("--image", action="append", default=[], help="photo (repeatable)")
    parser.add_argument("-t", "--threads", type=int, action="append", help="thread counts (default 1)")
    parser.add_argument("-c", "--ctx-size", type=int, default=4096)
    parser.add_argument("--cap", type=int, default=256, help="image-token cap of the cap rows (default 256)")
    parser.add_argument("--keep-share", type=float, default=0.25, help="share DivPrune keeps (default 0.25)")
    parser.add_argument("--speedup", type=float, default=4.0, help="planner budget = stock TTFT / this (default 4)")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--label", help="model name in the table (default: the file name)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from ..cli_args import calibration_announced
    from ..console import StepLines
    from ..images import load_image
    from ..model import load

    if not args.image:
        raise SystemExit("give at least one --image")
    images = [load_image(p) for p in args.image]
    label = args.label or Path(args.model).stem
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    rows, loads = [], {"start": list(os.getloadavg())}
    with tempfile.TemporaryDirectory(prefix="fastv-edge-ttft-") as cache_dir:
        for threads in args.threads or [1]:
            rt = RuntimeConfig(n_ctx=args.ctx_size, n_threads=threads, embedding_cache_dir=cache_dir)
            with load(args.model, args.mmproj, runtime=rt, prune=PruneConfig(strategy="none")) as model:
                calibration_announced(model, StepLines())
                for img in images:
                    rows += table_for(model, img, threads, args, log)
    loads["end"] = list(os.getloadavg())
    print(format_table(rows, label))
    print(f"\nload average {loads['start']} -> {loads['end']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "label": label,
            "model": args.model,
            "loadavg": loads,
            "settings": vars(args) | {"out": str(args.out)},
        }
        payload["rows"] = [asdict(r) | {"ttft_ms": r.median("ttft_ms")} for r in rows]
        args.out.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
