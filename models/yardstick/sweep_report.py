"""Merge the yardstick sweep's shard files into tables, a JSON file and plots.

Confidence intervals are percentile bootstraps over questions (2,000 resamples, seed 0), with the
same resamples for every setting, so that paired differences (FastV minus random at the same
budget) get their own interval instead of two overlapping ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

N_BOOT = 2000
PLOT_NAME = "yardstick-accuracy.png"
KINDS_PLOT_NAME = "yardstick-accuracy-kinds.png"
# tab10, then colours unlike any of it: a family past the tenth must not repeat C0's colour and line
COLOURS = tuple(f"C{i}" for i in range(10)) + ("black", "darkgoldenrod", "navy", "lime")
KINDS = ("attribute", "count", "exist", "spatial", "glyph", "size")  # the generator's order, for the tables


def load_shards(out: Path) -> tuple[list[dict], list[dict], dict[str, str]]:
    """(rows, settings metadata in table order, skipped {name: reason}) of every shard in `out`."""
    paths = sorted(out.glob("shard-*.json"))
    if not paths:
        raise SystemExit(f"no shard files in {out}: run python -m models.yardstick.sweep --shard I/N first")
    shards = [json.loads(p.read_text()) for p in paths]
    rows = sorted((r for s in shards for r in s["rows"]), key=lambda r: r["q"])
    meta = {m["name"]: m for s in shards for m in s["settings"]}
    skipped = {k: v for s in shards for k, v in s["skipped"].items()}
    return rows, list(meta.values()), skipped


def bootstrap(hits: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_settings, n_boot) resampled accuracies; hits is (n_settings, n_questions) bool."""
    idx = np.random.default_rng(seed).integers(0, hits.shape[1], size=(n_boot, hits.shape[1]))  # (n_boot, n_q)
    return np.stack([h[idx].mean(axis=1) for h in hits])


def summarize(rows: list[dict], meta: list[dict], skipped: dict[str, str]) -> dict:
    """Accuracy, 95% CI, share of stock, per-kind accuracy and paired differences of every complete setting."""
    complete = [m for m in meta if m["name"] not in skipped and all(m["name"] in r["answers"] for r in rows)]
    incomplete = {
        m["name"]: sum(m["name"] in r["answers"] for r in rows)
        for m in meta
        if m["name"] not in skipped and m not in complete
    }
    hits = np.array([[r["answers"][m["name"]] == r["label"] for r in rows] for m in complete])  # (n_set, n_q)
    boots = bootstrap(hits)
    kinds = sorted(
        dict.fromkeys(r["kind"] for r in rows), key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k)
    )
    kind_of = np.array([r["kind"] for r in rows])
    answers_of = {k: {r["label"] for r in rows if r["kind"] == k} for k in kinds}  # what a question of k can answer
    names = [m["name"] for m in complete]
    stock = names.index("stock") if "stock" in names else None
    out = {}
    for i, m in enumerate(complete):
        lo, hi = np.percentile(boots[i], [2.5, 97.5])
        out[m["name"]] = {
            "family": m["family"],
            "keep": m["keep"],
            "accuracy": float(hits[i].mean()),
            "ci95": [float(lo), float(hi)],
            "share_of_stock": float(hits[i].mean() / hits[stock].mean()) if stock is not None else None,
            "by_kind": {k: float(hits[i][kind_of == k].mean()) for k in kinds},
            # answers no question of that kind has (a count answered 'no'): the model lost the question, not the object
            "off_kind": float(np.mean([r["answers"][m["name"]] not in answers_of[r["kind"]] for r in rows])),
        }
        for family in ("random K=2", "random K=0"):  # in-LLM and pre-LLM chance at the same budget
            ref = next((j for j, n in enumerate(complete) if n["family"] == family and n["keep"] == m["keep"]), None)
            if ref is not None and ref != i and m["family"] != "stock":
                key = "minus_" + family.replace(" K=", "_k")
                out[m["name"]][key] = _paired(hits, boots, i, ref)
        if m["family"].startswith("FastV K="):  # its own chance line: the same full first K layers, random keep set
            twin = "random " + m["family"].removeprefix("FastV ")
            ref = next((j for j, n in enumerate(complete) if n["family"] == twin and n["keep"] == m["keep"]), None)
            if ref is not None:
                out[m["name"]]["minus_random_same_k"] = _paired(hits, boots, i, ref)
    return {
        "n": len(rows),
        "questions_per_kind": {k: int((kind_of == k).sum()) for k in kinds},
        "bootstrap_resamples": N_BOOT,
        "settings": out,
        "leaders": _leaders(complete, hits, boots),
        "skipped": skipped,
        "incomplete": incomplete,
    }


def _paired(hits: np.ndarray, boots: np.ndarray, i: int, j: int) -> list[float]:
    """[accuracy of i minus j, 95% CI low, high] over the same bootstrap resamples."""
    lo, hi = np.percentile(boots[i] - boots[j], [2.5, 97.5])
    return [float(hits[i].mean() - hits[j].mean()), float(lo), float(hi)]


def _leaders(complete: list[dict], hits: np.ndarray, boots: np.ndarray) -> dict[str, dict]:
    """Per budget: the families from best to worst and the best minus the runner-up (paired 95% CI)."""
    out = {}
    for keep in sorted({m["keep"] for m in complete if m["family"] != "stock"}, reverse=True):
        idx = sorted(
            (i for i, m in enumerate(complete) if m["keep"] == keep and m["family"] != "stock"),
            key=lambda i: -hits[i].mean(),
        )
        if len(idx) >= 2:
            out[str(keep)] = {
                "ranking": [complete[i]["family"] for i in idx],
                "best_minus_second": _paired(hits, boots, idx[0], idx[1]),
            }
    return out


def _families(result: dict) -> dict[str, dict[int, str]]:
    fam: dict[str, dict[int, str]] = {}
    for name, s in result["settings"].items():
        if s["family"] != "stock":
            fam.setdefault(s["family"], {})[s["keep"]] = name
    return fam


def _difference_cell(key: str):
    """A table cell of a paired difference in points with its 95% interval, or '-' where it was not measured."""
    return lambda s: "{:+.1f} [{:+.1f}, {:+.1f}]".format(*(100 * v for v in s[key])) if key in s else "-"


def tables(result: dict) -> str:
    """The markdown tables: accuracy with CI, share of stock, minus random K=2, per kind, skipped."""
    st, fam = result["settings"], _families(result)
    budgets = sorted({k for f in fam.values() for k in f}, reverse=True)
    head = "| setting | " + " | ".join(f"keep {b}" for b in budgets) + " |\n|---|" + "---|" * len(budgets)

    def grid(cell) -> list[str]:
        return [
            f"| {f} | " + " | ".join(cell(st[m[b]]) if b in m else "" for b in budgets) + " |" for f, m in fam.items()
        ]

    lines = [f"Accuracy on {result['n']} test questions ({result['questions_per_kind']}), 95% bootstrap CI.", ""]
    if "stock" in st:
        s = st["stock"]
        lines.append(f"Stock (all 256 image tokens): **{s['accuracy']:.3f}** [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]")
        lines.append("")
    lines += [head] + grid(lambda s: f"{s['accuracy']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]")
    if "stock" in st:
        lines += ["", "Share of stock accuracy:", "", head] + grid(lambda s: f"{100 * s['share_of_stock']:.1f}%")
    lines += ["", "Answers of the wrong kind (no question of that kind has that answer, e.g. 'no' to a count):", ""]
    if "stock" in st:
        lines += [f"Stock: {100 * st['stock']['off_kind']:.1f}%", ""]
    lines += [head] + grid(lambda s: f"{100 * s['off_kind']:.1f}%")
    lines += ["", "Minus random K=2 at the same budget (accuracy points, paired 95% CI):", "", head]
    lines += grid(_difference_cell("minus_random_k2"))
    lines += ["", "Minus random K=0 (random selection before the LLM) at the same budget:", "", head]
    lines += grid(_difference_cell("minus_random_k0"))
    same_k = {f: m for f, m in fam.items() if any("minus_random_same_k" in st[n] for n in m.values())}
    if same_k:
        lines += ["", "FastV minus random at the same K (the same full first K layers), paired 95% CI:", "", head]
        lines += [
            f"| {f} | "
            + " | ".join(
                "{:+.1f} [{:+.1f}, {:+.1f}]".format(*(100 * v for v in st[m[b]]["minus_random_same_k"]))
                if b in m and "minus_random_same_k" in st[m[b]]
                else "-"
                for b in budgets
            )
            + " |"
            for f, m in same_k.items()
        ]
    lines += ["", "Ranking per budget; best minus runner-up (accuracy points, paired 95% CI):", ""]
    lines += ["| keep | ranking | best - second |", "|---|---|---|"]
    for keep, lead in result.get("leaders", {}).items():
        d = "{:+.1f} [{:+.1f}, {:+.1f}]".format(*(100 * v for v in lead["best_minus_second"]))
        lines.append(f"| {keep} | " + " > ".join(lead["ranking"]) + f" | {d} |")
    kinds = list(result["questions_per_kind"])
    lines += ["", "Per question kind:", "", "| setting | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, s in st.items():
        lines.append(f"| {name} | " + " | ".join(f"{s['by_kind'][k]:.3f}" for k in kinds) + " |")
    if result["skipped"]:
        lines += ["", "Skipped (the package rejects the configuration today):", "", "| setting | reason |", "|---|---|"]
        lines += [f"| {n} | {r} |" for n, r in result["skipped"].items()]
    if result["incomplete"]:
        lines += ["", f"Incomplete (answered questions of {result['n']}): {result['incomplete']}"]
    return "\n".join(lines)


def plot(result: dict, path: Path, kinds: bool = False) -> None:
    """Accuracy against kept image tokens, one line per family (or a panel per question kind)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st, fam = result["settings"], _families(result)
    panels = list(result["questions_per_kind"]) if kinds else ["all"]
    cols = 3 if kinds else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows) if kinds else (8.6, 4.6), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for i, (family, by_keep) in enumerate(fam.items()):
            keeps = sorted(by_keep)
            acc = [_acc(st[by_keep[k]], panel) for k in keeps]
            style = "--" if family.startswith("random") else "-"
            if kinds:
                ax.plot(keeps, acc, style, marker="o", ms=3, color=COLOURS[i % len(COLOURS)], label=family)
            else:
                ci = np.array([st[by_keep[k]]["ci95"] for k in keeps]).T  # (2, n_keeps)
                err = np.abs(ci - np.array(acc)[None, :])
                x = np.array(keeps) * 1.025 ** (i - (len(fam) - 1) / 2)  # side by side, so the bars stay readable
                ax.errorbar(
                    x,
                    acc,
                    yerr=err,
                    fmt=style,
                    marker="o",
                    ms=4,
                    capsize=2,
                    color=COLOURS[i % len(COLOURS)],
                    label=family,
                )
        if "stock" in st:
            ax.axhline(_acc(st["stock"], panel), color="k", ls=":", lw=1, label="stock (all 256)")
        ax.set_xscale("log")
        ax.minorticks_off()
        budgets = sorted({k for by_keep in fam.values() for k in by_keep})
        ax.set_xticks(budgets, labels=[str(b) for b in budgets])
        ax.set_title("all questions" if panel == "all" else panel, fontsize=9)
        if kinds:
            ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("image tokens kept (of 256)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    if kinds:
        axes.flat[0].legend(fontsize=7)
    else:  # outside the axes: with ten families any corner hides a line
        axes.flat[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"yardstick: accuracy vs kept image tokens ({result['n']} test questions)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _acc(s: dict, panel: str) -> float:
    return s["accuracy"] if panel == "all" else s["by_kind"][panel]


def merge(out: Path, img: Path) -> str:
    """Write out/results.json, out/table.md and the two plots into img; return the tables.

    Args:
        out: folder with the shard files.
        img: folder for yardstick-accuracy.png and yardstick-accuracy-kinds.png.

    Returns:
        The markdown tables.
    """
    result = summarize(*load_shards(out))
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    text = tables(result)
    (out / "table.md").write_text(text + "\n")
    plot(result, img / PLOT_NAME)
    plot(result, img / KINDS_PLOT_NAME, kinds=True)
    return text
