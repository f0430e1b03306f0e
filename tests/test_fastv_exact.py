"""The patched llama.cpp against the float64 reference: FastV is exact, R=0 is stock.

Every test runs the real patched library on a tiny F32 llama GGUF (real SmolLM2
tokenizer) with F32 KV, unless it says otherwise. The prompt is text, an "image" of
random embedding rows, then text, decoded as separate calls like mtmd does.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastv_helpers import continue_decoding, cut_gap, finish_by_ratio, forced_tokens, run_fastv, run_ref, run_stock

pytestmark = pytest.mark.native

N_IMG = 40


@pytest.fixture(scope="module")
def ref(tiny):
    from reference import Ref

    return Ref(tiny.llama_path)


@pytest.fixture(scope="module")
def driver_cls():
    from llama_driver import LlamaDriver

    return LlamaDriver


def make_prompt(drv, ref, seed: int, n_img: int = N_IMG):
    rng = np.random.default_rng(seed)
    scale = float(ref.w["token_embd.weight"].std())
    pre = drv.tokenize("<|im_start|>user\nLook at this picture: ")
    post = drv.tokenize(" What is in it?<|im_end|>\n<|im_start|>assistant\n")
    img = rng.standard_normal((n_img, drv.n_embd)) * scale  # (n_img, n_embd)
    return [("tokens", pre), ("embd", img.astype(np.float32)), ("tokens", post)]


def test_reference_matches_stock(tiny, ref, driver_cls):
    with driver_cls(tiny.llama_path) as drv:
        segments = make_prompt(drv, ref, seed=1)
        tokens = forced_tokens(drv)
        stock = run_stock(drv, segments, tokens)
    want, _ = run_ref(ref, segments, tokens)
    assert np.abs(stock - want).max() < 1e-4


@pytest.mark.parametrize("k", [2, -1])  # -1: K = L-1, the latest possible cut
def test_drop_ratio_zero_is_stock(tiny, ref, native, driver_cls, k):
    with driver_cls(tiny.llama_path) as drv:
        k = k if k > 0 else drv.n_layer - 1
        segments = make_prompt(drv, ref, seed=2)
        tokens = forced_tokens(drv)
        stock = run_stock(drv, segments, tokens)
        pruned, scores, kept = run_fastv(native, drv, segments, tokens, k, 0.0)
        assert native.n_hidden(drv.ctx) == 0
    assert kept == list(range(N_IMG))
    assert len(scores) == N_IMG
    assert np.abs(pruned - stock).max() <= 1e-6


@pytest.mark.parametrize("drop_ratio", [0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("k", [1, 2, -1])
def test_fastv_matches_reference(tiny, ref, native, driver_cls, k, drop_ratio):
    from reference import topk_keep

    with driver_cls(tiny.llama_path) as drv:
        k = k if k > 0 else drv.n_layer - 1
        tokens = forced_tokens(drv)
        for seed in range(10, 20):
            segments = make_prompt(drv, ref, seed=seed)
            got, scores, kept = run_fastv(native, drv, segments, tokens, k, drop_ratio)
            n_hidden = native.n_hidden(drv.ctx)
            want, ref_scores = run_ref(ref, segments, tokens, k=k, keep=kept)
            if cut_gap(ref_scores, len(kept)) >= 1e-4:
                break
        else:
            pytest.fail("every seed put two scores within 1e-4 of the cut")

    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-9)
    assert kept == topk_keep(scores, drop_ratio).tolist()  # top-k of the library's own scores
    assert kept == topk_keep(ref_scores, drop_ratio).tolist()  # the margin makes them agree
    assert n_hidden == N_IMG - len(kept)
    assert np.abs(got - want).max() < 1e-4


def test_finish_with_keep_matches_reference(tiny, ref, native, driver_cls):
    keep = [0, 3, 4, 17, 39]  # an arbitrary set, as a seeded random strategy would choose
    with driver_cls(tiny.llama_path) as drv:
        segments = make_prompt(drv, ref, seed=3)
        tokens = forced_tokens(drv)
        got, _, kept = run_fastv(native, drv, segments, tokens, 2, keep=[17, 0, 4, 39, 3])
    want, _ = run_ref(ref, segments, tokens, k=2, keep=keep)
    assert kept == keep
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.slow
def test_chunking_invariance(tiny, ref, native, driver_cls):
    results = []
    for n_ubatch, n_batch in [(512, 512), (17, 512), (8, 512), (8, 16)]:  # (8, 16): the image spans 3 calls
        with driver_cls(tiny.llama_path, n_ubatch=n_ubatch, n_batch=n_batch) as drv:
            segments = make_prompt(drv, ref, seed=4)
            results.append(run_fastv(native, drv, segments, forced_tokens(drv), 2, 0.5))
    logits0, scores0, kept0 = results[0]
    for logits, scores, kept in results[1:]:
        assert kept == kept0
        np.testing.assert_allclose(scores, scores0, rtol=1e-5, atol=1e-9)
        assert np.abs(logits - logits0).max() < 1e-5


def test_flash_attention_f16_kv(tiny, ref, native, driver_cls):
    """FA rounds K/V to F16 (even an F32 cache), so stock is off the float64 reference by
    about 3e-3 of the logit range on this model; FastV must add no error of its own."""
    from llama_driver import GGML_TYPE_F16

    with driver_cls(tiny.llama_path, flash_attn=True, kv_type=GGML_TYPE_F16) as drv:
        segments = make_prompt(drv, ref, seed=5)
        tokens = forced_tokens(drv)
        stock = run_stock(drv, segments, tokens)
        same, _, _ = run_fastv(native, drv, segments, tokens, 2, 0.0)
        got, scores, kept = run_fastv(native, drv, segments, tokens, 2, 0.5)
    want_stock, _ = run_ref(ref, segments, tokens)
    want, ref_scores = run_ref(ref, segments, tokens, k=2, keep=kept)
    span = np.abs(want).max()

    assert np.abs(same - stock).max() <= 1e-6
    assert len(kept) == N_IMG // 2
    np.testing.assert_allclose(scores, ref_scores, rtol=2e-2, atol=1e-5)
    stock_err = np.abs(stock - want_stock).max()
    assert stock_err < 5e-3 * span
    assert np.abs(got - want).max() < max(2e-3, 1.25 * stock_err)


@pytest.mark.parametrize("kv_unified", [True, False])  # False: seq_cp copies cells across streams
def test_memory_ops_after_pruned_prefill(tiny, ref, native, driver_cls, kv_unified):
    import llama_cpp

    with driver_cls(tiny.llama_path, n_seq_max=2, kv_unified=kv_unified) as drv:
        segments = make_prompt(drv, ref, seed=6)
        tokens = forced_tokens(drv)
        first, _, kept = run_fastv(native, drv, segments, tokens, 2, 0.5)
        mem = llama_cpp.llama_get_memory(drv.ctx)

        # seq_rm the last 3 positions and decode them again: the same logits
        end = drv.n_past
        assert llama_cpp.llama_memory_seq_rm(mem, 0, end - 3, -1)
        drv.n_past = end - 3
        again = [None] * 3
        for i, t in enumerate(tokens[-3:]):
            drv.decode_tokens([t])
            again[i] = drv.logits()
        assert np.abs(np.array(again) - first[-3:]).max() <= 1e-6

        # seq_cp shares the pruned history: seq 1 continues exactly like seq 0
        llama_cpp.llama_memory_seq_cp(mem, 0, 1, -1, -1)
        n_copies = 1 if kv_unified else 2  # a unified cache shares the cells, streams copy them
        assert native.n_hidden(drv.ctx) == n_copies * (N_IMG - len(kept))
        extra = drv.tokenize(" today")[0]
        drv.decode_tokens([extra])
        seq0 = drv.logits()
        drv.n_past -= 1
        _decode_on_seq(drv, extra, seq_id=1)
        # the unified cache then holds one more cell, so n_kv and the float32 sum order change
        assert np.abs(drv.logits() - seq0).max() <= 1e-4

        # clear: nothing stays hidden and the stock graphs come back
        drv.clear()
        assert native.n_hidden(drv.ctx) == 0
        stock = run_stock(drv, segments, tokens)
    want, _ = run_ref(ref, segments, tokens)
    assert np.abs(stock - want).max() < 1e-4


def _decode_on_seq(drv, token: int, seq_id: int) -> None:
    import llama_cpp

    batch = llama_cpp.llama_batch_init(1, 0, 1)
    try:
        batch.n_tokens = 1
        batch.token[0], batch.pos[0], batch.n_seq_id[0] = token, drv.n_past, 1
        batch.seq_id[0][0], batch.logits[0] = seq_id, True
        assert llama_cpp.llama_decode(drv.ctx, batch) == 0
        drv.n_past += 1
    finally:
        llama_cpp.llama_batch_free(batch)


def test_second_image_appended_to_pruned_history(tiny, ref, native, driver_cls):
    with driver_cls(tiny.llama_path) as drv:
        seg1 = make_prompt(drv, ref, seed=7)
        seg2 = make_prompt(drv, ref, seed=8, n_img=24)
        tokens = forced_tokens(drv)
        first, _, kept1 = run_fastv(native, drv, seg1, tokens[:2], 2, 0.5)
        assert native.llama_fastv_begin(drv.ctx, 0, 2) == 0
        drv.decode_segments(seg2)
        assert finish_by_ratio(native, drv.ctx, 0.75) == 0
        kept2 = native.get_kept(drv.ctx)
        got = np.array(continue_decoding(drv, tokens[2:]))
        assert native.n_hidden(drv.ctx) == (N_IMG - len(kept1)) + (24 - len(kept2))

    ref.prefill(seg1, K=2, keep=kept1)
    for t in tokens[:2]:
        ref.decode(t)
    want = [ref.prefill(seg2, K=2, keep=kept2, append=True)["logits"]]
    want += [ref.decode(t) for t in tokens[2:]]
    assert len(kept2) == 6
    assert np.abs(got - np.array(want)).max() < 1e-4


def test_hide_on_its_own_matches_reference(tiny, ref, native, driver_cls):
    with driver_cls(tiny.llama_path) as drv:
        segments = make_prompt(drv, ref, seed=9)
        tokens = forced_tokens(drv)
        run_stock(drv, segments, [])
        n_pre = len(segments[0][1])
        pruned = [n_pre + i for i in range(N_IMG) if i % 3]  # positions of the hidden image tokens
        native.hide(drv.ctx, 0, pruned, 2)
        got = []
        for t in tokens:
            drv.decode_tokens([t])
            got.append(drv.logits())
        assert native.n_hidden(drv.ctx) == len(pruned)

    # stock prefill, then later tokens see the hidden ones in layers < 2 only
    ref.prefill(segments)
    for il in range(2, ref.n_layer):
        visible = ~np.isin(ref.cache_pos[il], pruned)
        ref.cache_k[il] = ref.cache_k[il][visible]
        ref.cache_v[il] = ref.cache_v[il][visible]
        ref.cache_pos[il] = ref.cache_pos[il][visible]
    want = [ref.decode(t) for t in tokens]
    assert np.abs(np.array(got) - np.array(want)).max() < 1e-4


@pytest.mark.slow
def test_smollm2_pseudo_image(smollm2_path, native, driver_cls):
    """Real Q4_1 weights, a 576-row pseudo image through the embedding path."""
    with driver_cls(smollm2_path, n_ctx=1024, n_batch=1024) as drv:
        rng = np.random.default_rng(0)
        img = (rng.standard_normal((576, drv.n_embd)) * 0.05).astype(np.float32)  # (576, n_embd)
        segments = [
            ("tokens", drv.tokenize("<|im_start|>user\nDescribe the image: ")),
            ("embd", img),
            ("tokens", drv.tokenize("<|im_end|>\n<|im_start|>assistant\n")),
        ]
        tokens = drv.tokenize(" It shows a red")
        stock = run_stock(drv, segments, tokens)
        same, _, kept0 = run_fastv(native, drv, segments, tokens, 2, 0.0)
        half, scores, kept = run_fastv(native, drv, segments, tokens, 2, 0.5)
        drv.decode_tokens(drv.tokenize(" car"))
        assert np.isfinite(drv.logits()).all()

    assert len(kept0) == 576 and np.abs(same - stock).max() <= 1e-6
    assert len(kept) == 288
    assert kept == sorted(np.argsort(-scores, kind="stable")[:288].tolist())
    assert np.isfinite(half).all()
