"""Image-token caps and thread counts, through the real mtmd and llama contexts.

A cap must change mtmd's token count (and grid) on the dynamic-resolution projectors
(qwen2vl_merger, qwen2.5vl_merger, qwen3vl_merger), and on fixed-resolution ones (LLaVA's mlp,
Gemma 3) leave it alone with a warning that says so. Thread counts are read back from the
llama context; mtmd has no getter for its encoder threads, so the parameters it is opened with
are recorded at the call into the library (the seam: mtmd_init_from_file itself).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import skimage.data
from PIL import Image

import fastv_edge as fe
from fastv_edge.config import MAX_IMAGE_TOKENS, RuntimeConfig, check_image_tokens
from fastv_edge.image_tokens import IMAGE_TOKEN_CAP_PROJECTORS, ignored_caps_message, token_grid
from fastv_edge.images import RGBImage
from fastv_edge.response import ThreadCounts

PHOTO = (320, 240)  # patch 8, merge 2: a 20 x 15 grid on the qwen projectors


def photo(size=PHOTO) -> RGBImage:
    pixels = np.asarray(Image.fromarray(skimage.data.astronaut()).resize(size, Image.BICUBIC))  # (ny, nx, 3)
    return RGBImage(size[0], size[1], pixels.tobytes(), "astronaut")


# ----------------------------------------------------------------------------------- pure logic
@pytest.mark.parametrize(
    "lo, hi",
    [(0, None), (None, -1), (1.5, None), (True, None), (None, MAX_IMAGE_TOKENS + 1), (100, 50), ("64", None)],
)
def test_bad_caps_are_refused(lo, hi):
    with pytest.raises(ValueError, match="image_m"):
        RuntimeConfig(image_min_tokens=lo, image_max_tokens=hi)


def test_good_caps_pass():
    check_image_tokens(None, None)
    check_image_tokens(64, 64)
    assert RuntimeConfig(image_max_tokens=256).image_max_tokens == 256


def test_ignored_caps_message_names_the_projector():
    from fastv_edge.model import MmprojInfo

    mlp = MmprojInfo("/m/llava-mmproj.gguf", "mlp", 4096, 336, True)
    qwen = MmprojInfo("/m/qwen-mmproj.gguf", "qwen2vl_merger", 1536, 560, True)
    assert ignored_caps_message(qwen, None, 256) is None
    assert ignored_caps_message(mlp, None, None) is None
    message = ignored_caps_message(mlp, 16, 256)
    assert "image_min_tokens=16 and image_max_tokens=256" in message and "'mlp'" in message
    assert "llava-mmproj.gguf" in message and "fixed" in message
    assert "without an mmproj" in ignored_caps_message(None, None, 256)


def test_token_grid():
    assert token_grid((8, 5), 40, fixed=False) == (8, 5)
    assert token_grid(None, 576, fixed=True) == (24, 24)
    assert token_grid(None, 577, fixed=True) is None  # not a square: unknown
    assert token_grid(None, 576, fixed=False) is None
    assert {"qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger"} <= set(IMAGE_TOKEN_CAP_PROJECTORS)
    assert not {"mlp", "gemma3", "ldp"} & set(IMAGE_TOKEN_CAP_PROJECTORS)


# ----------------------------------------------------------------------------------- native
@pytest.fixture(scope="module")
def pairs(tiny_dir, tiny):
    """(text model, mmproj) per projector type."""
    from fastv_edge.testing.make_tiny_archs import make_tiny_gemma3, make_tiny_qwen2vl, make_tiny_qwen3vl
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj

    qwen2 = make_tiny_qwen2vl(tiny_dir)
    qwen3 = make_tiny_qwen3vl(tiny_dir)
    gemma = make_tiny_gemma3(tiny_dir)
    mm = make_tiny_vision_mmproj
    return {
        "qwen2vl_merger": (qwen2.path, mm(tiny_dir, "qwen2vl_merger", 64, out_std=0.5)[0]),
        "qwen2.5vl_merger": (qwen2.path, mm(tiny_dir, "qwen2.5vl_merger", 64, out_std=0.5, n_wa_pattern=2)[0]),
        "qwen3vl_merger": (
            qwen3.path,
            mm(tiny_dir, "qwen3vl_merger", 64, out_std=0.5, n_layer=4, deepstack_layers=(0, 1, 2))[0],
        ),
        "gemma3": (gemma.path, mm(tiny_dir, "gemma3", 64, out_std=2.5)[0]),
        "mlp": (tiny.llama_path, tiny.mmproj_path),
    }


def image_tokens(model, img=None) -> tuple[int, tuple | None]:
    """(n_tokens, grid) of the photo as the model's mtmd context tokenizes it."""
    from fastv_edge.prompt import tokenize

    with tokenize(model.llm, model.mtmd_ctx, model.marker, [img or photo()], add_special=False) as prompt:
        piece = prompt.images[0]
        return piece.n_tokens, piece.grid


def runtime(**kw) -> RuntimeConfig:
    return RuntimeConfig(n_ctx=1024, n_threads=1, embedding_cache=False, **kw)


@pytest.mark.native
@pytest.mark.parametrize("projector", ["qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger"])
def test_a_cap_changes_mtmds_token_count(pairs, projector):
    lm, mmproj = pairs[projector]
    with fe.load(lm, mmproj, runtime=runtime(), prune=fe.PruneConfig(strategy="none")) as model:
        assert model.image_tokens_honoured
        n_free, grid = image_tokens(model)
        assert (n_free, grid) == (300, (20, 15))  # 320 x 240 px / (8 px * 2)
    with fe.load(lm, mmproj, runtime=runtime(image_max_tokens=64), prune=fe.PruneConfig(strategy="none")) as model:
        n, (nx, ny) = image_tokens(model)
        assert n == nx * ny <= 64 < n_free and nx > ny  # downscaled, aspect kept
        model.set_image_tokens(max_tokens=16)  # re-opens mtmd on the same LLM
        n16, _ = image_tokens(model)
        assert n16 <= 16 < n and model.runtime.image_max_tokens == 16
        model.set_image_tokens(min_tokens=600)  # upscaled
        assert image_tokens(model)[0] >= 600 and model.runtime.image_max_tokens is None
        model.set_image_tokens()  # back to the projector's own limits
        assert image_tokens(model) == (n_free, (20, 15))


@pytest.mark.native
@pytest.mark.parametrize("projector", ["mlp", "gemma3"])
def test_a_cap_on_a_fixed_resolution_projector_is_explained(pairs, projector):
    lm, mmproj = pairs[projector]
    with fe.load(lm, mmproj, runtime=runtime(), prune=fe.PruneConfig(strategy="none")) as model:
        n_free = image_tokens(model)[0]
    with pytest.warns(RuntimeWarning, match=f"no effect.*'{projector}'.*fixed"):
        model = fe.load(lm, mmproj, runtime=runtime(image_max_tokens=16), prune=fe.PruneConfig(strategy="none"))
    with model:
        assert not model.image_tokens_honoured
        assert image_tokens(model)[0] == n_free > 16
        ctx = model.mtmd_ctx
        with pytest.warns(RuntimeWarning, match="no effect"):
            model.set_image_tokens(max_tokens=8)
        assert model.mtmd_ctx == ctx and image_tokens(model)[0] == n_free  # nothing re-opened


@pytest.mark.native
def test_bad_caps_leave_the_model_working(pairs):
    lm, mmproj = pairs["qwen2vl_merger"]
    with fe.load(lm, mmproj, runtime=runtime(image_max_tokens=64), prune=fe.PruneConfig(strategy="none")) as model:
        before = image_tokens(model)
        for lo, hi in ((0, None), (100, 50), (None, MAX_IMAGE_TOKENS + 1)):
            with pytest.raises(ValueError):
                model.set_image_tokens(lo, hi)
        assert image_tokens(model) == before and model.runtime.image_max_tokens == 64


@pytest.mark.native
def test_every_response_reports_grid_and_tokens(pairs, tiny_model):
    lm, mmproj = pairs["qwen2vl_merger"]
    kw = dict(max_tokens=1, apply_template=False, prune=fe.PruneConfig(strategy="none"))
    with fe.load(lm, mmproj, runtime=runtime(image_max_tokens=64)) as model:
        last = list(fe.stream_generate(model, f"{model.marker} What is it?", [photo()], **kw))[-1]
    (img,) = last.stats.images
    assert img.n_tokens == img.grid[0] * img.grid[1] <= 64 and img.grid[0] > img.grid[1]
    last = list(fe.stream_generate(tiny_model, f"{tiny_model.marker} What?", [photo()], **kw))[-1]
    (img,) = last.stats.images
    assert (img.n_tokens, img.grid) == (64, (8, 8))  # the mlp projector: 64 px / 8 px, square


# ----------------------------------------------------------------------------------- threads
@pytest.mark.native
@pytest.mark.parametrize("n_threads", [1, 2])
def test_thread_counts_reach_llama_and_mtmd(tiny, monkeypatch, n_threads):
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    opened = []
    real = mtmd.mtmd_init_from_file

    def recording(path, text_model, params):  # the call into libmtmd: what the encoder really gets
        opened.append((params.n_threads, params.image_min_tokens, params.image_max_tokens))
        return real(path, text_model, params)

    monkeypatch.setattr(mtmd, "mtmd_init_from_file", recording)
    rt = RuntimeConfig(n_ctx=512, n_threads=n_threads, embedding_cache=False)
    with fe.load(tiny.llama_path, tiny.mmproj_path, runtime=rt) as model:
        assert llama_cpp.llama_n_threads(model.ctx) == n_threads
        assert llama_cpp.llama_n_threads_batch(model.ctx) == n_threads  # the prompt's too, not the default
        assert opened == [(n_threads, -1, -1)]
        assert model.threads == ThreadCounts(n_threads, n_threads, n_threads)


@pytest.mark.native
def test_encoder_threads_and_caps_survive_a_reopen(pairs, monkeypatch):
    import llama_cpp.mtmd_cpp as mtmd

    opened = []
    real = mtmd.mtmd_init_from_file
    monkeypatch.setattr(
        mtmd, "mtmd_init_from_file", lambda p, m, params: opened.append(params.n_threads) or real(p, m, params)
    )
    lm, mmproj = pairs["qwen2vl_merger"]
    with fe.load(lm, mmproj, runtime=RuntimeConfig(n_ctx=512, n_threads=2, embedding_cache=False)) as model:
        model.set_image_tokens(max_tokens=32)
        assert opened == [2, 2] and model.threads.encoder == 2


@pytest.mark.native
def test_run_reports_its_threads(tiny, photos, capsys):
    from fastv_edge.cli import main

    argv = ["run", "-m", tiny.llama_path, "--mmproj", tiny.mmproj_path, "--image", photos["coffee"], "-p", "Hi"]
    argv += ["-n", "2", "-t", "1", "--raw", "--json"]
    assert main([str(a) for a in argv]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["threads"] == {"decode": 1, "batch": 1, "encoder": 1}
    assert record["images"][0]["grid"] == [8, 8] and record["images"][0]["n_tokens"] == 64
    assert main([str(a) for a in argv[:-1]]) == 0
    err = capsys.readouterr().err
    assert "threads 1 decode / 1 batch / 1 encoder" in err and "image 1: 8x8 grid, 64 tokens" in err


@pytest.mark.native
def test_run_explains_an_ignored_cap(tiny, photos, capsys):
    from fastv_edge.cli import main

    argv = ["run", "-m", tiny.llama_path, "--mmproj", tiny.mmproj_path, "--image", photos["coffee"], "-p", "Hi"]
    assert main([str(a) for a in [*argv, "-n", "1", "-t", "1", "--raw", "--image-max-tokens", "16"]]) == 0
    err = capsys.readouterr().err
    assert "fastv-edge: warning: image_max_tokens=16 has no effect" in err and "'mlp'" in err
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left for Python's own warning printer
        assert main([str(a) for a in [*argv, "-n", "1", "-t", "1", "--raw", "--quiet"]]) == 0


@pytest.mark.native
def test_info_says_whether_caps_apply(pairs):
    from fastv_edge.info import model_report

    assert model_report(*pairs["mlp"])["image_token_caps"].startswith("ignored (fixed resolution)")
    assert model_report(*pairs["qwen2vl_merger"])["image_token_caps"].startswith("honoured")
