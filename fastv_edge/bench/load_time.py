"""How long loading a model takes: fastv_edge.load() against llama_cpp.Llama alone, and `info`.

    python -m fastv_edge.bench.load_time MODEL.gguf [--mmproj MMPROJ.gguf] [--runs 5]

One fresh process per measurement (nothing cached in the interpreter; the file itself sits in
the page cache after the first run), the three kinds alternating within each round so a busy
spell of a shared machine hits all of them; medians over the rounds. `Llama` and `load()` are
timed inside their process, after the imports; `info` as the whole command, wall clock.
The parent uses the standard library only, so it can time another checkout's fastv_edge
(PYTHONPATH=that/checkout python path/to/load_time.py ...).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

LLAMA = """
import sys, time, llama_cpp
t = time.perf_counter()
llama_cpp.Llama(model_path=sys.argv[1], n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False)
print(time.perf_counter() - t)
"""
LOAD = """
import sys, time, fastv_edge
t = time.perf_counter()
fastv_edge.load(sys.argv[1], sys.argv[2] or None, runtime=fastv_edge.RuntimeConfig(n_ctx=512, n_threads=1),
                prune=fastv_edge.PruneConfig(strategy="none"))
print(time.perf_counter() - t)
"""


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(seconds the child printed or nan, wall seconds of the whole process)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    try:
        return float(lines[-1]), wall
    except (IndexError, ValueError):
        return float("nan"), wall


def measure(model: str, mmproj: str | None, runs: int) -> dict:
    """Medians over `runs` rounds of: Llama() alone, load() (text only, and with the mmproj), info.

    Returns:
        {"llama_s", "load_s", "load_mmproj_s", "load_process_s", "info_s", "ratio"}.
    """
    py = sys.executable
    samples: dict[str, list[float]] = {"llama_s": [], "load_s": [], "load_mmproj_s": [], "load_process_s": []}
    samples["info_s"] = []
    info = [py, "-m", "fastv_edge", "info", "-m", model, *(["--mmproj", mmproj] if mmproj else [])]
    for _ in range(runs):
        samples["llama_s"].append(_timed([py, "-c", LLAMA, model])[0])
        inner, wall = _timed([py, "-c", LOAD, model, ""])
        samples["load_s"].append(inner)
        samples["load_process_s"].append(wall)
        if mmproj:
            samples["load_mmproj_s"].append(_timed([py, "-c", LOAD, model, mmproj])[0])
        samples["info_s"].append(_timed(info)[1])
    result = {k: round(statistics.median(v), 4) if v else None for k, v in samples.items()}
    result["ratio"] = round(result["load_s"] / result["llama_s"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastv_edge.bench.load_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--mmproj")
    parser.add_argument("--runs", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.runs < 1:
        raise SystemExit("--runs must be >= 1")
    result = measure(args.model, args.mmproj, args.runs)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>15}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
