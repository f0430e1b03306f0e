"""A small llama-cpp-python low-level driver for tests: one model, one context, one sequence.

Decodes token batches and embedding batches (llama_batch_init(n, n_embd, 1) with embd
rows) at explicit positions, and reads logits. Defaults are the exact-comparison setting:
F32 K/V cache, flash attention off.

M-RoPE models (qwen2vl): llama_decode reads an embedding batch's positions section-major,
pos[j*n_tokens + i] for j < 4 (llama_batch_compat::init, src/llama-batch.cpp), while
llama_batch_init allocates only n_tokens positions; embedding batches therefore get a
4*n position array here. Token batches keep one position per token.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp
import llama_cpp._logger
import numpy as np

llama_cpp._logger.set_verbose(False)  # llama.cpp's INFO lines would drown test output
llama_cpp.llama_backend_init()

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1


class LlamaDriver:
    """Owns a llama_model + llama_context; use as a context manager or call close().

    Args:
        model_path: GGUF file.
        n_ctx: context size.
        n_batch: max tokens per llama_decode call (longer inputs are split).
        n_ubatch: physical micro-batch size.
        flash_attn: enable flash attention.
        kv_type: GGML type of the K and V cache (GGML_TYPE_F32 or GGML_TYPE_F16).
        n_threads: CPU threads.
        n_seq_max: number of sequences the context holds.
        kv_unified: one KV buffer shared by all sequences (else one stream per sequence).
        swa_full: full-size sliding-window cache (the default); False keeps only the window.
        no_perf: skip llama.cpp's performance counters (llama_perf_context).
    """

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int = 512,
        n_batch: int = 512,
        n_ubatch: int = 512,
        flash_attn: bool = False,
        kv_type: int = GGML_TYPE_F32,
        n_threads: int = 1,
        n_seq_max: int = 1,
        kv_unified: bool = False,
        swa_full: bool = True,
        no_perf: bool = True,
    ):
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, n_batch, n_ubatch
        cparams.n_seq_max = n_seq_max
        cparams.kv_unified = kv_unified
        cparams.swa_full = swa_full
        cparams.no_perf = no_perf
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.type_k = cparams.type_v = kv_type
        cparams.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise RuntimeError(f"llama.cpp could not create a context for {model_path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama_cpp.llama_model_n_embd(self.model)
        self.n_layer = llama_cpp.llama_model_n_layer(self.model)
        self.n_batch = n_batch
        self.n_ubatch = n_ubatch
        rope_type = llama_cpp.llama_model_rope_type(self.model)
        self.n_pos_per_embd = (
            4 if rope_type in (llama_cpp.LLAMA_ROPE_TYPE_MROPE, llama_cpp.LLAMA_ROPE_TYPE_IMROPE) else 1
        )
        self.n_past = 0

    def close(self) -> None:
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def clear(self) -> None:
        """Empty the KV cache and restart positions at 0."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        self.n_past = 0

    def _decode(self, n: int, fill, logits_last: bool, embd_dim: int = 0, pos=None) -> None:
        """Decode n inputs in chunks of n_batch; fill(batch, i0, i1) writes token/embd rows.

        pos: (n_pos, n) positions, section-major; None means n_past, n_past+1, ... The
        caller advances n_past when it passes pos."""
        for i0 in range(0, n, self.n_batch):
            i1 = min(n, i0 + self.n_batch)
            batch = llama_cpp.llama_batch_init(i1 - i0, embd_dim, 1)
            own_pos = ctypes.cast(batch.pos, ctypes.c_void_p).value  # an address: the field object is a view
            try:
                batch.n_tokens = i1 - i0
                fill(batch, i0, i1)
                if pos is not None:
                    chunk = np.ascontiguousarray(pos[:, i0:i1], dtype=np.int32)  # (n_pos, i1 - i0)
                    pos_buf = (llama_cpp.llama_pos * chunk.size).from_buffer_copy(chunk.tobytes())
                    batch.pos = ctypes.cast(pos_buf, ctypes.POINTER(llama_cpp.llama_pos))
                for j in range(i1 - i0):
                    if pos is None:
                        batch.pos[j] = self.n_past + j
                    batch.n_seq_id[j] = 1
                    batch.seq_id[j][0] = 0
                    batch.logits[j] = logits_last and (i0 + j == n - 1)
                rc = llama_cpp.llama_decode(self.ctx, batch)
                if rc != 0:
                    raise RuntimeError(f"llama_decode returned {rc}")
                if pos is None:
                    self.n_past += i1 - i0
            finally:
                batch.pos = ctypes.cast(own_pos, ctypes.POINTER(llama_cpp.llama_pos))  # llama_batch_free frees it
                llama_cpp.llama_batch_free(batch)

    def try_decode(self, tokens, seq_id: int = 0, pos0: int | None = None, logits_last: bool = True) -> int:
        """One llama_decode of token ids at pos0, pos0+1, ... (default n_past); returns its code, never raises.

        For callers that ignore errors: n_past moves only when seq_id is 0 and the decode succeeded."""
        tokens = [int(t) for t in tokens]
        pos0 = self.n_past if pos0 is None else pos0
        batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
        try:
            batch.n_tokens = len(tokens)
            for j, t in enumerate(tokens):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = t, pos0 + j, 1
                batch.seq_id[j][0] = seq_id
                batch.logits[j] = logits_last and j == len(tokens) - 1
            rc = llama_cpp.llama_decode(self.ctx, batch)
        finally:
            llama_cpp.llama_batch_free(batch)
        if rc == 0 and seq_id == 0:
            self.n_past = pos0 + len(tokens)
        return rc

    def decode_tokens(self, tokens, logits_last: bool = True) -> None:
        """Decode token ids at the next positions; logits for the last one if asked."""
        tokens = [int(t) for t in tokens]

        def fill(batch, i0, i1):
            for j, t in enumerate(tokens[i0:i1]):
                batch.token[j] = t

        self._decode(len(tokens), fill, logits_last)

    def embd_positions(self, n: int, grid=None) -> tuple[np.ndarray, int]:
        """Positions of n embedding rows at n_past, as mtmd assigns them, and how far n_past moves.

        Args:
            n: number of rows.
            grid: (nx, ny) for an M-RoPE image: t = n_past, y = n_past + i // nx,
                x = n_past + i % nx, z = 0, stored (t, y, x, z) (mtmd.cpp:2474-2484,
                mtmd-helper-common.h:101-113); n_past then moves by max(nx, ny). None: 1-D
                positions n_past + i, repeated in all 4 sections on M-RoPE models.

        Returns:
            ((n_pos_per_embd, n) int positions, advance of n_past).
        """
        i = np.arange(n)
        if grid is None:
            return np.tile(self.n_past + i, (self.n_pos_per_embd, 1)), n
        if self.n_pos_per_embd != 4:
            raise ValueError("a grid needs an M-RoPE model (qwen2vl); this model takes 1-D positions")
        nx, ny = (int(v) for v in grid)
        if nx <= 0 or ny <= 0 or nx * ny != n:
            raise ValueError(f"grid {grid} does not hold {n} rows")
        t = np.full(n, self.n_past)
        pos = np.stack([t, self.n_past + i // nx, self.n_past + i % nx, np.zeros(n, dtype=np.int64)])
        return pos, max(nx, ny)

    def decode_embd(self, rows, logits_last: bool = False, grid=None, causal: bool = True) -> None:
        """Decode embedding rows (n, n_embd) at the next positions (the image path).

        Args:
            rows: (n, n_embd) embeddings.
            logits_last: request logits for the last row.
            grid: (nx, ny) M-RoPE image grid (qwen2vl), see embd_positions.
            causal: False decodes the rows with llama_set_causal_attn(ctx, false), as mtmd
                does for Gemma 3 images; they must then fit in one n_batch and n_ubatch.
        """
        rows = np.ascontiguousarray(rows, dtype=np.float32)  # (n, n_embd)
        if rows.ndim != 2 or rows.shape[1] != self.n_embd:
            raise ValueError(f"rows must be (n, {self.n_embd}), got {rows.shape}")
        if not causal and rows.shape[0] > min(self.n_batch, self.n_ubatch):
            # llama.cpp aborts (GGML_ASSERT) on a non-causal batch larger than n_ubatch
            raise ValueError(
                f"a non-causal block of {rows.shape[0]} rows needs n_batch and n_ubatch >= {rows.shape[0]}, "
                f"have {self.n_batch} and {self.n_ubatch}"
            )
        pos, advance = self.embd_positions(rows.shape[0], grid)

        def fill(batch, i0, i1):
            chunk = rows[i0:i1]  # (i1 - i0, n_embd)
            ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)

        if not causal:
            llama_cpp.llama_set_causal_attn(self.ctx, False)
        try:
            self._decode(rows.shape[0], fill, logits_last, embd_dim=self.n_embd, pos=pos)
        finally:
            if not causal:
                llama_cpp.llama_set_causal_attn(self.ctx, True)
        self.n_past += advance

    def decode_segments(self, segments) -> None:
        """Decode [("tokens", ids) | ("embd", rows[, {"grid": (nx, ny), "causal": bool}])] as
        separate calls; logits for the last."""
        for i, seg in enumerate(segments):
            kind, data = seg[0], seg[1]
            opts = seg[2] if len(seg) > 2 else {}
            if isinstance(opts, tuple):
                opts = {"grid": opts}
            last = i == len(segments) - 1
            if kind == "tokens":
                if opts:
                    raise ValueError(f"token segments take no options, got {opts}")
                self.decode_tokens(data, logits_last=last)
            else:
                self.decode_embd(data, logits_last=last, **opts)

    def logits(self) -> np.ndarray:
        """(n_vocab,) logits of the last decoded output row."""
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        if not ptr:
            raise RuntimeError("no logits: the last decode call requested none")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        data = text.encode()
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add_special, parse_special)
        if n < 0:
            raise RuntimeError(f"llama_tokenize failed ({n})")
        return list(buf[:n])

    def piece(self, token: int) -> str:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            raise RuntimeError(f"llama_token_to_piece failed ({n})")
        return buf.raw[:n].decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def generate_greedy(self, n: int) -> list[int]:
        """Greedy continuation from the current logits, n tokens (stops at end-of-generation)."""
        out = []
        for _ in range(n):
            token = int(np.argmax(self.logits()))
            if self.is_eog(token):
                break
            out.append(token)
            self.decode_tokens([token])
        return out


class MtmdSession:
    """An mtmd context (mmproj) bound to a LlamaDriver: tokenize text + one image, encode, eval.

    Args:
        driver: the text model and context the image tokens are decoded into.
        mmproj_path: mmproj GGUF.
        n_threads: CPU threads for the vision encoder.
    """

    def __init__(self, driver: LlamaDriver, mmproj_path: str | Path, n_threads: int = 1):
        import llama_cpp.mtmd_cpp as mtmd

        self.mtmd = mtmd
        mtmd.mtmd_log_set(llama_cpp._logger.llama_log_callback, None)
        mtmd.mtmd_helper_log_set(llama_cpp._logger.llama_log_callback, None)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.n_threads = n_threads
        self.driver = driver
        self.ctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode(), driver.model, params)
        if not self.ctx:
            raise RuntimeError(f"mtmd could not load {mmproj_path} with this text model")
        self.chunks = None

    @property
    def marker(self) -> str:
        return self.mtmd.mtmd_default_marker().decode()

    def close(self) -> None:
        if self.chunks:
            self.mtmd.mtmd_input_chunks_free(self.chunks)
            self.chunks = None
        if self.ctx:
            self.mtmd.mtmd_free(self.ctx)
            self.ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def tokenize(self, text: str, image: np.ndarray) -> list[tuple[int, int]]:
        """Split text (with one media marker) + an RGB uint8 (h, w, 3) image into chunks.

        Returns:
            [(chunk type, n_tokens), ...]; type 0 is text, 1 is image (mtmd_input_chunk_type).
        """
        m = self.mtmd
        image = np.ascontiguousarray(image, dtype=np.uint8)  # (h, w, 3)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be (h, w, 3) RGB, got {image.shape}")
        pixels = (ctypes.c_uint8 * image.size).from_buffer_copy(image.tobytes())
        bitmap = m.mtmd_bitmap_init(image.shape[1], image.shape[0], pixels)
        if self.chunks:
            m.mtmd_input_chunks_free(self.chunks)
        self.chunks = m.mtmd_input_chunks_init()
        try:
            data = text.encode()
            inp = m.mtmd_input_text(text=data, text_len=len(data), add_special=False, parse_special=True)
            bitmaps = (m.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = m.mtmd_tokenize(self.ctx, self.chunks, ctypes.byref(inp), bitmaps, 1)
        finally:
            m.mtmd_bitmap_free(bitmap)
        if rc != 0:
            raise RuntimeError(f"mtmd_tokenize returned {rc}")
        out = []
        for i in range(m.mtmd_input_chunks_size(self.chunks)):
            chunk = m.mtmd_input_chunks_get(self.chunks, i)
            out.append((m.mtmd_input_chunk_get_type(chunk), m.mtmd_input_chunk_get_n_tokens(chunk)))
        return out

    def encode(self, index: int) -> np.ndarray:
        """Run the vision encoder on image chunk `index`; returns its (n_tokens, n_embd) rows."""
        m = self.mtmd
        chunk = m.mtmd_input_chunks_get(self.chunks, index)
        rc = m.mtmd_encode_chunk(self.ctx, chunk)
        if rc != 0:
            raise RuntimeError(f"mtmd_encode_chunk returned {rc}")
        n = m.mtmd_input_chunk_get_n_tokens(chunk)
        ptr = m.mtmd_get_output_embd(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n, self.driver.n_embd)).copy()

    def chunk_tokens(self, index: int) -> list[int]:
        """Token ids of text chunk `index` (as mtmd tokenized them, markers included)."""
        m = self.mtmd
        n = ctypes.c_size_t()
        ptr = m.mtmd_input_chunk_get_tokens_text(m.mtmd_input_chunks_get(self.chunks, index), ctypes.byref(n))
        return [int(ptr[i]) for i in range(n.value)]

    def image_grid(self, index: int) -> tuple[int, int]:
        """(nx, ny) token grid of image chunk `index` (M-RoPE positions follow it)."""
        m = self.mtmd
        tokens = m.mtmd_input_chunk_get_tokens_image(m.mtmd_input_chunks_get(self.chunks, index))
        return m.mtmd_image_tokens_get_nx(tokens), m.mtmd_image_tokens_get_ny(tokens)

    def eval(self, n_batch: int = 512) -> None:
        """Decode every chunk into the driver's context (logits for the last token)."""
        new_n_past = llama_cpp.llama_pos(0)
        rc = self.mtmd.mtmd_helper_eval_chunks(
            self.ctx,
            self.driver.ctx,
            self.chunks,
            self.driver.n_past,
            0,
            n_batch,
            True,
            ctypes.byref(new_n_past),
        )
        if rc != 0:
            raise RuntimeError(f"mtmd_helper_eval_chunks returned {rc}")
        self.driver.n_past = new_n_past.value
