"""An mmproj that lacks what its projector type needs is refused before mtmd sees it.

Before mmproj_check, one flipped byte in a tensor name crashed mtmd's loader (a NULL tensor
in the warm-up graph) in `run`, `info`, `bench`, `load` and the chat handler. The tiny
projectors of every type the project uses are damaged here one tensor at a time (pure
Python: read_mmproj_info), and a few damaged files go through every entry point in a
subprocess, which must exit with a one-line error instead of a signal.
"""

from __future__ import annotations

import subprocess
import sys

import gguf
import numpy as np
import pytest
from api_helpers import run_cli
from gguf_edit import flip_name, make_idefics3, rewrite, tensor_names

import fastv_edge as fe
from fastv_edge.errors import ModelLoadError
from fastv_edge.model import read_mmproj_info

U32 = gguf.GGUFValueType.UINT32


@pytest.fixture(scope="module")
def projectors(tiny, tiny_dir):
    """projector type -> (text model path, mmproj path) of the tiny pairs."""
    from fastv_edge.testing.make_tiny_archs import (
        make_tiny_gemma3,
        make_tiny_gemma4,
        make_tiny_qwen2vl,
        make_tiny_qwen3vl,
    )
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj
    from fastv_edge.testing.mmproj_gemma4v import make_tiny_gemma4v_mmproj

    q2, g3, q3 = make_tiny_qwen2vl(tiny_dir), make_tiny_gemma3(tiny_dir), make_tiny_qwen3vl(tiny_dir)
    g4 = make_tiny_gemma4(tiny_dir, "e2b")
    gemma3_mm = make_tiny_vision_mmproj(tiny_dir, "gemma3", g3.hparams.n_embd, out_std=2.5)[0]
    pairs = {
        "mlp": (tiny.llama_path, tiny.mmproj_path),
        "qwen2vl_merger": (q2.path, make_tiny_vision_mmproj(tiny_dir, "qwen2vl_merger", 64, out_std=0.5)[0]),
        "gemma3": (g3.path, gemma3_mm),
        "qwen3vl_merger": (
            q3.path,
            make_tiny_vision_mmproj(tiny_dir, "qwen3vl_merger", 64, out_std=0.5, n_layer=4, deepstack_layers=(0, 1, 2))[
                0
            ],
        ),
        "gemma4v": (g4.path, make_tiny_gemma4v_mmproj(tiny_dir, g4.hparams.n_embd)[0]),
        "idefics3": (tiny.llama_path, make_idefics3(gemma3_mm, tiny_dir / "tiny-idefics3-mmproj.gguf", 64)),
    }
    qwen25 = tiny_dir / "tiny-qwen2.5vl-mmproj.gguf"  # qwen2vl's tower; 2.5 also needs a window pattern
    keys = {"clip.projector_type": "qwen2.5vl_merger", "clip.vision.n_wa_pattern": (4, U32)}
    pairs["qwen2.5vl_merger"] = (q2.path, rewrite(pairs["qwen2vl_merger"][1], qwen25, keys=keys))
    return pairs


KINDS = ("mlp", "qwen2vl_merger", "qwen2.5vl_merger", "gemma3", "qwen3vl_merger", "gemma4v", "idefics3")


@pytest.mark.parametrize("kind", KINDS)
def test_the_tiny_projectors_pass(projectors, kind):
    mm = read_mmproj_info(projectors[kind][1])
    assert (mm.projector_type, mm.n_embd_out) == (kind, 64)


@pytest.mark.parametrize("kind", KINDS)
def test_every_tensor_name_with_a_flipped_byte_is_refused(projectors, kind, tmp_path):
    src = projectors[kind][1]
    names = tensor_names(src)
    for name in names:
        for byte in (-1, 2):  # the last byte ('weighu'), or one in the prefix ('v.alk.0...')
            bad = flip_name(src, tmp_path / "bad.gguf", name, byte)
            with pytest.raises(ModelLoadError, match=rf"mmproj bad.gguf \({kind}\): tensor '") as e:
                read_mmproj_info(bad)
            assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kind, edit, message",
    [
        ("mlp", dict(drop_tensors=("mm.0.bias",)), "'mm.0.bias' is missing"),
        ("mlp", dict(tensors={"mm.0.weight": np.zeros((128, 32))}), r"'mm.0.weight' has shape \[32, 128\]"),
        ("mlp", dict(tensors={"mm.2.bias": np.zeros(63)}), r"'mm.2.bias' has shape \[63\], expected \[64\]"),
        ("mlp", dict(keys={"clip.vision.patch_size": (0, U32)}), "patch_size = 0 is outside"),
        ("mlp", dict(keys={"clip.vision.image_size": 64.0}), "'clip.vision.image_size' has GGUF type 6"),
        ("mlp", dict(keys={"clip.vision.attention.head_count": (3, U32)}), "not a multiple of its 3 heads"),
        ("mlp", dict(drop_keys=("clip.vision.image_std",)), "image_std needs 3 values"),
        ("qwen2vl_merger", dict(tensors={"v.patch_embd.bias": np.zeros(32)}), "asserts it has no patch bias"),
        ("qwen2vl_merger", dict(drop_tensors=("v.patch_embd.weight.1",)), "'v.patch_embd.weight.1' is missing"),
        ("qwen2vl_merger", dict(keys={"clip.vision.spatial_merge_size": (3, U32)}), "merges 2x2 patches"),
        ("qwen3vl_merger", dict(drop_tensors=("v.deepstack.1.fc2.bias",)), "'v.deepstack.1.fc2.bias' is missing"),
        ("qwen3vl_merger", dict(drop_tensors=("v.position_embd.weight",)), "'v.position_embd.weight' is missing"),
        ("idefics3", dict(drop_keys=("clip.vision.projector.scale_factor",)), "scale_factor None must be >= 2"),
        ("gemma3", dict(tensors={"mm.soft_emb_norm.weight": np.zeros(31)}), "'mm.soft_emb_norm.weight' has shape"),
        ("gemma4v", dict(tensors={"v.patch_embd.bias": np.zeros(32)}), "asserts it has no patch bias"),
    ],
)
def test_what_the_graph_needs(projectors, tmp_path, kind, edit, message):
    bad = rewrite(projectors[kind][1], tmp_path / "bad.gguf", **edit)
    with pytest.raises(ModelLoadError, match=message):
        read_mmproj_info(bad)


def test_legacy_swapped_ffn_is_accepted_as_clip_cpp_swaps_it(projectors, tmp_path):
    src = projectors["mlp"][1]
    reader = gguf.GGUFReader(str(src))
    arrays = {t.name: np.asarray(t.data) for t in reader.tensors}
    swapped = {}
    for il in range(2):  # old conversions stored ffn_up as ffn_down and the other way round
        b = f"v.blk.{il}."
        swapped[b + "ffn_up.weight"], swapped[b + "ffn_down.weight"] = (
            arrays[b + "ffn_down.weight"],
            arrays[b + "ffn_up.weight"],
        )
        swapped[b + "ffn_up.bias"], swapped[b + "ffn_down.bias"] = (
            arrays[b + "ffn_down.bias"],
            arrays[b + "ffn_up.bias"],
        )
    assert read_mmproj_info(rewrite(src, tmp_path / "legacy.gguf", tensors=swapped)).n_embd_out == 64


@pytest.mark.native
@pytest.mark.parametrize(
    "kind, model",
    [
        ("qwen2vl_merger", "mlp"),
        ("qwen3vl_merger", "mlp"),
        ("gemma4v", "mlp"),
        ("mlp", "gemma3"),
        ("idefics3", "qwen2vl_merger"),
    ],
)
def test_a_projector_of_another_family_is_refused_naming_both(projectors, kind, model):
    """Same width (64) everywhere: before, the pair loaded and answered with garbage."""
    text, mmproj = projectors[model][0], projectors[kind][1]
    with pytest.raises(
        ModelLoadError, match=rf"mmproj {mmproj.name} is a '{kind}' projector .* model {text.name} is '"
    ):
        fe.load(text, mmproj, runtime=fe.RuntimeConfig(n_ctx=256, n_threads=1), prune=fe.PruneConfig(strategy="none"))


@pytest.fixture(scope="module")
def damaged(projectors, tmp_path_factory):
    """The tiny mlp mmproj with one byte of mm.0.bias flipped: crashed mtmd's warm-up before."""
    return flip_name(projectors["mlp"][1], tmp_path_factory.mktemp("damaged") / "damaged.gguf", "mm.0.bias")


def _one_line_error(out, tensor="mm.0.bias"):
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])  # a signal was -11 here
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastv-edge: error: ") and tensor in lines[0], out.stderr


@pytest.mark.native
def test_run_info_and_bench_refuse_a_damaged_mmproj(cli_env, tiny, damaged, tmp_path):
    model = ("-m", tiny.llama_path, "--mmproj", damaged)
    _one_line_error(run_cli(cli_env, "run", *model, "-p", "hi", "-t", "1", "--strategy", "none"))
    _one_line_error(run_cli(cli_env, "info", *model))
    bench = ("--reps", "1", "-n", "1", "--no-fidelity", "--no-plots", "-t", "1", "--out", tmp_path, "--quiet")
    _one_line_error(run_cli(cli_env, "bench", *model, *bench))


HANDLER = """
import sys
import llama_cpp
from fastv_edge.errors import ModelLoadError
from fastv_edge.handler import FastVChatHandler
try:
    handler = FastVChatHandler(clip_model_path=sys.argv[2], verbose=False)
    llm = llama_cpp.Llama(sys.argv[1], n_ctx=256, n_threads=1, chat_handler=handler, verbose=False)
    llm.create_chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=1)
except ModelLoadError as e:
    print("refused:", e)
"""


@pytest.mark.native
@pytest.mark.parametrize("which", ["damaged", "other-family"])
def test_the_chat_handler_refuses_them(projectors, damaged, cli_env, which):
    text = projectors["mlp"][0]
    mmproj = damaged if which == "damaged" else projectors["qwen2vl_merger"][1]
    out = subprocess.run(
        [sys.executable, "-c", HANDLER, str(text), str(mmproj)],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    expected = "mm.0.bias" if which == "damaged" else "'qwen2vl_merger' projector"
    assert out.stdout.startswith("refused:") and expected in out.stdout, out.stdout


@pytest.mark.native
def test_a_vocabulary_without_the_projectors_image_tokens_is_named(projectors, photos):
    """idefics3 wraps image rows in <fake_token_around_image> etc.; SmolLM2's vocabulary lacks them (the
    lookup gives -1). Before: 'llama_decode failed (code -1)'."""
    text, mmproj = projectors["idefics3"]
    runtime = fe.RuntimeConfig(n_ctx=1024, n_threads=1)
    with fe.load(text, mmproj, runtime=runtime, prune=fe.PruneConfig(strategy="none"), template="chatml") as model:
        with pytest.raises(ValueError, match="vocabulary lacks the image tokens its mmproj's projector uses"):
            fe.generate(model, "What is it?", [photos["coffee"]], max_tokens=1)
        assert fe.generate(model, "Hello", max_tokens=1)  # the model still answers text
