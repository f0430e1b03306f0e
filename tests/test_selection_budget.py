"""Budgets of the pre-LLM and two-stage configurations, and their split across images (pure numpy)."""

import numpy as np
import pytest

from fastv_edge.config import PreSelect, PruneConfig
from fastv_edge.pruning import make_pruner, select_random, split_budget, stage_budgets
from fastv_edge.selection import cdpruner, divprune, select_images, select_stage


@pytest.mark.parametrize(
    "counts, k, shares",
    [
        ([576], 64, [64]),  # one image takes it all
        ([576, 576], 64, [32, 32]),  # equal images, equal shares
        ([100, 50], 10, [7, 3]),  # 6.67 / 3.33: the larger remainder gets the extra token
        ([1, 1, 1], 2, [1, 1, 0]),  # equal remainders: earlier images first
        ([0, 10], 5, [0, 5]),  # an image without tokens gets nothing
        ([3, 3], 6, [3, 3]),  # keep all
        ([5, 7], 0, [0, 0]),  # keep nothing
        ([], 0, []),  # no images
        ([576, 144, 64], 192, [141, 35, 16]),  # 141.07 / 35.27 / 15.67 -> the third image rounds up
    ],
)
def test_split_budget(counts, k, shares):
    assert split_budget(counts, k) == shares


@pytest.mark.parametrize("seed", range(20))
def test_split_budget_is_exact_and_proportional(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 800, size=rng.integers(1, 6)).tolist()
    k = int(rng.integers(0, sum(counts) + 1))
    shares = split_budget(counts, k)
    assert sum(shares) == k
    total = sum(counts) or 1
    assert all(0 <= s <= n and abs(s - k * n / total) < 1 for s, n in zip(shares, counts, strict=True))


@pytest.mark.parametrize(
    "counts, k, message",
    [
        ([10, 10], 21, r"\[0, 20\]"),  # more than all tokens
        ([10], -1, "n_keep"),  # negative budget
        ([10], True, "n_keep"),  # bool is not a count
        ([10, -2], 1, "counts"),  # negative image size
        ([2.5], 1, "counts"),  # fractional image size
    ],
)
def test_split_budget_rejects(counts, k, message):
    with pytest.raises(ValueError, match=message):
        split_budget(counts, k)


@pytest.mark.parametrize(
    "config, n, budgets",
    [
        (PruneConfig(), 576, (576, 288)),  # FastV alone: all enter, R=0.5 kept from K
        (PruneConfig(keep=64), 576, (576, 64)),
        (PruneConfig(strategy="none"), 576, (576, 576)),  # stock
        (PruneConfig(strategy="divprune", keep=64), 576, (64, 64)),  # pre-LLM alone
        (PruneConfig(strategy="cdpruner", drop_ratio=0.75), 576, (144, 144)),
        (PruneConfig(strategy="random", layer=0, keep=10), 576, (10, 10)),  # random before the LLM
        (PruneConfig(strategy="random", keep=10), 576, (576, 10)),  # random inside it
        (PruneConfig(keep=64, pre=PreSelect("divprune", keep=192)), 576, (192, 64)),  # two stages
        (PruneConfig(drop_ratio=0.5, pre=PreSelect("divprune", keep=192)), 576, (192, 96)),  # R on B1
        (PruneConfig(keep=64, pre="dart:r=0.5"), 576, (288, 64)),
        (PruneConfig(keep=64, pre="dart:r=0.5"), 128, (64, 64)),  # B2 = B1 is allowed
        (PruneConfig(strategy="divprune", keep=0), 10, (0, 0)),  # keep no image token
        (PruneConfig(), 0, (0, 0)),  # no image
        (PruneConfig(keep=64), 0, (0, 0)),  # absolute budgets of a text-only turn: nothing to prune, no error
        (PruneConfig(strategy="divprune", keep=16), 0, (0, 0)),
        (PruneConfig(keep=8, pre="cdpruner:16"), 0, (0, 0)),
    ],
)
def test_stage_budgets(config, n, budgets):
    assert stage_budgets(config, n) == budgets


@pytest.mark.parametrize(
    "config, n, message",
    [
        (PruneConfig(keep=64, pre="dart:r=0.5"), 100, "keep=64 image tokens but only 50 of 100"),  # B2 > B1
        (PruneConfig(keep=64, pre="divprune:192"), 144, "larger than the 144"),  # B1 > N
        (PruneConfig(strategy="divprune", keep=65), 64, "larger than the 64"),  # pre-LLM keep > N
        (PruneConfig(), -1, "n_image"),  # negative N
    ],
)
def test_stage_budgets_rejects(config, n, message):
    with pytest.raises(ValueError, match=message):
        stage_budgets(config, n)


def test_make_pruner_refuses_pre_llm_configurations():
    with pytest.raises(ValueError, match="before the LLM"):
        make_pruner(PruneConfig(strategy="divprune", keep=4))
    assert make_pruner(PruneConfig(keep=2, pre="dart:4"))(np.array([0.1, 0.9, 0.5, 0.3])).tolist() == [1, 2]


def embds(*counts, d=12, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, d)).astype(np.float32) for n in counts]


def test_select_images_splits_and_selects_each_image_alone():
    images = embds(20, 30)
    kept = select_images("divprune", images, 10)
    assert [k.size for k in kept] == [4, 6]
    assert kept[0].tolist() == divprune(images[0], 4).tolist()
    assert kept[1].tolist() == divprune(images[1], 6).tolist()


def test_select_images_gives_each_image_its_own_seed():
    kept = select_images("random", embds(40, 40), 20, seed=7)
    assert kept[0].tolist() == select_random(40, 10, 7).tolist()
    assert kept[1].tolist() == select_random(40, 10, 8).tolist()


def test_select_stage_runs_a_configurations_pre_stage():
    images = embds(30, 10)
    text = np.random.default_rng(1).standard_normal((4, 12))
    stage = PruneConfig(strategy="cdpruner", drop_ratio=0.5, relevance_weight=0.8).pre_stage
    kept = select_stage(stage, images, text_embd=text)
    assert [k.size for k in kept] == [15, 5]  # R over all 40 tokens, then shared 3:1
    assert kept[0].tolist() == cdpruner(images[0], 15, text_embd=text, relevance_weight=0.8).tolist()
    two = PruneConfig(keep=4, pre="divprune:8")
    assert [k.size for k in select_stage(two.pre_stage, images)] == [6, 2]


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((4, 3)), "list of"),  # one array instead of a list of images
        ([np.zeros(4)], r"\(N, d\)"),  # an image without a feature axis
    ],
)
def test_select_images_rejects(images, message):
    with pytest.raises(ValueError, match=message):
        select_images("divprune", images, 1)


def test_select_stage_rejects_a_keep_beyond_the_images():
    with pytest.raises(ValueError, match="larger than the 40"):
        select_stage(PreSelect("dart", keep=41), embds(20, 20))
