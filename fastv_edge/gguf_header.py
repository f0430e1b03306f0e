"""A lazy GGUF header reader: the key/values and tensor table fastv_edge needs, nothing more.

gguf-py's GGUFReader builds numpy views of every field, two per vocabulary string, which
takes seconds on a 49k-token vocabulary and more on 151k. Here arrays nobody asked for are
skipped (numeric ones with one seek, string arrays by their length prefixes), reading can
stop as soon as the wanted keys are in, and the tensor table is checked against the file
size, so a truncated download is caught before llama.cpp sees the file.

Layout (GGUF v2/v3, little-endian): magic, version u32, n_tensors u64, n_kv u64; n_kv x
(key string, value type u32, value); n_tensors x (name, n_dims u32, dims u64..., ggml type
u32, offset u64); padding to general.alignment; tensor data. A string is a u64 length and
UTF-8 bytes; an array is an item type u32, a count u64 and the items.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # llama.cpp reads v2 and v3; v1 is gone
DEFAULT_ALIGNMENT = 32
# GGUF value types (gguf.GGUFValueType); STRING and ARRAY have their own layout
SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
# ggml type -> (elements per block, bytes per block): gguf.GGML_QUANT_SIZES, checked equal by the tests
GGML_BLOCK_SIZES = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18),
}  # fmt: skip
# general.file_type -> name (gguf.LlamaFileType without MOSTLY_), checked equal by the tests
FILE_TYPES = {
    0: "ALL_F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0", 1024: "GUESSED",
}  # fmt: skip
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class GGUFFormatError(ValueError):
    """The bytes are not a well-formed GGUF file (bad header, truncated, unknown types)."""


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table."""

    name: str
    shape: tuple[int, ...]  # GGUF order: ne0 (the row length) first
    ggml_type: int
    offset: int  # from the start of the data section

    @property
    def n_bytes(self) -> int:
        """Size of the tensor's data."""
        block, size = GGML_BLOCK_SIZES[self.ggml_type]
        return math.prod(self.shape) // block * size


@dataclass
class GGUFHeader:
    """What read_header found.

    values holds every scalar and string key read, and the arrays that were asked for;
    types maps every key read to (value type, array item type or None). tensors is None
    when reading stopped before the tensor table.
    """

    path: Path
    version: int
    n_tensors: int
    n_kv: int
    values: dict[str, object] = field(default_factory=dict)
    types: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    tensors: tuple[TensorInfo, ...] | None = None
    data_offset: int | None = None  # file offset of the tensor data section (TensorInfo.offset is from here)

    def get(self, key: str, default=None):
        """The value of key, or default when absent (or a skipped array)."""
        return self.values.get(key, default)


class _Cursor:
    """Reads little-endian GGUF items from a buffer, raising GGUFFormatError past its end."""

    def __init__(self, buf, pos: int = 0):
        self.buf, self.pos, self.size = buf, pos, len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFFormatError(f"truncated: {what} needs {n} bytes at offset {self.pos}, the file has {self.size}")

    def unpack(self, fmt: str, what: str):
        fmt = "<" + fmt  # little-endian, no padding
        n = struct.calcsize(fmt)
        self.need(n, what)
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return values

    def u32(self, what: str) -> int:
        return self.unpack("I", what)[0]

    def u64(self, what: str) -> int:
        return self.unpack("Q", what)[0]

    def string(self, what: str) -> str:
        n = self.u64(what)
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFFormatError(f"{what} is not UTF-8 at offset {self.pos - n}") from e

    def strings(self, count: int, what: str, keep: bool) -> list[str] | None:
        """count strings (a vocabulary: the hot loop), decoded when keep, else only skipped."""
        unpack, buf, pos, size = _U64.unpack_from, self.buf, self.pos, self.size
        out = [] if keep else None
        try:
            for _ in range(count):
                n = unpack(buf, pos)[0]
                if keep:
                    out.append(buf[pos + 8 : pos + 8 + n].decode("utf-8"))
                pos += 8 + n
        except (struct.error, OverflowError):  # past the end, or a length past any offset
            pos = size + 1
        except UnicodeDecodeError as e:
            raise GGUFFormatError(f"a string of {what} is not UTF-8 (near offset {pos})") from e
        if pos > size:
            raise GGUFFormatError(f"truncated: the {count} strings of {what} run past the end of the file ({size})")
        self.pos = pos
        return out


def _read_value(cur: _Cursor, key: str, vtype: int, want_array: bool):
    """(value, item type) of one key; a skipped array's value is None."""
    if vtype == STRING:
        return cur.string(key), None
    if vtype in SCALAR_FORMATS:
        return cur.unpack(SCALAR_FORMATS[vtype], key)[0], None
    if vtype != ARRAY:
        raise GGUFFormatError(f"key {key!r} has unknown value type {vtype}")
    item, count = cur.unpack("IQ", key)
    if item == STRING:
        cur.need(8 * count, key)  # every string has its 8-byte length: bounds the loop
        return cur.strings(count, key, keep=want_array), item
    if item not in SCALAR_FORMATS:
        raise GGUFFormatError(f"array {key!r} has unsupported item type {item}")
    n = struct.calcsize("<" + SCALAR_FORMATS[item]) * count
    cur.need(n, key)
    if not want_array:
        cur.pos += n
        return None, item
    return list(cur.unpack(f"{count}{SCALAR_FORMATS[item]}", key)), item


def _read_tensors(cur: _Cursor, n_tensors: int, alignment: int) -> tuple[tuple[TensorInfo, ...], int]:
    table = []
    for i in range(n_tensors):
        name = cur.string(f"tensor {i} name")
        n_dims = cur.u32(f"tensor {name!r}")
        if not 1 <= n_dims <= 4:  # GGML_MAX_DIMS
            raise GGUFFormatError(f"tensor {name!r} has {n_dims} dimensions (1 to 4 allowed)")
        shape = cur.unpack(f"{n_dims}Q", f"tensor {name!r}")
        ggml_type, offset = cur.unpack("IQ", f"tensor {name!r}")
        if ggml_type not in GGML_BLOCK_SIZES:
            raise GGUFFormatError(f"tensor {name!r} has unknown ggml type {ggml_type}")
        if shape[0] % GGML_BLOCK_SIZES[ggml_type][0]:
            raise GGUFFormatError(f"tensor {name!r}: row length {shape[0]} is not a whole number of blocks")
        table.append(TensorInfo(name, tuple(shape), ggml_type, offset))
    data_start = -(-cur.pos // alignment) * alignment
    for t in table:
        end = data_start + t.offset + t.n_bytes
        if end > cur.size:
            raise GGUFFormatError(f"tensor {t.name!r} ends at byte {end}, past the end of the file ({cur.size})")
    return tuple(table), data_start


def _read_prelude(cur: _Cursor) -> tuple[int, int, int]:
    cur.pos = 4  # after the magic, checked by read_header
    version = cur.u32("version")
    if version not in VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        hint = "; big-endian GGUF files are not supported" if swapped in VERSIONS else ""
        raise GGUFFormatError(f"GGUF version {version} (supported: {VERSIONS}){hint}")
    n_tensors, n_kv = cur.unpack("QQ", "header")
    if n_kv * 13 > cur.size or n_tensors * 25 > cur.size:  # smallest KV pair / tensor entry
        raise GGUFFormatError(
            f"truncated or corrupt: {n_kv} key/values, {n_tensors} tensors cannot fit in {cur.size} bytes"
        )
    return version, n_tensors, n_kv


def read_header(
    path: str | os.PathLike,
    *,
    arrays: Callable[[str], bool] | None = None,
    until: Callable[[dict], bool] | None = None,
) -> GGUFHeader:
    """Read a GGUF file's key/values and tensor table, skipping what is not wanted.

    Args:
        path: the GGUF file.
        arrays: which array keys to read in full (default: none; skipped arrays cost one
            seek, or one length read per string).
        until: stop once until(values) is true, before the remaining keys and the tensor
            table (tensors is then None and nothing past that point is checked).

    Returns:
        The GGUFHeader.

    Raises:
        GGUFFormatError: bad magic or version, truncated, unknown types, or a tensor whose
            data would run past the end of the file.
        OSError: the file cannot be opened.
    """
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic != MAGIC:
            raise GGUFFormatError(f"magic {magic!r}, expected {MAGIC!r}")
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise GGUFFormatError(f"truncated: {size} bytes is shorter than a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf)
            version, n_tensors, n_kv = _read_prelude(cur)
            header = GGUFHeader(path, version, n_tensors, n_kv)
            for i in range(n_kv):
                key = cur.string(f"key {i}")
                vtype = cur.u32(f"type of {key!r}")
                value, item = _read_value(cur, key, vtype, bool(arrays and arrays(key)))
                header.types[key] = (vtype, item)
                if value is not None:
                    header.values[key] = value
                if until is not None and until(header.values):
                    return header
            alignment = header.values.get("general.alignment", DEFAULT_ALIGNMENT)
            if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
                raise GGUFFormatError(f"general.alignment {alignment!r} is not a power of 2")
            header.tensors, header.data_offset = _read_tensors(cur, n_tensors, alignment)
    return header


def read_architecture(path: str | os.PathLike) -> str | None:
    """general.architecture of a GGUF file, reading only up to that key (the first one in
    files written by llama.cpp's converters and gguf-py); None when the file has none."""
    return read_header(path, until=lambda values: "general.architecture" in values).get("general.architecture")
