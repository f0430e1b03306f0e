"""Fixtures of the Python-API, chat, handler, CLI and bad-input tests.

Test modules load them with `pytest_plugins = ("fixtures_api",)`; plain helpers are in
api_helpers.py. The tiny model pair comes from conftest's `tiny` fixture (F32, 4 layers,
64 image tokens).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real photos from scikit-image's wheel: astronaut (PNG), chelsea (JPEG), coffee (PNG)."""
    from PIL import Image
    from skimage import data

    out = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, ext in (("astronaut", "png"), ("chelsea", "jpg"), ("coffee", "png")):
        paths[name] = out / f"{name}.{ext}"
        Image.fromarray(getattr(data, name)()).save(paths[name])
    return paths


@pytest.fixture(scope="module")
def tiny_model(tiny):
    """The tiny F32 pair loaded once per module (n_ctx 1024, 2 threads)."""
    from fastv_edge import RuntimeConfig, load

    with load(tiny.llama_path, tiny.mmproj_path, runtime=RuntimeConfig(n_ctx=1024, n_threads=2)) as model:
        yield model


@pytest.fixture(scope="session")
def smollm2_mmproj(smollm2_path, tiny_dir) -> Path:
    """A random tiny CLIP + MLP projector whose output width is SmolLM2-135M's n_embd (576).

    Pairs the real quantized 30-layer text model with mtmd, so FastV runs on real LM weights.
    """
    from fastv_edge.testing.make_tiny import random_clip_weights
    from fastv_edge.testing.mmproj import ClipHParams, write_mmproj_gguf

    path = tiny_dir / "smollm2-mmproj-D576-f32-s0.gguf"
    if not path.is_file():
        hp = ClipHParams(projection_dim=576)
        write_mmproj_gguf(path, hp, random_clip_weights(hp, 0), "f32")
    return path


@pytest.fixture(scope="session")
def cli_env() -> dict[str, str]:
    """Environment for `python -m fastv_edge` subprocesses: the repo first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONIOENCODING"] = "utf-8"
    return env
