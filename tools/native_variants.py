"""Shared steps of the check builds of the patched llama.cpp (sanitized x86, aarch64 cross).

The wheel build (fastv_edge/native_build.py) stays the only source of truth for the pinned
sdist, the patches and the cache directory; this module reuses it and adds what a plain CMake
build needs: a content-hash key per variant, a lock per variant, a configure + build step with
its logs kept, and a cache directory per key that only appears once the build succeeded.

Layout: $FASTV_EDGE_CACHE/<kind>/<key>/ (kind: "sanitize", "arm", ...), with build.json naming
what went into the key. A failed build keeps its tree and logs in $FASTV_EDGE_CACHE/build/<kind>-<key>/.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from fastv_edge import native_build as nb

# Bump when the way these variants are built changes in a way the hashed files cannot show.
VARIANT_RECIPE_VERSION = 1
N_KEPT = 3  # cached builds kept per kind
REPO_ROOT = Path(__file__).resolve().parents[1]  # tools/ runs from a clone
TOOLS_DIR = Path(__file__).resolve().parent
NativeBuildError = nb.NativeBuildError
log = nb.log


def compiler_id(cc: str) -> str:
    """First line of `cc --version`: part of a key, so a compiler upgrade rebuilds."""
    if shutil.which(cc) is None:
        raise NativeBuildError(f"compiler {cc} not found on PATH")
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else cc


def variant_key(variant: str, recipe_files: list[Path], compilers: list[str], settings: dict) -> tuple[str, dict]:
    """The cache key of one build variant and what it is made of.

    Args:
        variant: name of the variant ("sanitize", "arm", ...).
        recipe_files: files whose content decides the build (CMake files, toolchain file, scripts).
        compilers: compiler executables the build uses; their version lines are hashed.
        settings: flags and options of the variant, as plain data.

    Returns:
        (16-hex-digit key, the components as a dict).
    """
    components = {
        "variant": variant,
        "recipe": VARIANT_RECIPE_VERSION,
        "llama_cpp_python": nb.LLAMA_CPP_PYTHON_VERSION,
        "sdist_sha256": nb.LLAMA_CPP_PYTHON_SHA256,
        "patches_sha256": nb.patches_hash(nb.patch_files()),
        "recipe_files": {str(p.relative_to(REPO_ROOT)): nb.file_sha256(p) for p in recipe_files},
        "compilers": {cc: compiler_id(cc) for cc in compilers},
        "settings": settings,
    }
    return nb.cache_key(components), components


def files_key(paths: list[Path], extra: dict) -> str:
    """A key over the content of many files (test runs, inputs) plus plain data."""
    digests = {str(p.relative_to(REPO_ROOT)): nb.file_sha256(p) for p in sorted(paths)}
    return nb.cache_key({"files": digests, **extra})


def cached(kind: str, key: str) -> Path | None:
    """The finished cache directory of kind/key, or None."""
    out = nb.cache_dir() / kind / key
    return out if (out / "build.json").exists() else None


@contextlib.contextmanager
def variant_lock(kind: str):
    """One build of a kind at a time per cache; other kinds and the wheel build go on."""
    nb.cache_dir().mkdir(parents=True, exist_ok=True)
    with open(nb.cache_dir() / f"{kind}.lock", "w") as f:
        import fcntl

        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log(f"waiting for another {kind} build in this cache to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def patched_source(work: Path) -> Path:
    """The pinned sdist extracted into work with patches/*.patch applied; returns its root."""
    src = nb.extract_sdist(nb.ensure_sdist(), work)
    nb.apply_patches(src, nb.patch_files())
    return src


def run_logged(cmd: list[str], log_path: Path, env: dict | None = None) -> None:
    """Run a build step with its whole output in log_path; raise with the log's tail on failure."""
    if nb._stream_build([str(c) for c in cmd], env or dict(os.environ), log_path, verbose=False) != 0:
        raise NativeBuildError(f"{Path(cmd[0]).name} failed; last lines of {log_path}:\n{nb._tail(log_path)}")


def build_env(work: Path) -> dict:
    """Environment of a build: ccache shares objects across keys and clones (base_dir), 2 jobs."""
    env = dict(os.environ)
    env["CCACHE_BASEDIR"] = str(work)
    env["CCACHE_SLOPPINESS"] = "time_macros"
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    return env


def cmake_build(source: Path, build: Path, defines: dict, env: dict, logs: Path, install: bool = False) -> None:
    """Configure (Ninja when available), build and optionally install one CMake project."""
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    cmd = ["cmake", "-S", source, "-B", build, *generator, *(f"-D{k}={v}" for k, v in defines.items())]
    run_logged(cmd, logs / "configure.log", env)
    t0 = time.monotonic()
    run_logged(["cmake", "--build", build], logs / "build.log", env)
    log(f"compiled in {time.monotonic() - t0:.0f}s")
    if install:
        run_logged(["cmake", "--install", build], logs / "install.log", env)


@contextlib.contextmanager
def new_cache_entry(kind: str, key: str, components: dict):
    """Yields (work, out): a scratch tree and the output directory to fill.

    out becomes the cache entry (with build.json) only when the block succeeds; the scratch
    tree is then removed, and kept with its logs otherwise.
    """
    work = nb.cache_dir() / "build" / f"{kind}-{key}"
    shutil.rmtree(work, ignore_errors=True)
    out = work / "out"
    out.mkdir(parents=True)
    t0 = time.monotonic()
    yield work, out
    (out / "build.json").write_text(
        json.dumps({"key": key, "seconds": round(time.monotonic() - t0, 1), **components}, indent=2) + "\n"
    )
    final = nb.cache_dir() / kind / key
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(out), final)
    shutil.rmtree(work, ignore_errors=True)
    _prune(final.parent, keep=final)


def _prune(kind_dir: Path, keep: Path) -> None:
    entries = sorted((d for d in kind_dir.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    for d in entries[N_KEPT:]:
        if d != keep:
            shutil.rmtree(d, ignore_errors=True)


def apt_install(packages: list[str], probes: list[str]) -> None:
    """Install Debian packages unless every probe command is already on PATH (idempotent).

    Args:
        packages: Debian package names.
        probes: executables the packages provide; all present means nothing to do.
    """
    if all(shutil.which(p) for p in probes):
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise NativeBuildError(f"{', '.join(probes)} missing and no apt-get here: install {' '.join(packages)}")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    log(f"apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [*sudo, apt, "install", "-y", "-q", "--no-install-recommends", *packages]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:  # a stale package index is the usual cause on a fresh machine
        subprocess.run([*sudo, apt, "update", "-q"], capture_output=True, text=True, env=env)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not all(shutil.which(p) for p in probes):
        raise NativeBuildError(f"apt-get install {' '.join(packages)} failed:\n{proc.stderr[-2000:]}")
