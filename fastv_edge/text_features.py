"""The LLM's own input embeddings of given token ids, read from its GGUF (CDPruner's text features).

Only the requested rows of `token_embd.weight` are read (a memory map) and dequantized with
gguf.quants; the vocabulary is never dequantized whole. The tensor table comes from
gguf_header.read_header, which skips the vocabulary (gguf.GGUFReader builds an object for every
vocabulary string: about 2 s for SmolLM2's 49k tokens, 8 s for Gemma 3's 262k).

Gemma's input scaling: llama.cpp multiplies token embeddings (not image embeddings) by
sqrt(n_embd) for the gemma families before layer 0. The stored rows lack that factor;
`rows(..., scaled=True)` applies it. For CDPruner's relevance it does not matter: a positive
factor on every text row leaves every cosine similarity unchanged. (Other architectures' input
factors, e.g. granite's embedding_scale, are not modelled here, for the same reason.)
"""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path

import gguf
import numpy as np

from .errors import ModelLoadError
from .gguf_header import read_header

TOKEN_EMBD = "token_embd.weight"
# Architectures whose graph scales token embeddings by sqrt(n_embd) (llama.cpp src/models/*.cpp).
SQRT_SCALED_ARCHS = ("gemma", "gemma2", "gemma3", "gemma3n", "gemma4", "gemma-embedding")


class TokenEmbeddings:
    """Rows of a GGUF's token embedding matrix, dequantized on demand.

    Open once per model (cheap: header walk + memory map) and call `rows` per prompt.

    Attributes:
        path: the GGUF file.
        architecture: general.architecture.
        n_embd: row width (the LLM's n_embd).
        n_vocab: number of rows.
        qtype: the tensor's gguf.GGMLQuantizationType.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model not found: {self.path}")
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._locate()
        except ValueError as exc:  # GGUFFormatError included
            self._map.close()
            raise ModelLoadError(f"{self.path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from exc

    def _locate(self) -> None:
        header = read_header(self.path)
        table = {t.name: t for t in header.tensors}
        if TOKEN_EMBD not in table:
            raise ValueError(f"no {TOKEN_EMBD} tensor")
        tensor = table[TOKEN_EMBD]
        self.architecture = str(header.get("general.architecture") or "unknown")
        self.n_embd, self.n_vocab = int(tensor.shape[0]), int(tensor.shape[1])
        self.qtype = gguf.GGMLQuantizationType(tensor.ggml_type)
        self._row_bytes = tensor.n_bytes // self.n_vocab
        self._offset = header.data_offset + tensor.offset  # read_header checked it lies inside the file

    @property
    def input_scale(self) -> float:
        """The factor llama.cpp applies to token embeddings at layer 0: sqrt(n_embd) for Gemma, else 1."""
        return math.sqrt(self.n_embd) if self.architecture in SQRT_SCALED_ARCHS else 1.0

    def rows(self, ids, *, scaled: bool = False) -> np.ndarray:
        """Dequantized embedding rows of the given token ids.

        Args:
            ids: (T,) token ids in [0, n_vocab).
            scaled: multiply by `input_scale` (what the first layer sees); cosine relevance
                does not need it.

        Returns:
            (T, n_embd) float32.
        """
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"ids must be a 1-D sequence of integer token ids, got {ids!r}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
            raise ValueError(f"token ids must be in [0, {self.n_vocab}) for {self.path.name}, got {ids.tolist()}")
        table = np.frombuffer(self._map, np.uint8, self.n_vocab * self._row_bytes, self._offset)
        raw = table.reshape(self.n_vocab, self._row_bytes)[ids.astype(np.int64)]  # (T, row_bytes) copies T rows
        try:
            out = np.asarray(gguf.quants.dequantize(raw, self.qtype), dtype=np.float32).reshape(ids.size, self.n_embd)
        except NotImplementedError as exc:
            raise ModelLoadError(
                f"{self.path.name}: {TOKEN_EMBD} is {self.qtype.name}, which gguf cannot dequantize"
            ) from exc
        return out * np.float32(self.input_scale) if scaled else out

    def close(self) -> None:
        """Release the memory map (rows() fails afterwards)."""
        self._map.close()

    def __enter__(self) -> TokenEmbeddings:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
