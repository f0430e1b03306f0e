"""The vision encoder step: an image piece's rows for the LLM.

mtmd_encode_chunk runs the mmproj (preprocessed pixels -> ViT -> projector) and leaves
n_tokens x n_embd_inp floats in a buffer that the next encode overwrites, so the rows are
copied out. (Pseudo images carry their rows already and skip this step.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from .errors import NativeError
from .prompt import ImagePiece


@dataclass
class Encoded:
    """An image's rows and what producing them cost."""

    embd: np.ndarray  # (n_tokens, n_embd_inp) float32
    encode_ms: float


class ImageEncoder:
    """Encodes image pieces through one mtmd context for one llama model."""

    def __init__(self, mtmd_ctx, llama_model):
        self.mtmd_ctx = mtmd_ctx
        self.n_embd_inp = llama_cpp.llama_model_n_embd_inp(llama_model)

    def encode(self, piece: ImagePiece) -> Encoded:
        """The rows of an mtmd image piece.

        Raises:
            NativeError: the vision encoder failed.
        """
        if piece.chunk is None:
            raise ValueError(f"{piece.name}: no mtmd chunk to encode")
        t0 = time.perf_counter()
        rc = mtmd.mtmd_encode_chunk(self.mtmd_ctx, piece.chunk)
        if rc != 0:
            raise NativeError("mtmd_encode_chunk", rc, f"{piece.name}: the vision encoder failed")
        out = mtmd.mtmd_get_output_embd(self.mtmd_ctx)
        embd = np.ctypeslib.as_array(out, shape=(piece.n_tokens, self.n_embd_inp)).copy()  # (n_tokens, n_embd_inp)
        return Encoded(embd, (time.perf_counter() - t0) * 1e3)
