"""Selection before the LLM against FastV at the same kept count, from a saved bench result.

    python -m fastv_edge.bench.compare OUT/results.json [--markdown]

One row per model file, kept count and configuration that prunes (pre-LLM strategies at K=0,
FastV at K >= 1, two stages): the paired prefill ratio against stock, the tokens ratio (in
token-layers; before the LLM it is (text + kept) / (text + N)) and their quotient (1.00: the
prefill costs exactly the tokens each layer saw), the selection time, the time to first token
and its ratio to FastV's TTFT at the same kept count and the first K measured (< 1: faster).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def compare(result: dict) -> list[dict]:
    """Rows of the comparison (see the module docstring), ordered by file, then kept count.

    Args:
        result: a bench result (run_bench's return value or its results.json).

    Returns:
        Dicts with file, config, n_kept, n_image_tokens, prefill_ratio, tokens_ratio, ratio_quotient,
        select_ms, ttft_ms, fastv_config and ttft_vs_fastv (None without FastV at that count).
    """
    out = []
    for m in result["models"]:
        rows = [r for r in result["rows"] if r["file"] == m["file"] and r["strategy"] != "none"]
        fastv = {}
        for r in sorted(rows, key=lambda r: r["k"] or 0):
            if r["strategy"] == "fastv" and not r.get("pre"):
                fastv.setdefault(r["n_kept"], r)  # the first K measured
        for r in sorted(rows, key=lambda r: (-r["n_kept"], r["k"] or 0, r["config"])):
            tokens = r["token_layer_ratio"]
            ref = fastv.get(r["n_kept"])
            ttft = r["ttft_ms"]["median"]
            out.append(
                {
                    "file": r["file"],
                    "config": r["config"],
                    "n_kept": r["n_kept"],
                    "n_image_tokens": r["n_image_tokens"],
                    "prefill_ratio": r["prefill_ratio"],
                    "tokens_ratio": tokens,
                    "ratio_quotient": r["prefill_ratio"] / tokens,
                    "select_ms": r.get("select_ms", {}).get("median", 0.0),
                    "ttft_ms": ttft,
                    "fastv_config": ref["config"] if ref else None,
                    "ttft_vs_fastv": ttft / ref["ttft_ms"]["median"] if ref else None,
                }
            )
    return out


def format_compare(rows: list[dict], markdown: bool = False) -> str:
    """The comparison as a terminal table or as Markdown."""
    head = ["file", "config", "kept/N", "prefill ratio", "tokens ratio", "quotient", "select ms", "TTFT s", "vs FastV"]
    widths = (40, 8, 7, 6, 5, 7, 7, 8)  # the terminal columns after the file
    lines = []
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    else:
        names = ("config", "kept/N", "prefill", "tokens", "quot", "sel ms", "TTFT s", "vs FastV")
        lines.append(_columns(names, widths))
    for r in rows:
        vs = "-" if r["ttft_vs_fastv"] is None else f"{r['ttft_vs_fastv']:.2f}"
        cells = [
            r["file"],
            r["config"],
            f"{r['n_kept']}/{r['n_image_tokens']}",
            f"{r['prefill_ratio']:.3f}",
            f"{r['tokens_ratio']:.3f}",
            f"{r['ratio_quotient']:.2f}",
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
