"""`fastv-edge bench`: what FastV buys and costs on this machine, across budgets and quantizations.

    from fastv_edge.bench import BenchSettings, ModelSpec, run_bench
    result = run_bench([ModelSpec("q4_k_m.gguf", "mmproj.gguf"), ModelSpec("q8_0.gguf", "mmproj.gguf")],
                       BenchSettings(drop_ratios=(0.5, 0.75, 0.9), reps=3), out_dir="bench-out")

Modules: grid (settings, grid points), workload (the prompt), measure (the timed loop),
fidelity (agreement and KL), report (rows, table/JSON/CSV), plots (PNG),
system (machine and peak RSS), quick (the tiny grid the tests run), cli (the subcommand).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .grid import BenchSettings, GridPoint, ModelSpec

__all__ = ["run_bench", "BenchSettings", "ModelSpec", "GridPoint"]


def _model_meta(run) -> dict:
    info = run.info
    return {
        "file": Path(run.spec.path).name,
        "path": run.spec.path,
        "mmproj": run.spec.mmproj,
        "name": info["name"],
        "architecture": info["architecture"],
        "quantization": info["quantization"],
        "n_layer": info["n_layer"],
        "n_embd": info["n_embd"],
        "n_ff": info["n_ff"],
        "size_mib": round(info["size_bytes"] / 2**20, 1),
        "synthetic_weights": run.synthetic,
        "workload": run.workload,
        "n_images": (len(run.spec.images) or run.spec.n_images) if run.workload == "mtmd" else 1,
        "images": list(run.spec.images),
        "custom_prompt": run.spec.prompt is not None,
        "n_prompt_tokens": run.n_prompt_tokens,
        "n_image_tokens": run.n_image_tokens,
        "notes": run.notes,
    }


def run_bench(
    models,
    settings: BenchSettings | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    plots: bool = True,
    notes: list[str] | None = None,
    command: list[str] | None = None,
) -> dict:
    """Benchmark stock vs. pruned prefill on each model file.

    Args:
        models: ModelSpec objects or GGUF paths (a path alone uses a pseudo image).
        settings: the grid and measurement settings (default BenchSettings()).
        out_dir: where results.json, results.csv, table.txt and the PNGs go (None: nowhere).
        progress: a tqdm progress bar on stderr.
        plots: write PNG plots (needs matplotlib).
        notes: extra notes for the result's meta.
        command: the command line, recorded for reproduction.

    Returns:
        {"meta", "models", "rows", "raw", "files"}: JSON-serialisable.
    """
    from tqdm import tqdm

    from .measure import bench_model
    from .report import summarize, write_outputs
    from .system import machine_info

    settings = settings or BenchSettings()
    specs = [m if isinstance(m, ModelSpec) else ModelSpec(os.fspath(m)) for m in models]
    if not specs:
        raise ValueError("no model files to benchmark; pass at least one -m MODEL.gguf")
    machine = machine_info()
    t0 = time.perf_counter()
    bar = tqdm(total=0, file=sys.stderr, disable=not progress, unit="run", desc="bench")

    def grow(n: int) -> None:
        bar.total += n
        bar.refresh()

    try:
        runs = [bench_model(spec, settings, tick=bar.update, grow=grow) for spec in specs]
    finally:
        bar.close()
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = [row for run in runs for row in summarize(run, settings.fidelity_on_synthetic)]
    result = {
        "meta": {
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
            "machine": machine,
            "seconds": round(time.perf_counter() - t0, 1),
            "command": command,
            "notes": list(notes or [])
            + [
                "ratios are paired: per repetition, configuration / stock of the same repetition; median over reps",
                "decode: n_decode tokens teacher-forced on the stock run's greedy tokens, EOS ignored",
                "fidelity: argmax agreement and mean KL(stock || pruned) over n_decode + 1 next-token distributions",
            ],
        },
        "models": [_model_meta(run) for run in runs],
        "rows": rows,
        "raw": {Path(run.spec.path).name: {k: [vars(r) for r in v] for k, v in run.records.items()} for run in runs},
        "files": {},
    }
    if out_dir is not None:
        out = Path(out_dir)
        files = {k: str(v) for k, v in write_outputs(result, out).items()}
        if plots:
            from .plots import write_plots

            files["plots"] = [str(p) for p in write_plots(result, out)]
        result["files"] = files
        (out / "results.json").write_text(json.dumps(result, indent=2))  # again, now with the file list
    return result
