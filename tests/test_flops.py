"""FLOPs ratio of paper eq. 5 against the table in shared/design/fastv-method.md."""

import pytest

from fastv_edge.flops import flops_ratio, layer_flops
from fastv_edge.pruning import n_keep_for_ratio

LLAVA_7B = dict(n_embd=4096, n_ff=11008, n_layer=32)
LLAVA_13B = dict(n_embd=5120, n_ff=13824, n_layer=40)


@pytest.mark.parametrize(
    "shape, drop_ratio, expected",
    [
        (LLAVA_7B, 0.25, 0.78),  # table row LLaVA-1.5-7B
        (LLAVA_7B, 0.50, 0.57),
        (LLAVA_7B, 0.75, 0.36),
        (LLAVA_7B, 0.90, 0.24),
        (LLAVA_13B, 0.25, 0.78),  # table row LLaVA-1.5-13B
        (LLAVA_13B, 0.50, 0.57),
        (LLAVA_13B, 0.75, 0.35),
        (LLAVA_13B, 0.90, 0.23),
    ],
)
def test_matches_the_method_table(shape, drop_ratio, expected):
    # K=2, 576 image tokens + 64 text tokens, as in the table's caption
    kept = n_keep_for_ratio(576, drop_ratio)
    ratio = flops_ratio(640, 576, kept, layer=2, **shape)
    assert round(ratio, 2) == expected


def test_layer_flops_formula():
    assert layer_flops(n=3, d=5, m=7) == 4 * 3 * 25 + 2 * 9 * 5 + 2 * 3 * 5 * 7


@pytest.mark.parametrize(
    "n_kept, layer, expected",
    [
        (576, 2, 1.0),  # nothing pruned: stock cost
        (100, 32, 1.0),  # K = T: every layer sees every token
        (0, 0, None),  # K=0 drops the image before the LLM: cost of the text alone
    ],
)
def test_edges(n_kept, layer, expected):
    ratio = flops_ratio(640, 576, n_kept, layer=layer, **LLAVA_7B)
    if expected is None:
        expected = layer_flops(64, 4096, 11008) / layer_flops(640, 4096, 11008)
    assert ratio == pytest.approx(expected)


def test_paper_anchor_13b_k2_r50_saves_about_45_percent():
    # paper: 154.6 -> 84.6 TFLOPs (-45%) for LLaVA-1.5-13B, K=2, R=50%
    ratio = flops_ratio(640, 576, 288, layer=2, **LLAVA_13B)
    assert 1 - ratio == pytest.approx(0.45, abs=0.02)


@pytest.mark.parametrize(
    "args",
    [
        (10, 20, 5),  # more image tokens than tokens
        (10, 5, 6),  # more kept than image tokens
    ],
)
def test_rejects_impossible_counts(args):
    with pytest.raises(ValueError):
        flops_ratio(*args, layer=2, **LLAVA_7B)


def test_pre_llm_and_two_stages_count_what_entered_the_llm():
    f = lambda n: layer_flops(n, 4096, 11008)  # noqa: E731
    # divprune keeps 192 of 576 before the LLM: every layer sees 64 text + 192 image tokens
    assert flops_ratio(640, 576, 192, layer=0, n_entered=256, **LLAVA_7B) == pytest.approx(f(256) / f(640))
    # then FastV at K=2 keeps 64 of those 192: layers 0-1 see 256 tokens, layers 2-31 see 128
    two = flops_ratio(640, 576, 64, layer=2, n_entered=256, **LLAVA_7B)
    assert two == pytest.approx((2 * f(256) + 30 * f(128)) / (32 * f(640)))
    assert two < flops_ratio(640, 576, 64, layer=2, **LLAVA_7B)  # cheaper than FastV alone at the same kept count
    with pytest.raises(ValueError):
        flops_ratio(640, 576, 64, layer=2, n_entered=100, **LLAVA_7B)  # fewer entered than kept
