"""Every misuse of the llama_fastv_* C API returns its error code; none of them crashes."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

pytestmark = pytest.mark.native

OK, BAD_ARG, UNSUPPORTED, BAD_STATE, BAD_PROMPT = 0, -1, -2, -3, -4


@pytest.fixture(scope="module")
def nv():
    from fastv_edge import _native

    if not _native.HAS_FASTV:
        pytest.fail("the loaded libllama has no llama_fastv_* symbols: rebuild with the patches")
    return _native


@pytest.fixture
def drv(tiny):
    from llama_driver import LlamaDriver

    with LlamaDriver(tiny.llama_path, n_seq_max=2, kv_unified=True) as driver:
        yield driver


def image(drv, n=8):
    return np.random.default_rng(0).standard_normal((n, drv.n_embd)).astype(np.float32) * 0.02


def keep_array(values):
    return (ctypes.c_int32 * max(len(values), 1))(*values), len(values)


def decode_prompt(drv, n_img=8):
    drv.decode_tokens(drv.tokenize("Look: "), logits_last=False)
    drv.decode_embd(image(drv, n_img))
    drv.decode_tokens(drv.tokenize(" what is it?"))


@pytest.mark.parametrize(
    "k, drop_ratio, seq_id",
    [
        (0, 0.5, 0),  # K must leave at least one shallow layer
        (-1, 0.5, 0),  # negative K
        (4, 0.5, 0),  # K = n_layer leaves no deep layer
        (2, -0.1, 0),  # R below 0
        (2, 1.5, 0),  # R above 1
        (2, math.nan, 0),  # NaN is not a ratio
        (2, 0.5, 2),  # seq_id beyond n_seq_max
        (2, 0.5, -1),  # negative seq_id
    ],
)
def test_begin_rejects_bad_arguments(drv, nv, k, drop_ratio, seq_id):
    assert nv.llama_fastv_begin(drv.ctx, seq_id, k, drop_ratio) == BAD_ARG
    assert nv.llama_fastv_finish(drv.ctx) == BAD_STATE  # nothing was begun


def test_out_of_order_calls(drv, nv):
    assert nv.llama_fastv_finish(drv.ctx) == BAD_STATE
    assert nv.llama_fastv_get_kept(drv.ctx, None, 0) == BAD_STATE
    assert nv.llama_fastv_get_scores(drv.ctx, None, 0) == BAD_STATE
    assert nv.llama_fastv_begin(drv.ctx, 0, 2, 0.5) == OK
    assert nv.llama_fastv_begin(drv.ctx, 0, 2, 0.5) == BAD_STATE  # already in progress
    assert nv.llama_fastv_finish(drv.ctx) == BAD_PROMPT  # nothing decoded; finish aborts
    assert nv.llama_fastv_get_kept(drv.ctx, None, 0) == BAD_STATE
    nv.llama_fastv_abort(drv.ctx)  # a second abort is harmless
    assert nv.llama_fastv_begin(drv.ctx, 0, 2, 0.5) == OK


def test_null_context(nv):
    assert nv.llama_fastv_begin(None, 0, 2, 0.5) == BAD_ARG
    assert nv.llama_fastv_finish(None) == BAD_ARG
    assert nv.llama_fastv_n_hidden(None) == BAD_ARG
    nv.llama_fastv_abort(None)


def test_other_sequence_during_prefill(drv, nv):
    import llama_cpp

    assert nv.llama_fastv_begin(drv.ctx, 0, 2, 0.5) == OK
    drv.decode_tokens(drv.tokenize("Look: "), logits_last=False)
    batch = llama_cpp.llama_batch_init(1, 0, 1)
    try:
        batch.n_tokens = 1
        batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.seq_id[0][0] = 42, 0, 1, 1
        assert llama_cpp.llama_decode(drv.ctx, batch) != 0
    finally:
        llama_cpp.llama_batch_free(batch)
    assert nv.llama_fastv_finish(drv.ctx) == BAD_PROMPT


def test_no_logits_during_shallow_stage(drv, nv):
    import llama_cpp

    assert nv.llama_fastv_begin(drv.ctx, 0, 2, 0.5) == OK
    decode_prompt(drv)
    assert not llama_cpp.llama_get_logits_ith(drv.ctx, -1)  # an error, never stale rows
    assert nv.llama_fastv_finish(drv.ctx) == OK
    assert llama_cpp.llama_get_logits_ith(drv.ctx, -1)


def test_prompt_ending_with_an_image(drv, nv):
    assert nv.llama_fastv_begin(drv.ctx, 0, 2, 0.5) == OK
    drv.decode_tokens(drv.tokenize("Look: "), logits_last=False)
    drv.decode_embd(image(drv))
    assert nv.llama_fastv_finish(drv.ctx) == BAD_PROMPT


@pytest.mark.parametrize(
    "keep",
    [
        [0, 0],  # duplicate
        [8],  # out of range (N = 8)
        [-1],  # negative
        list(range(9)),  # more than N
    ],
)
def test_finish_with_bad_keep(drv, nv, keep):
    assert nv.llama_fastv_begin(drv.ctx, 0, 2, 0.5) == OK
    decode_prompt(drv)
    arr, n = keep_array(keep)
    assert nv.llama_fastv_finish_with_keep(drv.ctx, arr, n) == BAD_ARG
    assert nv.llama_fastv_get_kept(drv.ctx, None, 0) == BAD_STATE  # the prefill was aborted


def test_cells_removed_between_begin_and_finish(drv, nv):
    import llama_cpp

    assert nv.llama_fastv_begin(drv.ctx, 0, 2, 0.5) == OK
    decode_prompt(drv)
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(drv.ctx), 0, 3, 5)
    assert nv.llama_fastv_finish(drv.ctx) == BAD_PROMPT


def test_hide_misuse(drv, nv):
    decode_prompt(drv)
    pos = (ctypes.c_int32 * 2)(3, 4)
    assert nv.llama_fastv_hide(drv.ctx, 0, pos, 2, 0) == BAD_ARG  # K out of range
    missing = (ctypes.c_int32 * 1)(999)
    assert nv.llama_fastv_hide(drv.ctx, 0, missing, 1, 2) == BAD_ARG  # no token there
    assert nv.llama_fastv_hide(drv.ctx, 0, None, 3, 2) == BAD_ARG  # NULL positions
    assert nv.llama_fastv_hide(drv.ctx, 0, pos, 2, 2) == OK
    assert nv.llama_fastv_n_hidden(drv.ctx) == 2
    assert nv.llama_fastv_hide(drv.ctx, 0, pos, 2, 3) == BAD_ARG  # one K per cache
    assert nv.llama_fastv_begin(drv.ctx, 0, 3, 0.5) == BAD_ARG  # the same rule for a new prefill
    assert nv.llama_fastv_begin(drv.ctx, 0, 2, 0.5) == OK
    assert nv.llama_fastv_hide(drv.ctx, 0, pos, 2, 2) == BAD_STATE  # not during a prefill


def test_state_save_refused_while_hidden(drv, nv):
    import llama_cpp

    decode_prompt(drv)
    assert llama_cpp.llama_state_get_size(drv.ctx) > 0
    pos = (ctypes.c_int32 * 1)(3)
    assert nv.llama_fastv_hide(drv.ctx, 0, pos, 1, 2) == OK
    assert llama_cpp.llama_state_get_size(drv.ctx) == 0  # refused: the file could not keep the flag
    drv.clear()
    assert llama_cpp.llama_state_get_size(drv.ctx) > 0


@pytest.fixture(scope="module")
def qwen2_path(tiny_dir):
    """A tiny text-only Qwen2 (arch qwen2): the patch has no stage hooks in that graph."""
    from fastv_edge.testing.llama_gguf import add_transformer_keys, write_model_gguf
    from fastv_edge.testing.make_tiny_archs import random_qwen2vl_weights
    from fastv_edge.testing.qwen2vl_gguf import Qwen2VLHParams, tensor_shapes

    hp = Qwen2VLHParams()
    path = tiny_dir / "tiny-qwen2.gguf"

    def add_keys(writer):
        add_transformer_keys(writer, hp)
        writer.add_rope_freq_base(hp.rope_freq_base)
        writer.add_layer_norm_rms_eps(hp.rms_eps)

    return write_model_gguf(path, "qwen2", add_keys, tensor_shapes(hp), random_qwen2vl_weights(hp, 0), hp.n_vocab)


def test_unsupported_architecture(nv, qwen2_path):
    """An architecture without the stage hooks is refused, never run with wrong semantics."""
    from llama_driver import LlamaDriver

    with LlamaDriver(qwen2_path, n_ctx=256) as drv:
        assert nv.llama_fastv_begin(drv.ctx, 0, 2, 0.5) == UNSUPPORTED
        pos = (ctypes.c_int32 * 1)(0)
        assert nv.llama_fastv_hide(drv.ctx, 0, pos, 1, 2) == UNSUPPORTED
        drv.decode_tokens(drv.tokenize("Hello"))
        assert np.isfinite(drv.logits()).all()  # the context still works
