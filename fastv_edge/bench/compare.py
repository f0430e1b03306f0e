"""Selection before the LLM against FastV at the same kept count, from a saved bench result.

    python -m fastv_edge.bench.compare OUT/results.json [--markdown]

One row per model file, kept count and configuration that prunes (pre-LLM strategies at K=0,
FastV at K >= 1, two stages): the paired prefill ratio against stock, the tokens ratio (in
token-layers; before the LLM it is (text + kept) / (text + N)) and their quotient (1.00: the
prefill costs exactly the tokens each layer saw), on wall and process CPU time, the selection
time, the time to first token and its ratio to FastV's TTFT at the same kept count and the first
K measured (< 1: faster).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def compare(result: dict) -> list[dict]:
    """Rows of the comparison (see the module docstring), ordered by file, then kept count.

    TTFT against FastV is paired: per repetition, this configuration's TTFT over FastV's of the
    same repetition (both ran in the same round), then the median; on wall time and on process
    CPU time (with one thread: the work done, nearly immune to a busy machine).

    Args:
        result: a bench result (run_bench's return value or its results.json).

    Returns:
        Dicts with file, config, n_kept, n_image_tokens, prefill_ratio, prefill_cpu_ratio,
        tokens_ratio, quotient, cpu_quotient, select_ms, ttft_ms, fastv_config, ttft_vs_fastv and
        ttft_cpu_vs_fastv (the last three None without FastV at that kept count).
    """
    out = []
    for m in result["models"]:
        rows = [r for r in result["rows"] if r["file"] == m["file"] and r["strategy"] != "none"]
        raw = result.get("raw", {}).get(m["file"], {})
        fastv = {}
        for r in sorted(rows, key=lambda r: r["k"] or 0):
            if r["strategy"] == "fastv" and not r.get("pre"):
                fastv.setdefault(r["n_kept"], r)  # the first K measured
        for r in sorted(rows, key=lambda r: (-r["n_kept"], r["k"] or 0, r["config"])):
            tokens = r["token_layer_ratio"]
            ref = fastv.get(r["n_kept"])
            mine, theirs = raw.get(r["config"], []), raw.get(ref["config"], []) if ref else []
            out.append(
                {
                    "file": r["file"],
                    "config": r["config"],
                    "n_kept": r["n_kept"],
                    "n_image_tokens": r["n_image_tokens"],
                    "prefill_ratio": r["prefill_ratio"],
                    "prefill_cpu_ratio": r["prefill_cpu_ratio"],
                    "tokens_ratio": tokens,
                    "quotient": r["prefill_ratio"] / tokens,
                    "cpu_quotient": r["prefill_cpu_ratio"] / tokens,
                    "select_ms": r.get("select_ms", {}).get("median", 0.0),
                    "ttft_ms": r["ttft_ms"]["median"],
                    "fastv_config": ref["config"] if ref else None,
                    "ttft_vs_fastv": _paired(mine, theirs, "ttft_ms") if ref else None,
                    "ttft_cpu_vs_fastv": _paired(mine, theirs, "ttft_cpu_ms") if ref else None,
                }
            )
    return out


def _paired(mine: list[dict], theirs: list[dict], key: str) -> float | None:
    if not mine or len(mine) != len(theirs):
        return None
    return statistics.median(a[key] / b[key] for a, b in zip(mine, theirs, strict=True))


def format_compare(rows: list[dict], markdown: bool = False) -> str:
    """The comparison as a terminal table or as Markdown (ratios: wall time, CPU time in parentheses)."""
    head = ["file", "config", "kept/N", "prefill ratio", "tokens ratio", "quotient", "select ms", "TTFT s"]
    head += ["TTFT vs FastV"]
    widths = (38, 8, 13, 6, 11, 7, 7, 11)  # the terminal columns after the file
    lines = []
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    else:
        names = ("config", "kept/N", "prefill (cpu)", "tokens", "quot (cpu)", "sel ms", "TTFT s", "vs FastV")
        lines.append(_columns(names, widths))
    for r in rows:
        vs = "-"
        if r["ttft_vs_fastv"] is not None:
            vs = f"{r['ttft_vs_fastv']:.2f} ({r['ttft_cpu_vs_fastv']:.2f})"
        cells = [
            r["file"],
            r["config"],
            f"{r['n_kept']}/{r['n_image_tokens']}",
            f"{r['prefill_ratio']:.3f} ({r['prefill_cpu_ratio']:.3f})",
            f"{r['tokens_ratio']:.3f}",
            f"{r['quotient']:.2f} ({r['cpu_quotient']:.2f})",
            f"{r['select_ms']:.1f}",
            f"{r['ttft_ms'] / 1e3:.1f}",
            vs,
        ]
        if markdown:
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append(_columns(cells[1:], widths))
    return "\n".join(lines)


def _columns(cells, widths) -> str:
    return " ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0].startswith("-"):
        print("usage: python -m fastv_edge.bench.compare OUT/results.json [--markdown]", file=sys.stderr)
        return 2
    rows = compare(json.loads(Path(args[0]).read_text()))
    print(format_compare(rows, markdown="--markdown" in args[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
