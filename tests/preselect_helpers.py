"""Helpers of the pre-LLM selection tests: the families' tiny pairs, mtmd's rows, KV cells, logits.

- `family_case(tiny_dir, name)`: a tiny text GGUF of one family, its tiny projector (None for
  lfm2, which is fed embedding rows), its float64 reference and how mtmd lays out its images.
- `kv_cells(ctx)`: every KV cell of a sequence as (pos, x, y, token), read from the sequence's
  saved state (llama_state_seq_get_data), the one place llama.cpp lists its cells.
- `decode_all_rows`: a prompt decoded with decode.decode_rows for every image row, to compare
  with mtmd's own decode of the same rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import struct
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
import skimage.data
from PIL import Image

PHOTO_SIZE = (128, 80)  # qwen2vl/qwen3vl: patch 8, merge 2 -> an 8 x 5 grid; gemma3 resizes to 96 x 96
FORCED = " A small red boat is tied to the old wooden dock."
STATE_MAGIC = 0xAF143CD8  # llama-context.cpp io_magic, first word of a sequence's state
TOKEN_NULL = -1  # llama_kv_cell_ext.tok of a cell written from embedding rows


@dataclass
class FamilyCase:
    """One family's tiny text model, its projector and its reference."""

    name: str
    lm: Path
    mmproj: Path | None
    ref: type
    mrope: bool  # 4-section positions and (x, y) in the KV cells
    non_causal: bool  # mtmd decodes its image block non-causally

    def reference(self):
        return self.ref(self.lm)


@contextlib.contextmanager
def f32_kv():
    """fastv_edge.load() inside this block gives a context with an F32 K/V cache (llama.cpp's default is
    F16, whose rounding, ~1e-3, is far above the 1e-4 the float64 references are compared at)."""
    f32 = 0  # GGML_TYPE_F32
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(llama_cpp, "Llama", functools.partial(llama_cpp.Llama, type_k=f32, type_v=f32))
        yield


def load(case, n_batch: int = 512, **prune):
    """fastv_edge.load of a family's pair: 512-token context, 1 thread, F32 K/V, stock pruning by default."""
    import fastv_edge as fe

    runtime = fe.RuntimeConfig(n_ctx=512, n_threads=1, n_batch=n_batch, n_ubatch=n_batch)
    with f32_kv():
        return fe.load(case.lm, case.mmproj, runtime=runtime, prune=fe.PruneConfig(**(prune or {"strategy": "none"})))


def family_case(tiny_dir, name: str) -> FamilyCase:
    """Write (or reuse) the tiny pair of one family.

    Args:
        tiny_dir: the session's directory of tiny models.
        name: llama, qwen2vl, gemma3, qwen3vl, gemma4 (e2b layout, gemma4v projector) or lfm2 (no projector).
    """
    from fastv_edge.testing import make_tiny_archs as archs
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj

    if name == "llama":
        from reference import Ref

        from fastv_edge.testing.make_tiny import make_tiny

        tiny = make_tiny(tiny_dir, seed=0, weight_type="f32")
        return FamilyCase(name, tiny.llama_path, tiny.mmproj_path, Ref, False, False)
    if name == "qwen2vl":
        from reference_archs import RefQwen2VL

        lm = archs.make_tiny_qwen2vl(tiny_dir)
        mmproj, _ = make_tiny_vision_mmproj(tiny_dir, "qwen2vl_merger", lm.hparams.n_embd, out_std=0.5)
        return FamilyCase(name, lm.path, mmproj, RefQwen2VL, True, False)
    if name == "gemma3":
        from reference_archs import RefGemma3

        lm = archs.make_tiny_gemma3(tiny_dir)
        mmproj, _ = make_tiny_vision_mmproj(tiny_dir, "gemma3", lm.hparams.n_embd, out_std=2.5)
        return FamilyCase(name, lm.path, mmproj, RefGemma3, False, True)
    if name == "qwen3vl":
        from reference_families import RefQwen3VL

        lm = archs.make_tiny_qwen3vl(tiny_dir)
        mmproj, _ = make_tiny_vision_mmproj(
            tiny_dir, "qwen3vl_merger", lm.hparams.n_embd, out_std=0.5, n_layer=4, deepstack_layers=(0, 1, 2)
        )
        return FamilyCase(name, lm.path, mmproj, RefQwen3VL, True, False)
    if name == "gemma4":
        from reference_gemma4 import RefGemma4

        from fastv_edge.testing.mmproj_gemma4v import make_tiny_gemma4v_mmproj

        lm = archs.make_tiny_gemma4(tiny_dir, "e2b")
        mmproj, _ = make_tiny_gemma4v_mmproj(tiny_dir, lm.hparams.n_embd)
        return FamilyCase(name, lm.path, mmproj, RefGemma4, False, True)  # tiny width: mtmd goes non-causal
    if name == "lfm2":
        from reference_lfm2 import RefLfm2

        return FamilyCase(name, archs.make_tiny_lfm2(tiny_dir).path, None, RefLfm2, False, False)
    raise ValueError(f"unknown family {name!r}")


def photo(name: str = "astronaut"):
    """A scikit-image photo resized to PHOTO_SIZE, as an RGBImage."""
    from fastv_edge.images import RGBImage

    img = Image.fromarray(getattr(skimage.data, name)()).resize(PHOTO_SIZE, Image.BICUBIC)
    return RGBImage(img.width, img.height, np.asarray(img).tobytes(), name)


def kv_cells(ctx, seq_id: int = 0, ext: bool = False) -> list[tuple[int, int, int, int]]:
    """The KV cells of a sequence, sorted: (pos, x, y, token) each (x = y = 0 without ext).

    Parses the first KV cache of llama_state_seq_get_data (the base cache of an iSWA model, the
    attention cache of a hybrid): magic, seq_id, n_stream, the FastV patch's il_hidden, then
    per stream cell_count and per cell pos, n_seq_id, [llama_kv_cell_ext x, y, tok], seq ids
    (llama-kv-cache.cpp state_write / state_write_meta).

    Args:
        ctx: llama_context pointer.
        seq_id: the sequence.
        ext: the cache stores llama_kv_cell_ext (M-RoPE models: n_pos_per_embd > 1).
    """
    size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
    buf = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(ctx, buf, size, seq_id)
    assert written == size > 0
    data = bytes(buf)
    magic, seq, n_stream, _il_hidden, n_cells = struct.unpack_from("<IiIiI", data, 0)
    assert (magic, seq, n_stream) == (STATE_MAGIC, seq_id, 1)
    off, cells = 20, []
    for _ in range(n_cells):
        pos, n_seq = struct.unpack_from("<iI", data, off)
        off += 8
        x = y = tok = 0
        if ext:
            x, y, tok = struct.unpack_from("<iii", data, off)
            off += 12
        assert struct.unpack_from(f"<{n_seq}i", data, off) == (seq_id,)  # a misparse fails here
        off += 4 * n_seq
        cells.append((pos, x, y, tok))
    return sorted(cells)


def pos_range(ctx, seq_id: int = 0) -> tuple[int, int]:
    """(llama_memory_seq_pos_min, llama_memory_seq_pos_max) of a sequence."""
    mem = llama_cpp.llama_get_memory(ctx)
    return llama_cpp.llama_memory_seq_pos_min(mem, seq_id), llama_cpp.llama_memory_seq_pos_max(mem, seq_id)


def image_cell(positions: np.ndarray, i: int, mrope: bool) -> tuple[int, int, int, int]:
    """The KV cell row i of an image is written to: (t, x, y, TOKEN_NULL) with M-RoPE, else (p, 0, 0, 0)."""
    if mrope:
        t, y, x = positions[0, i], positions[1, i], positions[2, i]  # sections (t, y, x, z)
        return int(t), int(x), int(y), TOKEN_NULL
    return int(positions[0, i]), 0, 0, 0


def logits(ctx, n_vocab: int) -> np.ndarray:
    """(n_vocab,) copy of the last decoded token's logits."""
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()


def continue_decoding(model, n_past: int, tokens: list[int]) -> np.ndarray:
    """(1 + len(tokens), n_vocab): the prompt's last logits, then one row per forced token."""
    from fastv_edge.decode import TokenBatch

    n_vocab = model.llm.n_vocab()
    out = [logits(model.ctx, n_vocab)]
    with TokenBatch(8) as batch:
        for token in tokens:
            n_past = batch.decode(model.ctx, [token], n_past, logits_last=True)
            out.append(logits(model.ctx, n_vocab))
    return np.array(out)


def forced_tokens(model, n: int = 6) -> list[int]:
    return list(model.llm.tokenize(FORCED.encode(), add_bos=False, special=False))[:n]


def clear(model) -> None:
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(model.ctx), True)


def encoded_rows(model, prompt) -> list[np.ndarray]:
    """(n_tokens, n_embd_inp) rows of every image piece: mtmd's encoder output, or the given rows."""
    return [p.embd if p.embd is not None else model.encoder.encode(p).embd for p in prompt.images]


def decode_all_rows(model, prompt, rows: list[np.ndarray]) -> int:
    """Decode the prompt with decode.decode_rows for every image row at mtmd's positions; returns n_past."""
    from fastv_edge.decode import TokenBatch, decode_rows
    from fastv_edge.prompt import TextPiece

    target, n_past, images = model.target, 0, iter(rows)
    with TokenBatch(target.n_batch) as batch:
        for i, piece in enumerate(prompt.pieces):
            if isinstance(piece, TextPiece):
                n_past = batch.decode(target.ctx, piece.tokens, n_past, i == len(prompt.pieces) - 1)
                continue
            decode_rows(
                target.ctx, next(images), piece.positions(n_past), non_causal=piece.non_causal, n_batch=target.n_batch
            )
            n_past += piece.n_pos
    return n_past


def segments(prompt, rows: list[np.ndarray]) -> list[tuple]:
    """The prompt as the float64 references take it: text ids, image rows with the image's layout."""
    from fastv_edge.prompt import TextPiece

    out, images = [], iter(rows)
    for piece in prompt.pieces:
        if isinstance(piece, TextPiece):
            out.append(("tokens", piece.tokens))
            continue
        opts = {"grid": piece.grid} if piece.mrope else {}
        if piece.non_causal:
            opts["causal"] = False
        embd = next(images).astype(np.float64)
        out.append(("embd", embd, opts) if opts else ("embd", embd))  # tests/reference.py takes pairs only
    return out


def run_reference(ref, segs, tokens, **prefill) -> np.ndarray:
    """(1 + len(tokens), n_vocab) reference logits: the prompt's, then one per forced token."""
    out = [ref.prefill(segs, **prefill)["logits"]]
    out += [ref.decode(t) for t in tokens]
    return np.array(out)
