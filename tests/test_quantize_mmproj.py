"""quantize-mmproj: llama.cpp's quantizer on the tiny projectors; the output must load in mtmd and encode."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

import fastv_edge as fe
from fastv_edge.errors import ModelLoadError
from fastv_edge.gguf_header import read_header
from fastv_edge.quantize_mmproj import MMPROJ_TYPES, QuantizeReport, quantize_mmproj, run

pytestmark = pytest.mark.native


@pytest.fixture(scope="module")
def projectors(tiny_dir, tiny):
    """projector type -> (text model, F32 mmproj); widths of 32 or 64, so Q8_0 / Q4_0 blocks fit."""
    from fastv_edge.testing.make_tiny_archs import make_tiny_gemma3, make_tiny_qwen2vl
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj

    qwen2 = make_tiny_qwen2vl(tiny_dir)
    mm = make_tiny_vision_mmproj
    return {
        "mlp": (tiny.llama_path, tiny.mmproj_path),
        "qwen2vl_merger": (qwen2.path, mm(tiny_dir, "qwen2vl_merger", 64, out_std=0.5)[0]),
        "qwen2.5vl_merger": (qwen2.path, mm(tiny_dir, "qwen2.5vl_merger", 64, out_std=0.5, n_wa_pattern=2)[0]),
        "gemma3": (make_tiny_gemma3(tiny_dir).path, mm(tiny_dir, "gemma3", 64, out_std=2.5)[0]),
    }


def encode(lm, mmproj, image_path) -> np.ndarray:
    from fastv_edge.images import load_image
    from fastv_edge.prompt import tokenize

    rt = fe.RuntimeConfig(n_ctx=512, n_threads=1, embedding_cache=False, image_max_tokens=64)
    with fe.load(lm, mmproj, runtime=rt, prune=fe.PruneConfig(strategy="none")) as model:
        with tokenize(model.llm, model.mtmd_ctx, model.marker, [load_image(image_path)], add_special=False) as p:
            return model.encoder.encode(p.images[0]).embd.copy()  # (n_tokens, n_embd)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("projector", ["mlp", "qwen2vl_merger", "qwen2.5vl_merger", "gemma3"])
@pytest.mark.parametrize("qtype, floor", [("q8_0", 0.999), ("q4_0", 0.9)])
def test_the_quantized_projector_loads_in_mtmd_and_encodes(projectors, photos, tmp_path, projector, qtype, floor):
    lm, src = projectors[projector]
    dst = quantize_mmproj(src, tmp_path / f"{projector}-{qtype}.gguf", qtype)
    types = {t.name: gguf.GGMLQuantizationType(t.ggml_type).name for t in read_header(dst).tensors}
    assert qtype.upper() in types.values() and "F32" in types.values()  # 2-D weights quantized, norms kept
    if projector == "gemma3":  # mtmd transposes it, which ggml cannot do to a quantized tensor
        assert types["mm.input_projection.weight"] == "F32"
    assert dst.stat().st_size < src.stat().st_size
    want, got = encode(lm, src, photos["chelsea"]), encode(lm, dst, photos["chelsea"])
    assert got.shape == want.shape and np.isfinite(got).all()
    cos = cosines(got.astype(np.float64), want.astype(np.float64))
    assert cos.min() > floor and not np.array_equal(got, want)  # close, and really quantized


def test_the_report_measures_size_time_and_cosine(projectors, photos, tmp_path):
    from fastv_edge.images import load_image

    _, src = projectors["qwen2.5vl_merger"]
    report = run(src, tmp_path / "q8.gguf", "q8_0", image=load_image(photos["coffee"]), reps=1)
    assert report.bytes_out < report.bytes_in and report.n_tokens > 0
    assert report.encode_ms_in > 0 and report.encode_ms_out > 0
    assert 0.999 < report.cosine_min <= report.cosine_mean <= 1.0
    lines = report.lines()
    assert "q8_0" in lines[0] and "MiB" in lines[0] and "cosine" in lines[2]


def test_the_command(projectors, photos, tmp_path, capsys):
    from fastv_edge.cli import main

    _, src = projectors["mlp"]
    out = tmp_path / "mlp-q4_0.gguf"
    argv = ["quantize-mmproj", str(src), str(out), "--type", "q4_0", "--image", str(photos["coffee"]), "--reps", "1"]
    assert main([*argv, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["type"] == "q4_0" and record["bytes_out"] == out.stat().st_size and record["cosine_mean"] > 0.9
    assert main([*argv, "--no-measure"]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "cosine" not in text


def test_bad_input_is_refused_before_llama_cpp(projectors, tmp_path, capsys):
    from fastv_edge.cli import main

    lm, src = projectors["mlp"]
    with pytest.raises(ModelLoadError, match="not an mmproj"):
        quantize_mmproj(lm, tmp_path / "x.gguf", "q8_0")
    with pytest.raises(ValueError, match="--type must be one of"):
        quantize_mmproj(src, tmp_path / "x.gguf", "q3_xs")
    with pytest.raises(ValueError, match="is the input"):
        quantize_mmproj(src, src, "q8_0")
    with pytest.raises(ValueError, match="folder does not exist"):
        quantize_mmproj(src, tmp_path / "missing" / "x.gguf", "q8_0")
    assert main(["quantize-mmproj", str(tmp_path / "none.gguf"), str(tmp_path / "x.gguf"), "--type", "q8_0"]) == 1
    assert "mmproj not found" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.partial")) and not (tmp_path / "x.gguf").exists()
    assert set(MMPROJ_TYPES) >= {"q8_0", "q4_0", "f16"}
    assert QuantizeReport("a", "b", "q8_0", 2, 1).lines() == ["wrote b (q8_0): 0.0 MiB, was 0.0 MiB (0.50x)"]


def test_gemma3s_input_projection_must_keep_its_type(projectors, photos, tmp_path, monkeypatch):
    """Why KEEP_SOURCE_TYPE exists: quantized as llama.cpp's rules alone say, Gemma 3's input projection
    is transposed in the graph, which quantized types cannot (its rows came out as noise): load() refuses it."""
    import fastv_edge.quantize_mmproj as qm

    lm, src = projectors["gemma3"]
    monkeypatch.setattr(qm, "KEEP_SOURCE_TYPE", {})
    broken = quantize_mmproj(src, tmp_path / "broken.gguf", "q8_0")
    with pytest.raises(fe.ModelLoadError, match="mm.input_projection.weight.*transposes it"):
        encode(lm, broken, photos["chelsea"])
