"""PNG plots of a benchmark result (matplotlib, Agg backend: no display needed).

ttft_k{K}.png  left: time to first token vs drop ratio, one colour per model file (quantization),
               stock as a dashed line, theory (encode + stock prefill x FLOPs ratio) dotted;
               right: measured prefill ratio FastV/stock vs the FLOPs ratio of eq. 5.
ttft_k0.png    the same for the strategies that select before the LLM (one marker each).
fidelity.png   argmax agreement and mean KL vs drop ratio (real weights only), one line style
               per strategy (fastv solid, random dashed). Two-stage points are in the tables only.
Keep budgets are placed at their equivalent drop ratio 1 - kept/N; stock is the R=0 point.
Re-plot a saved result with: python -m fastv_edge.bench.plots OUT/results.json
"""

from __future__ import annotations

from pathlib import Path


def _budget(row: dict) -> float:
    return 1.0 - row["n_kept"] / row["n_image_tokens"] if row["n_image_tokens"] else 0.0


def _series(rows: list[dict], file: str, strategy: str, k: int) -> list[dict]:
    """The rows of one line, stock first (it is the R=0 end of every line)."""
    mine = [r for r in rows if r["file"] == file and r["strategy"] == strategy and r["k"] == k and not r.get("pre")]
    if not mine:
        return []
    stock = [r for r in rows if r["file"] == file and r["strategy"] == "none"]
    return stock + sorted(mine, key=_budget)


def _title_suffix(models: list[dict]) -> str:
    return " (SYNTHETIC weights)" if all(m["synthetic_weights"] for m in models) else ""


STYLES = {
    "fastv": ("-", "o"),
    "random": ("--", "x"),
    "divprune": (":", "s"),
    "dart": ("-.", "^"),
    "cdpruner": (":", "D"),
}
PRE_LLM = ("divprune", "dart", "cdpruner", "random")


def plot_ttft(result: dict, k: int, path: Path) -> Path:
    """TTFT and prefill ratio vs budget at layer K, one colour per model file: FastV (K >= 1) or
    every strategy that selects before the LLM (K = 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, models = result["rows"], result["models"]
    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, m in enumerate(models):
        color = colors[i % len(colors)]
        stock = next(r for r in rows if r["file"] == m["file"] and r["strategy"] == "none")
        ax_t.axhline(stock["ttft_ms"]["median"] / 1e3, color=color, linestyle="--", linewidth=1)
        drawn = False  # eq. 5 depends on the kept count only: one theory line per file
        for strategy in ("fastv",) if k else PRE_LLM:
            pts = _series(rows, m["file"], strategy, k)
            if pts:
                _ttft_lines(ax_t, ax_r, pts, stock, color, strategy, f"{m['quantization']} {m['file']}", not drawn)
                drawn = True
    what = f"FastV K={k}" if k else "selection before the LLM (K=0)"
    ax_t.set(
        xlabel="drop ratio R (share of image tokens pruned)",
        ylabel="time to first token (s)",
        title=f"TTFT, {what}; dashed = stock" + _title_suffix(models),
    )
    ax_r.set(
        xlabel="drop ratio R",
        ylabel="LLM prefill time, pruned / stock",
        ylim=(0, 1.1),
        title="prefill ratio: measured vs theory",
    )
    ax_t.set_ylim(bottom=0)
    for ax in (ax_t, ax_r):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ttft_lines(ax_t, ax_r, pts, stock, color, strategy, label, theory: bool) -> None:
    xs = [_budget(r) for r in pts]
    style, marker = STYLES.get(strategy, ("-", "o"))
    name = "FastV" if strategy == "fastv" else strategy
    med = [r["ttft_ms"]["median"] / 1e3 for r in pts]
    err = [
        [(r["ttft_ms"]["median"] - r["ttft_ms"]["min"]) / 1e3 for r in pts],
        [(r["ttft_ms"]["max"] - r["ttft_ms"]["median"]) / 1e3 for r in pts],
    ]
    ax_t.errorbar(xs, med, yerr=err, marker=marker, color=color, label=f"{name} {label}", capsize=3)
    ax_r.plot(xs, [r["prefill_ratio"] for r in pts], marker=marker, color=color, label=f"{name} wall time {label}")
    if not theory:
        return
    # stock TTFT with only its LLM prefill scaled by eq. 5 (encode and the rest unchanged)
    s_ttft, s_pre = stock["ttft_ms"]["median"], stock["prefill_ms"]["median"]
    ttft = [(s_ttft - s_pre * (1.0 - r["flops_ratio"])) / 1e3 for r in pts]
    ax_t.plot(xs, ttft, linestyle=":", color=color, label=f"theory (eq. 5) {label}")
    ax_r.plot(xs, [r["prefill_cpu_ratio"] for r in pts], marker="x", linestyle="--", color=color, label="CPU time")
    ax_r.plot(xs, [r["flops_ratio"] for r in pts], linestyle=":", color=color, label="FLOPs ratio (eq. 5)")


def plot_fidelity(result: dict, path: Path) -> Path | None:
    """Agreement and KL vs budget for the real-weight models; None when there are none."""
    rows = [r for r in result["rows"] if r["agreement"] is not None]
    if not any(r["strategy"] != "none" for r in rows):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_a, ax_k) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    keys = sorted({(r["file"], r["k"]) for r in rows if r["strategy"] != "none"})
    for i, (file, k) in enumerate(keys):
        for strategy, (style, _) in STYLES.items():
            pts = _series(rows, file, strategy, k)
            if not pts:
                continue
            xs = [_budget(r) for r in pts]
            label = f"{strategy} K={k} {file}"
            ax_a.plot(xs, [r["agreement"] for r in pts], style, marker="o", color=colors[i % len(colors)], label=label)
            ax_k.plot(xs, [r["kl"] for r in pts], style, marker="o", color=colors[i % len(colors)], label=label)
    ax_a.set(
        xlabel="drop ratio R",
        ylabel="next-token argmax agreement with stock",
        ylim=(0, 1.05),
        title="fidelity (teacher-forced on the stock continuation)",
    )
    ax_k.set(xlabel="drop ratio R", ylabel="mean KL(stock || pruned), nats", title="KL divergence")
    for ax in (ax_a, ax_k):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(result: dict, out_dir: Path) -> list[Path]:
    """Every plot of the result into out_dir; returns the files written."""
    out = []
    ks = {r["k"] for r in result["rows"] if r["strategy"] == "fastv" and not r.get("pre")}
    if any(r["k"] == 0 for r in result["rows"]):
        ks.add(0)
    for k in sorted(ks):
        out.append(plot_ttft(result, k, out_dir / f"ttft_k{k}.png"))
    fid = plot_fidelity(result, out_dir / "fidelity.png")
    if fid:
        out.append(fid)
    return out


if __name__ == "__main__":  # re-plot a saved result: python -m fastv_edge.bench.plots OUT/results.json
    import json
    import sys

    src = Path(sys.argv[1])
    print("\n".join(str(p) for p in write_plots(json.loads(src.read_text()), src.parent)))
