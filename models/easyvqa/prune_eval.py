"""Accuracy of the shipped easy-vqa model against the pruning budget, through the patched llama.cpp.

For each of the first --n test questions (a fixed, seeded sample of the easy-vqa test split)
it answers with: the unpruned baseline, FastV at K in {1, 2, 3} x R in {25, 50, 75, 90} %,
seeded random pruning at the same K and budgets, and, at the same budgets, the selections made
before the LLM (K = 0): divprune, dart, cdpruner (ranked against the question's own tokens) and
seeded random. It writes a JSON file per --shard. A shard file that exists is completed, not
redone: only settings missing from it run. `--merge` joins the shards into markdown tables and a
plot (accuracy vs kept image tokens).

    python -m models.easyvqa.prune_eval --n 1000 --shard 0/2 --out /tmp/pe &   # one core each
    python -m models.easyvqa.prune_eval --n 1000 --shard 1/2 --out /tmp/pe
    python -m models.easyvqa.prune_eval --merge /tmp/pe --docs docs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RATIOS = (0.25, 0.5, 0.75, 0.9)
LAYERS = (1, 2, 3)
PRE_LLM = ("divprune", "dart", "cdpruner", "random")  # selections before the LLM, at K = 0
N_IMAGE = 256


def configs():
    """(name, PruneConfig kwargs) of every evaluated setting, baseline first."""
    out = [("baseline", {"strategy": "none"})]
    for k in LAYERS:
        out += [(f"fastv K={k} R={r:.2f}", {"layer": k, "drop_ratio": r}) for r in RATIOS]
    for k in LAYERS:
        out += [
            (f"random K={k} R={r:.2f}", {"layer": k, "drop_ratio": r, "strategy": "random", "seed": 0}) for r in RATIOS
        ]
    for strategy in PRE_LLM:
        out += [(f"{strategy} K=0 R={r:.2f}", {"layer": 0, "drop_ratio": r, "strategy": strategy}) for r in RATIOS]
    return out


def sample(n: int, seed: int = 0) -> list[int]:
    """Indices of n test questions, a seeded sample spread over the whole split."""
    import easy_vqa

    total = len(easy_vqa.get_test_questions()[0])
    return sorted(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False).tolist())


def run_shard(n: int, shard: int, n_shards: int, out: Path, threads: int) -> Path:
    import easy_vqa

    import fastv_edge
    from fastv_edge import PruneConfig, RuntimeConfig

    prompt = json.loads((HERE / "prompt.json").read_text())
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    model = fastv_edge.load(
        HERE / "easyvqa-lm-q8_0.gguf",
        HERE / "easyvqa-mmproj-f32.gguf",
        runtime=RuntimeConfig(n_ctx=1024, n_threads=threads),
    )
    path = out / f"shard-{shard}-of-{n_shards}.json"
    done = json.loads(path.read_text()) if path.is_file() else {"seconds": 0.0, "rows": []}
    previous = {row["q"]: row for row in done["rows"]}
    rows = []
    t0 = time.perf_counter()
    for qi in sample(n)[shard::n_shards]:
        text = prompt["before_image"] + prompt["media_marker"] + prompt["after_image"].format(question=questions[qi])
        row = previous.get(qi, {"q": qi, "label": answers[qi]})
        for name, kwargs in configs():
            if name not in row:
                row[name] = fastv_edge.generate(
                    model,
                    text,
                    [paths[image_ids[qi]]],
                    apply_template=False,
                    prune=PruneConfig(**kwargs),
                    max_tokens=4,
                    instruction=questions[qi],  # cdpruner's text features: the question, not the template
                ).strip()
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"seconds": done["seconds"] + time.perf_counter() - t0, "rows": rows}))
    return path


STRATEGIES = ("fastv", "random")


def question_kind(question: str) -> str:
    """'yes/no', 'colour' or 'shape': easy-vqa's three kinds of question."""
    if question.startswith(("is ", "does ")):
        return "yes/no"
    return "colour" if "color" in question else "shape"


def merge(out: Path, docs: Path) -> str:
    import easy_vqa

    questions = easy_vqa.get_test_questions()[0]
    rows = [r for p in sorted(out.glob("shard-*.json")) for r in json.loads(p.read_text())["rows"]]
    names = [name for name, _ in configs()]
    missing = sorted({name for r in rows for name in names if name not in r})
    if missing:
        raise SystemExit(f"shards lack {missing[:3]}...: run the shards again (they are completed, not redone)")
    acc = {name: float(np.mean([r[name] == r["label"] for r in rows])) for name in names}
    kinds = sorted({question_kind(questions[r["q"]]) for r in rows})
    by_kind = {
        name: {
            kind: float(np.mean([r[name] == r["label"] for r in rows if question_kind(questions[r["q"]]) == kind]))
            for kind in kinds
        }
        for name in names
    }
    columns = [(s, k) for k in LAYERS for s in STRATEGIES]
    lines = [
        f"Accuracy on {len(rows)} easy-vqa test questions (seeded sample), shipped Q8_0 model, "
        "greedy answers through the patched llama.cpp.",
        "",
        "| kept image tokens | " + " | ".join(f"{'FastV' if s == 'fastv' else s} K={k}" for s, k in columns) + " |",
        "|---|" + "---|" * len(columns),
        f"| {N_IMAGE} (baseline) | " + " | ".join(f"{acc['baseline']:.3f}" for _ in columns) + " |",
    ]
    for r in RATIOS:
        cells = [f"{acc[f'{s} K={k} R={r:.2f}']:.3f}" for s, k in columns]
        lines.append(f"| {int(N_IMAGE * (1 - r))} (R={int(r * 100)}%) | " + " | ".join(cells) + " |")
    lines += ["", *_pre_llm_table(acc)]
    lines += ["", "| setting | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name in names:
        if name == "baseline" or name.endswith(("R=0.50", "R=0.90")):
            lines.append(f"| {name} | " + " | ".join(f"{by_kind[name][kind]:.3f}" for kind in kinds) + " |")
    table = "\n".join(lines)
    docs.mkdir(parents=True, exist_ok=True)
    counts = {kind: sum(question_kind(questions[r["q"]]) == kind for r in rows) for kind in kinds}
    result = {"n": len(rows), "questions_per_kind": counts, "accuracy": acc, "accuracy_by_kind": by_kind}
    (docs / "easyvqa-accuracy.json").write_text(json.dumps(result, indent=2))
    _plot(acc, docs / "img" / "easyvqa-accuracy.png")
    return table


def _pre_llm_table(acc: dict) -> list[str]:
    """Accuracy of the selections made before the LLM, next to FastV's best and worst K."""
    columns = [f"{s} K=0" for s in PRE_LLM] + ["fastv K=2", "fastv K=3"]
    lines = [
        "| kept image tokens | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        f"| {N_IMAGE} (baseline) | " + " | ".join(f"{acc['baseline']:.3f}" for _ in columns) + " |",
    ]
    for r in RATIOS:
        cells = [f"{acc[f'{c} R={r:.2f}']:.3f}" for c in columns]
        lines.append(f"| {int(N_IMAGE * (1 - r))} (R={int(r * 100)}%) | " + " | ".join(cells) + " |")
    return lines


def _plot(acc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = [N_IMAGE] + [int(N_IMAGE * (1 - r)) for r in RATIOS]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, k in enumerate(LAYERS):
        for strategy, style in zip(STRATEGIES, ("-", "--"), strict=True):
            values = [acc["baseline"]] + [acc[f"{strategy} K={k} R={r:.2f}"] for r in RATIOS]
            label = f"{'FastV' if strategy == 'fastv' else 'random'} K={k}"
            ax.plot(kept, values, style, marker="o" if strategy == "fastv" else "x", color=f"C{i}", label=label)
    for i, strategy in enumerate(PRE_LLM, len(LAYERS)):
        values = [acc["baseline"]] + [acc[f"{strategy} K=0 R={r:.2f}"] for r in RATIOS]
        ax.plot(kept, values, ":", marker="s", color=f"C{i}", label=f"{strategy} K=0 (before the LLM)")
    ax.set_xlabel("image tokens kept (of 256)")
    ax.set_ylabel("accuracy")
    ax.set_title("easy-vqa: accuracy vs kept image tokens (1 = all answers right)")
    ax.legend(ncol=2, fontsize=7)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--shard", default="0/1", help="I/N: this process answers every N-th question from I")
    parser.add_argument("--out", type=Path, default=Path("prune-eval"))
    parser.add_argument("-t", "--threads", type=int, default=1)
    parser.add_argument("--merge", type=Path, help="join the shards in this directory")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    if args.merge:
        print(merge(args.merge, args.docs))
        return 0
    i, n = (int(v) for v in args.shard.split("/"))
    print(run_shard(args.n, i, n, args.out, args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
