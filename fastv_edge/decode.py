"""llama_decode of text tokens and of embedding rows, in n_batch-sized parts.

`decode_rows` mirrors mtmd_helper_decode_image_chunk (tools/mtmd/mtmd-helper.cpp) for any
subset of an image's rows: each row goes in at the position(s) mtmd gives it, M-RoPE rows with
their four sections (section-major in the batch, as mtmd's decode_embd_batch writes them), a
non-causal image with causal attention off for the whole block, restored on every path.
With every row kept it decodes exactly what mtmd's helper decodes (tests/test_preselect_rows.py).
"""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np

from .errors import NativeError


def _decode(ctx, batch, what: str) -> None:
    rc = llama_cpp.llama_decode(ctx, batch)
    if rc != 0:
        hint = "no free KV slot: the context is full" if rc == 1 else "see llama.cpp's log (verbose)"
        raise NativeError("llama_decode", rc, f"{what}: {hint}")


class TokenBatch:
    """A llama_batch for up to n_batch text tokens of one sequence (freed on close)."""

    def __init__(self, n_batch: int, seq_id: int = 0):
        self.n_batch = n_batch
        self.seq_id = seq_id
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)

    def decode(self, ctx, tokens: list[int], n_past: int, logits_last: bool) -> int:
        """Decode tokens from position n_past; returns the next position."""
        batch = self.batch
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start : start + self.n_batch]
            batch.n_tokens = len(part)
            for i, tok in enumerate(part):
                batch.token[i] = tok
                batch.pos[i] = n_past + start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = self.seq_id
                batch.logits[i] = False
            if logits_last and start + self.n_batch >= len(tokens):
                batch.logits[len(part) - 1] = True
            _decode(ctx, batch, "text")
        return n_past + len(tokens)

    def close(self) -> None:
        """Free the native batch."""
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def decode_rows(ctx, rows: np.ndarray, positions: np.ndarray, *, non_causal: bool, n_batch: int, seq_id: int = 0):
    """Decode embedding rows at the given positions, without logits.

    Args:
        ctx: llama_context pointer.
        rows: (n, n_embd_inp) float32, the LLM's input rows (llama_model_n_embd_inp wide).
        positions: (n_pos_per_embd, n) int32: 1 row of positions, or M-RoPE's 4 sections.
        non_causal: decode as one bidirectional block (must fit one ubatch, as in mtmd).
        n_batch: rows per llama_decode call.
        seq_id: the sequence.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float32)  # (n, n_embd_inp)
    n, n_embd = rows.shape
    # llama_decode reads n_embd_inp floats per row whatever the batch holds (llama_batch_compat::init):
    # a narrower row (qwen3vl's n_embd without its deepstack slices) would be read past its end
    n_embd_inp = llama_cpp.llama_model_n_embd_inp(llama_cpp.llama_get_model(ctx))
    if n_embd != n_embd_inp:
        raise ValueError(f"image rows are {n_embd} floats wide but this model takes {n_embd_inp} (n_embd_inp)")
    if positions.shape[1] != n:
        raise ValueError(f"{n} rows but positions for {positions.shape[1]}")
    if n == 0:
        return
    if non_causal:
        llama_cpp.llama_set_causal_attn(ctx, False)
    try:
        for start in range(0, n, n_batch):
            part = slice(start, min(start + n_batch, n))
            _decode_part(ctx, rows[part], np.ascontiguousarray(positions[:, part], dtype=np.int32), seq_id)
    finally:
        if non_causal:
            llama_cpp.llama_set_causal_attn(ctx, True)


def _decode_part(ctx, rows: np.ndarray, positions: np.ndarray, seq_id: int) -> None:
    n, n_embd = rows.shape  # (n, n_embd_inp)
    batch = llama_cpp.llama_batch_init(n, n_embd, 1)
    # llama_batch_free frees batch.pos: keep its address as an int (a ctypes pointer read from the
    # struct aliases the field, so it would follow the reassignment below), restore it after
    own_pos = ctypes.cast(batch.pos, ctypes.c_void_p).value
    try:
        batch.n_tokens = n
        ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
        for i in range(n):
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = False
        if positions.shape[0] == 1:
            ctypes.memmove(batch.pos, positions.ctypes.data, positions.nbytes)
        else:
            batch.pos = positions.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_pos))  # (4, n) section-major
        _decode(ctx, batch, "image rows")
    finally:
        batch.pos = ctypes.cast(own_pos, ctypes.POINTER(llama_cpp.llama_pos))
        llama_cpp.llama_batch_free(batch)
