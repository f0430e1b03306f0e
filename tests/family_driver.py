"""tests/llama_driver.py's driver and mtmd session, extended for the newer VLM families.

Two things the base driver cannot do, added in subclasses so the base API stays as it is:
- qwen3vl's decoder takes embedding rows of llama_model_n_embd_inp = n_embd * (1 + n_deepstack)
  floats (the main embedding, then one slice per deepstack layer); FamilyDriver decodes them;
- mtmd's own layout of a chunk (n_pos, causal rule, decoder positions) and its n_embd_inp-wide
  output rows, read back by FamilyMtmdSession so a test can decode them itself and compare.
Positions, batching and the non-causal rule are LlamaDriver's (see there).
"""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np
from llama_driver import LlamaDriver, MtmdSession


class FamilyDriver(LlamaDriver):
    """LlamaDriver that also decodes rows of llama_model_n_embd_inp floats."""

    @property
    def n_embd_inp(self) -> int:
        """Floats per embedding row llama_decode takes: n_embd * (1 + n_deepstack) on qwen3vl, else n_embd."""
        return llama_cpp.llama_model_n_embd_inp(self.model)

    def decode_embd_inp(self, rows, logits_last: bool = False, grid=None, causal: bool = True) -> None:
        """decode_embd for rows (n, n_embd_inp): qwen3vl's main embedding followed by its deepstack slices.

        Args:
            rows: (n, n_embd_inp) embeddings.
            logits_last: request logits for the last row.
            grid: (nx, ny) M-RoPE image grid, see LlamaDriver.embd_positions.
            causal: False decodes with llama_set_causal_attn(ctx, false) (one ubatch at most).
        """
        rows = np.ascontiguousarray(rows, dtype=np.float32)  # (n, n_embd_inp)
        width = self.n_embd_inp
        if rows.ndim != 2 or rows.shape[1] != width:
            raise ValueError(f"rows must be (n, {width}) (llama_model_n_embd_inp), got {rows.shape}")
        if not causal and rows.shape[0] > min(self.n_batch, self.n_ubatch):
            raise ValueError(
                f"a non-causal block of {rows.shape[0]} rows needs n_batch and n_ubatch >= {rows.shape[0]}, "
                f"have {self.n_batch} and {self.n_ubatch}"
            )
        pos, advance = self.embd_positions(rows.shape[0], grid)

        def fill(batch, i0, i1):
            chunk = rows[i0:i1]  # (i1 - i0, n_embd_inp)
            ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)

        if not causal:
            llama_cpp.llama_set_causal_attn(self.ctx, False)
        try:
            self._decode(rows.shape[0], fill, logits_last, embd_dim=width, pos=pos)
        finally:
            if not causal:
                llama_cpp.llama_set_causal_attn(self.ctx, True)
        self.n_past += advance

    def decode_segments_inp(self, segments) -> None:
        """decode_segments whose embedding segments hold rows of n_embd_inp floats."""
        for i, seg in enumerate(segments):
            opts = seg[2] if len(seg) > 2 else {}
            last = i == len(segments) - 1
            if seg[0] == "tokens":
                if opts:
                    raise ValueError(f"token segments take no options, got {opts}")
                self.decode_tokens(seg[1], logits_last=last)
            else:
                self.decode_embd_inp(seg[1], logits_last=last, **opts)


class FamilyMtmdSession(MtmdSession):
    """MtmdSession that also reads mtmd's layout of a chunk and n_embd_inp-wide output rows."""

    def encode_inp(self, index: int) -> np.ndarray:
        """encode for any text model: (n_tokens, n_embd_inp) rows (qwen3vl: deepstack slices appended)."""
        m = self.mtmd
        chunk = m.mtmd_input_chunks_get(self.chunks, index)
        rc = m.mtmd_encode_chunk(self.ctx, chunk)
        if rc != 0:
            raise RuntimeError(f"mtmd_encode_chunk returned {rc}")
        n = m.mtmd_input_chunk_get_n_tokens(chunk)
        ptr = m.mtmd_get_output_embd(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n, llama_cpp.llama_model_n_embd_inp(self.driver.model))).copy()

    def chunk_n_pos(self, index: int) -> int:
        """How far chunk `index` advances n_past (mtmd_input_chunk_get_n_pos: max(nx, ny) for M-RoPE images)."""
        return self.mtmd.mtmd_input_chunk_get_n_pos(self.mtmd.mtmd_input_chunks_get(self.chunks, index))

    def use_non_causal(self, index: int) -> bool:
        """mtmd_decode_use_non_causal of chunk `index`: whether mtmd decodes it with causal attention off."""
        m = self.mtmd
        return bool(m.mtmd_decode_use_non_causal(self.ctx, m.mtmd_input_chunks_get(self.chunks, index)))

    def decoder_positions(self, index: int, pos_0: int) -> np.ndarray:
        """(4, n) M-RoPE positions (t, y, x, z) mtmd gives image chunk `index` at pos_0, section-major as decoded."""
        m = self.mtmd
        tokens = m.mtmd_input_chunk_get_tokens_image(m.mtmd_input_chunks_get(self.chunks, index))
        n = m.mtmd_image_tokens_get_n_tokens(tokens)
        pos = [m.mtmd_image_tokens_get_decoder_pos(tokens, pos_0, i) for i in range(n)]
        return np.array(
            [[p.t for p in pos], [p.y for p in pos], [p.x for p in pos], [p.z for p in pos]], dtype=np.int64
        )
