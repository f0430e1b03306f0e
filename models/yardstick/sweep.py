"""Accuracy of the yardstick model against the image-token budget, for every selection strategy.

Each process answers every --shard'th question of a seeded, kind-stratified sample of the test
split (rebuilt by the generator, no data files needed) under every setting of settings.py, through
the patched llama.cpp, and stores the answers in its shard file as it goes: a rerun completes
what is missing (new strategies included) and never redoes an answer. `--merge` joins the shards
into a markdown table with bootstrap 95% confidence intervals, per-kind tables, a JSON file and
plots.

    nice -n 10 python -m models.yardstick.sweep --shard 0/2 &     # one process per core
    nice -n 10 python -m models.yardstick.sweep --shard 1/2
    python -m models.yardstick.sweep --merge                      # table, results.json, plots
    python -m models.yardstick.sweep --shard 0/2 --fastv-layers 6 --random-layers 6   # a rerun: only what is missing
"""

from __future__ import annotations

import argparse
import json
import time
from functools import lru_cache
from pathlib import Path

from .settings import BUDGETS, N_IMAGE, settings
from .sweep_report import merge

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "sweep"
PER_KIND = 340  # 6 kinds x 340 = 2,040 test questions, the same sample for every setting


@lru_cache(maxsize=1)
def test_questions() -> list[dict]:
    """Every test question with its image index, kind and label, as the generator makes them."""
    from .generator import build_split, load_params

    return build_split(load_params(), "test")[1]["questions"]


def sample(per_kind: int, kinds: tuple[str, ...] | None = None) -> list[int]:
    """Indices into test_questions(): per_kind seeded random questions of every kind (or of `kinds`)."""
    from .export import stratified_sample

    questions = test_questions()
    index = stratified_sample([q["kind"] for q in questions], per_kind, seed=0)
    return [i for i in index if kinds is None or questions[i]["kind"] in kinds]


def _save(path: Path, rows: list[dict], skipped: dict, todo: list, seconds: float) -> None:
    meta = [{"name": s.name, "family": s.family, "keep": s.keep} for s in todo]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": meta, "skipped": skipped, "seconds": seconds, "rows": rows}))
    tmp.replace(path)


def _answer(model, setting, q: int, question: str, image) -> str:
    from .export import answer

    return answer(model, question, image, prune=setting.make(q))


def run_shard(
    per_kind: int,
    shard: int,
    n_shards: int,
    out: Path,
    threads: int = 1,
    save_every: int = 20,
    kinds=None,
    extra_fastv: tuple[int, ...] = (),
    extra_random: tuple[int, ...] = (),
) -> Path:
    """Answer this shard's questions under every setting not answered yet; returns the shard file.

    Args:
        per_kind: questions per kind in the whole sample.
        shard, n_shards: this process takes sample[shard::n_shards].
        out: folder of the shard files.
        threads: llama.cpp threads (1 per process: one process per core).
        save_every: write the shard file after this many questions.
        kinds: question kinds to sample (None = all).
        extra_fastv: FastV layers K to add to the settings (settings.settings).
        extra_random: layers K of random selection to add to the settings.

    Returns:
        The shard file path.
    """
    from fastv_edge.errors import FastVEdgeError

    from .export import load_gguf, test_image

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"shard-{shard}-of-{n_shards}.json"
    done = json.loads(path.read_text()) if path.is_file() else {"seconds": 0.0, "rows": []}
    previous = {row["q"]: row for row in done["rows"]}
    questions = test_questions()
    skipped: dict[str, str] = {}  # retried on every run: a strategy may have landed since
    rows, t0 = [], time.perf_counter()
    with load_gguf(threads) as model:
        todo = settings(model.info.n_layer, extra_fastv=extra_fastv, extra_random=extra_random)
        mine = sample(per_kind, kinds)[shard::n_shards]
        for i, qi in enumerate(mine):
            q = questions[qi]
            row = previous.get(qi, {"q": qi, "kind": q["kind"], "label": q["answer"], "answers": {}})
            image = None
            for s in todo:
                if s.name in row["answers"] or s.name in skipped:
                    continue
                image = image or test_image(q["image"])
                try:
                    row["answers"][s.name] = _answer(model, s, qi, q["question"], image)
                except (ValueError, TypeError, FastVEdgeError) as e:
                    skipped[s.name] = f"{type(e).__name__}: {e}"
            rows.append(row)
            if (i + 1) % save_every == 0:
                rest = [previous[r] for r in mine[i + 1 :] if r in previous]
                _save(path, rows + rest, skipped, todo, done["seconds"] + time.perf_counter() - t0)
        _save(path, rows, skipped, todo, done["seconds"] + time.perf_counter() - t0)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-kind", type=int, default=PER_KIND, help="test questions per kind in the sample")
    parser.add_argument("--kinds", nargs="+", help="only these question kinds (default: all six)")
    parser.add_argument("--shard", default="0/1", help="I/N: this process answers every N-th question from I")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the shard files")
    parser.add_argument("-t", "--threads", type=int, default=1)
    parser.add_argument(
        "--fastv-layers", type=int, nargs="+", default=[], help="FastV layers K to sweep besides 2, L/4 and L/2"
    )
    parser.add_argument(
        "--random-layers", type=int, nargs="+", default=[], help="layers K of random selection besides 0 and 2"
    )
    parser.add_argument("--merge", action="store_true", help="join the shards in --out into table, JSON, plots")
    parser.add_argument("--img", type=Path, default=HERE.parent.parent / "docs" / "img", help="where plots go")
    args = parser.parse_args(argv)
    if args.merge:
        print(merge(args.out, args.img))
        return 0
    i, n = (int(v) for v in args.shard.split("/"))
    if not 0 <= i < n:
        parser.error(f"--shard must be I/N with 0 <= I < N, got {args.shard}")
    kinds = tuple(args.kinds) if args.kinds else None
    extra = {"extra_fastv": tuple(args.fastv_layers), "extra_random": tuple(args.random_layers)}
    print(run_shard(args.per_kind, i, n, args.out, args.threads, kinds=kinds, **extra))
    return 0


__all__ = ["BUDGETS", "N_IMAGE", "merge", "run_shard", "sample", "settings"]

if __name__ == "__main__":
    raise SystemExit(main())
