"""Every bad input of issue 4 gives a clear Python exception before anything reaches C."""

import struct
import zlib

import pytest
from api_helpers import needs_fastv

import fastv_edge as fe
from fastv_edge.images import decode, load_image

pytestmark = pytest.mark.native
Q = "What is in the image?"


# ---- model files -------------------------------------------------------------------------------


def test_missing_gguf(tmp_path):
    with pytest.raises(fe.ModelLoadError, match="model not found"):
        fe.load(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(fe.ModelLoadError, match="not a GGUF file"):
        fe.load(bad)


def test_truncated_gguf(tiny, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny.llama_path.read_bytes()[:4096])  # header cut inside the tokenizer
    with pytest.raises(fe.ModelLoadError, match="corrupt or truncated"):
        fe.load(cut)


def test_mmproj_embedding_size_mismatch(tiny, make_tiny_models):
    other = make_tiny_models("f32", n_embd=32, n_head=2, n_head_kv=1, n_ff=64)  # projects to 32, not 64
    with pytest.raises(fe.ModelLoadError, match="n_embd=32 but model .* has n_embd=64"):
        fe.load(tiny.llama_path, other.mmproj_path)


def _metadata_only_gguf(path, arch):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(4)
    writer.add_embedding_length(64)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_architecture_is_refused_with_the_fix(tmp_path):
    """Policy: refuse (no silent fallback); --strategy none runs the model on the stock path."""
    path = tmp_path / "phi3.gguf"
    _metadata_only_gguf(path, "phi3")
    with pytest.raises(fe.UnsupportedModelError, match=r"'phi3'.*-k 0.*unpruned \(--strategy none\)"):
        fe.load(path)
    with pytest.raises(fe.ModelLoadError):  # with 'none' it gets past the check to llama.cpp (no tensors here)
        fe.load(path, prune=fe.PruneConfig(strategy="none"))


# ---- images ------------------------------------------------------------------------------------


def test_not_an_image(tmp_path):
    txt = tmp_path / "notes.png"
    txt.write_text("hello, I am text")
    with pytest.raises(ValueError, match="not an image"):
        load_image(txt)


def test_truncated_image(photos, tmp_path):
    for name in ("astronaut", "chelsea"):  # PNG and JPEG
        data = photos[name].read_bytes()
        cut = tmp_path / f"cut-{photos[name].name}"
        cut.write_bytes(data[: len(data) // 3])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            load_image(cut)


def _png_header_only(width, height) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "width, height",
    [
        (30000, 30000),  # 900 Mpx: far past Pillow's own bomb limit
        (8000, 6000),  # 48 Mpx: past our 40 Mpx limit, below Pillow's
    ],
)
def test_decompression_bomb(width, height):
    with pytest.raises(ValueError, match="bomb"):
        decode(_png_header_only(width, height), "bomb.png")


def test_missing_image_and_bad_data_uri(tmp_path):
    with pytest.raises(ValueError, match="image not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ValueError, match="base64"):
        load_image("data:image/png,not-base64")


def test_bad_image_fails_before_the_model_is_touched(tiny_model, tmp_path):
    txt = tmp_path / "x.jpg"
    txt.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match="x.jpg"):
        fe.generate(tiny_model, Q, [txt])


# ---- pruning arguments -------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [dict(layer=0), dict(drop_ratio=1.0), dict(drop_ratio=-0.5)])
def test_bad_k_or_r(kwargs):
    with pytest.raises(ValueError):
        fe.PruneConfig(**kwargs)


def test_k_at_or_beyond_the_layer_count(tiny, tiny_model, photos):
    with pytest.raises(ValueError, match=r"\[1, 3\] for a model with 4 layers"):
        fe.load(tiny.llama_path, tiny.mmproj_path, prune=fe.PruneConfig(layer=4))
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        fe.generate(tiny_model, Q, [photos["coffee"]], prune=fe.PruneConfig(layer=7))


@needs_fastv
def test_keep_larger_than_n_leaves_the_model_usable(tiny_model, photos):
    none = dict(max_tokens=3, prune=fe.PruneConfig(strategy="none"))
    before = fe.generate(tiny_model, Q, [photos["coffee"]], **none)
    with pytest.raises(ValueError, match="keep=65 is larger than the 64 image tokens"):
        fe.generate(tiny_model, Q, [photos["coffee"]], prune=fe.PruneConfig(keep=65))
    assert fe.generate(tiny_model, Q, [photos["coffee"]], **none) == before


# ---- prompts -----------------------------------------------------------------------------------


def test_prompt_plus_images_longer_than_the_context(tiny, photos):
    with fe.load(tiny.llama_path, tiny.mmproj_path, runtime=fe.RuntimeConfig(n_ctx=256, n_threads=1)) as model:
        n_images = model.n_ctx // 64 + 1
        with pytest.raises(fe.ContextOverflowError, match=r"\(\d+ text \+ \d+ image\).*raise n_ctx"):
            fe.generate(model, Q, [photos["coffee"]] * n_images)
        assert fe.generate(model, Q, [photos["coffee"]], max_tokens=2)  # still usable


def test_marker_and_image_counts_must_match(tiny_model, photos):
    two_markers = f"{tiny_model.marker} and {tiny_model.marker}?"
    with pytest.raises(ValueError, match="2 image markers but only 1 images"):
        fe.generate(tiny_model, two_markers, [photos["coffee"]])


def test_prompt_must_not_end_with_an_image(tiny_model, photos):
    with pytest.raises(ValueError, match="must end with text"):
        fe.generate(tiny_model, f"Look: {tiny_model.marker}", [photos["coffee"]], apply_template=False)


def test_text_only_model_refuses_images(tiny, photos):
    with fe.load(tiny.llama_path, runtime=fe.RuntimeConfig(n_ctx=256, n_threads=1)) as model:
        with pytest.raises(ValueError, match="without an mmproj"):
            fe.generate(model, Q, [photos["coffee"]])
