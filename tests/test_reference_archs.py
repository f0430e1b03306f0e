"""The qwen2vl and gemma3 references (tests/reference_archs.py) against stock llama.cpp.

Stock means the ordinary llama_decode path (no FastV call), tiny F32 models, F32 K/V,
flash attention off: last-prompt logits and 8 forced decode steps agree to 1e-4.
The prompt is text, an "image" of embedding rows, then text, as three decode calls like
mtmd: qwen2vl images carry M-RoPE grid positions, gemma3 images are decoded non-causally.
Each comparison also has negative controls: the same check with one convention changed
must fail, so a passing test means the convention was actually exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference_archs
from reference import topk_keep
from reference_archs import RefGemma3, RefQwen2VL

ATOL = 1e-4
PROMPT_HEAD = "<|im_start|>user\nLook at this picture:"
PROMPT_TAIL = "\nWhat is in it?<|im_end|>\n<|im_start|>assistant\n"
FORCED = " A small red boat is tied to the old wooden dock."
GRID = (8, 5)  # nx, ny: 40 image tokens, the image advances positions by 8


@pytest.fixture(scope="module")
def qwen2vl(tiny_dir):
    from fastv_edge.testing.make_tiny_archs import make_tiny_qwen2vl

    return make_tiny_qwen2vl(tiny_dir)


@pytest.fixture(scope="module")
def gemma3(tiny_dir):
    from fastv_edge.testing.make_tiny_archs import make_tiny_gemma3

    return make_tiny_gemma3(tiny_dir)  # 6 layers, 2 and 5 global, window 16


def _image(n: int, std: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 64)) * std).astype(np.float32)  # (n, n_embd)


def _segments(driver, image, opts):
    return [("tokens", driver.tokenize(PROMPT_HEAD)), ("embd", image, opts), ("tokens", driver.tokenize(PROMPT_TAIL))]


def _stock(driver, segments, forced) -> np.ndarray:
    driver.clear()
    driver.decode_segments(segments)
    out = [driver.logits()]
    for token in forced:
        driver.decode_tokens([token])
        out.append(driver.logits())
    return np.array(out)  # (1 + steps, n_vocab)


def _reference(ref, segments, forced) -> np.ndarray:
    out = [ref.prefill(segments)["logits"]]
    out += [ref.decode(token) for token in forced]
    return np.array(out)


def _forced(driver) -> list[int]:
    forced = driver.tokenize(FORCED)[:8]
    assert len(forced) == 8
    return forced


@pytest.mark.native
@pytest.mark.parametrize(
    "grid, n_batch, n_ubatch",
    [
        (GRID, 512, 512),  # image wider than tall: raster order runs along x
        ((5, 8), 512, 512),  # transposed grid: different (y, x) per token, same n_past advance
        (GRID, 512, 8),  # image over 5 ubatches: the 2-D rule reads earlier ubatches' cell (y, x)
        (GRID, 16, 16),  # image over 3 llama_decode calls, as mtmd splits by n_batch
        (None, 512, 512),  # 1-D embedding rows: (p, p, p, p) like mtmd's audio positions
    ],
)
def test_qwen2vl_matches_stock(qwen2vl, llama_driver, grid, n_batch, n_ubatch):
    driver = llama_driver(qwen2vl.path, n_batch=n_batch, n_ubatch=n_ubatch, n_threads=1)
    segments = _segments(driver, _image(40, 0.5, seed=0), {"grid": grid} if grid else {})
    forced = _forced(driver)
    stock = _stock(driver, segments, forced)
    ref = RefQwen2VL(qwen2vl.path)
    np.testing.assert_allclose(_reference(ref, segments, forced), stock, rtol=0, atol=ATOL)
    n_head = len(segments[0][1])
    advance = max(grid) if grid else 40
    assert driver.n_past == ref.n_past == n_head + advance + len(segments[2][1]) + len(forced)


@pytest.mark.native
@pytest.mark.parametrize(
    "causal, n_ubatch",
    [
        (False, 512),  # mtmd's Gemma 3 path: the image block sees itself in both directions
        (True, 512),  # plain causal embeddings
        (True, 8),  # causal image over 4 ubatches
    ],
)
def test_gemma3_matches_stock(gemma3, llama_driver, causal, n_ubatch):
    driver = llama_driver(gemma3.path, n_ubatch=n_ubatch, n_threads=1)
    segments = _segments(driver, _image(32, 2.5, seed=1), {"causal": causal})
    forced = _forced(driver)
    assert len(segments[0][1]) + 32 + len(segments[2][1]) > 3 * gemma3.hparams.sliding_window  # window matters
    stock = _stock(driver, segments, forced)
    np.testing.assert_allclose(_reference(RefGemma3(gemma3.path), segments, forced), stock, rtol=0, atol=ATOL)


def _transpose_grid(ref, segments, monkeypatch):
    segments[1] = ("embd", segments[1][1], {"grid": GRID[::-1]})


def _image_causal(ref, segments, monkeypatch):
    segments[1] = ("embd", segments[1][1], {"causal": True})


def _no_window(ref, segments, monkeypatch):
    ref.n_swa = 10**6


def _one_rope_base(ref, segments, monkeypatch):
    ref.freq_base_swa = ref.freq_base


def _relu_for_gelu(ref, segments, monkeypatch):
    monkeypatch.setattr(reference_archs, "gelu_ggml", lambda x: np.maximum(x, 0.0))


def _unscaled_tokens(ref, segments, monkeypatch):
    ref.embd_scale = 1.0


@pytest.mark.native
@pytest.mark.parametrize(
    "arch, opts, break_ref",
    [
        ("qwen2vl", {"grid": GRID}, _transpose_grid),  # x and y sections swapped
        ("gemma3", {"causal": False}, _image_causal),  # stock image block is non-causal
        ("gemma3", {"causal": False}, _no_window),  # local layers really slide
        ("gemma3", {"causal": False}, _one_rope_base),  # local layers rotate with freq_base_swa
        ("gemma3", {"causal": False}, _relu_for_gelu),  # GELU inputs in (-10, 10) still matter
        ("gemma3", {"causal": False}, _unscaled_tokens),  # token rows are scaled by sqrt(n_embd)
    ],
)
def test_broken_reference_disagrees(qwen2vl, gemma3, llama_driver, monkeypatch, arch, opts, break_ref):
    model, ref_cls, std = (qwen2vl, RefQwen2VL, 0.5) if arch == "qwen2vl" else (gemma3, RefGemma3, 2.5)
    driver = llama_driver(model.path, n_threads=1)
    segments = _segments(driver, _image(40 if arch == "qwen2vl" else 32, std, seed=2), opts)
    stock = _stock(driver, segments, [])
    ref = ref_cls(model.path)
    break_ref(ref, segments, monkeypatch)
    assert np.abs(_reference(ref, segments, []) - stock).max() > 5 * ATOL  # well beyond the tolerance


@pytest.mark.native
def test_qwen2vl_loader_ignores_rms_eps(tiny_dir, llama_driver):
    # llama_model_qwen2vl::load_arch_hparams reads only the rope sections: eps stays 0
    from fastv_edge.testing.make_tiny_archs import make_tiny_qwen2vl

    model = make_tiny_qwen2vl(tiny_dir, rms_eps=0.25)
    driver = llama_driver(model.path, n_threads=1)
    segments = _segments(driver, _image(40, 0.5, seed=3), {"grid": GRID})
    stock = _stock(driver, segments, [])
    ref = RefQwen2VL(model.path)
    np.testing.assert_allclose(_reference(ref, segments, []), stock, rtol=0, atol=ATOL)
    ref.eps = 0.25
    assert np.abs(_reference(ref, segments, []) - stock).max() > 1e-2, (
        "the pinned llama.cpp now reads qwen2vl.attention.layer_norm_rms_epsilon: read it in RefQwen2VL"
    )


@pytest.mark.native
def test_driver_rejects_oversized_non_causal_block(gemma3, llama_driver):
    driver = llama_driver(gemma3.path, n_ubatch=16, n_threads=1)
    with pytest.raises(ValueError, match="non-causal block of 32 rows"):
        driver.decode_embd(_image(32, 1.0, seed=0), causal=False)


@pytest.mark.native
def test_driver_rejects_grid_without_mrope(gemma3, llama_driver):
    driver = llama_driver(gemma3.path, n_threads=1)
    with pytest.raises(ValueError, match="needs an M-RoPE model"):
        driver.decode_embd(_image(40, 1.0, seed=0), grid=GRID)


# ---- the references' own rules (no llama.cpp needed) ----


def _tiny_segments(n_image: int, opts: dict):
    return [("tokens", [1, 504, 2683]), ("embd", _image(n_image, 1.0, seed=4), opts), ("tokens", [30, 2, 17])]


def test_qwen2vl_grid_mask_is_raster_order(qwen2vl):
    ref = RefQwen2VL(qwen2vl.path)
    ref.prefill(_tiny_segments(6, {"grid": (3, 2)}))
    meta = ref.cache_meta[0]
    image = slice(3, 9)
    assert meta["p"][image].tolist() == [3] * 6  # one shared t
    assert meta["y"][image].tolist() == [3, 3, 3, 4, 4, 4] and meta["x"][image].tolist() == [3, 4, 5, 3, 4, 5]
    assert meta["p"][9:].tolist() == [6, 7, 8]  # text resumes at t + max(nx, ny)
    visible = ref._visible(0, {k: v[image] for k, v in meta.items()}, {k: v[image] for k, v in meta.items()})
    np.testing.assert_array_equal(visible, np.tril(np.ones((6, 6), dtype=bool)))  # same t, (y, x) raster


def test_gemma3_image_block_never_sees_later_text(gemma3):
    # a non-causal image attends to later cells of its own block but not to the question after it
    ref = RefGemma3(gemma3.path)
    full = _tiny_segments(24, {"causal": False})  # 3 text, 24 image (p 3..26), 3 text
    ref.prefill(full)
    meta = ref.cache_meta[0]
    first_image, last_image = ({k: v[i : i + 1] for k, v in meta.items()} for i in (3, 26))
    assert ref._visible(0, first_image, meta)[0].tolist() == [True] * 27 + [False] * 3  # all of its block
    assert ref._visible(0, last_image, meta)[0].tolist() == [False] * 11 + [True] * 16 + [False] * 3  # window 16
    assert ref._visible(2, last_image, meta)[0].tolist() == [True] * 27 + [False] * 3  # global layer 2
    with_question = [k[3:27].copy() for k in ref.cache_k]
    ref.prefill(full[:2])
    for il in range(ref.n_layer):
        # equal up to BLAS summation order (matmuls of a different row count); seeing the
        # question would move these keys by O(1)
        np.testing.assert_allclose(ref.cache_k[il][3:27], with_question[il], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "make_ref, opts, n_unseen",
    [
        (RefQwen2VL, {"grid": (4, 6)}, 0),  # the last token sees every image token
        (RefGemma3, {"causal": False}, 11),  # layer K-1 = 1 is local: p 3..13 are outside its window
    ],
)
def test_fastv_semantics(qwen2vl, gemma3, make_ref, opts, n_unseen):
    ref = make_ref(qwen2vl.path if make_ref is RefQwen2VL else gemma3.path)
    segments = _tiny_segments(24, opts)
    plain = ref.prefill(segments)
    scored = ref.prefill(segments, K=2)
    np.testing.assert_array_equal(scored["logits"], plain["logits"])
    np.testing.assert_allclose(ref.prefill(segments, K=2, keep=np.arange(24))["logits"], plain["logits"], atol=1e-12)
    scores = scored["scores"]  # (24,)
    np.testing.assert_array_equal(scores[:n_unseen], 0.0)  # exactly 0: masked before the softmax
    assert np.all(scores[n_unseen:] > 0) and scores.sum() < 1.0
    np.testing.assert_array_equal(scored["image_idx"], np.arange(3, 27))
    keep = topk_keep(scores, 0.5)
    pruned = ref.prefill(segments, K=2, keep=keep)
    np.testing.assert_array_equal(pruned["scores"], scores)  # scores come from layer K-1
    assert np.abs(pruned["logits"] - plain["logits"]).max() > 1e-3  # layers >= K lost 12 tokens
    assert [len(p) for p in ref.cache_pos] == [30, 30] + [18] * (ref.n_layer - 2)
    ref.decode(42)
    assert [len(p) for p in ref.cache_pos] == [31, 31] + [19] * (ref.n_layer - 2)


@pytest.mark.parametrize(
    "make_ref, segment, match",
    [
        (RefGemma3, ("embd", np.zeros((6, 64)), {"grid": (3, 2)}), "needs M-RoPE"),  # gemma3 takes 1-D positions
        (RefQwen2VL, ("embd", np.zeros((6, 64)), {"grid": (4, 2)}), "does not hold 6 rows"),
        (RefQwen2VL, ("tokens", [1, 2], {"grid": (2, 1)}), "needs M-RoPE embedding rows"),
        (RefGemma3, ("embd", np.zeros((6, 64)), {"causal": False, "bidirectional": True}), "unknown segment"),
    ],
)
def test_reference_rejects_bad_segments(qwen2vl, gemma3, make_ref, segment, match):
    ref = make_ref(qwen2vl.path if make_ref is RefQwen2VL else gemma3.path)
    with pytest.raises(ValueError, match=match):
        ref.prefill([("tokens", [1]), segment])
