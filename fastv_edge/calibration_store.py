"""Where calibrations live: one JSON file per (model files, library build, machine, settings).

    ~/.cache/fastv-edge/calibration/<model stem>-<key>.json     ($FASTV_EDGE_CALIBRATION_DIR overrides)

The key hashes what changes the measured times:
- each model file's identity: its size and a SHA-256 of its first and last MiB (path-independent
  and cheap on multi-GB files; a re-quantized or re-written file changes both);
- the library: the build key of the patched llama.cpp (fastv_edge.native_info), else its version;
- the machine: CPU model name and the thread count; the context settings that change speed
  (n_batch, n_ubatch, flash attention);
- cost_model.COST_MODEL_VERSION.
Writes are atomic (a temporary file renamed over the target); an unreadable, corrupt or
other-version file is treated as missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path

from .cost_model import COST_MODEL_VERSION, CostModel

ENV_DIR = "FASTV_EDGE_CALIBRATION_DIR"
_EDGE = 1 << 20  # bytes hashed at each end of a model file


def calibration_dir() -> Path:
    """$FASTV_EDGE_CALIBRATION_DIR, else ~/.cache/fastv-edge/calibration."""
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else Path.home() / ".cache" / "fastv-edge" / "calibration"


def file_identity(path: str | os.PathLike) -> dict:
    """{'size', 'sha256_ends'} of a file: its size and a hash of its first and last MiB."""
    size = os.path.getsize(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if size > _EDGE:
            f.seek(max(size - _EDGE, _EDGE))
            h.update(f.read(_EDGE))
    return {"size": size, "sha256_ends": h.hexdigest()}


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _library() -> str:
    from .native_info import native_info

    info = native_info()
    build = info.get("build") or {}
    return build.get("build_key") or f"llama-cpp-python {info.get('llama_cpp_python_version')}"


def identity(model) -> dict:
    """What a calibration of `model` (a loaded Model) depends on; its hash is the store key."""
    rt = model.runtime
    return {
        "model": file_identity(model.info.path),
        "mmproj": file_identity(model.mmproj.path) if model.mmproj is not None else None,
        "library": _library(),
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "threads": rt.threads,
        "n_batch": model.llm.n_batch,
        "n_ubatch": rt.n_ubatch,
        "flash_attn": rt.flash_attn,
        "version": COST_MODEL_VERSION,
    }


def calibration_path(model) -> Path:
    """The file a calibration of `model` is stored in."""
    key = hashlib.sha256(json.dumps(identity(model), sort_keys=True).encode()).hexdigest()[:20]
    return calibration_dir() / f"{Path(model.info.path).stem}-{key}.json"


def load_calibration(model) -> CostModel | None:
    """The stored calibration of `model`, or None when there is none usable."""
    path = calibration_path(model)
    try:
        data = json.loads(path.read_text())
        return CostModel.from_dict(data["cost_model"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_calibration(model, cost: CostModel) -> Path:
    """Store `cost` as the calibration of `model` (atomically); returns the path."""
    path = calibration_path(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": str(model.info.path),
        "mmproj": str(model.mmproj.path) if model.mmproj is not None else None,
        "identity": identity(model),
        "cost_model": cost.to_dict(),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".calibration-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
