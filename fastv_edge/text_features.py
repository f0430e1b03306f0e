"""The LLM's own input embeddings of given token ids, read from its GGUF (CDPruner's text features).

Only the requested rows of `token_embd.weight` are read (a memory map) and dequantized with
gguf.quants; the vocabulary is never dequantized whole. The tensor table is found by a lean
walk over the GGUF header, because gguf.GGUFReader builds an object for every vocabulary
string (about 2 s for SmolLM2's 49k tokens, 8 s for Gemma 3's 262k; this walk takes 15-30 ms).

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
import struct
from pathlib import Path

import gguf
import numpy as np

from .errors import ModelLoadError

TOKEN_EMBD = "token_embd.weight"
# Architectures whose graph scales token embeddings by sqrt(n_embd) (llama.cpp src/models/*.cpp).
SQRT_SCALED_ARCHS = ("gemma", "gemma2", "gemma3", "gemma3n", "gemma4", "gemma-embedding")
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")


class _Header:
    """Sequential little-endian reader over the mapped GGUF header."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str):
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return value[0]

    def string(self) -> str:
        n = self.take("Q")
        self.pos += n
        return bytes(self.buf[self.pos - n : self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool):
        """Read (keep=True) or skip one value of GGUF type `vtype`."""
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        if vtype == _STRING:
            if keep:
                return self.string()
            self.pos += 8 + _U64.unpack_from(self.buf, self.pos)[0]
            return None
        if vtype != _ARRAY:
            raise ValueError(f"unknown GGUF value type {vtype}")
        etype, count = self.take("I"), self.take("Q")
        if etype in _SCALAR:
            self.pos += count * struct.calcsize("<" + _SCALAR[etype])
        elif etype == _STRING:  # the vocabulary: a tight loop, it has up to ~262k entries
            buf, pos, unpack = self.buf, self.pos, _U64.unpack_from
            for _ in range(count):
                pos += 8 + unpack(buf, pos)[0]
            self.pos = pos
        else:
            for _ in range(count):  # nested arrays
                self.value(etype, keep=False)
        return None


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
        except (struct.error, IndexError, ValueError) as exc:
            self._map.close()
            raise ModelLoadError(f"{self.path} is not a readable GGUF file ({type(exc).__name__}: {exc})") from exc

    def _locate(self) -> None:
        head = _Header(self._map, self.path)
        if bytes(self._map[:4]) != b"GGUF":
            raise ValueError(f"magic {bytes(self._map[:4])!r}, expected b'GGUF'")
        head.pos = 4
        version = head.take("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}; versions 2 and 3 are supported")
        n_tensors, n_kv = head.take("Q"), head.take("Q")
        meta = {}
        for _ in range(n_kv):
            key = head.string()
            meta[key] = head.value(head.take("I"), keep=key in ("general.architecture", "general.alignment"))
        tensors = {}
        for _ in range(n_tensors):
            name = head.string()
            dims = [head.take("Q") for _ in range(head.take("I"))]
            tensors[name] = (dims, head.take("I"), head.take("Q"))
        alignment = meta.get("general.alignment") or gguf.GGUF_DEFAULT_ALIGNMENT
        data_start = -(-head.pos // alignment) * alignment
        if TOKEN_EMBD not in tensors:
            raise ValueError(f"no {TOKEN_EMBD} tensor")
        dims, qtype, offset = tensors[TOKEN_EMBD]
        self.architecture = str(meta.get("general.architecture") or "unknown")
        self.n_embd, self.n_vocab = int(dims[0]), int(dims[1])
        self.qtype = gguf.GGMLQuantizationType(qtype)
        block, type_size = gguf.GGML_QUANT_SIZES[self.qtype]
        self._row_bytes = self.n_embd // block * type_size
        self._offset = data_start + offset
        if self._offset + self.n_vocab * self._row_bytes > len(self._map):
            raise ValueError(f"{TOKEN_EMBD} runs past the end of the file (truncated download?)")

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
