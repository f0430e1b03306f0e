"""What the fuzz campaigns found, each kept as a test of its own (tests/fuzz_campaign.py reproduces a case).

Before the fixes: an undocumented OverflowError from the GGUF header reader.
"""

from __future__ import annotations

import struct

import pytest
from fuzz_mutators import gguf_layout

import fastv_edge as fe


def _set_slot(src, dst, label: str, value: int) -> None:
    data = bytearray(src.read_bytes())
    slot = next(s for s in gguf_layout(bytes(data)).slots if s.label == label)
    struct.pack_into("<Q" if slot.kind == "u64" else "<I", data, slot.offset, value)
    dst.write_bytes(bytes(data))


def test_a_string_length_past_any_offset_is_a_corrupt_file(tiny, tmp_path):
    """Seed 1, case 1226: a vocabulary string of 2**63 bytes; reading past it overflowed ssize_t."""
    bad = tmp_path / "bad.gguf"
    _set_slot(tiny.llama_path, bad, "length of item 3 of tokenizer.ggml.merges", 2**63)
    with pytest.raises(fe.ModelLoadError, match="corrupt or truncated"):
        fe.load(bad)
