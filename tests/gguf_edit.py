"""Rewrite a GGUF file with some keys or tensors changed: damaged and mismatched files for the tests.

rewrite(src, dst, keys={...}, drop_keys=(...), tensors={...}, drop_tensors=(...)) copies every
key and tensor of src, with keys set (a value, or (value, GGUFValueType) to force a type),
keys removed, tensors replaced or added (numpy arrays in numpy order: a linear map is
(n_out, n_in)), and tensors removed. Byte-level damage (a flipped name byte) is flip_name.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

_SKIP = ("GGUF.", "general.architecture")  # written by GGUFWriter itself


def _field_value(field: gguf.ReaderField):
    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        return field.contents(), kind, field.types[-1]
    return field.contents(), kind, None


def rewrite(
    src: str | Path,
    dst: str | Path,
    *,
    keys: dict | None = None,
    drop_keys: tuple[str, ...] = (),
    tensors: dict[str, np.ndarray] | None = None,
    drop_tensors: tuple[str, ...] = (),
) -> Path:
    """Copy src to dst with the given edits (see the module docstring); returns dst."""
    if Path(src).resolve() == Path(dst).resolve():
        raise ValueError("rewrite reads src through a memory map: give another dst")
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    keys = dict(keys or {})
    for name, field in reader.fields.items():
        if name.startswith(_SKIP) or name in drop_keys or name in keys:
            continue
        value, kind, item = _field_value(field)
        writer.add_key_value(name, value, kind, sub_type=item)
    for name, value in keys.items():
        if isinstance(value, tuple):
            value, kind = value
        else:
            kind = gguf.GGUFValueType.get_type(value)
        item = gguf.GGUFValueType.get_type(value[0]) if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, kind, sub_type=item)
    replaced = dict(tensors or {})
    for t in reader.tensors:
        if t.name in drop_tensors or t.name in replaced:
            continue
        shape = tuple(int(n) for n in reversed(t.shape))  # numpy order
        writer.add_tensor(t.name, np.asarray(t.data), raw_shape=shape, raw_dtype=t.tensor_type)
    for name, array in replaced.items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(dst)


def flip_name(src: str | Path, dst: str | Path, tensor: str, byte: int = -1) -> Path:
    """Copy src to dst with one byte of a tensor's name flipped in the tensor table (same length)."""
    data = bytearray(Path(src).read_bytes())
    raw = tensor.encode()
    at = data.find(len(raw).to_bytes(8, "little") + raw)
    if at < 0:
        raise ValueError(f"{src} has no tensor {tensor!r}")
    data[at + 8 + (byte % len(raw))] ^= 0x01
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def tensor_names(path: str | Path) -> list[str]:
    """The tensor names of a GGUF file, in file order."""
    return [t.name for t in gguf.GGUFReader(str(path)).tensors]


def make_idefics3(gemma3_mmproj: str | Path, dst: str | Path, n_out: int, merge: int = 2, seed: int = 0) -> Path:
    """An idefics3 (SmolVLM) projector from a tiny gemma3 one: the same SigLIP tower, then
    merge x merge patches concatenated and mm.model.fc.weight to n_out."""
    reader = gguf.GGUFReader(str(gemma3_mmproj))
    d = int(reader.fields["clip.vision.embedding_length"].contents())
    fc = np.random.default_rng(seed).standard_normal((n_out, d * merge * merge)) * (d * merge * merge) ** -0.5
    return rewrite(
        gemma3_mmproj,
        dst,
        keys={
            "clip.projector_type": "idefics3",
            "clip.vision.projector.scale_factor": (merge, gguf.GGUFValueType.UINT32),
        },
        tensors={"mm.model.fc.weight": fc},
        drop_tensors=("mm.soft_emb_norm.weight", "mm.input_projection.weight"),
    )
