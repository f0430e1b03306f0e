"""The vision encoder step: an image piece's rows for the LLM.

mtmd_encode_chunk runs the mmproj (preprocessed pixels -> ViT -> projector) and leaves
n_tokens x n_embd_inp floats in a buffer that the next encode overwrites, so the rows are
copied out. (Pseudo images carry their rows already and skip this step.)

With an EmbeddingCache the rows of an image already encoded under the same key (its pixels,
the mmproj, the preprocessing settings, the library build) come from memory or disk instead;
token selection runs afterwards, so requests with different budgets share one encode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from .errors import NativeError
from .image_tokens import token_grid
from .prompt import ImagePiece


@dataclass
class Encoded:
    """An image's rows and what producing them cost."""

    embd: np.ndarray  # (n_tokens, n_embd_inp) float32
    encode_ms: float
    cached: bool = False  # the rows came from the embedding cache
    grid: tuple[int, int] | None = None  # (nx, ny) token grid, when known (image_tokens.token_grid)


class ImageEncoder:
    """Encodes image pieces through one mtmd context for one llama model.

    Args:
        mtmd_ctx: the mtmd context.
        llama_model: the llama_model pointer (for n_embd_inp).
        cache: an EmbeddingCache, or None to encode every time.
        keys: an EncoderKeys giving each image's cache key (required with a cache).
        fixed_resolution: the projector resizes every image to one square (the grid is then s x s).
    """

    def __init__(self, mtmd_ctx, llama_model, *, cache=None, keys=None, fixed_resolution: bool = False):
        if cache is not None and keys is None:
            raise ValueError("an embedding cache needs the encoder's keys (EncoderKeys)")
        self.mtmd_ctx = mtmd_ctx
        self.n_embd_inp = llama_cpp.llama_model_n_embd_inp(llama_model)
        self.cache = cache
        self.keys = keys
        self.fixed_resolution = fixed_resolution

    def encode(self, piece: ImagePiece) -> Encoded:
        """The rows of an mtmd image piece, from the cache when it has them.

        Raises:
            NativeError: the vision encoder failed.
        """
        if piece.chunk is None:
            raise ValueError(f"{piece.name}: no mtmd chunk to encode")
        grid = token_grid(piece.grid, piece.n_tokens, self.fixed_resolution)
        key = None
        if self.cache is not None and piece.digest is not None:
            t0 = time.perf_counter()
            key = self.keys.key(piece)
            embd = self.cache.get(key, (piece.n_tokens, self.n_embd_inp))
            if embd is not None:
                return Encoded(embd, (time.perf_counter() - t0) * 1e3, cached=True, grid=grid)
        t0 = time.perf_counter()
        rc = mtmd.mtmd_encode_chunk(self.mtmd_ctx, piece.chunk)
        if rc != 0:
            raise NativeError("mtmd_encode_chunk", rc, f"{piece.name}: the vision encoder failed")
        out = mtmd.mtmd_get_output_embd(self.mtmd_ctx)
        embd = np.ctypeslib.as_array(out, shape=(piece.n_tokens, self.n_embd_inp)).copy()  # (n_tokens, n_embd_inp)
        encode_ms = (time.perf_counter() - t0) * 1e3
        if key is not None:
            embd = self.cache.put(key, embd, {"name": piece.name, "grid": grid, "encode_ms": encode_ms})
        return Encoded(embd, encode_ms, grid=grid)
