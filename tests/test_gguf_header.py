"""The lazy GGUF header reader against gguf-py's full reader, and every way a file can be bad.

Pure Python: no native library needed.
"""

from __future__ import annotations

import struct

import gguf
import pytest

from fastv_edge.errors import ModelLoadError
from fastv_edge.gguf_header import (
    FILE_TYPES,
    GGML_BLOCK_SIZES,
    GGUFFormatError,
    read_architecture,
    read_header,
)
from fastv_edge.model import read_mmproj_info, read_model_info


def _reference(path):
    reader = gguf.GGUFReader(str(path))
    values = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = [(t.name, tuple(int(x) for x in t.shape), int(t.tensor_type), int(t.data_offset)) for t in reader.tensors]
    return values, tensors, reader.data_offset


@pytest.mark.parametrize("which", [pytest.param("llama_path", marks=pytest.mark.slow), "mmproj_path"])
def test_values_and_tensors_match_gguf_py(tiny, which):
    path = getattr(tiny, which)
    values, tensors, data_offset = _reference(path)
    header = read_header(path, arrays=lambda key: True)
    assert header.values == values
    assert [(t.name, t.shape, t.ggml_type, data_offset + t.offset) for t in header.tensors] == tensors


def test_skipped_arrays_are_absent_but_typed(tiny):
    header = read_header(tiny.llama_path)
    assert "tokenizer.ggml.tokens" not in header.values
    assert header.types["tokenizer.ggml.tokens"] == (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
    assert header.values["llama.block_count"] == 4 and header.tensors is not None


def test_until_stops_before_the_vocabulary(tiny):
    header = read_header(tiny.llama_path, until=lambda values: "llama.block_count" in values)
    assert header.values["general.architecture"] == "llama" and header.tensors is None
    assert not any(key.startswith("tokenizer.") for key in header.types)
    assert read_architecture(tiny.mmproj_path) == "clip"


def test_tables_equal_gguf_py_constants():
    assert GGML_BLOCK_SIZES == {int(t): sizes for t, sizes in gguf.GGML_QUANT_SIZES.items()}
    assert FILE_TYPES == {int(t): t.name.removeprefix("MOSTLY_") for t in gguf.LlamaFileType}


@pytest.mark.parametrize(
    "cut",
    [
        10,  # inside the fixed header
        200,  # inside the first key/values
        4096,  # inside the vocabulary strings
        -20_000,  # inside the tensor data
        -1,  # one byte short
    ],
)
def test_truncated_files_are_refused(tiny, tmp_path, cut):
    data = tiny.llama_path.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:cut])
    with pytest.raises(GGUFFormatError, match="truncated|past the end"):
        read_header(bad)
    with pytest.raises(ModelLoadError, match="model is corrupt or truncated"):
        read_model_info(bad)


def _patched(path, tmp_path, offset: int, fmt: str, value) -> object:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    out = tmp_path / "patched.gguf"
    out.write_bytes(bytes(data))
    return out


def test_bad_versions(tiny, tmp_path):
    with pytest.raises(GGUFFormatError, match="version 1 "):
        read_header(_patched(tiny.llama_path, tmp_path, 4, "<I", 1))
    with pytest.raises(GGUFFormatError, match="big-endian"):
        read_header(_patched(tiny.llama_path, tmp_path, 4, ">I", 3))


def test_unknown_value_type(tiny, tmp_path):
    key_len = struct.unpack_from("<Q", tiny.llama_path.read_bytes(), 24)[0]
    type_offset = 24 + 8 + key_len  # the first key's value type
    with pytest.raises(GGUFFormatError, match="unknown value type 99"):
        read_header(_patched(tiny.llama_path, tmp_path, type_offset, "<I", 99))


def test_absurd_counts_do_not_loop(tiny, tmp_path):
    with pytest.raises(GGUFFormatError, match="cannot fit"):
        read_header(_patched(tiny.llama_path, tmp_path, 16, "<Q", 2**40))  # n_kv


@pytest.mark.parametrize(
    "content, message",
    [
        (b"PK\x03\x04 a zip", "not a GGUF file"),  # bad magic
        (b"", "not a GGUF file"),  # empty file
    ],
)
def test_model_info_errors_keep_their_messages(tmp_path, content, message):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        read_model_info(bad)
    with pytest.raises(ModelLoadError, match="model not found"):
        read_model_info(tmp_path / "missing.gguf")


def test_files_swapped(tiny):
    with pytest.raises(ModelLoadError, match="is an mmproj"):
        read_model_info(tiny.mmproj_path)
    with pytest.raises(ModelLoadError, match="not an mmproj"):
        read_mmproj_info(tiny.llama_path)


def test_model_and_mmproj_info(tiny):
    info = read_model_info(tiny.llama_path)
    assert (info.architecture, info.n_layer, info.n_embd, info.n_ff) == ("llama", 4, 64, 128)
    assert info.quantization == "ALL_F32"
    assert info.chat_template and "<|im_start|>" in info.chat_template
    mm = read_mmproj_info(tiny.mmproj_path)
    assert (mm.projector_type, mm.n_embd_out, mm.image_size) == ("mlp", 64, tiny.clip.image_size)
