"""Measure what FastV saves in LLM prefill on this machine, next to the paper's FLOPs ratio.

A prompt of text + a pseudo image (bench.workload.PseudoWorkload: rows at mtmd's positions and
causal rule for the architecture) + text is prefilled by stock llama.cpp and by FastV at K and
several drop ratios, alternating in one process so that machine noise hits every configuration
alike, all through prefill.prefill (the orchestrator the API uses). Prints a table of medians and
writes JSON. `fastv-edge bench` measures the same and more (TTFT, decode, memory, fidelity).

    python -m fastv_edge.savings --model SmolLM2.gguf --n-image 576 --reps 5 --out savings.json

The vision encoder is not involved: these are LLM-prefill numbers only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import llama_cpp

from .config import PruneConfig, RuntimeConfig
from .flops import flops_ratio
from .model import load


@dataclass
class Row:
    drop_ratio: float
    n_image: int
    n_kept: int
    stock_ms: float
    shallow_ms: float
    deep_ms: float
    ratio: float  # (shallow + deep) / stock, medians of wall time
    cpu_ratio: float  # the same with process CPU time: robust to other load when n_threads=1
    theory: float  # paper eq. 5


def _timed(model, workload, prune: PruneConfig) -> tuple[float, float, float, int]:
    """(phase-1 wall ms, phase-2 wall ms, process CPU ms, n_kept) of one prefill."""
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(model.ctx), True)
    c0 = time.process_time()
    _, stats = workload.prefill(prune)
    llama_cpp.llama_synchronize(model.ctx)
    return stats.shallow_ms, stats.deep_ms, (time.process_time() - c0) * 1e3, stats.n_kept


def measure(
    model_path: str,
    *,
    k: int = 2,
    drop_ratios=(0.5, 0.75, 0.9),
    n_image: int = 576,
    reps: int = 5,
    n_threads: int = 2,
    n_ff: int | None = None,
) -> dict:
    """Median stock and FastV prefill times, alternating configurations each repetition.

    Args:
        model_path: a llama-architecture GGUF.
        k: K, the layers that see every token.
        drop_ratios: the R values to measure.
        n_image: rows of the pseudo image.
        reps: repetitions after one warm-up round.
        n_threads: CPU threads, fixed for every configuration.
        n_ff: FFN size for the FLOPs formula (read from the GGUF when None).

    Returns:
        {"model", "n_layer", "n_embd", "n_ff", "n_tokens", "k", "n_threads", "reps", "rows": [Row...]}
    """
    from .bench.workload import PseudoWorkload

    n_ctx = max(512, n_image + 128)  # the whole prompt in one ubatch, as a non-causal image needs
    runtime = RuntimeConfig(n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=n_threads)
    with load(model_path, runtime=runtime, prune=PruneConfig(strategy="none")) as model:
        info = model.info
        n_ff = n_ff or info.n_ff
        if not n_ff:
            raise ValueError(f"{model_path} has no feed_forward_length key: pass n_ff for the FLOPs formula")
        workload = PseudoWorkload(model, n_image, seed=0)
        configs = {"stock": PruneConfig(strategy="none")}
        configs.update({r: PruneConfig(layer=k, drop_ratio=r) for r in drop_ratios})
        samples = {cfg: [] for cfg in configs}
        for rep in range(reps + 1):  # round 0 warms caches and allocators up
            for cfg, prune in configs.items():
                value = _timed(model, workload, prune)
                if rep > 0:
                    samples[cfg].append(value)
    stock_ms = statistics.median(s[0] + s[1] for s in samples["stock"])
    stock_cpu = statistics.median(s[2] for s in samples["stock"])
    n_tokens = workload.n_prompt_tokens
    rows = []
    for r in drop_ratios:
        shallow = statistics.median(s[0] for s in samples[r])
        deep = statistics.median(s[1] for s in samples[r])
        cpu = statistics.median(s[2] for s in samples[r])
        kept = samples[r][-1][3]
        theory = flops_ratio(n_tokens, n_image, kept, n_layer=info.n_layer, layer=k, n_embd=info.n_embd, n_ff=n_ff)
        ratio = (shallow + deep) / stock_ms
        rows.append(Row(r, n_image, kept, stock_ms, shallow, deep, ratio, cpu / stock_cpu, theory))
    return {
        "model": Path(model_path).name,
        "n_layer": info.n_layer,
        "n_embd": info.n_embd,
        "n_ff": n_ff,
        "n_tokens": n_tokens,
        "k": k,
        "n_threads": n_threads,
        "reps": reps,
        "rows": [asdict(row) for row in rows],
    }


def format_table(result: dict) -> str:
    head = (
        f"{result['model']}: L={result['n_layer']} d={result['n_embd']} m={result['n_ff']} "
        f"n={result['n_tokens']} K={result['k']} threads={result['n_threads']} reps={result['reps']} (medians)"
    )
    cols = (
        f"{'R':>5} {'kept':>9} {'stock ms':>9} {'phase1 ms':>9} {'phase2 ms':>9} {'wall':>6} {'cpu':>6} {'theory':>7}"
    )
    lines = [head, cols]
    for r in result["rows"]:
        lines.append(
            f"{r['drop_ratio']:>5.2f} {r['n_kept']:>4}/{r['n_image']:<4} {r['stock_ms']:>9.1f} "
            f"{r['shallow_ms']:>9.1f} {r['deep_ms']:>9.1f} {r['ratio']:>6.3f} {r['cpu_ratio']:>6.3f} "
            f"{r['theory']:>7.3f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="GGUF path (repeatable)")
    parser.add_argument("-k", type=int, default=2)
    parser.add_argument("--drop-ratio", type=float, action="append", help="R values (default .5 .75 .9)")
    parser.add_argument("--n-image", type=int, default=576)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    results = []
    for model in args.model:
        result = measure(
            model,
            k=args.k,
            drop_ratios=tuple(args.drop_ratio or (0.5, 0.75, 0.9)),
            n_image=args.n_image,
            reps=args.reps,
            n_threads=args.threads,
        )
        print(format_table(result), flush=True)
        results.append(result)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
