"""Seeded mutators for the fuzz test: GGUF files, images, chat templates and API arguments.

Every mutator takes a numpy Generator and returns the mutated input plus a one-line
description, so a case is reproduced from (seed, index) alone. GGUF mutations know the file's
layout (gguf_layout): besides blind bit flips and truncations they set header numbers (counts,
lengths, value types, dims, ggml types, offsets, hyperparameters) to boundary values and flip
bytes of key and tensor names, which is where loaders go wrong.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np

FORMATS = {"u8": "<B", "i8": "<b", "u16": "<H", "i16": "<h", "u32": "<I", "i32": "<i", "f32": "<f", "bool": "<?"}
FORMATS.update({"u64": "<Q", "i64": "<q", "f64": "<d"})
SCALARS = {
    0: "u8",
    1: "i8",
    2: "u16",
    3: "i16",
    4: "u32",
    5: "i32",
    6: "f32",
    7: "bool",
    10: "u64",
    11: "i64",
    12: "f64",
}
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class Slot:
    """A number in a GGUF header: where it is, its format, and what it is."""

    offset: int
    kind: str  # a FORMATS key
    label: str


@dataclass(frozen=True)
class Name:
    """A key or tensor name's bytes in a GGUF header."""

    offset: int
    length: int
    label: str


@dataclass(frozen=True)
class Layout:
    slots: tuple[Slot, ...]
    names: tuple[Name, ...]
    header_end: int  # where the tensor table ends (data starts after padding)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos, self.slots, self.names = data, 0, [], []

    def num(self, kind: str, label: str, record: bool = True):
        fmt = FORMATS[kind]
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        if record:
            self.slots.append(Slot(self.pos, kind, label))
        self.pos += struct.calcsize(fmt)
        return value

    def string(self, label: str, record: bool = True) -> str:
        n = self.num("u64", f"length of {label}", record)
        if record:
            self.names.append(Name(self.pos, n, label))
        text = self.data[self.pos : self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return text


def gguf_layout(data: bytes) -> Layout:
    """Positions of the header's numbers and names (of a well-formed file: the clean bases)."""
    r = _Reader(data)
    r.pos = 4
    r.num("u32", "version")
    n_tensors, n_kv = r.num("u64", "tensor count"), r.num("u64", "kv count")
    for _ in range(n_kv):
        key = r.string("key")
        vtype = r.num("u32", f"type of {key}")
        _value(r, key, vtype)
    for _ in range(n_tensors):
        name = r.string("tensor name")
        n_dims = r.num("u32", f"n_dims of {name}")
        for d in range(n_dims):
            r.num("u64", f"dim {d} of {name}")
        r.num("u32", f"ggml type of {name}")
        r.num("u64", f"offset of {name}")
    return Layout(tuple(r.slots), tuple(r.names), r.pos)


def _value(r: _Reader, key: str, vtype: int) -> None:
    if vtype == STRING:
        r.string(f"value of {key}")
    elif vtype in SCALARS:
        r.num(SCALARS[vtype], f"value of {key}")
    else:
        item = r.num("u32", f"item type of {key}")
        count = r.num("u64", f"count of {key}")
        for i in range(count):  # only the first few items are worth mutating
            if item == STRING:
                r.string(f"item {i} of {key}", record=i < 4)
            else:
                r.num(SCALARS[item], f"item {i} of {key}", record=i < 4)


def interesting(kind: str, old, rng: np.random.Generator):
    """A boundary value for a field of this kind (or one near its old value)."""
    if kind.startswith("f"):
        return float(rng.choice([0.0, -0.0, 1.0, -1.0, 1e-45, 1e38, -1e38, np.inf, -np.inf, np.nan, old * 2, old / 2]))
    if kind == "bool":
        return bool(rng.integers(0, 2))
    bits = int(kind[1:])
    signed = kind[0] == "i"
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    pool = [0, 1, 2, 3, 4, 7, 8, 16, 31, 32, 64, 255, 256, 1024, 4096, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1]
    pool += [2**63 - 1, 2**64 - 1, -1, -2, -(2**31), old - 1, old + 1, old * 2, old // 2, int(rng.integers(0, 1 << 16))]
    value = int(rng.choice(pool))
    return min(max(value, lo), hi)


def mutate_gguf(data: bytes, layout: Layout, rng: np.random.Generator) -> tuple[bytes, str]:
    """One mutation of a GGUF file: a header number, a name byte, bit flips, a truncation or a splice."""
    out = bytearray(data)
    roll = rng.random()
    if roll < 0.4:
        slot = layout.slots[int(rng.integers(len(layout.slots)))]
        fmt = FORMATS[slot.kind]
        old = struct.unpack_from(fmt, out, slot.offset)[0]
        new = interesting(slot.kind, old, rng)
        struct.pack_into(fmt, out, slot.offset, new)
        return bytes(out), f"{slot.label}: {old!r} -> {new!r}"
    if roll < 0.55:
        name = layout.names[int(rng.integers(len(layout.names)))]
        if name.length == 0:
            return bytes(out), f"{name.label}: empty, unchanged"
        at = name.offset + int(rng.integers(name.length))
        out[at] ^= 1 << int(rng.integers(8))
        return bytes(
            out
        ), f"{name.label} {data[name.offset : name.offset + name.length][:60]!r}: byte {at - name.offset}"
    if roll < 0.75:
        flips = []
        for _ in range(int(rng.integers(1, 5))):
            at = int(rng.integers(4, layout.header_end))
            out[at] ^= 1 << int(rng.integers(8))
            flips.append(at)
        return bytes(out), f"bit flips in the header at {flips}"
    if roll < 0.85:
        cut = int(rng.integers(0, layout.header_end if rng.random() < 0.7 else len(data)))
        return bytes(out[:cut]), f"truncated to {cut} bytes"
    if roll < 0.92:
        at = int(rng.integers(layout.header_end, len(data))) if len(data) > layout.header_end else 4
        out[at : at + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        return bytes(out), f"8 random bytes in the tensor data at {at}"
    a = int(rng.integers(4, layout.header_end))
    b = min(a + int(rng.integers(1, 64)), layout.header_end)
    if rng.random() < 0.5:
        return bytes(out[:a] + out[b:]), f"header bytes {a}:{b} deleted"
    return bytes(out[:b] + out[a:b] + out[b:]), f"header bytes {a}:{b} repeated"


# ---- images --------------------------------------------------------------------------------------

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
MODES = ("RGB", "L", "LA", "P", "RGBA", "I", "F", "CMYK", "1", "I;16")
MAX_AREA = 150_000  # pixels of a generated image: shapes are what is tested here, not the encoder's cost
SAVE_AS = {"F": "TIFF", "CMYK": "TIFF", "I": "TIFF"}  # modes PNG cannot hold


def base_images(photo: np.ndarray) -> dict[str, bytes]:
    """A small photo in every format the fuzzer mutates."""
    from PIL import Image

    img = Image.fromarray(photo).resize((48, 40))
    out = {}
    for fmt in IMAGE_FORMATS:
        buf = io.BytesIO()
        img.save(buf, fmt)
        out[fmt] = buf.getvalue()
    return out


def _png_with_size(data: bytes, nx: int, ny: int) -> bytes:
    import zlib

    ihdr = bytearray(data[16:29])  # the IHDR chunk's data
    struct.pack_into(">II", ihdr, 0, nx, ny)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return data[:16] + bytes(ihdr) + crc + data[33:]


def mutate_image(bases: dict[str, bytes], rng: np.random.Generator) -> tuple[bytes, str]:
    """Image bytes: a base image damaged, a PNG claiming another size, or an odd mode or shape."""
    fmt = IMAGE_FORMATS[int(rng.integers(len(IMAGE_FORMATS)))]
    data = bytearray(bases[fmt])
    roll = rng.random()
    if roll < 0.35:
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        return bytes(data), f"{fmt} with bit flips"
    if roll < 0.5:
        cut = int(rng.integers(0, len(data)))
        return bytes(data[:cut]), f"{fmt} truncated to {cut} bytes"
    if roll < 0.65:
        nx, ny = (int(rng.choice([0, 1, 2, 7, 4096, 65535, 65536, 2**31 - 1])) for _ in range(2))
        return _png_with_size(bases["PNG"], nx, ny), f"PNG header claiming {nx}x{ny}"
    from PIL import Image

    nx, ny = (int(rng.choice([1, 2, 3, 5, 17, 64, 333, 2000, 6000])) for _ in range(2))
    ny = min(ny, max(1, MAX_AREA // nx))  # a Qwen-VL encoder takes a minute and gigabytes past this
    mode = MODES[int(rng.integers(len(MODES)))]
    img = Image.fromarray(rng.integers(0, 255, (ny, nx, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    fmt = SAVE_AS.get(mode, "PNG")
    img.save(buf, fmt)
    return buf.getvalue(), f"{nx}x{ny} {mode} {fmt}"


def rgb_arguments(rng: np.random.Generator) -> tuple[list, str]:
    """Arguments for RGBImage(nx, ny, data): often inconsistent (JSON-able descriptions, built by the worker)."""
    sizes = [0, 1, 2, 3, 8, 64, 65536, 65537, -1, 2.0, True, None, "8", 2**40]
    nx, ny = (sizes[int(rng.integers(len(sizes)))] for _ in range(2))
    length = int(rng.choice([0, 1, 3, 12, 192, 12288, 1 << 20]))
    kind = str(rng.choice(["bytes", "bytearray", "memoryview", "str", "list", "none"]))
    if rng.random() < 0.4 and isinstance(nx, int) and isinstance(ny, int) and 0 < nx * ny < 1 << 16:
        length = nx * ny * 3  # a consistent one now and then
    return [nx, ny, length, kind], f"RGBImage({nx!r}, {ny!r}, {kind} of {length})"


# ---- chat templates ------------------------------------------------------------------------------

SNIPPETS = (
    "{% for x in range(99999) %}{% for y in range(99999) %}{% endfor %}{% endfor %}",
    "{{ raise_exception('fuzz') }}",
    "{% endfor %}",
    "{% endif %}",
    "{{",
    "}}",
    "{%",
    "{% if %}",
    "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}",
    "{{ 'ab' * 999999999 }}",
    "{{ 7 ** 7 ** 7 }}",
    "{{ messages[99] }}",
    "{{ messages[0]['content'][0] }}",
    "{{ messages[0].content.upper() }}",
    "{{ 1 / 0 }}",
    "{{ range(10**8) | list | length }}",
    "{% include 'x.jinja' %}",
    "{% extends 'base' %}",
    "{{ ''.__class__ }}",
    "{{ messages.append(1) }}",
    "{% set ns = namespace(a=1) %}{% set ns.a = ns %}{{ ns }}",
    "{% for m in messages %}{{ m['content'] | join }}{% endfor %}",
    "{{ '%99999999d' % 1 }}",
    "{{ '{:>99999999}'.format(1) }}",
    "{{ messages | tojson }}",
    "{% for c in messages[0]['content'] %}{{ c['type'] }}{% endfor %}",
    "\x00",
    "\ud800",
    "{# unclosed comment",
    "{% raw %}",
    "{{ bos_token * 99999 }}",
    "{% for m in messages %}{{ loop.cycle() }}{% endfor %}",
)


def mutate_template(bases: list[str], rng: np.random.Generator) -> tuple[str, str]:
    """A chat template with a span deleted, repeated or replaced, or a hostile snippet inserted."""
    text = bases[int(rng.integers(len(bases)))]
    at = int(rng.integers(0, len(text) + 1))
    roll = rng.random()
    if roll < 0.45:
        snippet = SNIPPETS[int(rng.integers(len(SNIPPETS)))]
        return text[:at] + snippet + text[at:], f"{snippet!r} inserted at {at}"
    end = min(len(text), at + int(rng.integers(1, 40)))
    if roll < 0.65:
        return text[:at] + text[end:], f"characters {at}:{end} deleted"
    if roll < 0.8:
        return text[:end] + text[at:end] + text[end:], f"characters {at}:{end} repeated"
    chars = "{}%#()[]'\"|.,:- \n\\"
    new = "".join(chars[int(i)] for i in rng.integers(0, len(chars), max(1, end - at)))
    return text[:at] + new + text[end:], f"characters {at}:{end} replaced by {new!r}"


# ---- API arguments -------------------------------------------------------------------------------

ODD = (0, -1, 1, 2, 3, 10**9, 2**31, 2**32, 2**63, 0.5, 1.0, -0.5, 1e300, float("nan"), float("inf"), True, None, "2")


def api_arguments(rng: np.random.Generator) -> tuple[dict, str]:
    """Keyword arguments for PruneConfig / SamplingConfig / generate, one or two of them odd."""
    fields = {
        "prune": ["layer", "drop_ratio", "keep", "seed", "relevance_weight", "strategy", "pre"],
        "sampling": ["temp", "top_k", "top_p", "min_p", "repeat_penalty", "seed"],
        "generate": ["max_tokens", "system", "instruction"],
    }
    group = str(rng.choice(list(fields)))
    kwargs = {}
    for name in rng.choice(fields[group], size=int(rng.integers(1, 3)), replace=False):
        values = list(ODD)
        if name == "strategy":
            values = ["fastv", "random", "divprune", "dart", "cdpruner", "none", "FastV", ""]
        if name == "pre":
            values = [
                "divprune:8",
                "dart:r=0.5",
                "cdpruner:4,theta=0.3",
                "random:keep=3,seed=1",
                "x:1",
                "divprune:9999",
            ]
        value = values[int(rng.integers(len(values)))]
        kwargs[str(name)] = value
    return {"group": group, "kwargs": kwargs}, f"{group} {kwargs}"
