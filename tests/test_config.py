"""PruneConfig / PreSelect / RuntimeConfig / SamplingConfig validation (pure Python)."""

import pytest

from fastv_edge.config import STRATEGIES, PreSelect, PruneConfig, RuntimeConfig, SamplingConfig


def test_defaults_are_the_papers_k2_r50():
    p = PruneConfig()
    assert (p.layer, p.drop_ratio, p.keep, p.strategy) == (2, 0.5, None, "fastv")
    assert p.enabled


def test_keep_replaces_the_default_ratio():
    p = PruneConfig(keep=64)
    assert p.drop_ratio is None and p.keep == 64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layer=0), "layer K"),  # fastv needs K >= 1: K=0 is for the pre-LLM strategies
        (dict(layer=-3), "layer K"),  # negative K
        (dict(layer=True), "layer K"),  # bool is not an int here
        (dict(layer=2.0), "layer K"),  # float K
        (dict(drop_ratio=1.0), r"\[0, 1\)"),  # R=1 would drop every image token
        (dict(drop_ratio=-0.1), r"\[0, 1\)"),  # negative R
        (dict(drop_ratio=float("nan")), r"\[0, 1\)"),  # NaN fails the range check
        (dict(drop_ratio="0.5"), r"\[0, 1\)"),  # a string is not a ratio
        (dict(drop_ratio=0.5, keep=10), "not both"),  # two budgets
        (dict(keep=-1), "keep"),  # negative keep
        (dict(keep=3.5), "keep"),  # fractional keep
        (dict(strategy="topk"), "strategy"),  # unknown strategy
        (dict(seed=1.5), "seed"),  # seeds are integers
        (dict(strategy="random", seed=-1), "seed"),  # numpy's Generator refuses negative seeds
        (dict(strategy="divprune", layer=2), "two stages"),  # pre-LLM strategies select at layer 0 only
        (dict(strategy="cdpruner", layer=1), "two stages"),  # ... even at K=1
        (dict(strategy="dart", layer=-1), "layer K"),  # negative K for a pre-LLM strategy
        (dict(strategy="random", layer=-1), "layer K"),  # random takes K >= 0
        (dict(strategy="none", layer=-1), "layer K"),  # none ignores K but it is still a layer
        (dict(strategy="cdpruner", relevance_weight=1.0), r"\[0, 1\)"),  # theta=1 makes alpha infinite
        (dict(strategy="cdpruner", relevance_weight=-0.1), "relevance_weight"),  # negative theta
        (dict(strategy="cdpruner", relevance_weight=True), "relevance_weight"),  # bool is not a weight
        (dict(strategy="divprune", pre="dart:10"), "without pre"),  # two pre-LLM stages
        (dict(strategy="random", layer=0, pre="dart:10"), "without pre"),  # random at K=0 is pre-LLM too
        (dict(strategy="none", pre="dart:10"), "in-LLM"),  # nothing to follow the pre stage
        (dict(keep=100, pre="divprune:50"), "keep <= 50"),  # B2 > B1, both absolute
        (dict(pre=("divprune", 192)), "PreSelect"),  # a tuple is not a stage
        (dict(pre="fastv:10"), "pre-LLM stage"),  # FastV cannot run before the LLM
        (dict(pre="none"), "pre-LLM stage"),  # an empty pre stage
    ],
)
def test_prune_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(**kwargs)


@pytest.mark.parametrize(
    "layer, n_layer, ok",
    [
        (1, 4, True),  # smallest K
        (3, 4, True),  # K = n_layer - 1 leaves one deep layer
        (4, 4, False),  # K = n_layer: nothing left to prune
        (9, 4, False),  # K beyond the model
    ],
)
def test_check_layer(layer, n_layer, ok):
    p = PruneConfig(layer=layer)
    if ok:
        p.check_layer(n_layer)
    else:
        with pytest.raises(ValueError, match=r"\[1, 3\]"):
            p.check_layer(n_layer)


@pytest.mark.parametrize(
    "kwargs, fields",
    [
        # every construction the code base and its tests make today keeps its meaning
        (dict(), dict(layer=2, drop_ratio=0.5, keep=None, strategy="fastv", seed=0)),  # the paper's K=2 R=50%
        (dict(layer=3, drop_ratio=0.0), dict(layer=3, drop_ratio=0.0)),  # R=0: the parity setting
        (dict(layer=8, drop_ratio=0.5), dict(layer=8, drop_ratio=0.5)),  # a deep K on a real model
        (dict(keep=64), dict(layer=2, drop_ratio=None, keep=64)),  # absolute budget
        (dict(drop_ratio=0.75), dict(layer=2, drop_ratio=0.75)),  # a larger R
        (dict(strategy="random", keep=10, seed=7), dict(layer=2, keep=10, seed=7)),  # in-LLM random baseline
        (dict(strategy="none"), dict(layer=2, drop_ratio=0.5)),  # stock path
        (dict(layer=50, strategy="none"), dict(layer=50)),  # stock path ignores K
        (dict(layer=4), dict(layer=4)),  # K checked later against the model
        (dict(layer=1, drop_ratio=0.9, keep=None, strategy="fastv", seed=0), dict(layer=1)),  # every field by name
        # the new strategies
        (dict(strategy="divprune", keep=64), dict(layer=0, keep=64)),  # pre-LLM: layer 0 by default
        (dict(strategy="dart", layer=0, drop_ratio=0.75), dict(layer=0, drop_ratio=0.75)),  # -k 0 spelled out
        (dict(strategy="cdpruner", relevance_weight=0), dict(relevance_weight=0.0)),  # theta=0: pure diversity
        (dict(strategy="random", layer=0, keep=5, seed=3), dict(layer=0, keep=5)),  # pre-LLM random baseline
        (dict(strategy="none", layer=0), dict(layer=0)),  # stock path, any layer
        (dict(keep=64, pre="divprune:192"), dict(pre=PreSelect("divprune", keep=192))),  # two stages from a spec
        (dict(keep=64, pre=PreSelect("cdpruner", drop_ratio=0.5)), dict(keep=64)),  # B1 known only with N
        (dict(strategy="random", layer=2, pre="dart:10"), dict(layer=2)),  # random in-LLM after a pre stage
    ],
)
def test_prune_config_accepts(kwargs, fields):
    p = PruneConfig(**kwargs)
    assert {name: getattr(p, name) for name in fields} == fields


@pytest.mark.parametrize(
    "kwargs, pre_llm, in_llm, pre_strategy",
    [
        (dict(), False, True, None),  # FastV alone
        (dict(strategy="random"), False, True, None),  # random at K=2: inside the LLM
        (dict(strategy="random", layer=0), True, False, "random"),  # random at K=0: before the LLM
        (dict(strategy="divprune"), True, False, "divprune"),
        (dict(strategy="dart"), True, False, "dart"),
        (dict(strategy="cdpruner"), True, False, "cdpruner"),
        (dict(strategy="none"), False, False, None),  # nothing anywhere
        (dict(keep=64, pre="cdpruner:192"), True, True, "cdpruner"),  # two stages
    ],
)
def test_stage_properties(kwargs, pre_llm, in_llm, pre_strategy):
    p = PruneConfig(**kwargs)
    assert (p.pre_llm, p.in_llm) == (pre_llm, in_llm)
    assert (p.pre_stage.strategy if p.pre_stage else None) == pre_strategy


def test_pre_stage_of_a_pre_llm_strategy_carries_its_fields():
    p = PruneConfig(strategy="cdpruner", keep=64, seed=3, relevance_weight=0.25)
    assert p.pre_stage == PreSelect("cdpruner", keep=64, seed=3, relevance_weight=0.25)


def test_strategies_list():
    assert STRATEGIES == ("fastv", "random", "divprune", "dart", "cdpruner", "none")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("divprune:192", PreSelect("divprune", keep=192)),  # a bare integer is keep
        ("divprune:r=0.5", PreSelect("divprune", drop_ratio=0.5)),  # a drop ratio
        ("cdpruner:144,theta=0.3", PreSelect("cdpruner", keep=144, relevance_weight=0.3)),  # CDPruner's theta
        ("random:keep=100,seed=3", PreSelect("random", keep=100, seed=3)),  # seeded baseline
        ("dart", PreSelect("dart")),  # no budget: R=0.5
        (" dart : r=0.25 , seed=1 ", PreSelect("dart", drop_ratio=0.25, seed=1)),  # spaces are forgiven
        ("divprune:0", PreSelect("divprune", keep=0)),  # keep nothing is a budget
    ],
)
def test_pre_select_parse(text, expected):
    assert PreSelect.parse(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "non-empty"),  # nothing to parse
        ("divprune:abc", "integers"),  # keep is not a number
        ("divprune:r=half", "numbers"),  # r is not a number
        ("divprune:x=1", "bad item"),  # unknown key
        ("divprune:1,2", "bad item"),  # two bare budgets
        ("divprune:keep=1,keep=2", "bad item"),  # a key twice
        ("divprune:192,r=0.5", "not both"),  # two budgets
        ("divprune:r=1.5", r"\[0, 1\)"),  # R out of range
        ("cdpruner:theta=1", "relevance_weight"),  # theta out of range
        ("fastv:64", "pre-LLM stage"),  # FastV is never a pre stage
        ("topk:64", "unknown strategy"),  # unknown strategy
        ("divprune:-3", "keep"),  # negative keep
    ],
)
def test_pre_select_parse_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        PreSelect.parse(text)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy="none"), "no stage"),  # leave pre=None instead
        (dict(strategy="fastv"), "main stage"),  # FastV needs attention
        (dict(strategy="divprune", keep=3, drop_ratio=0.5), "not both"),  # two budgets
        (dict(strategy="dart", seed="1"), "seed"),  # seeds are integers
    ],
)
def test_pre_select_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PreSelect(**kwargs)


def test_strategy_none_ignores_the_layer_bound():
    PruneConfig(layer=50, strategy="none").check_layer(4)  # stock path: K is unused


def test_pre_llm_strategies_need_no_layer_check():
    PruneConfig(strategy="divprune").check_layer(1)  # no in-LLM stage: K is not used
    PruneConfig(strategy="random", layer=0).check_layer(1)
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        PruneConfig(layer=4, pre="dart:10").check_layer(4)  # the FastV stage of two still is


def test_describe():
    assert PruneConfig().describe() == "fastv K=2 R=0.50"
    assert PruneConfig(keep=7, strategy="random").describe() == "random K=2 keep=7"
    assert PruneConfig(strategy="none").describe() == "none (stock)"
    assert PruneConfig(strategy="divprune", keep=64).describe() == "divprune K=0 keep=64"
    assert PruneConfig(strategy="cdpruner", drop_ratio=0.75).describe() == "cdpruner K=0 R=0.75 theta=0.50"
    two = PruneConfig(layer=2, keep=64, pre=PreSelect("divprune", keep=192))
    assert two.describe() == "divprune K=0 keep=192 + fastv K=2 keep=64"


def test_frozen():
    with pytest.raises(AttributeError):
        PruneConfig().layer = 3


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_ctx=0),
        dict(n_batch=-1),
        dict(n_ubatch=0),
        dict(n_threads=0),
        dict(n_ctx=1.5),
    ],
)
def test_runtime_config_rejects(kwargs):
    with pytest.raises(ValueError):
        RuntimeConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(temp=-0.1),
        dict(top_p=1.5),
        dict(min_p=-0.1),
        dict(top_k=-1),
        dict(seed=-1),
        dict(repeat_penalty=0),
    ],
)
def test_sampling_config_rejects(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)
