"""Saving and restoring the state of a context whose KV cache holds FastV-hidden cells.

The session format carries the hidden flags and the layer K they are hidden from: a restored
context continues exactly like the pruned one it was saved from (bitwise equal logits), other
sequences save as usual, and the cells of a prefill that has not finished are never saved.
"""

from __future__ import annotations

import ctypes
import struct

import numpy as np
import pytest
from llama_driver import LlamaDriver
from test_fastv_contract import N_IMG, K, decode_prompt, image

from fastv_edge import _native as nv

pytestmark = pytest.mark.native


def pruned_prefill(drv, seed=0) -> None:
    drv.clear()
    nv.begin(drv.ctx, 0, K)
    decode_prompt(drv, image(drv, seed=seed))
    nv.finish(drv.ctx, 3)


def save(drv, seq_id=None) -> bytes:
    import llama_cpp

    if seq_id is None:
        size = llama_cpp.llama_state_get_size(drv.ctx)
        buf = (ctypes.c_uint8 * max(size, 1))()
        n = llama_cpp.llama_state_get_data(drv.ctx, buf, size)
    else:
        size = llama_cpp.llama_state_seq_get_size(drv.ctx, seq_id)
        buf = (ctypes.c_uint8 * max(size, 1))()
        n = llama_cpp.llama_state_seq_get_data(drv.ctx, buf, size, seq_id)
    return bytes(buf[:n]) if size > 0 else b""


def load(drv, data: bytes, seq_id=None) -> int:
    import llama_cpp

    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    if seq_id is None:
        return llama_cpp.llama_state_set_data(drv.ctx, buf, len(data))
    return llama_cpp.llama_state_seq_set_data(drv.ctx, buf, len(data), seq_id)


def next_logits(drv, tokens) -> list[np.ndarray]:
    out = []
    for t in tokens:
        drv.decode_tokens([t])
        out.append(drv.logits())
    return out


@pytest.fixture
def drivers(tiny):
    with (
        LlamaDriver(tiny.llama_path, n_seq_max=2, kv_unified=True) as a,
        LlamaDriver(tiny.llama_path, n_seq_max=2, kv_unified=True) as b,
    ):
        yield a, b


def test_round_trip_reproduces_the_pruned_context(drivers):
    src, dst = drivers
    pruned_prefill(src)
    state = save(src)
    assert state, "the state of a pruned context could not be saved"
    tokens = src.tokenize(" It is a cat")
    n_past = src.n_past
    want = next_logits(src, tokens)

    assert load(dst, state) == len(state)
    assert nv.n_hidden(dst.ctx) == N_IMG - 3
    dst.n_past = n_past
    got = next_logits(dst, tokens)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)

    # without the flags the restored cache would attend to the pruned tokens: the logits would differ
    src.clear()
    decode_prompt(src, image(src))
    assert np.abs(next_logits(src, tokens)[0] - want[0]).max() > 1e-3


def test_sequence_round_trip_into_another_context(drivers):
    src, dst = drivers
    pruned_prefill(src)
    state = save(src, seq_id=0)
    assert state
    tokens = src.tokenize(" It is")
    n_past = src.n_past
    want = next_logits(src, tokens)

    dst.decode_tokens(dst.tokenize("something else entirely"))  # the sequence replaces what seq 0 held
    assert load(dst, state, seq_id=0) == len(state)
    dst.n_past = n_past
    for g, w in zip(next_logits(dst, tokens), want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_unrelated_sequence_saves_while_another_is_pruned(drivers):
    import llama_cpp

    src, dst = drivers
    pruned_prefill(src)
    batch_pos = src.n_past
    assert src.try_decode(src.tokenize("Hello there"), seq_id=1, pos0=0) == 0
    state = save(src, seq_id=1)
    assert state, "a sequence without hidden cells could not be saved"
    assert load(dst, state, seq_id=1) == len(state)
    assert nv.n_hidden(dst.ctx) == 0
    assert llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(dst.ctx), 1) == 1
    assert batch_pos == src.n_past


def test_a_prefill_in_progress_is_not_saved(drivers):
    src, _ = drivers
    decode_prompt(src, image(src, seed=4))
    nv.begin(src.ctx, 0, K)
    decode_prompt(src, image(src))
    assert save(src) == b""  # its cells have no layers >= K yet
    nv.finish(src.ctx, 3)
    assert save(src)


def test_hidden_cells_of_another_k_are_not_restored(drivers):
    """All hidden cells of a context share one K: a sequence hidden from another layer is refused."""
    import llama_cpp

    src, dst = drivers
    pruned_prefill(src)  # hidden from layer K
    state = save(src, seq_id=0)

    dst.decode_tokens(dst.tokenize("Look: what is it?"))
    nv.hide(dst.ctx, 0, [1], K + 1)  # dst hides a cell of seq 0 from layer K + 1
    assert dst.try_decode(dst.tokenize("Hi"), seq_id=1, pos0=0) == 0
    assert load(dst, state, seq_id=1) == 0
    assert llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(dst.ctx), 1) == -1  # nothing half-restored
    assert nv.n_hidden(dst.ctx) == 1


def test_session_file_has_the_new_version(drivers, tmp_path):
    import llama_cpp

    src, dst = drivers
    pruned_prefill(src)
    path = tmp_path / "pruned.session"
    tokens = (llama_cpp.llama_token * 1)(0)
    assert llama_cpp.llama_state_save_file(src.ctx, str(path).encode(), tokens, 1)
    magic, version = struct.unpack("<II", path.read_bytes()[:8])
    assert (magic, version) == (0x6767736E, 11)  # 'ggsn', LLAMA_SESSION_VERSION 11 carries the hidden flags

    n_out = ctypes.c_size_t()
    assert llama_cpp.llama_state_load_file(dst.ctx, str(path).encode(), tokens, 1, ctypes.byref(n_out))
    assert nv.n_hidden(dst.ctx) == N_IMG - 3


def test_llama_cpp_python_save_and_load_state(tiny):
    """llama-cpp-python's Llama.save_state()/load_state() after a pruned generation."""
    import llama_cpp

    import fastv_edge as fe
    from fastv_edge.images import RGBImage

    pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)  # (h, w, 3)
    photo = RGBImage(nx=64, ny=64, data=pixels.tobytes())
    with fe.load(tiny.llama_path, tiny.mmproj_path, runtime=fe.RuntimeConfig(n_ctx=512, n_threads=2)) as model:
        fe.generate(model, "Describe it.", [photo], max_tokens=2, prune=fe.PruneConfig(layer=K, drop_ratio=0.5))
        n_hidden = nv.n_hidden(model.ctx)
        assert n_hidden > 0
        state = model.llm.save_state()
        assert state.llama_state_size > 0

        def step() -> np.ndarray:
            # one more token after whatever the context holds, read back as the next logits
            mem = llama_cpp.llama_get_memory(model.ctx)
            batch = llama_cpp.llama_batch_init(1, 0, 1)
            try:
                batch.n_tokens = 1
                batch.token[0], batch.pos[0] = 42, llama_cpp.llama_memory_seq_pos_max(mem, 0) + 1
                batch.n_seq_id[0], batch.seq_id[0][0], batch.logits[0] = 1, 0, True
                assert llama_cpp.llama_decode(model.ctx, batch) == 0
            finally:
                llama_cpp.llama_batch_free(batch)
            ptr = llama_cpp.llama_get_logits_ith(model.ctx, -1)
            return np.ctypeslib.as_array(ptr, shape=(model.llm.n_vocab(),)).copy()

        want = step()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(model.ctx), True)
        model.llm.load_state(state)
        assert nv.n_hidden(model.ctx) == n_hidden
        np.testing.assert_array_equal(step(), want)
