"""The exported easy-VQA GGUF pair, run through fastv_edge, against the PyTorch model's answers.

models/easyvqa/reference_answers.json holds the PyTorch greedy answers for 50 test questions
(copied from the trainer's test_predictions.json, which lives outside the repo). The prompt is
built from prompt.json exactly as trained (raw, no chat template), so any disagreement comes
from the export (Q8_0 LM, F32 mmproj, llama.cpp kernels), not from prompt formatting.

Run with -s to see the numbers (agreement, accuracy vs labels, FastV accuracy).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EASYVQA = ROOT / "models" / "easyvqa"
LM = EASYVQA / "easyvqa-lm-q8_0.gguf"
MMPROJ = EASYVQA / "easyvqa-mmproj-f32.gguf"
CLASSES = {
    "black",
    "blue",
    "brown",
    "circle",
    "gray",
    "green",
    "no",
    "rectangle",
    "red",
    "teal",
    "triangle",
    "yellow",
    "yes",
}

pytestmark = [pytest.mark.native, pytest.mark.slow]  # 50 questions through a real model


@pytest.fixture(scope="module")
def sample():
    """[(question index, question, image path, label, PyTorch answer)] for the reference questions."""
    easy_vqa = pytest.importorskip("easy_vqa")
    reference = json.loads((EASYVQA / "reference_answers.json").read_text())["answers"]
    questions, labels, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    return [(int(i), questions[int(i)], paths[image_ids[int(i)]], labels[int(i)], ans) for i, ans in reference.items()]


@pytest.fixture(scope="module")
def model():
    if not (LM.exists() and MMPROJ.exists()):
        pytest.skip(f"{LM.name} / {MMPROJ.name} missing: python -m models.easyvqa.export")
    import fastv_edge
    from fastv_edge import PruneConfig

    runtime = fastv_edge.RuntimeConfig(n_threads=1)  # one thread: no spinning at barriers on a busy machine
    with fastv_edge.load(LM, MMPROJ, runtime=runtime, prune=PruneConfig(strategy="none")) as m:
        yield m


def answer(model, question: str, image: str, prune) -> str:
    """Greedy answer to the exact trained prompt (prompt.json), no chat template."""
    import fastv_edge

    fmt = json.loads((EASYVQA / "prompt.json").read_text())
    text = fmt["before_image"] + fmt["media_marker"] + fmt["after_image"].format(question=question)
    return fastv_edge.generate(model, text, [image], apply_template=False, prune=prune, max_tokens=4).strip()


def test_sample_is_large_enough(sample):
    assert len(sample) >= 50


def test_stock_llama_cpp_matches_pytorch(model, sample):
    from fastv_edge import PruneConfig

    got = [answer(model, q, img, PruneConfig(strategy="none")) for _, q, img, _, _ in sample]
    agree = sum(g == ref for g, (*_, ref) in zip(got, sample, strict=True))
    correct = sum(g == label for g, (_, _, _, label, _) in zip(got, sample, strict=True))
    print(f"\neasy-VQA stock: {agree}/{len(sample)} agree with PyTorch, {correct}/{len(sample)} correct vs labels")
    mismatches = [(i, q, g, ref) for g, (i, q, _, _, ref) in zip(got, sample, strict=True) if g != ref]
    assert agree >= 0.99 * len(sample), f"GGUF vs PyTorch mismatches (index, question, gguf, torch): {mismatches}"


def test_fastv_answers_stay_valid(model, sample):
    from fastv_edge import PruneConfig

    got = [answer(model, q, img, PruneConfig(layer=2, drop_ratio=0.5)) for _, q, img, _, _ in sample]
    correct = sum(g == label for g, (_, _, _, label, _) in zip(got, sample, strict=True))
    print(f"\neasy-VQA FastV K=2 R=0.5: {correct}/{len(sample)} correct vs labels")
    invalid = [(i, g) for g, (i, *_) in zip(got, sample, strict=True) if g not in CLASSES]
    assert not invalid, f"FastV produced answers outside the 13 classes: {invalid}"


def test_prune_eval_script_writes_a_sane_table(tmp_path):
    """models/easyvqa/prune_eval.py on 3 questions in 2 shards: every config answered, merged table + plot."""
    pytest.importorskip("easy_vqa")
    from models.easyvqa import prune_eval

    for shard in (0, 1):
        prune_eval.run_shard(3, shard, 2, tmp_path / "shards", threads=1)
    table = prune_eval.merge(tmp_path / "shards", tmp_path / "docs")
    result = json.loads((tmp_path / "docs" / "easyvqa-accuracy.json").read_text())
    names = [name for name, _ in prune_eval.configs()]
    assert result["n"] == 3 and sorted(result["accuracy"]) == sorted(names) and len(names) == 25 + 16
    assert all(0.0 <= acc <= 1.0 for acc in result["accuracy"].values())
    assert result["accuracy"]["baseline"] >= 2 / 3  # 99.5% model: at most one miss in 3
    assert (tmp_path / "docs" / "img" / "easyvqa-accuracy.png").stat().st_size > 0
    assert "| 128 (R=50%) |" in table and "random K=2" in table and "| divprune K=0 | dart K=0 |" in table
    rows = [r for p in (tmp_path / "shards").glob("shard-*.json") for r in json.loads(p.read_text())["rows"]]
    assert sorted(r["q"] for r in rows) == prune_eval.sample(3)
    assert all(r[name] in CLASSES for r in rows for name in ("baseline", "fastv K=2 R=0.50"))
    assert all(isinstance(r[name], str) for r in rows for name in names)
