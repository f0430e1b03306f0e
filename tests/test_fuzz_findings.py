"""What the fuzz campaigns found, each kept as a test of its own (tests/fuzz_campaign.py --seed S --only I
replays a case). The loads run in a subprocess: before the fixes most of these aborted the process.

- seed 1, 7 cases: a string length past any offset overflowed the header reader (OverflowError);
- seed 2, case 184: block_count 4096 (GGML_ASSERT n_layer <= LLAMA_MAX_LAYERS);
- seed 2, case 3139: a bit flip made two vocabulary tokens equal (GGML_ASSERT in llama-vocab.cpp);
- seed 2, case 6497: context_length 2**31 - 1 (llama-cpp-python allocated 8 GB per tokenize call: killed);
- seed 2, case 7162: an M-RoPE section of 256 (GGML_ASSERT(sect_dims <= ne0) in ggml's rope);
- seed 2, case 7597: the vocabulary's item type changed to bool (a TypeError in our own check);
- seed 4, case 770: the vocabulary's value type changed to uint16 (a TypeError in our own check);
- seed 3, case 60: a 2000x64 image on the tiny gemma4v projector ran past its position table (GGML_ASSERT).
"""

from __future__ import annotations

import struct

import pytest
from fuzz_mutators import FORMATS, gguf_layout
from isolated import run_isolated

import fastv_edge as fe

pytestmark = pytest.mark.native


def _set_slot(src, dst, label: str, value) -> str:
    data = bytearray(open(src, "rb").read())
    slot = next(s for s in gguf_layout(bytes(data)).slots if s.label == label)
    struct.pack_into(FORMATS[slot.kind], data, slot.offset, value)
    open(dst, "wb").write(bytes(data))
    return str(dst)


def load_scenario(path: str) -> dict:
    """Load a damaged text model with the tiny mmproj-less settings; report what happened."""
    try:
        with fe.load(
            path, runtime=fe.RuntimeConfig(n_ctx=256, n_threads=1), prune=fe.PruneConfig(strategy="none")
        ) as m:
            fe.generate(m, "hello", max_tokens=1, apply_template=False)
        return {"error": None}
    except Exception as e:  # noqa: BLE001 - the test checks the type
        return {"error": type(e).__name__, "message": str(e)}


def _refused(path, message: str):
    out = run_isolated("test_fuzz_findings", "load_scenario", str(path), timeout=120)
    assert out["error"] == "ModelLoadError" and message in out["message"], out


def test_a_string_length_past_any_offset(tiny, tmp_path):
    bad = _set_slot(tiny.llama_path, tmp_path / "bad.gguf", "length of item 3 of tokenizer.ggml.merges", 2**63)
    _refused(bad, "corrupt or truncated")


@pytest.mark.parametrize(
    "label, value, message",
    [
        ("value of llama.block_count", 4096, "llama.block_count = 4096, outside llama.cpp's [1, 512]"),
        ("value of llama.context_length", 2**31 - 1, "llama.context_length = 2147483647 is more than"),
        ("item type of tokenizer.ggml.tokens", 7, "tokenizer.ggml.tokens is not an array of strings"),
        ("type of tokenizer.ggml.tokens", 2, "tokenizer.ggml.tokens is not an array of strings"),
    ],
)
def test_llama_values_llama_cpp_aborts_on(tiny, tmp_path, label, value, message):
    _refused(_set_slot(tiny.llama_path, tmp_path / "bad.gguf", label, value), message)


@pytest.mark.parametrize("sections", [(256, 3, 3, 0), (0, 0, 0, 0), (-1, 3, 3, 0)])
def test_mrope_sections_llama_cpp_aborts_on(tiny_dir, tmp_path, sections):
    from fastv_edge.testing.make_tiny_archs import make_tiny_qwen2vl

    src, bad = make_tiny_qwen2vl(tiny_dir).path, tmp_path / "bad.gguf"
    data = bytearray(src.read_bytes())
    slots = {s.label: s for s in gguf_layout(bytes(data)).slots}
    for i, value in enumerate(sections):
        struct.pack_into("<i", data, slots[f"item {i} of qwen2vl.rope.dimension_sections"].offset, value)
    bad.write_bytes(bytes(data))
    _refused(bad, "qwen2vl.rope.dimension_sections = ")


def test_two_tokens_with_one_text(tiny, tmp_path):
    data = bytearray(tiny.llama_path.read_bytes())
    count = next(s for s in gguf_layout(bytes(data)).slots if s.label == "count of tokenizer.ggml.tokens")
    pos, spans = count.offset + 8, []  # (offset, length) of each token's text
    for _ in range(struct.unpack_from("<Q", data, count.offset)[0]):
        n = struct.unpack_from("<Q", data, pos)[0]
        spans.append((pos + 8, n))
        pos += 8 + n
    first = spans[300]
    other = next(i for i in range(20000, len(spans)) if spans[i][1] == first[1])  # same length: same file size
    data[spans[other][0] : spans[other][0] + first[1]] = data[first[0] : first[0] + first[1]]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    text = bytes(data[first[0] : first[0] + first[1]]).decode()
    _refused(bad, f"token {text!r} is both id 300 and id {other}")


def gemma4v_scenario(text: str, mmproj: str, nx: int, ny: int) -> dict:
    """A gemma4v pair asked about an nx x ny image (the tiny projector's table has 64 rows per side)."""
    from fastv_edge.images import RGBImage

    runtime, stock = fe.RuntimeConfig(n_ctx=2048, n_threads=1), fe.PruneConfig(strategy="none")
    with fe.load(text, mmproj, runtime=runtime, prune=stock, template="chatml") as m:
        try:
            fe.generate(m, "What is it?", [RGBImage(nx, ny, bytes(nx * ny * 3))], max_tokens=1)
            return {"error": None}
        except Exception as e:  # noqa: BLE001 - the test checks the type
            return {"error": type(e).__name__, "message": str(e), "after": fe.generate(m, "Hi", max_tokens=1)}


@pytest.mark.parametrize("nx, ny", [(2000, 64), (64, 2000)])
def test_a_long_thin_image_past_the_position_table(tiny_dir, nx, ny):
    """Seed 3, case 60: gemma4v keeps the aspect ratio, 2000x64 became 249x9 patches on a table of 64
    (GGML_ASSERT in get_rows)."""
    from fastv_edge.testing.make_tiny_archs import make_tiny_gemma4
    from fastv_edge.testing.mmproj_gemma4v import make_tiny_gemma4v_mmproj

    lm = make_tiny_gemma4(tiny_dir, "e2b")
    mmproj = make_tiny_gemma4v_mmproj(tiny_dir, lm.hparams.n_embd)[0]
    out = run_isolated("test_fuzz_findings", "gemma4v_scenario", str(lm.path), str(mmproj), nx, ny, timeout=300)
    assert out["error"] == "ValueError" and "has 64 per side; crop it" in out["message"], out
    square = run_isolated("test_fuzz_findings", "gemma4v_scenario", str(lm.path), str(mmproj), 96, 96, timeout=300)
    assert square["error"] is None, square
