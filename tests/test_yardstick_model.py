"""The shipped yardstick GGUF pair through the real patched llama.cpp, against the PyTorch model's answers.

models/yardstick/reference_answers.json holds PyTorch greedy answers (python -m models.yardstick.export
--reference N) to an equal number of test questions of every kind; the test images are rebuilt by the
seeded generator. The prompt is the exact trained one (no chat template), so a disagreement comes from
the export (Q8_0 LM, F32 mmproj, llama.cpp kernels). Run with -s to see the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
YARDSTICK = ROOT / "models" / "yardstick"
LM = YARDSTICK / "yardstick-lm-q8_0.gguf"
MMPROJ = YARDSTICK / "yardstick-mmproj-f32.gguf"

pytestmark = pytest.mark.native


@pytest.fixture(scope="module")
def reference():
    rows = json.loads((YARDSTICK / "reference_answers.json").read_text())["rows"]
    assert len(rows) >= 60 and len({r["kind"] for r in rows}) == 6
    return rows


@pytest.fixture(scope="module")
def model():
    if not (LM.exists() and MMPROJ.exists()):
        pytest.skip(f"{LM.name} / {MMPROJ.name} missing: python -m models.yardstick.export --weights DIR")
    from models.yardstick.export import load_gguf

    with load_gguf(threads=1) as m:
        yield m


def _answers(model, rows, prune=None) -> list[str]:
    from models.yardstick.export import answer, test_image

    return [answer(model, r["question"], test_image(r["image"]), prune=prune) for r in rows]


def test_shipped_files_are_small_and_describe_an_8_layer_256_token_model(model):
    assert LM.stat().st_size + MMPROJ.stat().st_size <= 40 * 1024 * 1024
    assert model.info.n_layer >= 8


def test_reference_questions_are_the_generators(reference):
    from models.yardstick.generator import load_params, make_example
    from models.yardstick.questions import check

    p = load_params()
    for r in reference[:: max(1, len(reference) // 12)]:
        scene, _, questions = make_example(p, "test", r["image"])
        assert {"kind": r["kind"], "question": r["question"], "answer": r["label"]} in questions
        assert check(scene, r["question"], p) == r["label"]


def test_one_question_per_kind_matches_pytorch(model, reference):
    rows = [next(r for r in reference if r["kind"] == k) for k in dict.fromkeys(r["kind"] for r in reference)]
    got = _answers(model, rows)
    assert got == [r["torch"] for r in rows], list(zip(got, [r["torch"] for r in rows], strict=True))


@pytest.mark.slow
def test_gguf_matches_pytorch_on_the_reference_sample(model, reference):
    got = _answers(model, reference)
    agree = sum(g == r["torch"] for g, r in zip(got, reference, strict=True))
    correct = sum(g == r["label"] for g, r in zip(got, reference, strict=True))
    print(f"\nyardstick stock: {agree}/{len(reference)} agree with PyTorch, {correct}/{len(reference)} correct")
    mismatches = [
        (r["q"], r["question"], g, r["torch"]) for g, r in zip(got, reference, strict=True) if g != r["torch"]
    ]
    assert agree >= 0.99 * len(reference), f"GGUF vs PyTorch (q, question, gguf, torch): {mismatches}"


def _budget_settings():
    from models.yardstick.settings import settings

    return [s for s in settings(8) if s.keep == 28]


@pytest.mark.parametrize("setting", _budget_settings(), ids=lambda s: s.family)
def test_every_strategy_keeps_its_budget_in_the_deep_layers(model, reference, setting):
    """Each sweep family at 28 of 256 tokens, one question per kind, through llama.cpp: exactly 28 distinct image
    tokens reach the deep layers, and the KV cache holds the text plus the B1 rows that entered the LLM (pre-LLM
    selection on this 1-D RoPE model decodes the kept rows at their own positions, which jump forward)."""
    from fastv_edge.pruning import stage_budgets
    from models.yardstick.export import ask, test_image

    rows = [next(r for r in reference if r["kind"] == k) for k in dict.fromkeys(r["kind"] for r in reference)]
    for r in rows:
        prune = setting.make(r["q"])
        got, stats = ask(model, r["question"], test_image(r["image"]), prune=prune)
        assert got, (setting.name, r["question"])  # any text: a pruned model may answer outside the data set's words
        assert stats.n_kept == len(stats.kept) == len(set(stats.kept)) == 28, setting.name
        assert all(0 <= i < 256 for i in stats.kept)
        b1 = stage_budgets(prune, 256)[0]
        assert stats.n_cells == stats.n_prompt_tokens - 256 + b1, (setting.name, stats.n_cells, b1)
