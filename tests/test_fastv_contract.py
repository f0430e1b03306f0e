"""The C contract of a FastV prefill, driven like a C caller that ignores errors and keeps decoding.

Every test goes through the real patched library on the tiny F32 models. The property under test:
whatever a caller does between llama_fastv_begin() and the end of the prefill, it gets an error code
or correct results, never logits computed over cells whose layers >= K were never written. Correct
means: equal (<= 1e-6) to a clean FastV prefill of the same prompt and keep set, or to stock
llama.cpp over what the memory holds. Scenarios that could abort the process run in a subprocess.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from isolated import run_isolated
from llama_driver import LlamaDriver

from fastv_edge import _native as nv
from fastv_edge.errors import NativeError, Status

pytestmark = pytest.mark.native

N_IMG = 8
K = 2


def status(fn, *args) -> int:
    """Call a _native wrapper the way a C caller does: get the status code, never an exception."""
    try:
        fn(*args)
    except NativeError as e:
        return e.code
    return Status.OK


def image(drv, n=N_IMG, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, drv.n_embd)) * 0.5).astype(np.float32)  # (n, n_embd)


def decode_prompt(drv, rows, question=" What is it?") -> None:
    drv.decode_tokens(drv.tokenize("Look: "), logits_last=False)
    drv.decode_embd(rows)
    drv.decode_tokens(drv.tokenize(question))


def clean_fastv(drv, rows, keep, extra) -> tuple[np.ndarray, np.ndarray]:
    """A FastV prefill of the same prompt in a cleared context: (prompt logits, logits after `extra`)."""
    drv.clear()
    nv.begin(drv.ctx, 0, K)
    decode_prompt(drv, rows)
    nv.finish_with_keep(drv.ctx, keep)
    first = drv.logits()
    drv.decode_tokens(extra)
    return first, drv.logits()


def seq_pos_max(drv, seq_id=0) -> int:
    import llama_cpp

    return llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(drv.ctx), seq_id)


def has_logits(drv) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_get_logits(drv.ctx)) or bool(llama_cpp.llama_get_logits_ith(drv.ctx, -1))


@pytest.fixture
def drv(tiny):
    with LlamaDriver(tiny.llama_path, n_seq_max=2, kv_unified=True) as driver:
        yield driver


@pytest.fixture(scope="module")
def gemma3_path(tiny_dir):
    from fastv_edge.testing.make_tiny_archs import make_tiny_gemma3

    return make_tiny_gemma3(tiny_dir).path  # 6 layers, layers 2 and 5 global, window 16


# --- a finish that fails, or an abort, leaves nothing stale ---------------------------------------


def test_bad_keep_leaves_the_prefill_in_progress(drv):
    rows = image(drv)
    nv.begin(drv.ctx, 0, K)
    decode_prompt(drv, rows)
    assert status(nv.finish_with_keep, drv.ctx, [0, N_IMG]) == Status.BAD_ARG  # index out of range
    assert status(nv.finish, drv.ctx, N_IMG + 1) == Status.BAD_ARG  # more than N
    assert status(nv.finish_with_keep, drv.ctx, [1, 4, 6]) == Status.OK  # the same prefill finishes
    extra = drv.tokenize(" A")
    drv.decode_tokens(extra)
    got = drv.logits()
    _, want = clean_fastv(drv, rows, [1, 4, 6], extra)
    assert np.abs(got - want).max() <= 1e-6


@pytest.mark.parametrize("ending", ["abort", "image_last", "deep_stage_fails"])
def test_ended_prefill_removes_its_cells(drv, ending):
    """After a prefill ends without finishing, the prompt's cells are gone: decoding on fails or is stock."""
    import llama_cpp

    # stale deep-layer K/V from an earlier prompt in the same cells, so that a leftover cell would show
    drv.clear()
    decode_prompt(drv, image(drv, seed=5))
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(drv.ctx), False)  # metadata only
    drv.n_past = 0
    prefix = drv.tokenize("System: be brief.")
    drv.decode_tokens(prefix)
    n_prefix = drv.n_past

    nv.begin(drv.ctx, 0, K)
    drv.decode_tokens(drv.tokenize(" Look: "), logits_last=False)
    drv.decode_embd(image(drv))
    if ending == "abort":
        drv.decode_tokens(drv.tokenize(" What is it?"))
        nv.abort(drv.ctx)
    elif ending == "image_last":
        assert status(nv.finish, drv.ctx, 4) == Status.BAD_PROMPT
    else:
        drv.decode_tokens(drv.tokenize(" What is it?"))
        stop = llama_cpp.ggml_abort_callback(lambda _: True)  # every graph computation is aborted
        llama_cpp.llama_set_abort_callback(drv.ctx, stop, None)
        try:
            assert status(nv.finish, drv.ctx, 4) == Status.DECODE
        finally:
            llama_cpp.llama_set_abort_callback(drv.ctx, llama_cpp.ggml_abort_callback(), None)

    assert seq_pos_max(drv) == n_prefix - 1  # the prompt's cells are gone, the prefix stays
    assert nv.n_hidden(drv.ctx) == 0
    assert not has_logits(drv)
    assert status(nv.get_kept, drv.ctx) == Status.BAD_STATE
    extra = drv.tokenize(" A")
    assert drv.try_decode(extra, pos0=n_prefix - 1) != 0  # the prefix stays: its last position is taken
    assert drv.try_decode(extra, pos0=n_prefix) == 0  # decoding where the memory ends is stock
    got = drv.logits()
    drv.clear()
    drv.decode_tokens(prefix)
    drv.decode_tokens(extra)
    assert np.abs(got - drv.logits()).max() <= 1e-6


def test_memory_copy_to_another_stream_fails_the_prefill(tiny):
    """Cells copied to another stream before finish never get their deep layers: finish refuses, removes both."""
    import llama_cpp

    with LlamaDriver(tiny.llama_path, n_seq_max=2, kv_unified=False) as drv:
        nv.begin(drv.ctx, 0, K)
        decode_prompt(drv, image(drv))
        llama_cpp.llama_memory_seq_cp(llama_cpp.llama_get_memory(drv.ctx), 0, 1, -1, -1)
        assert status(nv.finish, drv.ctx, 4) == Status.BAD_PROMPT
        assert seq_pos_max(drv, 0) == -1 and seq_pos_max(drv, 1) == -1


# --- records that went stale --------------------------------------------------------------------------


def test_clear_and_decode_again_is_one_prompt(drv):
    rows = image(drv)
    nv.begin(drv.ctx, 0, K)
    decode_prompt(drv, image(drv, seed=3))
    drv.clear()  # llama_memory_clear during the shallow stage, then the prompt again in the same cells
    decode_prompt(drv, rows)
    assert len(nv.get_scores(drv.ctx)) == N_IMG
    nv.finish(drv.ctx, 4)
    kept = nv.get_kept(drv.ctx)
    assert nv.n_hidden(drv.ctx) == N_IMG - 4
    extra = drv.tokenize(" A")
    first = drv.logits()
    drv.decode_tokens(extra)
    got = drv.logits()
    want_first, want = clean_fastv(drv, rows, kept, extra)
    assert np.abs(first - want_first).max() <= 1e-6 and np.abs(got - want).max() <= 1e-6


def test_seq_rm_of_the_tail_and_decode_again(drv):
    import llama_cpp

    rows = image(drv)
    nv.begin(drv.ctx, 0, K)
    decode_prompt(drv, rows, question=" What colour is it?")
    end = drv.n_past
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(drv.ctx), 0, end - 4, -1)
    assert status(nv.finish, drv.ctx, 4) == Status.BAD_PROMPT  # the row belonged to a removed token

    drv.clear()
    nv.begin(drv.ctx, 0, K)
    decode_prompt(drv, rows, question=" What colour is it?")
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(drv.ctx), 0, end - 4, -1)
    drv.n_past = end - 4
    drv.decode_tokens(drv.tokenize(" What colour is it?")[-4:])  # the same tail again
    nv.finish_with_keep(drv.ctx, [0, 2, 5, 7])
    extra = drv.tokenize(" A")
    drv.decode_tokens(extra)
    got = drv.logits()
    drv.clear()
    nv.begin(drv.ctx, 0, K)
    decode_prompt(drv, rows, question=" What colour is it?")
    nv.finish_with_keep(drv.ctx, [0, 2, 5, 7])
    drv.decode_tokens(extra)
    assert np.abs(got - drv.logits()).max() <= 1e-6


def scenario_stale_records_beyond_n_kv(model_path: str) -> dict:
    """An image far into the cache, a clear, then a short prompt: old records lie beyond the new n_kv."""
    with LlamaDriver(model_path, n_ctx=1024) as drv:
        nv.begin(drv.ctx, 0, K)
        drv.decode_tokens(drv.tokenize(" word" * 300), logits_last=False)
        drv.decode_embd(image(drv, seed=1))
        drv.clear()
        decode_prompt(drv, image(drv))
        n_scores = len(nv.get_scores(drv.ctx))
        nv.finish(drv.ctx, 4)
        return {"n_scores": n_scores, "n_hidden": nv.n_hidden(drv.ctx), "finite": bool(np.isfinite(drv.logits()).all())}


def test_stale_records_beyond_n_kv_are_dropped(tiny):
    got = run_isolated("test_fastv_contract", "scenario_stale_records_beyond_n_kv", str(tiny.llama_path))
    assert got == {"n_scores": N_IMG, "n_hidden": N_IMG - 4, "finite": True}


# --- what the shallow stage refuses, and what it survives ----------------------------------------------


def scenario_reserve_during_shallow_stage(model_path: str) -> dict:
    """A scheduler reserve in the middle of the prompt (here: a control-vector change), several streams."""
    import llama_cpp

    with LlamaDriver(model_path, n_seq_max=2, kv_unified=False) as drv:
        rows, extra = image(drv), drv.tokenize(" A")
        nv.begin(drv.ctx, 0, K)
        drv.decode_tokens(drv.tokenize("Look: "), logits_last=False)
        llama_cpp.llama_set_adapter_cvec(drv.ctx, None, 0, drv.n_embd, 0, 0)
        drv.decode_embd(rows)
        drv.decode_tokens(drv.tokenize(" What is it?"))
        nv.finish_with_keep(drv.ctx, [1, 2, 3, 7])
        drv.decode_tokens(extra)
        got = drv.logits()
        _, want = clean_fastv(drv, rows, [1, 2, 3, 7], extra)
        return {"max_diff": float(np.abs(got - want).max())}


def test_reserve_during_shallow_stage(tiny):
    got = run_isolated("test_fastv_contract", "scenario_reserve_during_shallow_stage", str(tiny.llama_path))
    assert got["max_diff"] <= 1e-6


def test_other_sequence_is_refused_and_the_prefill_goes_on(drv):
    rows, extra = image(drv), drv.tokenize(" A")
    nv.begin(drv.ctx, 0, K)
    drv.decode_tokens(drv.tokenize("Look: "), logits_last=False)
    assert drv.try_decode([42], seq_id=1, pos0=0) != 0
    drv.decode_embd(rows)
    drv.decode_tokens(drv.tokenize(" What is it?"))
    nv.finish_with_keep(drv.ctx, [0, 1, 2, 3])
    drv.decode_tokens(extra)
    got = drv.logits()
    _, want = clean_fastv(drv, rows, [0, 1, 2, 3], extra)
    assert np.abs(got - want).max() <= 1e-6


def _set_layer_input_extraction(ctx, layer: int, on: bool) -> None:
    import llama_cpp

    # llama-ext.h: a C++ declaration, so the symbol is mangled
    fn = llama_cpp.llama_cpp._lib._Z30llama_set_embeddings_layer_inpP13llama_contextjb
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_bool], None
    fn(ctx, layer, on)


def scenario_layer_input_extraction(model_path: str) -> dict:
    """Speculative decoding's layer-input extraction needs layers the shallow stage does not build."""
    with LlamaDriver(model_path) as drv:
        _set_layer_input_extraction(drv.ctx, 3, True)
        begin_on = status(nv.begin, drv.ctx, 0, K)
        _set_layer_input_extraction(drv.ctx, 3, False)
        nv.begin(drv.ctx, 0, K)
        drv.decode_tokens(drv.tokenize("Look: "), logits_last=False)
        _set_layer_input_extraction(drv.ctx, 3, True)  # switched on in the middle of the prompt
        refused = drv.try_decode(drv.tokenize(" more"), logits_last=False)
        _set_layer_input_extraction(drv.ctx, 3, False)
        drv.decode_embd(image(drv))
        drv.decode_tokens(drv.tokenize(" What is it?"))
        return {"begin": begin_on, "refused": refused, "finish": status(nv.finish, drv.ctx, 4)}


def test_layer_input_extraction_is_refused(tiny):
    got = run_isolated("test_fastv_contract", "scenario_layer_input_extraction", str(tiny.llama_path))
    assert got["begin"] == Status.UNSUPPORTED
    assert got["refused"] != 0 and got["finish"] == Status.OK


def test_no_logits_until_the_prefill_finishes(drv):
    decode_prompt(drv, image(drv, seed=2))
    assert has_logits(drv)
    nv.begin(drv.ctx, 0, K)
    decode_prompt(drv, image(drv))  # the last call asks for logits, the shallow stage has none
    assert not has_logits(drv)
    nv.finish(drv.ctx, 4)
    assert has_logits(drv)


def test_replayed_tokens_are_counted_once(tiny):
    import llama_cpp

    with LlamaDriver(tiny.llama_path, no_perf=False) as drv:
        llama_cpp.llama_perf_context_reset(drv.ctx)
        nv.begin(drv.ctx, 0, K)
        decode_prompt(drv, image(drv))
        nv.finish(drv.ctx, 4)
        drv.logits()
        perf = llama_cpp.llama_perf_context(drv.ctx)
        assert perf.n_p_eval == drv.n_past  # every prompt token once, none of the replayed ones again
        assert perf.t_p_eval_ms > 0


# --- finish's arguments and ranking --------------------------------------------------------------------


def test_finish_with_keep_null_is_bad_arg(drv):
    nv.begin(drv.ctx, 0, K)
    decode_prompt(drv, image(drv))
    assert nv.llama_fastv_finish_with_keep(drv.ctx, None, 3) == Status.BAD_ARG
    assert nv.llama_fastv_finish(drv.ctx, -1) == Status.BAD_ARG
    assert nv.llama_fastv_finish_with_keep(drv.ctx, None, 0) == Status.OK  # NULL with 0: keep none
    assert nv.get_kept(drv.ctx) == [] and nv.n_hidden(drv.ctx) == N_IMG


def test_nan_scores_rank_last_in_prompt_order(drv):
    rows = image(drv)
    rows[3] = np.nan  # a NaN image row turns layer K-1's whole attention row to NaN
    nv.begin(drv.ctx, 0, K)
    decode_prompt(drv, rows)
    assert np.isnan(nv.get_scores(drv.ctx)).all()
    assert nv.llama_fastv_finish(drv.ctx, 5) == Status.OK
    assert nv.get_kept(drv.ctx) == [0, 1, 2, 3, 4]


# --- Gemma 3: iSWA caches and non-causal image blocks ---------------------------------------------------


def test_causal_flag_restored_after_a_failed_deep_stage(gemma3_path):
    import llama_cpp

    with LlamaDriver(gemma3_path) as drv:
        nv.begin(drv.ctx, 0, K)
        drv.decode_tokens(drv.tokenize("Look:"), logits_last=False)
        drv.decode_embd(image(drv, 16) * 5, causal=False)
        drv.decode_tokens(drv.tokenize(" What is it?"))
        stop = llama_cpp.ggml_abort_callback(lambda _: True)  # the deep stage's graphs are aborted
        llama_cpp.llama_set_abort_callback(drv.ctx, stop, None)
        try:
            assert status(nv.finish, drv.ctx, 8) == Status.DECODE
        finally:
            llama_cpp.llama_set_abort_callback(drv.ctx, llama_cpp.ggml_abort_callback(), None)
        assert llama_cpp.llama_get_causal_attn(drv.ctx)
        assert seq_pos_max(drv) == -1


def test_non_causal_block_decoded_in_parts(gemma3_path):
    """An image decoded non-causally in two calls: each part saw only what existed; the replay keeps that."""
    rows = (np.random.default_rng(1).standard_normal((32, 64)) * 2.5).astype(np.float32)  # (32, n_embd)

    def prefill(drv, fastv):
        drv.clear()
        if fastv:
            nv.begin(drv.ctx, 0, K)
        drv.decode_tokens(drv.tokenize("Look:"), logits_last=False)
        drv.decode_embd(rows[:16], causal=False)
        drv.decode_embd(rows[16:], causal=False)
        drv.decode_tokens(drv.tokenize(" What is it?"))
        if fastv:
            nv.finish(drv.ctx, 32)
        return drv.logits()

    with LlamaDriver(gemma3_path) as drv:
        assert np.abs(prefill(drv, True) - prefill(drv, False)).max() <= 1e-6


def test_n_hidden_counts_each_token_once_with_two_caches(gemma3_path):
    """Gemma 3's base and sliding-window caches both hide a pruned token; it is one hidden token."""
    with LlamaDriver(gemma3_path) as drv:
        nv.begin(drv.ctx, 0, K)
        drv.decode_tokens(drv.tokenize("Look:"), logits_last=False)
        drv.decode_embd(image(drv, 16) * 5, causal=False)
        drv.decode_tokens(drv.tokenize(" What is it?"))
        nv.finish(drv.ctx, 6)
        assert nv.n_hidden(drv.ctx) == 10
