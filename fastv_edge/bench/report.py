"""Turn raw runs into rows (median, min, max; paired ratios), write table/JSON/CSV.

Ratios are PAIRED: within each repetition a configuration is divided by the stock run of the
same repetition, then the median over repetitions is taken. Stock and FastV alternate within
a repetition, so a slow spell of a shared machine cancels out of the ratio.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from ..flops import flops_ratio
from .grid import STOCK

if TYPE_CHECKING:  # measure imports llama_cpp; the report itself needs no native library
    from .measure import ModelRun

METRICS = (
    "encode_ms",
    "select_ms",
    "shallow_ms",
    "deep_ms",
    "prefill_ms",
    "ttft_ms",
    "ttft_cpu_ms",
    "prefill_cpu_ms",
    "decode_tps",
    "peak_rss_mb",
)
SYNTHETIC_NOTE = "not reported: synthetic weights (speed does not depend on the values, fidelity does)"


def token_layer_ratio(
    n: int, n_image: int, n_kept: int, n_layer: int, k: int | None, n_entered: int | None = None
) -> float:
    """Pruned/stock in token-layers: [K n_1 + (L-K) n_hat] / (L n); 1.0 for stock (k None).

    n_1 = n_entered, the tokens that entered the LLM (text + B1 after a pre-LLM selection; n
    without one). K = 0 (selection before the LLM only) gives the tokens ratio n_hat / n =
    (text + kept) / (text + N). What a prefill should cost if a layer's time is linear in its
    tokens: without flash attention FastV's deep layers attend over all KV cells (pruned ones
    masked), so attention does not shrink quadratically as eq. 5 assumes.
    """
    if k is None:
        return 1.0
    n_1 = n if n_entered is None else n_entered
    n_hat = n - n_image + n_kept
    return (k * n_1 + (n_layer - k) * n_hat) / (n_layer * n)


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _paired(recs, stock, fn) -> float:
    return statistics.median(fn(r, s) for r, s in zip(recs, stock, strict=True))


def summarize(run: ModelRun, fidelity_on_synthetic: bool = False) -> list[dict]:
    """One row per grid point of a model run.

    Args:
        run: the raw measurements of one model file.
        fidelity_on_synthetic: report fidelity of synthetic weights anyway (harness tests only).

    Returns:
        Rows with medians/min/max, paired ratios against stock, the FLOPs ratio and fidelity.
    """
    info, stock = run.info, run.records[STOCK]
    rows = []
    for p in run.points:
        recs = run.records[p.label]
        n_kept = recs[0].n_kept if not p.is_stock else run.n_image_tokens
        n_cells = recs[0].n_cells  # text + the image rows that entered the LLM
        theory = (
            1.0
            if p.is_stock
            else flops_ratio(
                run.n_prompt_tokens,
                run.n_image_tokens,
                n_kept,
                n_layer=info["n_layer"],
                layer=p.layer,
                n_embd=info["n_embd"],
                n_ff=info["n_ff"] or 4 * info["n_embd"],
                n_entered=n_cells,
            )
        )
        row = {
            "file": Path(run.spec.path).name,
            "model": info["name"],
            "architecture": info["architecture"],
            "quantization": info["quantization"],
            "synthetic_weights": run.synthetic,
            "workload": run.workload,
            "config": p.label,
            "strategy": p.strategy,
            "k": None if p.is_stock else p.layer,  # 0: selection before the LLM only
            "pre": p.pre,
            "drop_ratio": p.drop_ratio,
            "keep": p.keep,
            "n_prompt_tokens": run.n_prompt_tokens,
            "n_image_tokens": run.n_image_tokens,
            "n_kept": n_kept,
            "n_hidden": recs[0].n_hidden,
            "n_cells": n_cells,
            "flops_ratio": theory,
        }
        for m in METRICS:
            row[m] = _spread([getattr(r, m) for r in recs])
        row["rss_growth_mb"] = _spread([r.peak_rss_mb - r.rss_before_mb for r in recs])
        row["prefill_ratio"] = _paired(recs, stock, lambda r, s: r.prefill_ms / s.prefill_ms)
        row["prefill_ratio_vs_theory"] = row["prefill_ratio"] / theory
        row["token_layer_ratio"] = token_layer_ratio(
            run.n_prompt_tokens, run.n_image_tokens, n_kept, info["n_layer"], row["k"], n_cells
        )
        row["prefill_cpu_ratio"] = _paired(recs, stock, lambda r, s: r.prefill_cpu_ms / max(s.prefill_cpu_ms, 1e-9))
        row["ttft_cpu_speedup"] = _paired(recs, stock, lambda r, s: s.ttft_cpu_ms / max(r.ttft_cpu_ms, 1e-9))
        row["ttft_speedup"] = _paired(recs, stock, lambda r, s: s.ttft_ms / r.ttft_ms)
        row["decode_ratio"] = _paired(recs, stock, lambda r, s: r.decode_tps / s.decode_tps)
        row["rss_ratio"] = _paired(recs, stock, lambda r, s: r.peak_rss_mb / s.peak_rss_mb)
        fid = run.fidelity.get(p.label)
        if run.synthetic and not fidelity_on_synthetic:
            row["agreement"], row["kl"], row["fidelity_note"] = None, None, SYNTHETIC_NOTE
        elif fid is None:
            row["agreement"], row["kl"], row["fidelity_note"] = None, None, "not measured (--no-fidelity)"
        else:
            row["agreement"], row["kl"], row["fidelity_note"] = fid[0], fid[1], ""
        rows.append(row)
    return rows


def _fmt(x, spec=".0f") -> str:
    return "-" if x is None else format(x, spec)


def format_table(result: dict) -> str:
    """The terminal table: one block per model file (medians; prefill with min-max).

    ratio = paired prefill wall-time ratio, cpu = the same on CPU time, tok = tokens ratio
    (token-layers, see token_layer_ratio), theory = eq. 5, x = TTFT speed-up over stock,
    cells = KV cells the prompt occupies, hid = cells hidden from layers >= K, sel = selection ms.
    """
    meta, lines = result["meta"], []
    s = meta["settings"]
    lines.append(
        f"threads={s['n_threads']} reps={s['reps']} warmup={s['warmup']} decode={s['n_decode']} tokens "
        f"flash_attn={s['flash_attn']} n_ubatch={s['n_ubatch']} | {meta['machine']['cpu_model']}, "
        f"{meta['machine']['nproc']} cores | loadavg {meta['machine']['loadavg_start']} -> "
        f"{meta['machine'].get('loadavg_end')}"
    )
    width = max([22] + [len(r["config"]) for r in result["rows"]])
    head = (
        f"{'config':<{width}} {'kept/N':>9} {'cells':>5} {'hid':>4} {'enc':>6} {'sel':>5} {'ph1':>7} {'ph2':>7} "
        f"{'prefill ms (min-max)':>21} {'ratio':>5} {'cpu':>5} {'tok':>5} {'theory':>6} {'TTFT ms':>8} {'x':>5} "
        f"{'tok/s':>6} {'RSS MB':>7} {'agree':>5} {'KL':>8}"
    )
    for m in result["models"]:
        rows = [r for r in result["rows"] if r["file"] == m["file"]]
        weights = "SYNTHETIC weights" if m["synthetic_weights"] else "real weights"
        lines += [
            "",
            f"{m['file']}  [{m['architecture']} {m['quantization']}, L={m['n_layer']} d={m['n_embd']} "
            f"m={m['n_ff']}; {m['n_prompt_tokens']} prompt tokens, N={m['n_image_tokens']} "
            f"({m['workload']}); {weights}]",
            head,
        ]
        for r in rows:
            pf, tt = r["prefill_ms"], r["ttft_ms"]
            rng = f"{pf['median']:.0f} ({pf['min']:.0f}-{pf['max']:.0f})"
            sel = r.get("select_ms", {}).get("median", 0.0)
            lines.append(
                f"{r['config']:<{width}} {r['n_kept']:>4}/{r['n_image_tokens']:<4} {r.get('n_cells', 0):>5} "
                f"{r['n_hidden']:>4} {r['encode_ms']['median']:>6.0f} {sel:>5.1f} "
                f"{r['shallow_ms']['median']:>7.0f} {r['deep_ms']['median']:>7.0f} "
                f"{rng:>21} {r['prefill_ratio']:>5.2f} {r['prefill_cpu_ratio']:>5.2f} "
                f"{r['token_layer_ratio']:>5.2f} {r['flops_ratio']:>6.2f} "
                f"{tt['median']:>8.0f} {r['ttft_speedup']:>5.2f} {r['decode_tps']['median']:>6.1f} "
                f"{r['peak_rss_mb']['median']:>7.0f} "
                f"{_fmt(r['agreement'], '.2f'):>5} {_fmt(r['kl'], '.2e'):>8}"
            )
        for note in m["notes"]:
            lines.append(f"  note: {note}")
    if result["meta"]["settings"]["reps"] < 3:
        lines += [
            "",
            f"{result['meta']['settings']['reps']} timed repetition(s): the ratios are indicative (--reps 3+).",
        ]
    if any(m["synthetic_weights"] for m in result["models"]):
        lines += [
            "",
            "SYNTHETIC weights are random: their speed is representative, their answers and fidelity "
            "are not (fidelity is reported for real weights only).",
        ]
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    """The same table as Markdown (medians; ms), one section per model file."""
    out = []
    for m in result["models"]:
        weights = "**synthetic weights**" if m["synthetic_weights"] else "real weights"
        out += [
            f"**{m['file']}** ({m['architecture']} {m['quantization']}, {m['n_prompt_tokens']} prompt tokens, "
            f"N={m['n_image_tokens']}, {m['workload']} image, {weights})",
            "",
            "| config | kept/N | KV cells | encode | select | phase 1 | phase 2 | prefill (min-max) | ratio wall | "
            "ratio CPU | tokens ratio | eq. 5 | TTFT | speed-up | decode tok/s | peak RSS MB | agree | KL |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in result["rows"] if r["file"] == m["file"]):
            pf = r["prefill_ms"]
            sel = r.get("select_ms", {}).get("median", 0.0)
            out.append(
                f"| {r['config']} | {r['n_kept']}/{r['n_image_tokens']} | {r.get('n_cells', '-')} | "
                f"{r['encode_ms']['median']:.0f} | {sel:.1f} | "
                f"{r['shallow_ms']['median']:.0f} | {r['deep_ms']['median']:.0f} | "
                f"{pf['median']:.0f} ({pf['min']:.0f}-{pf['max']:.0f}) | {r['prefill_ratio']:.3f} | "
                f"{r['prefill_cpu_ratio']:.3f} | {r['token_layer_ratio']:.3f} | {r['flops_ratio']:.3f} | "
                f"{r['ttft_ms']['median']:.0f} | {r['ttft_speedup']:.2f}x | {r['decode_tps']['median']:.1f} | "
                f"{r['peak_rss_mb']['median']:.0f} | {_fmt(r['agreement'], '.3f')} | {_fmt(r['kl'], '.2e')} |"
            )
        out.append("")
    return "\n".join(out)


def _flat(row: dict) -> dict:
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}_{sub}"] = v
        else:
            flat[key] = value
    return flat


def write_outputs(result: dict, out_dir: Path) -> dict[str, Path]:
    """results.json, results.csv, table.txt and table.md in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "csv": out_dir / "results.csv",
        "table": out_dir / "table.txt",
        "markdown": out_dir / "table.md",
    }
    paths["json"].write_text(json.dumps(result, indent=2))
    flat = [_flat(r) for r in result["rows"]]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(flat[0]) if flat else ["file"])
        writer.writeheader()
        writer.writerows(flat)
    paths["table"].write_text(format_table(result) + "\n")
    paths["markdown"].write_text(format_markdown(result))
    return paths


def _fill_token_ratio(result: dict) -> None:
    # results written before token_layer_ratio existed: derive it from the stored counts
    layers = {m["file"]: m["n_layer"] for m in result["models"]}
    for r in result["rows"]:
        if "token_layer_ratio" not in r:
            r["token_layer_ratio"] = token_layer_ratio(
                r["n_prompt_tokens"], r["n_image_tokens"], r["n_kept"], layers[r["file"]], r["k"]
            )


if __name__ == "__main__":  # re-render a saved result: python -m fastv_edge.bench.report OUT/results.json
    import sys

    src = Path(sys.argv[1])
    saved = json.loads(src.read_text())
    _fill_token_ratio(saved)
    (src.parent / "table.md").write_text(format_markdown(saved))
    print(format_table(saved))
