"""Calibration and TTFT budgets on tiny real models: a qwen2vl text model with a qwen2vl_merger projector
(dynamic resolution, so caps matter) and the tiny llama with a CLIP projector (fixed resolution)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import fastv_edge as fe
from fastv_edge.bench.workload import synthetic_picture
from fastv_edge.budget import ensure_calibration
from fastv_edge.calibrate import calibrate
from fastv_edge.calibration_store import calibration_path, file_identity, load_calibration, save_calibration
from fastv_edge.cap_tokens import rule_for
from fastv_edge.planner import BudgetTooSmallError

pytestmark = pytest.mark.native
RUNTIME = fe.RuntimeConfig(n_ctx=1024, n_threads=1)


@pytest.fixture(scope="module")
def qwen_pair(tiny_dir):
    from fastv_edge.testing.make_tiny_archs import make_tiny_qwen2vl
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj

    lm = make_tiny_qwen2vl(tiny_dir)
    mmproj, _ = make_tiny_vision_mmproj(tiny_dir, "qwen2vl_merger", lm.hparams.n_embd, out_std=0.5)
    return lm.path, mmproj


@pytest.fixture(scope="module")
def qwen(qwen_pair):
    with fe.load(*qwen_pair, runtime=RUNTIME, prune=fe.PruneConfig(strategy="none")) as model:
        yield model


@pytest.fixture(scope="module")
def qwen_cost(qwen):
    cost, fresh = ensure_calibration(qwen)
    assert fresh  # the session's calibration folder starts empty
    return cost


@pytest.fixture(scope="module")
def llama(tiny):
    with fe.load(tiny.llama_path, tiny.mmproj_path, runtime=RUNTIME) as model:
        yield model


def _sane(cost):
    values = [cost.layer_token_ms, cost.layer_pair_ms, cost.stock_fixed_ms, cost.request_fixed_ms, *cost.encode.coef]
    values += [c for s in cost.select.values() for c in s.coef]
    assert all(math.isfinite(v) and v >= 0 for v in values)  # non-negative fits: monotone by construction
    assert cost.layer_token_ms + cost.layer_pair_ms > 0  # more tokens cost more
    prefill = [cost.prefill_ms(n) for n in (16, 64, 256, 1024)]
    assert prefill == sorted(prefill) and prefill[-1] > prefill[0]
    assert set(cost.select) == {"divprune", "dart", "cdpruner", "random"}


def test_dynamic_calibration_is_sane_and_monotone(qwen, qwen_cost):
    _sane(qwen_cost)
    meta = qwen_cost.meta
    assert len(set(meta["encode"]["tokens"])) >= 3  # a ladder of sizes, not one number
    assert qwen_cost.encode.fixed_tokens is None and qwen_cost.encode.patches_per_token == 4
    encode = [qwen_cost.encode.ms(n) for n in (16, 64, 256, 1024, 4096)]
    assert encode == sorted(encode) and encode[-1] > encode[0]
    assert qwen_cost.mtmd_reopen_ms > 0  # the projector honours caps: changing one re-opens mtmd
    # every measurement went into the fits; the curve is not garbage at the largest (least noisy) encode
    # (a loose bound: the machine may be shared, and its timings with it)
    stages = [s["stage"] for s in meta["prefill"]]
    assert stages.count("stock") == 2 and stages.count("shallow") == stages.count("deep") == 2
    assert max(s["n"] for s in meta["prefill"]) > 1000 - 100  # the long prompt (bounded by n_ctx 1024)
    assert len(meta["prefill_fit_rel_err"]) == len(stages)
    assert 1 / 3 < 1 + meta["encode_fit_rel_err"][-1] < 3


def test_fixed_calibration_is_one_number(llama, tiny):
    cost = calibrate(llama)
    _sane(cost)
    assert cost.encode.fixed_tokens == tiny.n_image_tokens
    assert cost.encode.coef[1:] == (0.0, 0.0) and cost.encode.coef[0] > 0
    assert cost.mtmd_reopen_ms == 0.0  # a cap changes nothing on CLIP


def test_stored_calibration_is_reused(qwen, qwen_pair, qwen_cost):
    path = calibration_path(qwen)
    assert path.is_file()
    again, fresh = ensure_calibration(qwen)
    assert not fresh and again.to_dict() == qwen_cost.to_dict()
    # the same files loaded again find it; another thread count is another machine setting
    with fe.load(*qwen_pair, runtime=RUNTIME, prune=fe.PruneConfig(strategy="none")) as other:
        assert calibration_path(other) == path
    two = fe.RuntimeConfig(n_ctx=1024, n_threads=2)
    with fe.load(*qwen_pair, runtime=two, prune=fe.PruneConfig(strategy="none")) as other:
        assert calibration_path(other) != path and load_calibration(other) is None


def test_corrupt_or_foreign_calibration_is_measured_again(qwen, qwen_cost, monkeypatch):
    path = calibration_path(qwen)
    good = path.read_text()
    try:
        path.write_text(good[: len(good) // 2])  # truncated JSON
        assert load_calibration(qwen) is None
        data = json.loads(good)
        data["cost_model"]["version"] = -1
        path.write_text(json.dumps(data))
        assert load_calibration(qwen) is None
    finally:
        save_calibration(qwen, qwen_cost)
    assert load_calibration(qwen).to_dict() == qwen_cost.to_dict()


def test_file_identity_follows_the_content(tmp_path):
    a = tmp_path / "a.gguf"
    a.write_bytes(bytes(3 << 20))
    first = file_identity(a)
    b = tmp_path / "b.gguf"
    b.write_bytes(a.read_bytes())
    assert file_identity(b) == first  # a copy is the same model
    with open(b, "r+b") as f:
        f.seek((3 << 20) - 10)
        f.write(b"x")
    assert file_identity(b) != first  # an edit near the end is seen


@pytest.fixture(scope="module", params=["qwen2vl_merger", "qwen2.5vl_merger"])
def merger(request, qwen_pair, tiny_dir):
    from fastv_edge.testing.make_tiny_archs import make_tiny_qwen2vl
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj

    lm = make_tiny_qwen2vl(tiny_dir)
    shape = {"n_wa_pattern": 2} if request.param == "qwen2.5vl_merger" else {}
    mmproj, _ = make_tiny_vision_mmproj(tiny_dir, request.param, lm.hparams.n_embd, out_std=0.5, **shape)
    with fe.load(lm.path, mmproj, runtime=RUNTIME, prune=fe.PruneConfig(strategy="none")) as model:
        yield model


@pytest.mark.parametrize("size", [(128, 80), (300, 200), (77, 333), (1000, 700), (5, 3000)])
@pytest.mark.parametrize("cap", [None, 16, 36, 100])
def test_resize_rule_matches_mtmd(merger, size, cap):
    from fastv_edge.gguf_header import read_header
    from fastv_edge.prompt import tokenize

    header = read_header(merger.mmproj.path)
    rule = rule_for(merger.mmproj.projector_type, header.get("clip.vision.patch_size"))
    img = synthetic_picture(1, *size)
    merger.set_image_tokens(None, cap)
    try:
        with tokenize(merger.llm, merger.mtmd_ctx, merger.marker, [img], add_special=False) as p:
            piece = p.images[0]
            assert rule.grid(*size, max_tokens=cap) == piece.grid
            assert rule.n_tokens(*size, max_tokens=cap) == piece.n_tokens
    finally:
        merger.set_image_tokens(None, None)


def _ask(model, img, **kw):
    return list(
        fe.stream_generate(model, f"{model.marker}\nWhat is it?\n", [img], max_tokens=2, apply_template=False, **kw)
    )[-1]


def _bounds(model, img, cost) -> tuple[float, float]:
    """(smallest achievable, whole image) predicted TTFT in s, planned now (no request runs, so the
    speed factor the next request plans with stays as it is)."""
    from fastv_edge.budget import plan_request

    text = f"{model.marker}\nWhat is it?\n"
    with pytest.raises(BudgetTooSmallError) as err:
        plan_request(model, [img], text, 1e-9, cost)
    full, _ = plan_request(model, [img], text, 1e9, cost)
    return err.value.minimum_s, full.predicted_ms / 1e3


def test_budget_request_end_to_end(qwen, qwen_cost):
    img = synthetic_picture(5, 600, 400)
    stock = _ask(qwen, img)
    assert stock.plan is None
    generous = _ask(qwen, img, ttft_budget=1000.0)
    assert generous.plan.family == "none" and generous.plan.cap is None
    assert generous.n_kept == generous.n_image_tokens == stock.n_image_tokens
    # a budget between the fastest plan and the whole image: fewer image tokens, prediction within it
    img = synthetic_picture(12, 600, 400)  # not cached
    lowest, full = _bounds(qwen, img, qwen_cost)
    budget = (lowest + full) / 2
    tight = _ask(qwen, img, ttft_budget=budget)
    assert tight.n_kept < stock.n_image_tokens
    assert tight.plan.predicted_ms <= budget * 1e3 and tight.plan.n_kept == tight.n_kept
    if tight.plan.cap is not None:
        assert tight.n_image_tokens == tight.plan.n_image < stock.n_image_tokens  # mtmd used the cap
    assert qwen.runtime.image_max_tokens is None  # and it was restored after the request
    summary = tight.summary()
    assert summary["plan"]["predicted_ms"] == pytest.approx(tight.plan.predicted_ms)


def _lowest(model, cost, img) -> float:
    with pytest.raises(BudgetTooSmallError) as err:
        _ask(model, img, ttft_budget=1e-6)
    assert "at least" in str(err.value)
    return err.value.minimum_s


def test_refused_budget_leaves_the_model_working(qwen, qwen_cost):
    img = synthetic_picture(6, 200, 120)
    _lowest(qwen, qwen_cost, img)
    after = _ask(qwen, img)
    assert after.n_image_tokens > 0 and after.finish_reason is not None


def test_budget_with_a_named_strategy(qwen, qwen_cost):
    img = synthetic_picture(7, 600, 400)
    lowest = _lowest(qwen, qwen_cost, img)
    for prune, family in ((fe.PruneConfig(strategy="divprune"), "divprune"), (fe.PruneConfig(layer=2), "fastv")):
        r = _ask(qwen, img, ttft_budget=lowest * 1.5, prune=prune)
        assert r.plan.family in (family, "none")


def test_chat_session_with_a_budget(qwen_pair, qwen_cost):
    with fe.load(*qwen_pair, runtime=RUNTIME, template="qwen2-vl") as model:
        session = fe.ChatSession(model, ttft_budget=1000.0, max_tokens=2)
        img = synthetic_picture(8, 300, 200)
        first = list(session.send("What is it?", [img]))[-1]
        assert first.plan is not None and first.plan.n_kept == first.n_image_tokens
        second = list(session.send("And the colour?"))[-1]
        assert second.plan is None  # a turn without an image has nothing to plan
        third = list(session.send("Now this one?", [img], ttft_budget=2000.0))[-1]
        assert third.plan.budget_ms == 2e6 and third.plan.predicted_ms <= 2e6


def test_cached_image_is_planned_without_its_encode(qwen_pair, qwen_cost, tmp_path):
    runtime = fe.RuntimeConfig(n_ctx=1024, n_threads=1, embedding_cache_dir=str(tmp_path))
    with fe.load(*qwen_pair, runtime=runtime, prune=fe.PruneConfig(strategy="none")) as model:
        img = synthetic_picture(9, 640, 480)
        first = _ask(model, img, ttft_budget=1000.0)
        second = _ask(model, img, ttft_budget=1000.0)
    assert not first.stats.images[0].cached and second.stats.images[0].cached
    cached_ms = qwen_cost.cached_image_ms * second.plan.speed_factor  # as fast as the machine runs now
    assert first.plan.parts["encode"] > second.plan.parts["encode"] == pytest.approx(cached_ms)


def test_selection_cost_grows_with_n(qwen_cost):
    for name, s in qwen_cost.select.items():
        times = [s.ms(n, n // 4) for n in (64, 256, 1024)]
        assert times == sorted(times), name
    assert np.all(np.isfinite([qwen_cost.select_ms("divprune", 4096, 1024)]))


def test_measurement_scripts_run_and_are_sane(qwen_pair, qwen_cost, photos, tmp_path):
    from fastv_edge.bench import planner_accuracy, ttft_table

    lm, mmproj = map(str, qwen_pair)
    table = tmp_path / "table.json"
    args = ["-m", lm, "--mmproj", mmproj, "--image", str(photos["chelsea"]), "-c", "1024", "--cap", "64"]
    assert ttft_table.main([*args, "--out", str(table)]) == 0
    rows = {r["label"]: r for r in json.loads(table.read_text())["rows"]}
    assert set(rows) == {"stock", "cap only", "selection only", "cap + selection", "planner", "cached image"}
    stock, cached = rows["stock"]["runs"][0], rows["cached image"]["runs"][0]
    assert stock["n_kept"] == stock["n_image"] > rows["cap only"]["runs"][0]["n_image"]  # the cap took effect
    assert rows["selection only"]["runs"][0]["n_kept"] == stock["n_image"] // 4
    assert cached["cached"] and not stock["cached"] and cached["encode_ms"] < stock["encode_ms"]
    assert all(r["ttft_ms"] > 0 for r in rows.values())
    accuracy = tmp_path / "accuracy.json"
    assert planner_accuracy.main([*args[:-2], "--points", "3", "--out", str(accuracy)]) == 0
    result = json.loads(accuracy.read_text())
    assert result["summary"]["n"] == 3 and result["summary"]["median_abs_error"] >= 0
    budgets = [r["budget_s"] for r in result["rows"]]
    assert budgets == sorted(budgets) and all(r["plan"]["predicted_ms"] <= r["budget_s"] * 1e3 for r in result["rows"])


def test_budget_on_a_fixed_resolution_model(llama):
    img = synthetic_picture(10, 640, 480)
    full = _ask(llama, img, ttft_budget=1e6)
    assert full.plan.family == "none" and full.plan.cap is None  # nothing to cap on CLIP
    other = synthetic_picture(11, 640, 480)  # not in the embedding cache yet
    lowest, whole = _bounds(llama, other, load_calibration(llama))
    tight = _ask(llama, other, ttft_budget=(lowest + whole) / 2)  # selection on a 1-D model: kept rows keep positions
    assert tight.plan.family != "none" and tight.n_kept == tight.plan.n_kept < full.n_kept
