"""Generate the yardstick data set: train / val / test splits of scenes, pictures and questions.

    python -m models.yardstick.generator --out out/yardstick/data

Everything is a pure function of generator_params.json (seed included): image i of split s uses
numpy default_rng([seed, s, i]) for its scene, its picture and its questions, so any single
example can be rebuilt without the files (make_example). No downloads. Writes per split
`{split}.npz` (images, uint8 (n, 96, 96, 3)) and `{split}.json` (scenes and questions), plus
`generator_params.json` (the parameters, counts and file hashes) next to them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .questions import ask, check
from .scenes import render, sample_scene

PARAMS_FILE = Path(__file__).with_name("generator_params.json")
SPLITS = ("train", "val", "test")
DEFAULT_DATA = Path("out/yardstick/data")  # relative to the repository root; out/ is git-ignored


@lru_cache(maxsize=4)
def _read_params(path: str) -> str:
    return Path(path).read_text()


def load_params(path: Path = PARAMS_FILE) -> dict:
    """The generator parameters (a fresh dict each call)."""
    return json.loads(_read_params(str(path)))


def make_example(p: dict, split: str, index: int) -> tuple[dict, np.ndarray, list[dict]]:
    """(scene, image (size, size, 3) uint8, questions) of example `index` of `split`.

    Args:
        p: generator parameters.
        split: 'train', 'val' or 'test'.
        index: image index within the split.

    Returns:
        The scene dict, its picture and its questions ({'kind', 'question', 'answer'}).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([p["seed"], SPLITS.index(split), index])
    scene = sample_scene(p, rng)
    image = render(scene, p, rng)
    questions = ask(scene, p, rng, p["splits"][split]["questions_per_kind"])
    return scene, image, questions


def build_split(p: dict, split: str, n_images: int | None = None) -> tuple[np.ndarray, dict]:
    """(images (n, size, size, 3) uint8, {'scenes', 'questions'}) of one split; every answer is checked."""
    n = p["splits"][split]["images"] if n_images is None else n_images
    images, scenes, questions = [], [], []
    for i in range(n):
        scene, image, qs = make_example(p, split, i)
        for q in qs:
            if check(scene, q["question"], p) != q["answer"]:
                raise AssertionError(f"{split} image {i}: checker disagrees on {q}")
            questions.append({"image": i, **q})
        images.append(image)
        scenes.append(scene)
    return np.stack(images), {"scenes": scenes, "questions": questions}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_dataset(out: Path, p: dict) -> dict:
    """Write every split into `out` and return the summary written to out/generator_params.json."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {"params": p, "splits": {}}
    for split in SPLITS:
        images, records = build_split(p, split)
        np.savez_compressed(out / f"{split}.npz", images=images)
        (out / f"{split}.json").write_text(json.dumps(records))
        qs = records["questions"]
        summary["splits"][split] = {
            "images": len(images),
            "questions": len(qs),
            "questions_per_kind": dict(Counter(q["kind"] for q in qs)),
            "answers_per_kind": {
                k: dict(sorted(Counter(q["answer"] for q in qs if q["kind"] == k).items())) for k in p["kinds"]
            },
            "sha256": {f: _sha256(out / f) for f in (f"{split}.npz", f"{split}.json")},
        }
        print(f"{split}: {len(images)} images, {len(qs)} questions", flush=True)
    (out / "generator_params.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@dataclass
class YardstickSplit:
    split: object  # models.easyvqa.data.Split: images, owner, questions, answers (what its evaluation reads)
    kinds: list[str]  # kind of each question
    scenes: list[dict]  # scene of each image


def load_split(data: Path, name: str) -> YardstickSplit:
    """One split written by write_dataset (needs torch: models.easyvqa.data imports it)."""
    from models.easyvqa.data import Split

    path = data / f"{name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: python -m models.yardstick.generator --out {data}")
    with np.load(path) as z:
        images = z["images"]
    records = json.loads((data / f"{name}.json").read_text())
    qs = records["questions"]
    split = Split(
        images,
        list(range(len(images))),
        np.array([q["image"] for q in qs], dtype=np.int64),
        [q["question"] for q in qs],
        [q["answer"] for q in qs],
    )
    return YardstickSplit(split, [q["kind"] for q in qs], records["scenes"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = ap.parse_args(argv)
    summary = write_dataset(args.out, load_params(args.params))
    for split, s in summary["splits"].items():
        print(split, json.dumps(s["answers_per_kind"]))


if __name__ == "__main__":
    main()
