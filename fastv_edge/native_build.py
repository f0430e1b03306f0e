"""Build and install the patched llama-cpp-python wheel (standard library only).

Runs before anything else is installed, from a clone or from an installed fastv-edge:

    python fastv_edge/native_build.py install      # (a clone) build (or reuse) and install the wheel
    python -m fastv_edge.native_build install      # the same, wherever fastv_edge is importable
    python -m fastv_edge.native_build build        # build (or reuse) the wheel, print its path
    python -m fastv_edge.native_build patch-check  # check every patch on the pinned source
    python -m fastv_edge.native_build key          # print the cache key and what it is made of

The pinned llama-cpp-python sdist is downloaded with pip, checked by sha256, and
patches/*.patch are applied to its vendor/llama.cpp. scikit-build-core then builds the
sdist with cmake.source-dir set to the folder of our CMakeLists.txt (the clone's root, or
the copy a wheel carries in fastv_edge/native_src), so it sets the llama.cpp options and
add_subdirectory()s the patched sdist. The wheel is cached under
$FASTV_EDGE_CACHE (default ~/.cache/fastv-edge) by a key over everything that changes
the binary; an unchanged key installs the cached wheel, or nothing if it is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# The pin: the one place the llama-cpp-python version and its sdist digest live.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_PYTHON_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# Build backend of the sdist, pinned so a new release cannot change how cmake.source-dir works.
SCIKIT_BUILD_CORE_VERSION = "1.1.2"
# Bump when the build mechanics change in a way the other key parts cannot see.
RECIPE_VERSION = 1

# Where patches/ and CMakeLists.txt live: a clone's root, else the copies setup.py puts in
# the wheel. The clone wins, so edited patches are what gets built; equal content, equal key.
_HERE = Path(__file__).resolve().parent
SOURCE_DIRS = (_HERE.parent, _HERE / "native_src")
STAMP_NAME = "fastv_edge_build.json"  # written by CMakeLists.txt next to libllama
MIN_CMAKE = (3, 21)
PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check")
N_KEPT_WHEELS = 5

AVX512_BASE = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
# ggml option suffix -> /proc/cpuinfo flags it needs. AMX is deliberately absent: a build
# with AMX kernels segfaults in ggml_backend_amx_mul_mat on the first decode.
X86_FLAG_RULES = (
    ("SSE42", ("sse4_2",)),
    ("AVX", ("avx",)),
    ("AVX2", ("avx", "avx2")),
    ("FMA", ("fma",)),
    ("F16C", ("f16c",)),
    ("BMI2", ("bmi2",)),
    ("AVX_VNNI", ("avx2", "avx_vnni")),
    ("AVX512", AVX512_BASE),
    ("AVX512_VNNI", (*AVX512_BASE, "avx512_vnni")),
    ("AVX512_BF16", (*AVX512_BASE, "avx512_bf16")),
)
# Every x86 option CMakeLists.txt accepts; AVX512_VBMI only by explicit request.
X86_OPTIONS = (*(opt for opt, _ in X86_FLAG_RULES), "AVX512_VBMI")
X86_MACHINES = {"x86_64", "amd64", "x64"}


class NativeBuildError(RuntimeError):
    """A build step failed; the message names the fix."""


def log(msg: str) -> None:
    print(f"[fastv-edge native] {msg}", flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("FASTV_EDGE_CACHE") or Path.home() / ".cache" / "fastv-edge")


def source_dir() -> Path:
    """The folder holding patches/ and the CMakeLists.txt of the build."""
    for folder in SOURCE_DIRS:
        if (folder / "CMakeLists.txt").is_file() and (folder / "patches").is_dir():
            return folder
    raise NativeBuildError(
        f"no patches/ and CMakeLists.txt in {' or '.join(map(str, SOURCE_DIRS))}; reinstall fastv-edge "
        "from its wheel or sdist, or run from a clone of the repository"
    )


def install_command() -> str:
    """The command that builds and installs the patched library for this interpreter, as a user types it."""
    on_path = shutil.which("python")
    python = "python" if on_path and os.path.abspath(on_path) == os.path.abspath(sys.executable) else sys.executable
    return f"{shlex.quote(python)} -m fastv_edge.native_build install"


# ---------------------------------------------------------------- CPU flags


def parse_cpu_flags(cpuinfo: str) -> set[str]:
    """The feature words of /proc/cpuinfo ("flags" on x86, "Features" on ARM)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def select_x86_flags(cpu_flags: set[str]) -> list[str]:
    """ggml x86 options (without the GGML_ prefix) the CPU supports; never AMX."""
    return [opt for opt, needs in X86_FLAG_RULES if all(f in cpu_flags for f in needs)]


def parse_x86_override(text: str) -> list[str]:
    """FASTV_EDGE_X86_FLAGS: "AVX,AVX2,FMA", "none" (no extensions) or "native" (-march=native)."""
    words = [w for w in re.split(r"[;,\s]+", text.strip()) if w]
    if [w.lower() for w in words] in (["native"], ["none"]):
        return [words[0].lower()]
    flags = [w.upper() for w in words]
    unknown = [f for f in flags if f not in X86_OPTIONS]
    if unknown:
        raise NativeBuildError(
            f"FASTV_EDGE_X86_FLAGS has unknown {unknown}; use 'native', 'none' or some of {', '.join(X86_OPTIONS)}"
        )
    return flags


def _windows_cpu_flags() -> set[str]:
    # Windows has no /proc/cpuinfo; IsProcessorFeaturePresent knows AVX and AVX2 only.
    # Every AVX2 CPU also has FMA, F16C and BMI2. Untested here (no Windows machine).
    import ctypes

    present = ctypes.windll.kernel32.IsProcessorFeaturePresent  # type: ignore[attr-defined]
    flags = {"sse4_2"} if present(38) else set()  # PF_SSE4_2_INSTRUCTIONS_AVAILABLE
    if present(39):  # PF_AVX_INSTRUCTIONS_AVAILABLE
        flags.add("avx")
    if present(40):  # PF_AVX2_INSTRUCTIONS_AVAILABLE
        flags.update({"avx2", "fma", "f16c", "bmi2"})
    return flags


def build_x86_flags(
    system: str | None = None, machine: str | None = None, cpuinfo: str | None = None
) -> list[str] | None:
    """x86 flags to force, or None to keep llama.cpp's defaults (ARM, macOS).

    Args:
        system: platform.system() value; detected when None.
        machine: platform.machine() value; detected when None.
        cpuinfo: /proc/cpuinfo text; read when None on Linux.

    Returns:
        ggml option suffixes such as ["AVX", "AVX2"], ["native"] when the user asked for
        -march=native through FASTV_EDGE_X86_FLAGS, or None off x86 Linux/Windows.
    """
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    if system == "Darwin" or machine not in X86_MACHINES:
        return None  # ARM -mcpu=native and Apple's Metal path stay as llama-cpp-python has them
    override = os.environ.get("FASTV_EDGE_X86_FLAGS")
    if override is not None:
        return parse_x86_override(override)
    if cpuinfo is None and system == "Linux":
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    if cpuinfo is not None:
        return select_x86_flags(parse_cpu_flags(cpuinfo))
    if system == "Windows":
        return select_x86_flags(_windows_cpu_flags())
    return []


# ---------------------------------------------------------------- cache key


def patch_files(patch_dir: Path | None = None) -> list[Path]:
    return sorted((patch_dir or source_dir() / "patches").glob("*.patch"))


def patches_hash(patches: list[Path]) -> str:
    h = hashlib.sha256()
    for p in patches:  # names count too: order and renames change the result
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def key_components(patches: list[Path], cmakelists: Path, x86_flags: list[str] | None, cmake_args: str) -> dict:
    """Everything that changes the built wheel, as plain data."""
    return {
        "recipe": RECIPE_VERSION,
        "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION,
        "sdist_sha256": LLAMA_CPP_PYTHON_SHA256,
        "scikit_build_core": SCIKIT_BUILD_CORE_VERSION,
        "patches_sha256": patches_hash(patches),
        "cmakelists_sha256": file_sha256(cmakelists),
        "platform": f"{platform.system()}-{platform.machine().lower()}",
        "x86_flags": x86_flags,
        "cmake_args": cmake_args,
    }


def cache_key(components: dict) -> str:
    blob = json.dumps(components, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def current_components() -> dict:
    cmakelists = source_dir() / "CMakeLists.txt"
    return key_components(patch_files(), cmakelists, build_x86_flags(), os.environ.get("CMAKE_ARGS", ""))


# ---------------------------------------------------------------- sdist and patches


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, text=True, capture_output=True, **kw)


def _pip_env() -> dict:
    # The constraint reaches pip's isolated build environment too, pinning scikit-build-core.
    constraint = cache_dir() / "build-constraints.txt"
    constraint.parent.mkdir(parents=True, exist_ok=True)
    constraint.write_text(f"scikit-build-core=={SCIKIT_BUILD_CORE_VERSION}\n")
    return {**os.environ, "PIP_CONSTRAINT": str(constraint)}


def _sdist_path() -> Path:
    return cache_dir() / "sdist" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"


def cached_sdist() -> Path | None:
    """The pinned sdist if it is already in the cache (tests use this; never downloads)."""
    return _sdist_path() if _sdist_path().exists() else None


def ensure_sdist() -> Path:
    """The pinned sdist in the cache, downloaded with pip if absent; sha256 checked."""
    tarball = _sdist_path()
    if tarball.exists() and file_sha256(tarball) == LLAMA_CPP_PYTHON_SHA256:
        return tarball
    sdist_dir = tarball.parent
    sdist_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    log(f"downloading llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} sdist")
    with tempfile.TemporaryDirectory(dir=sdist_dir) as tmp:
        pin = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
        args = ["download", "--no-deps", "--no-binary", ":all:", pin, "-d", tmp]
        proc = _run([*PIP, *args], env=_pip_env())
        found = sorted(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not found:
            raise NativeBuildError(
                f"pip download of llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} failed "
                f"(needs PyPI access):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        digest = file_sha256(found[0])
        if digest != LLAMA_CPP_PYTHON_SHA256:
            raise NativeBuildError(
                f"sha256 of {found[0].name} is {digest}, pinned {LLAMA_CPP_PYTHON_SHA256}: "
                "the download is not the pinned release; check the pin in native_build.py"
            )
        shutil.move(str(found[0]), tarball)
    log(f"sdist ready in {time.monotonic() - t0:.1f}s: {tarball}")
    return tarball


def extract_sdist(tarball: Path, dest: Path) -> Path:
    """Extract into dest; returns the sdist's top directory."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "data_filter"):  # drops archive ownership, refuses unsafe paths
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)  # noqa: S202 - our own pinned, sha256-checked archive
    return dest / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"


def apply_patches(src: Path, patches: list[Path]) -> None:
    """git apply each patch (sorted) to src/vendor/llama.cpp, checking it first."""
    if not patches:
        return
    if shutil.which("git") is None:
        raise NativeBuildError("git is needed to apply patches/*.patch: apt-get install git")
    llama_dir = src / "vendor" / "llama.cpp"
    for p in patches:
        check = _run(["git", "apply", "--check", str(p)], cwd=llama_dir)
        if check.returncode != 0:
            raise NativeBuildError(
                f"patch {p.name} does not apply to llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}'s "
                f"vendor/llama.cpp:\n{check.stderr.strip()}\n"
                "Rebase it on the pinned llama.cpp (see patches/README.md)."
            )
        applied = _run(["git", "apply", str(p)], cwd=llama_dir)
        if applied.returncode != 0:
            raise NativeBuildError(f"git apply {p.name} failed:\n{applied.stderr.strip()}")
        log(f"applied {p.name}")


def patch_check() -> None:
    patches = patch_files()
    with tempfile.TemporaryDirectory(prefix="fastv-edge-patch-check-") as tmp:
        apply_patches(extract_sdist(ensure_sdist(), Path(tmp)), patches)
    log(f"{len(patches)} patch(es) apply cleanly to llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}")


# ---------------------------------------------------------------- toolchain


def _cmake_version(cmake: str) -> tuple[int, ...]:
    out = _run([cmake, "--version"]).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else (0, 0)


def check_toolchain() -> None:
    """Fail early, naming the fix, when CMake >= 3.21 or a C/C++17 compiler is missing."""
    fix = (
        "apt-get install cmake g++ (Debian/Ubuntu), xcode-select --install and "
        "brew install cmake (macOS), or the Visual Studio C++ tools (Windows)"
    )
    cmake = shutil.which("cmake")
    if cmake is None:
        raise NativeBuildError(f"cmake not found on PATH; install CMake >= 3.21: {fix}")
    version = _cmake_version(cmake)
    if version < MIN_CMAKE:
        raise NativeBuildError(
            f"{cmake} is CMake {'.'.join(map(str, version))}; need >= 3.21: {fix}, or pip install 'cmake>=3.21'"
        )
    if platform.system() == "Windows":
        return  # MSVC is found by CMake through the Visual Studio installer, not PATH
    cxx = os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    cc = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cxx is None or cc is None:
        raise NativeBuildError(f"no C/C++ compiler found on PATH: {fix}")
    probe = "#include <optional>\nint main() { std::optional<int> x{1}; return *x - 1; }\n"
    proc = _run([*cxx.split(), "-std=c++17", "-fsyntax-only", "-x", "c++", "-"], input=probe)
    if proc.returncode != 0:
        raise NativeBuildError(f"{cxx} cannot compile C++17 ({proc.stderr.strip()[:300]}): {fix}")


# ---------------------------------------------------------------- build and install


def _stream_build(cmd: list[str], env: dict, log_path: Path, verbose: bool) -> int:
    """Run the wheel build, keep its full output in log_path, echo progress now and then."""
    progress = re.compile(r"^\s*(\[\s*\d+%\]|\[\d+/\d+\])")
    last = 0.0
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        for line in proc.stdout:
            logf.write(line)
            now = time.monotonic()
            if verbose or "fastv-edge:" in line:
                print(line, end="", flush=True)
            elif (m := progress.match(line)) and now - last > 15:
                source = re.search(r" -c (\S+)", line)
                what = Path(source.group(1)).name if source else line[m.end() :].strip()[:80]
                print(f"  {m.group(1)} {what}", flush=True)
                last = now
        return proc.wait()


def _tail(path: Path, n: int = 60) -> str:
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-n:])


@contextlib.contextmanager
def _build_lock():
    """One build at a time per cache (say `make setup` and a test run started together)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "build.lock", "w") as f:
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            yield
            return
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log("waiting for another build in this cache to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def build_wheel(key: str, components: dict, force: bool = False, verbose: bool = False) -> Path:
    """The cached wheel for key, built from the patched sdist when absent (or force)."""
    wheel_dir = cache_dir() / "wheels" / key
    cached = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
    if cached and not force:
        log(f"cache hit: {cached[0]}")
        return cached[0]
    with _build_lock():
        cached = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
        if cached and not force:  # built by the process we waited for
            log(f"cache hit: {cached[0]}")
            return cached[0]
        return _build_wheel_locked(key, components, verbose)


def _build_wheel_locked(key: str, components: dict, verbose: bool) -> Path:
    wheel_dir = cache_dir() / "wheels" / key
    check_toolchain()
    tarball = ensure_sdist()
    work = cache_dir() / "build" / key
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.monotonic()
    src = extract_sdist(tarball, work)
    patches = patch_files()
    apply_patches(src, patches)
    log(f"source ready in {time.monotonic() - t0:.1f}s ({len(patches)} patch(es))")

    request = {**components, "build_key": key, "patches": [p.name for p in patches]}
    request_path = work / "build-request.json"
    request_path.write_text(json.dumps(request, indent=2))
    defines = {
        "FASTV_EDGE_LLAMA_CPP_PYTHON_DIR": src,
        "FASTV_EDGE_BUILD_REQUEST": request_path,
        "FASTV_EDGE_CCACHE_BASEDIR": work,
    }
    if components["x86_flags"] is not None:
        defines["FASTV_EDGE_X86_FLAGS"] = ";".join(components["x86_flags"]) or "none"
    dist = work / "dist"
    settings = {
        "cmake.source-dir": source_dir(),  # our CMakeLists.txt is the top level of the build
        "build-dir": work / "cmake-build",
        "cmake.build-type": "Release",
        **{f"cmake.define.{k}": v for k, v in defines.items()},
    }
    cmd = [*PIP, "wheel", "--no-deps", "-v", "--wheel-dir", str(dist)]
    cmd += [f"--config-settings={k}={v}" for k, v in settings.items()]
    cmd.append(str(src))
    env = _pip_env()
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    log_path = work / "build.log"
    log(
        f"building llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (key {key}, "
        f"x86 flags {components['x86_flags']}, ccache {'on' if shutil.which('ccache') else 'off'})"
        f"; full log: {log_path}"
    )
    t1 = time.monotonic()
    if _stream_build(cmd, env, log_path, verbose) != 0:
        raise NativeBuildError(
            f"building the patched llama-cpp-python failed; last lines of {log_path}:\n{_tail(log_path)}"
        )
    log(f"wheel built in {time.monotonic() - t1:.1f}s")
    built = sorted(dist.glob("llama_cpp_python-*.whl"))
    if not built:
        raise NativeBuildError(f"pip wheel succeeded but left no wheel in {dist}; see {log_path}")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    target = wheel_dir / built[0].name
    shutil.move(str(built[0]), target)
    shutil.copy(log_path, wheel_dir / "build.log")
    shutil.rmtree(work, ignore_errors=True)  # ccache, not this tree, makes rebuilds fast
    _prune_wheels(keep=wheel_dir)
    return target


def _prune_wheels(keep: Path) -> None:
    dirs = sorted(
        (d for d in (cache_dir() / "wheels").iterdir() if d.is_dir()),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    for d in dirs[N_KEPT_WHEELS:]:
        if d != keep:
            shutil.rmtree(d, ignore_errors=True)


def installed_stamp() -> dict | None:
    """The build stamp of the llama_cpp this interpreter would import, without loading it."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.origin:
        return None
    stamp = Path(spec.origin).parent / "lib" / STAMP_NAME
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None


def install(force: bool = False, verbose: bool = False) -> None:
    t0 = time.monotonic()
    components = current_components()
    key = cache_key(components)
    stamp = installed_stamp()
    if stamp and stamp.get("build_key") == key and not force:
        log(f"patched llama-cpp-python already installed (key {key}); nothing to do [{time.monotonic() - t0:.1f}s]")
        return
    wheel = build_wheel(key, components, force=force, verbose=verbose)
    t1 = time.monotonic()
    # --force-reinstall replaces a stock llama-cpp-python of the same version; the second
    # call only adds the wheel's own dependencies (numpy, jinja2, diskcache, ...).
    for extra in (["--force-reinstall", "--no-deps"], []):
        proc = _run([*PIP, "install", *extra, str(wheel)])
        if proc.returncode != 0:
            raise NativeBuildError(f"pip install {wheel.name} failed:\n{proc.stderr[-3000:]}")
    stamp = installed_stamp()
    if not stamp or stamp.get("build_key") != key:
        raise NativeBuildError(
            "installed the patched wheel, but `import llama_cpp` here resolves to another copy "
            "(check PYTHONPATH and LLAMA_CPP_LIB_PATH)"
        )
    log(f"installed {wheel.name} in {time.monotonic() - t1:.1f}s [total {time.monotonic() - t0:.1f}s]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="install", choices=["install", "build", "patch-check", "key"])
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache has a wheel for this key")
    parser.add_argument("--verbose", action="store_true", help="echo the whole build output")
    args = parser.parse_args(argv)
    force = args.force or os.environ.get("FASTV_EDGE_REBUILD") == "1"
    try:
        if args.command == "install":
            install(force=force, verbose=args.verbose)
        elif args.command == "build":
            components = current_components()
            print(build_wheel(cache_key(components), components, force, args.verbose))
        elif args.command == "patch-check":
            patch_check()
        else:
            components = current_components()
            print(json.dumps({"key": cache_key(components), **components}, indent=2))
    except NativeBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
