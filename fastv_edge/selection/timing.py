"""Selection time of the pre-LLM strategies on LLaVA / Qwen2-VL / Gemma-3 sized inputs.

    python -m fastv_edge.selection.timing [--threads 1] [--repeats 5] [--out timing.json] [--quick]

Random float32 embeddings (N, d) and 32 text-feature rows; each repeat runs every strategy
once, alternating, and the table shows the median and the minimum (ms). NumPy's BLAS gets
`--threads` threads (the script restarts itself with OPENBLAS_NUM_THREADS/OMP_NUM_THREADS
set, since the BLAS reads them only when it loads).

Measured on the development machine (AMD EPYC, NumPy 2.4 with OpenBLAS, float64 maths, 1 BLAS
thread, 7 repeats; the 2 cores were shared with other jobs, load ~8, so the minimum is the better
estimate of the uncontended cost), ms as median (min):

        N     d  keep       divprune           dart       cdpruner         random
      576  2048   144    52.1 ( 44.7)   11.8 (  3.7)   65.3 ( 55.0)    1.0 (  0.8)
      576  2048    64    44.5 ( 37.3)   12.1 (  3.5)   60.4 ( 58.3)    0.8 (  0.8)
      576  4096   144    95.8 ( 87.9)   35.8 ( 23.4)  126.3 (123.5)    2.7 (  2.7)
      576  4096    64   102.5 ( 67.9)   37.9 ( 23.1)  133.4 (125.2)    6.6 (  2.8)
     1024  4096   144   321.9 (305.3)   87.1 ( 66.8)  384.0 (355.2)   12.3 (  8.2)
     1024  4096    64   306.8 (276.1)   76.4 ( 70.1)  376.9 (332.1)   12.3 (  9.1)

The N x N cosine matrix (one float64 matmul, O(N^2 d)) is most of divprune and cdpruner; their
greedy loops add O(N k) and O(N k^2) (cdpruner's 144 steps at N=576: ~3 ms). dart needs only
N x P similarities and random only N. A float32 Gram matrix would be 2-5x faster but its ~1e-7
rounding would then decide near-ties and the DPP's vanishing-gain test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

SHAPES = ((576, 2048), (576, 4096), (1024, 4096))  # LLaVA-1.5 image at 2B/7B widths; a larger image
BUDGETS = (144, 64)
QUICK = dict(shapes=((64, 32),), budgets=(16,))  # --quick: checks that the script runs, in a second
STRATEGIES = ("divprune", "dart", "cdpruner", "random")
N_TEXT = 32
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def measure(shapes=SHAPES, budgets=BUDGETS, repeats: int = 5, seed: int = 0) -> list[dict]:
    """Time every strategy on every shape and budget.

    Args:
        shapes: (N, d) pairs.
        budgets: kept counts (each <= N).
        repeats: runs per configuration; strategies alternate within a repeat.
        seed: seed of the synthetic embeddings.

    Returns:
        One dict per (N, d, keep, strategy): times_ms (list), median_ms, min_ms, n_kept.
    """
    from . import select

    rng = np.random.default_rng(seed)
    rows = []
    for n, d in shapes:
        embd = rng.standard_normal((n, d)).astype(np.float32)  # (N, d)
        text = rng.standard_normal((N_TEXT, d)).astype(np.float32)  # (T, d)
        for keep in budgets:
            times: dict[str, list[float]] = {s: [] for s in STRATEGIES}
            kept = {}
            for _ in range(repeats):
                for strategy in STRATEGIES:
                    t0 = time.perf_counter()
                    kept[strategy] = select(strategy, embd, keep, text_embd=text)
                    times[strategy].append((time.perf_counter() - t0) * 1e3)
            for strategy in STRATEGIES:
                ts = times[strategy]
                rows.append(
                    dict(n=n, d=d, keep=keep, strategy=strategy, times_ms=ts, median_ms=statistics.median(ts),
                         min_ms=min(ts), n_kept=int(kept[strategy].size))
                )  # fmt: skip
    return rows


def format_table(rows: list[dict]) -> str:
    """One line per (N, d, keep): the median (min) ms of each strategy."""
    lines = ["    N     d  keep  " + "  ".join(f"{s:>16}" for s in STRATEGIES)]
    configs = sorted({(r["n"], r["d"], r["keep"]) for r in rows}, key=lambda c: (c[0], c[1], -c[2]))
    for n, d, keep in configs:
        cells = {r["strategy"]: r for r in rows if (r["n"], r["d"], r["keep"]) == (n, d, keep)}
        text = "  ".join(f"{cells[s]['median_ms']:8.1f} ({cells[s]['min_ms']:5.1f})" for s in STRATEGIES)
        lines.append(f"{n:5d} {d:5d} {keep:5d}  {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the timing table (median (min) ms) and optionally write the raw times as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m fastv_edge.selection.timing", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per configuration (default 5)")
    parser.add_argument("--out", help="write the raw times as JSON to this file")
    parser.add_argument("--quick", action="store_true", help="one tiny shape, to check the script runs")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be >= 1")
    wanted = str(args.threads)
    if any(os.environ.get(v) != wanted for v in THREAD_VARS):
        env = {**os.environ, **{v: wanted for v in THREAD_VARS}}
        os.execve(sys.executable, [sys.executable, "-m", "fastv_edge.selection.timing", *argv], env)
    rows = measure(repeats=args.repeats, **(QUICK if args.quick else {}))
    print(f"selection time, ms: median (min) of {args.repeats}, {args.threads} BLAS thread(s), float32 input")
    print(format_table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": args.threads, "numpy": np.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
