"""PruneConfig / RuntimeConfig / SamplingConfig validation (pure Python)."""

import pytest

from fastv_edge.config import PruneConfig, RuntimeConfig, SamplingConfig


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
        (dict(layer=0), "layer K"),  # K<1: the paper's K=0 is random pre-LLM pruning
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


def test_strategy_none_ignores_the_layer_bound():
    PruneConfig(layer=50, strategy="none").check_layer(4)  # stock path: K is unused


def test_describe():
    assert PruneConfig().describe() == "fastv K=2 R=0.50"
    assert PruneConfig(keep=7, strategy="random").describe() == "random K=2 keep=7"
    assert PruneConfig(strategy="none").describe() == "none (stock)"


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
