"""How well the TTFT planner predicts: predicted against measured time to first token over a grid of budgets.

    python -m fastv_edge.bench.planner_accuracy -m M.gguf --mmproj P.gguf --image a.jpg --image b.jpg \\
        [-t 1] [--points 5] [--reps 1] [--out accuracy.json]

Per image the budgets run geometrically from just above the smallest achievable TTFT (the planner's
refusal names it) to the predicted TTFT of the whole image, so every plan family the planner picks on
the way shows up. Each budget is one whole request (one generated token, no embedding cache: every
request encodes). Printed: the table of plans with predicted, measured and relative error, the
median |error| per image and overall, and the error of each part (encode, prefill); the JSON has it all.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from ..config import PruneConfig, RuntimeConfig
from .budgets import PROMPT, format_rows, run_budgets


def budget_grid(model, image, points: int, cost) -> list[float]:
    """Budgets from 1.05x the smallest achievable TTFT to the predicted TTFT of the whole image."""
    from ..budget import plan_request
    from ..planner import BudgetTooSmallError

    text = f"{model.marker}\n{PROMPT}\n"
    try:
        plan_request(model, [image], text, 1e-9, cost)
    except BudgetTooSmallError as e:
        low = e.minimum_s * 1.05
    full, _ = plan_request(model, [image], text, 1e9, cost)
    high = full.predicted_ms / 1e3
    if points < 2 or high <= low:
        return [round(max(low, high), 3)]
    ratio = (high / low) ** (1 / (points - 1))
    return [round(low * ratio**i, 3) for i in range(points)]


def part_errors(rows) -> dict[str, float | None]:
    """Median relative error of the predicted encode and prefill against the measured ones."""
    out = {}
    for part, measured in (("encode", "encode_ms"), ("prefill", "prefill_ms")):
        errs = [
            (r.plan["parts"][part] - getattr(m, measured)) / getattr(m, measured)
            for r in rows
            if r.plan
            for m in r.runs
            if getattr(m, measured) > 1.0
        ]
        out[part] = statistics.median(errs) if errs else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastv_edge.bench.planner_accuracy", description=__doc__)
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--mmproj", required=True)
    parser.add_argument("--image", action="append", default=[], help="photo (repeatable; default: a synthetic one)")
    parser.add_argument("-t", "--threads", type=int, default=1)
    parser.add_argument("-c", "--ctx-size", type=int, default=4096)
    parser.add_argument("--points", type=int, default=5, help="budgets per image (default 5)")
    parser.add_argument("--reps", type=int, default=1, help="requests per budget (default 1)")
    parser.add_argument("--out", type=Path, help="write the JSON result here")
    args = parser.parse_args(argv)
    from ..cli_args import calibration_announced
    from ..console import StepLines
    from ..images import load_image
    from ..model import load
    from .workload import synthetic_picture

    images = [load_image(p) for p in args.image] or [synthetic_picture(0)]
    runtime = RuntimeConfig(n_ctx=args.ctx_size, n_threads=args.threads, embedding_cache=False)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    rows, grids = [], {}
    load_start = list(os.getloadavg())
    with load(args.model, args.mmproj, runtime=runtime, prune=PruneConfig(strategy="none")) as model:
        cost = calibration_announced(model, StepLines())
        for img in images:
            grid = budget_grid(model, img, args.points, cost)
            grids[Path(img.name).name] = grid
            log(f"{Path(img.name).name}: budgets {grid}")
            rows += run_budgets(model, [img], grid, reps=args.reps, stock=False, log=log)
    errors = [abs(r.error) for r in rows if r.error is not None]
    summary = {
        "median_abs_error": statistics.median(errors) if errors else None,
        "max_abs_error": max(errors) if errors else None,
        "n": len(errors),
        "part_median_error": part_errors(rows),
        "threads": args.threads,
        "loadavg_start": load_start,
        "loadavg_end": list(os.getloadavg()),
        "calibration": cost.meta,
    }
    print(format_rows(rows))
    print(
        f"\nmedian |error| {summary['median_abs_error']:.1%} over {summary['n']} budgets "
        f"(max {summary['max_abs_error']:.1%}); median part errors: "
        + ", ".join(f"{k} {v:+.1%}" for k, v in summary["part_median_error"].items() if v is not None)
        + f"; load average {load_start} -> {summary['loadavg_end']}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"model": args.model, "grids": grids, "summary": summary, "rows": [r.to_dict() for r in rows]}
        args.out.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
