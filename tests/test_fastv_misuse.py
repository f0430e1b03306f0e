"""Every misuse of the llama_fastv_* C API's arguments and call order returns its error code.

Raw ctypes calls, as a C caller makes them; tests/test_fastv_contract.py covers what the memory
holds after each error.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

pytestmark = pytest.mark.native

OK, BAD_ARG, UNSUPPORTED, BAD_STATE, BAD_PROMPT = 0, -1, -2, -3, -4


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
    "k, seq_id",
    [
        (0, 0),  # K must leave at least one shallow layer
        (-1, 0),  # negative K
        (4, 0),  # K = n_layer leaves no deep layer
        (2, 2),  # seq_id beyond n_seq_max
        (2, -1),  # negative seq_id
    ],
)
def test_begin_rejects_bad_arguments(drv, native, k, seq_id):
    assert native.llama_fastv_begin(drv.ctx, seq_id, k) == BAD_ARG
    assert native.llama_fastv_finish(drv.ctx, 0) == BAD_STATE  # nothing was begun


def test_out_of_order_calls(drv, native):
    assert native.llama_fastv_finish(drv.ctx, 0) == BAD_STATE
    assert native.llama_fastv_finish_with_keep(drv.ctx, None, 0) == BAD_STATE
    assert native.llama_fastv_get_kept(drv.ctx, None, 0) == BAD_STATE
    assert native.llama_fastv_get_scores(drv.ctx, None, 0) == BAD_STATE
    assert native.llama_fastv_begin(drv.ctx, 0, 2) == OK
    assert native.llama_fastv_begin(drv.ctx, 0, 2) == BAD_STATE  # already in progress
    assert native.llama_fastv_get_kept(drv.ctx, None, 0) == BAD_STATE  # nothing finished yet
    assert native.llama_fastv_finish(drv.ctx, 0) == BAD_PROMPT  # nothing decoded; the prefill ends
    assert native.llama_fastv_get_kept(drv.ctx, None, 0) == BAD_STATE
    native.llama_fastv_abort(drv.ctx)  # an abort with nothing in progress is harmless
    assert native.llama_fastv_begin(drv.ctx, 0, 2) == OK


def test_null_context(native):
    pos = (ctypes.c_int32 * 1)(0)
    assert native.llama_fastv_begin(None, 0, 2) == BAD_ARG
    assert native.llama_fastv_finish(None, 0) == BAD_ARG
    assert native.llama_fastv_finish_with_keep(None, None, 0) == BAD_ARG
    assert native.llama_fastv_get_scores(None, None, 0) == BAD_ARG
    assert native.llama_fastv_get_kept(None, None, 0) == BAD_ARG
    assert native.llama_fastv_hide(None, 0, pos, 1, 2) == BAD_ARG
    assert native.llama_fastv_n_hidden(None) == BAD_ARG
    native.llama_fastv_abort(None)


def test_output_buffers(drv, native):
    assert native.llama_fastv_begin(drv.ctx, 0, 2) == OK
    decode_prompt(drv)
    assert native.llama_fastv_get_scores(drv.ctx, None, 8) == BAD_ARG  # NULL with room for 8
    assert native.llama_fastv_get_scores(drv.ctx, None, -1) == BAD_ARG
    out = (ctypes.c_float * 3)()
    assert native.llama_fastv_get_scores(drv.ctx, out, 3) == 8  # N, writing only 3
    assert native.llama_fastv_finish(drv.ctx, 4) == OK
    kept = (ctypes.c_int32 * 2)()
    assert native.llama_fastv_get_kept(drv.ctx, None, 2) == BAD_ARG
    assert native.llama_fastv_get_kept(drv.ctx, kept, 2) == 4
    assert native.llama_fastv_get_scores(drv.ctx, None, 0) == 8  # readable until the next begin


def test_no_logits_during_shallow_stage(drv, native):
    import llama_cpp

    assert native.llama_fastv_begin(drv.ctx, 0, 2) == OK
    decode_prompt(drv)
    assert not llama_cpp.llama_get_logits_ith(drv.ctx, -1)  # an error, never stale rows
    assert not llama_cpp.llama_get_logits(drv.ctx)
    assert native.llama_fastv_finish(drv.ctx, 4) == OK
    assert llama_cpp.llama_get_logits_ith(drv.ctx, -1)


def test_prompt_ending_with_an_image(drv, native):
    assert native.llama_fastv_begin(drv.ctx, 0, 2) == OK
    drv.decode_tokens(drv.tokenize("Look: "), logits_last=False)
    drv.decode_embd(image(drv))
    assert native.llama_fastv_finish(drv.ctx, 4) == BAD_PROMPT


@pytest.mark.parametrize(
    "keep",
    [
        [0, 0],  # duplicate
        [8],  # out of range (N = 8)
        [-1],  # negative
        list(range(9)),  # more than N
    ],
)
def test_finish_with_bad_keep(drv, native, keep):
    assert native.llama_fastv_begin(drv.ctx, 0, 2) == OK
    decode_prompt(drv)
    arr, n = keep_array(keep)
    assert native.llama_fastv_finish_with_keep(drv.ctx, arr, n) == BAD_ARG
    assert native.llama_fastv_get_kept(drv.ctx, None, 0) == BAD_STATE  # not finished, still in progress
    arr, n = keep_array([2, 0])  # any order
    assert native.llama_fastv_finish_with_keep(drv.ctx, arr, n) == OK
    assert native.get_kept(drv.ctx) == [0, 2]


def test_cells_removed_between_begin_and_finish(drv, native):
    import llama_cpp

    assert native.llama_fastv_begin(drv.ctx, 0, 2) == OK
    decode_prompt(drv)
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(drv.ctx), 0, 3, 5)  # a hole in the prompt
    assert native.llama_fastv_finish(drv.ctx, 4) == BAD_PROMPT


def test_hide_misuse(drv, native):
    decode_prompt(drv)
    pos = (ctypes.c_int32 * 2)(3, 4)
    assert native.llama_fastv_hide(drv.ctx, 0, pos, 2, 0) == BAD_ARG  # K out of range
    missing = (ctypes.c_int32 * 1)(999)
    assert native.llama_fastv_hide(drv.ctx, 0, missing, 1, 2) == BAD_ARG  # no token there
    assert native.llama_fastv_hide(drv.ctx, 0, None, 3, 2) == BAD_ARG  # NULL positions
    assert native.llama_fastv_hide(drv.ctx, 0, pos, 2, 2) == OK
    assert native.llama_fastv_n_hidden(drv.ctx) == 2
    assert native.llama_fastv_hide(drv.ctx, 0, pos, 2, 3) == BAD_ARG  # one K per cache
    assert native.llama_fastv_begin(drv.ctx, 0, 3) == BAD_ARG  # the same rule for a new prefill
    assert native.llama_fastv_begin(drv.ctx, 0, 2) == OK
    assert native.llama_fastv_hide(drv.ctx, 0, pos, 2, 2) == BAD_STATE  # not during a prefill


@pytest.fixture(scope="module")
def unhooked_path(tiny_dir):
    """A tiny text-only SmolLM3 (arch smollm3, llama's tensors): the patch has no stage hooks in that graph."""
    from fastv_edge.testing.llama_gguf import LlamaHParams, add_transformer_keys, tensor_shapes, write_model_gguf
    from fastv_edge.testing.make_tiny import random_llama_weights

    hp = LlamaHParams()
    path = tiny_dir / "tiny-smollm3.gguf"

    def add_keys(writer):
        add_transformer_keys(writer, hp)
        writer.add_rope_freq_base(hp.rope_freq_base)
        writer.add_layer_norm_rms_eps(hp.rms_eps)

    return write_model_gguf(path, "smollm3", add_keys, tensor_shapes(hp), random_llama_weights(hp, 0), hp.n_vocab)


def test_unsupported_architecture(native, unhooked_path):
    """An architecture without the stage hooks is refused, never run with wrong semantics."""
    from llama_driver import LlamaDriver

    with LlamaDriver(unhooked_path, n_ctx=256) as drv:
        assert native.llama_fastv_begin(drv.ctx, 0, 2) == UNSUPPORTED
        pos = (ctypes.c_int32 * 1)(0)
        assert native.llama_fastv_hide(drv.ctx, 0, pos, 1, 2) == UNSUPPORTED
        drv.decode_tokens(drv.tokenize("Hello"))
        assert np.isfinite(drv.logits()).all()  # the context still works
