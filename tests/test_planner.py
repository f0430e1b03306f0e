"""The TTFT planner on fake cost models (pure Python): the chosen plan is the best feasible one."""

from __future__ import annotations

import math

import pytest

from fastv_edge.cap_tokens import ResizeRule, rule_for
from fastv_edge.cost_model import CostModel, EncodeCost, SelectCost
from fastv_edge.planner import (
    DEFAULT_FAMILIES,
    MIN_KEEP,
    BudgetTooSmallError,
    CapOption,
    Request,
    minimum_plan,
    plan,
    predict,
    rank_key,
)


def fake_cost(encode=(200.0, 0.5, 0.0005), per_token_layer=0.5, select_ms=5.0, fixed=(100.0, 20.0, 30.0)) -> CostModel:
    """32 layers, 0.5 ms per token per layer (16 ms a token), a quadratic encoder over patches (merge 2)."""
    per_n2 = 1e-5
    return CostModel(
        n_layer=32,
        layer_token_ms=per_token_layer,
        layer_pair_ms=1e-5,
        stock_fixed_ms=fixed[0],
        shallow_fixed_ms=fixed[1],
        deep_fixed_ms=fixed[2],
        encode=EncodeCost(encode, patches_per_token=4),
        select={
            "divprune": SelectCost((select_ms, per_n2, 0.0, 0.0)),
            "cdpruner": SelectCost((select_ms, per_n2, 1e-5, 1e-7)),
            "dart": SelectCost((select_ms / 5, 0.0, 1e-6, 0.0)),
            "random": SelectCost((0.1, 0.0, 0.0, 0.0)),
        },
        request_fixed_ms=50.0,
        cached_image_ms=3.0,
    )


RULE = ResizeRule(patch_size=14, merge=2)


def dynamic_request(width=1024, height=768, caps=(64, 144, 256, 576), cached=False, n_text=40) -> Request:
    options = [CapOption(None, (RULE.n_tokens(width, height),), (cached,))]
    options += [CapOption(c, (RULE.n_tokens(width, height, c),), (cached,)) for c in caps]
    return Request(n_text=n_text, options=tuple(options))


def fixed_request(n_tokens=576, n_text=60) -> Request:
    return Request(n_text=n_text, options=(CapOption(None, (n_tokens,)),))


@pytest.mark.parametrize(
    "request_, budget_s, family, cap, n_kept",
    [
        (dynamic_request(), 1000.0, "none", None, 999),  # generous: the whole image, no cap, no pruning
        (fixed_request(), 1000.0, "none", None, 576),  # generous on a fixed-resolution projector
        (dynamic_request(), 8.0, "none", 256, 234),  # tight: the largest cap that fits beats selecting
        (fixed_request(), 8.0, "cdpruner", None, None),  # no cap to take: the most accurate selection
        (dynamic_request(cached=True), 19.0, "none", None, 999),  # cached: no encode, the whole image fits
    ],
)
def test_chosen_plan(request_, budget_s, family, cap, n_kept):
    chosen = plan(fake_cost(), request_, budget_s)
    assert (chosen.family, chosen.cap) == (family, cap)
    if n_kept is not None:
        assert chosen.n_kept == n_kept
    assert chosen.predicted_ms <= budget_s * 1e3
    assert chosen.budget_ms == budget_s * 1e3


def _brute_force(cost, req, budget_s, families, layer=2):
    """Every feasible plan of the one-stage families and 'none', every keep count: the best by rank_key."""
    best = None
    for opt in req.options:
        n = opt.n_image
        for fam in families:
            keeps = [n] if fam == "none" else range(min(MIN_KEEP, n), n)
            for b in keeps:
                b1 = n if fam in ("none", "fastv") else b
                p = predict(cost, req, opt, fam, b1, b, layer)
                if p.predicted_ms <= budget_s * 1e3 and (best is None or rank_key(p) < rank_key(best)):
                    best = p
    return best


@pytest.mark.parametrize("budget_s", [2.5, 3.0, 4.0, 6.0, 9.0, 14.0, 30.0])
@pytest.mark.parametrize("kind", ["dynamic", "fixed", "two-images"])
def test_plan_is_best_feasible(budget_s, kind):
    cost = fake_cost()
    families = ("none", "divprune", "cdpruner", "dart", "fastv")
    if kind == "dynamic":
        req = dynamic_request(640, 480, caps=(32, 64, 100, 144))
    elif kind == "fixed":
        req = fixed_request(144)
    else:  # two images share one cap and split the budget
        req = Request(30, (CapOption(None, (130, 70)), CapOption(64, (54, 30))))
    expected = _brute_force(cost, req, budget_s, families)
    if expected is None:
        with pytest.raises(BudgetTooSmallError):
            plan(cost, req, budget_s, families=families)
        return
    chosen = plan(cost, req, budget_s, families=families)
    assert rank_key(chosen) == rank_key(expected)


def test_infeasible_budget_names_the_minimum():
    cost, req = fake_cost(), fixed_request()
    fastest = minimum_plan(cost, req, DEFAULT_FAMILIES)
    with pytest.raises(BudgetTooSmallError) as err:
        plan(cost, req, 2.0)
    assert err.value.minimum_s == pytest.approx(fastest.predicted_ms / 1e3)
    least = math.ceil(fastest.predicted_ms / 10) / 100
    assert f"at least {least:.2f} s" in str(err.value)
    plan(cost, req, least)  # the budget the message names is met
    assert isinstance(err.value, ValueError)  # a bad argument, by the project's rules
    ok = plan(cost, req, fastest.predicted_ms / 1e3 + 1e-6)  # just above the minimum: a plan
    assert ok.n_kept == MIN_KEEP


@pytest.mark.parametrize(
    "request_",
    [
        fixed_request(),
        dynamic_request(451, 300, caps=(16, 36, 100)),  # a cap of 16 gives 12 tokens: nothing left to prune
        Request(20, (CapOption(None, (10,)), CapOption(8, (6,)))),  # every option at or below MIN_KEEP
    ],
)
def test_the_named_minimum_is_a_plan(request_):
    # the smallest time the refusal names is met by a plan the planner itself would make
    cost = fake_cost(fixed=(3000.0, 10.0, 10.0))  # FastV's stages cheaper than a stock prefill
    fastest = minimum_plan(cost, request_, DEFAULT_FAMILIES)
    chosen = plan(cost, request_, fastest.predicted_ms / 1e3 + 1e-9)
    assert chosen.predicted_ms == pytest.approx(fastest.predicted_ms)
    with pytest.raises(BudgetTooSmallError):
        plan(cost, request_, fastest.predicted_ms / 1e3 * 0.999)


def test_encoder_bound_minimum_includes_the_encode():
    # a fixed-resolution encoder of 60 s (Gemma-3-4B's shape on this CPU) cannot be planned away
    cost = fake_cost(encode=(60_000.0, 0.0, 0.0))
    with pytest.raises(BudgetTooSmallError) as err:
        plan(cost, fixed_request(256), 30.0)
    assert err.value.minimum_s > 60.0


def test_family_restriction_is_honoured():
    cost, req = fake_cost(), dynamic_request()
    chosen = plan(cost, req, 8.0, families=("fastv",), layer=3)
    assert chosen.family == "fastv" and chosen.layer == 3
    config = chosen.prune_config()
    assert (config.strategy, config.layer, config.keep) == ("fastv", 3, chosen.n_kept)
    two = plan(cost, req, 8.0, families=("divprune+fastv",))
    assert two.n_kept < two.n_enter < two.n_image and two.stages == 2
    config = two.prune_config()
    assert config.pre.strategy == "divprune" and config.pre.keep == two.n_enter and config.keep == two.n_kept


def test_fewer_stages_and_preference_break_ties():
    cost = fake_cost(select_ms=0.0)
    req = fixed_request(576)
    chosen = plan(cost, req, 8.0)
    # at one rung the pre-LLM cut is never slower than FastV or two stages: they are not chosen
    alternatives = [plan(cost, req, 8.0, families=(f,)) for f in ("fastv", "divprune+fastv", "divprune")]
    assert all(rank_key(chosen) <= rank_key(a) for a in alternatives)
    assert chosen.family == "cdpruner"


def test_context_limit_forces_a_smaller_plan():
    req = dynamic_request(caps=())
    limited = Request(req.n_text, req.options, n_ctx=512)
    chosen = plan(fake_cost(), limited, 1000.0)
    assert chosen.n_enter + limited.n_text <= 512 and chosen.family != "none"


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(budget_s=0), "ttft_budget"),
        (dict(budget_s=-1.0), "ttft_budget"),
        (dict(budget_s=True), "ttft_budget"),
        (dict(budget_s=5.0, families=("magic",)), "unknown plan family"),
        (dict(budget_s=5.0, layer=32), "layer K"),
    ],
)
def test_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        plan(fake_cost(), fixed_request(), **bad)


def test_prediction_grows_with_the_keep_count():
    cost, req = fake_cost(), fixed_request()
    opt = req.options[0]
    for fam in ("divprune", "fastv", "cdpruner"):
        times = [
            predict(cost, req, opt, fam, 576 if fam == "fastv" else b, b, 2).predicted_ms for b in range(16, 576, 20)
        ]
        assert times == sorted(times)


@pytest.mark.parametrize(
    "size, cap, grid",
    [
        ((1024, 768), None, (37, 27)),  # 999 tokens: the photo, no cap
        ((1024, 768), 576, (27, 20)),  # capped: beta = sqrt(W H / (576 * 28^2)), floor(W / beta / 28)
        ((1024, 768), 256, (18, 13)),
        ((1024, 768), 64, (9, 6)),
        ((28, 28), None, (3, 3)),  # below the 8-token minimum: upscaled, ceil(28 sqrt(8) / 28)
        ((5000, 20), None, (179, 1)),  # extreme aspect: round(5000 / 28) columns, at least one row
    ],
)
def test_resize_rule(size, cap, grid):
    assert RULE.grid(*size, max_tokens=cap) == grid


def test_resize_rule_only_for_known_projectors():
    assert rule_for("qwen2vl_merger", 14).align == 28
    assert rule_for("mlp", 14) is None and rule_for("gemma3", 14) is None


def test_scaled_cost_scales_every_prediction():
    cost, req = fake_cost(), dynamic_request()
    for fam, b1, b2 in (("none", 999, 999), ("divprune", 300, 300), ("fastv", 999, 300), ("dart+fastv", 500, 200)):
        base = predict(cost, req, req.options[0], fam, b1, b2, 2).predicted_ms
        assert predict(cost.scaled(1.5), req, req.options[0], fam, b1, b2, 2).predicted_ms == pytest.approx(1.5 * base)


@pytest.mark.parametrize(
    "measured_ratios, expected",
    [
        ([], 1.0),  # no request yet: the calibration as measured
        ([2.0], 2**0.5),  # half way (geometric) towards what the first request showed
        ([2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0], 2.0),  # a machine that stays twice as slow: converges
        ([100.0], 2.0),  # one outlier moves it at most by the clamp (4x), then half way
    ],
)
def test_speed_factor_follows_the_measurements(measured_ratios, expected):
    from dataclasses import replace

    from fastv_edge import budget

    class Model:  # budget keys the factor by the model object
        pass

    model = Model()
    base = plan(fake_cost(), fixed_request(), 1000.0)
    for ratio in measured_ratios:
        factor = budget.speed_factor(model)
        chosen = replace(base, predicted_ms=base.predicted_ms * factor, speed_factor=factor)
        budget.observe(model, chosen, base.predicted_ms * ratio)
    assert budget.speed_factor(model) == pytest.approx(expected, rel=1e-2)
