"""The NumPy reference (tests/reference.py) against stock llama.cpp decoding, and its own rules.

Stock means the ordinary llama_decode path (no FastV call), F32 weights and F32 K/V cache,
flash attention off: there the reference must agree to 1e-4 on every logit.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import Ref, topk_keep

ATOL = 1e-4
PROMPT_HEAD = "<|im_start|>user\nLook at this picture:"
PROMPT_TAIL = "\nWhat is in it?<|im_end|>\n<|im_start|>assistant\n"
FORCED = " A small red boat is tied to the old wooden dock."  # forced decode tokens


def _prompt(driver, n_image: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((n_image, driver.n_embd)) * 0.5  # (n_image, n_embd) pseudo image
    return [
        ("tokens", driver.tokenize(PROMPT_HEAD)),
        ("embd", image.astype(np.float32)),
        ("tokens", driver.tokenize(PROMPT_TAIL)),
    ]


def _compare(ref: Ref, driver, segments, forced: list[int], atol: float) -> None:
    driver.decode_segments(segments)  # text, image rows, text: three llama_decode calls
    expected = ref.prefill(segments)["logits"]
    np.testing.assert_allclose(driver.logits(), expected, rtol=0, atol=atol, err_msg="prefill")
    for step, token in enumerate(forced):
        driver.decode_tokens([token])
        np.testing.assert_allclose(driver.logits(), ref.decode(token), rtol=0, atol=atol, err_msg=f"decode step {step}")


@pytest.mark.native
@pytest.mark.parametrize(
    "n_head_kv",
    [
        2,  # GQA: 4 query heads share 2 KV heads (the default tiny model)
        pytest.param(4, marks=pytest.mark.slow),  # plain multi-head attention
        pytest.param(1, marks=pytest.mark.slow),  # MQA: every query head reads one KV head
    ],
)
def test_reference_matches_stock(make_tiny_models, llama_driver, n_head_kv):
    models = make_tiny_models("f32", n_head_kv=n_head_kv)
    driver = llama_driver(models.llama_path)
    segments = _prompt(driver, n_image=40)
    forced = driver.tokenize(FORCED)
    assert len(forced) >= 8
    _compare(Ref(models.llama_path), driver, segments, forced, ATOL)


@pytest.mark.native
def test_reference_matches_stock_across_ubatches(tiny, llama_driver):
    # n_ubatch 8 splits the 40 image rows over several micro-batches inside one decode call
    driver = llama_driver(tiny.llama_path, n_ubatch=8)
    _compare(Ref(tiny.llama_path), driver, _prompt(driver, 40, seed=1), driver.tokenize(FORCED), ATOL)


@pytest.mark.native
@pytest.mark.slow
def test_reference_tracks_f16_weights(make_tiny_models, llama_driver):
    # llama.cpp rounds activations to F16 for F16 matmuls: close, not exact
    models = make_tiny_models("f16")
    driver = llama_driver(models.llama_path)
    ref = Ref(models.llama_path)
    segments = _prompt(driver, 40)
    driver.decode_segments(segments)
    got, expected = driver.logits(), ref.prefill(segments)["logits"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=0.05)
    assert np.argmax(got) == np.argmax(expected)


def test_reference_keep_all_equals_no_pruning(tiny):
    ref = Ref(tiny.llama_path)
    rng = np.random.default_rng(2)
    segments = [("tokens", [1, 504, 2683]), ("embd", rng.standard_normal((24, 64))), ("tokens", [30, 2])]
    plain = ref.prefill(segments)
    scored = ref.prefill(segments, K=2)
    kept_all = ref.prefill(segments, K=2, keep=np.arange(24))
    np.testing.assert_array_equal(plain["logits"], scored["logits"])
    np.testing.assert_allclose(kept_all["logits"], plain["logits"], rtol=0, atol=1e-12)
    scores = scored["scores"]
    assert scores.shape == (24,) and np.all(scores > 0) and scores.sum() < 1.0
    assert len(np.unique(np.round(scores, 6))) == 24  # weights give distinct scores, no ties
    np.testing.assert_array_equal(scored["image_idx"], np.arange(3, 27))
    pruned = ref.prefill(segments, K=2, keep=topk_keep(scores, 0.5))
    np.testing.assert_array_equal(pruned["scores"], scores)  # scores come from layer K-1
    assert np.abs(pruned["logits"] - plain["logits"]).max() > 1e-3  # pruning changes layers >= K


def test_reference_decode_after_pruning_sees_only_kept(tiny):
    ref = Ref(tiny.llama_path)
    segments = [("tokens", [1, 7]), ("embd", np.ones((6, 64)) * 0.1), ("tokens", [9])]
    ref.prefill(segments, K=1, keep=[0, 5])
    assert [len(p) for p in ref.cache_pos] == [9, 5, 5, 5]  # layer 0 keeps all 9 cells
    ref.decode(42)
    assert [len(p) for p in ref.cache_pos] == [10, 6, 6, 6]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(K=0), "K must be"),  # K counts layers from 1
        (dict(K=5), "K must be"),  # beyond the 4 layers
        (dict(keep=[0]), "keep needs K"),  # a keep set without K is meaningless
        (dict(K=1, keep=[9]), "keep indices"),  # only 3 image tokens
    ],
)
def test_reference_rejects_bad_arguments(tiny, kwargs, match):
    ref = Ref(tiny.llama_path)
    with pytest.raises(ValueError, match=match):
        ref.prefill([("tokens", [1]), ("embd", np.zeros((3, 64))), ("tokens", [2])], **kwargs)


@pytest.mark.parametrize(
    "scores, drop_ratio, kept",
    [
        ([0.1, 0.9, 0.5, 0.3], 0.5, [1, 2]),  # top half, returned in prompt order
        ([0.2, 0.2, 0.2, 0.2], 0.5, [0, 1]),  # ties break toward earlier tokens
        ([0.7, 0.1], 0.0, [0, 1]),  # R=0 keeps everything
        ([0.7, 0.1, 0.3], 1.0, []),  # R=1 keeps nothing
        ([0.3] * 10, 0.7, [0, 1, 2]),  # 10 * (1 - float32(0.7)) = 3.0000001 -> 3
        ([0.3] * 10, 0.9, [0]),  # 10 * (1 - float32(0.9)) = 1.0000002 -> 1
    ],
)
def test_topk_keep(scores, drop_ratio, kept):
    assert topk_keep(scores, drop_ratio).tolist() == kept
