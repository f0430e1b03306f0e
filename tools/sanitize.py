"""The patched llama.cpp under AddressSanitizer + UndefinedBehaviorSanitizer.

    python -m tools.sanitize            # build (cached), then run the native tests under it (cached result)
    python -m tools.sanitize build      # only build; prints the library directory
    python -m tools.sanitize run [--rerun] [-- PYTEST ARGS]

The library is built from our CMakeLists.txt with plain CMake (no wheel), with
-fsanitize=address,undefined at -O1 -g and assert() left on, and cached under
$FASTV_EDGE_CACHE/sanitize/<key>/lib. The tests then run in this interpreter's environment with
the sanitized libllama, libmtmd and libggml* picked up through LLAMA_CPP_LIB_PATH and MTMD_CPP_LIB
and the ASan runtime preloaded (Python itself is not instrumented). Every report is written to a
log file and fails the run. A passing run is remembered under a key over the library, the test
selection and every Python file of the package and the tests, so an unchanged tree costs seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastv_edge import native_build as nb
from tools import native_variants as nv

SANITIZE = "-fsanitize=address,undefined"
COMPILE_FLAGS = f"{SANITIZE} -fno-omit-frame-pointer"
# -g1: line tables, enough for file:line in reports (-g doubles the compile time); no -DNDEBUG: assert()s stay on
OPT_FLAGS = "-O1 -g1"
# The native exactness, misuse and chat tests, a slice of the qwen2vl/gemma3 exactness tests
# (patches 0004 and 0005), and the check that the sanitized copy is the one loaded.
TESTS = (
    "tests/test_sanitize.py",
    "tests/test_fastv_exact.py",
    "tests/test_fastv_misuse.py",
    "tests/test_chat.py",
    "tests/test_fastv_archs.py::test_drop_ratio_zero_is_stock[qwen2vl-2]",
    "tests/test_fastv_archs.py::test_drop_ratio_zero_is_stock[gemma3-2]",
    "tests/test_fastv_archs.py::test_fastv_matches_reference[qwen2vl-2-0.5]",
    "tests/test_fastv_archs.py::test_fastv_matches_reference[gemma3-2-0.5]",
    "tests/test_fastv_archs.py::test_chunking_invariance[gemma3]",  # the non-causal image block split
)
DESELECT = (
    # This build keeps assert() on (no -DNDEBUG), where upstream's llama_context::get_logits_ith()
    # aborts on an invalid row instead of returning NULL (src/llama-context.cpp:958-963 of the pinned
    # llama.cpp); these two tests ask for logits that do not exist on purpose and expect NULL.
    "tests/test_fastv_misuse.py::test_no_logits_during_shallow_stage",
    "tests/test_fastv_archs.py::test_gemma3_window_overwritten_before_finish",
    # SmolLM2-135M Q4_1 with a 576-row image: 150 s under ASan for the same patch code the tiny
    # models run; what it adds is upstream's quantized kernels.
    "tests/test_fastv_exact.py::test_smollm2_pseudo_image",
)
TIMEOUT = 1800  # seconds; a hang (say, a deadlock in an abort handler) fails the run instead of CI
# CPython's interned objects are never freed, so no leak check in Python; the C driver run has one.
ASAN_OPTIONS = "detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1"
UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1"
LIBS = ("libllama.so", "libmtmd.so", "libggml.so", "libggml-base.so", "libggml-cpu.so")


def _compilers() -> tuple[str, str]:
    return os.environ.get("CC", "cc"), os.environ.get("CXX", "c++")


def _defines(x86_flags: list[str] | None) -> dict:
    """CMake options of the sanitized build that do not depend on paths (they are part of the key)."""
    cc, cxx = _compilers()
    defines = {
        "CMAKE_C_COMPILER": cc,
        "CMAKE_CXX_COMPILER": cxx,
        "CMAKE_BUILD_TYPE": "RelWithDebInfo",
        "CMAKE_C_FLAGS": COMPILE_FLAGS,
        "CMAKE_CXX_FLAGS": COMPILE_FLAGS,
        "CMAKE_C_FLAGS_RELWITHDEBINFO": OPT_FLAGS,
        "CMAKE_CXX_FLAGS_RELWITHDEBINFO": OPT_FLAGS,
        "CMAKE_SHARED_LINKER_FLAGS": SANITIZE,
        "CMAKE_EXE_LINKER_FLAGS": SANITIZE,
    }
    if x86_flags is not None:
        defines["FASTV_EDGE_X86_FLAGS"] = ";".join(x86_flags) or "none"
    return defines


def lib_key() -> tuple[str, dict]:
    """Cache key of the sanitized library: patches, sdist, CMake recipe, compilers and flags."""
    defines = _defines(nb.build_x86_flags())
    recipe = [nv.REPO_ROOT / "CMakeLists.txt", nv.TOOLS_DIR / "native_variants.py"]
    return nv.variant_key("sanitize", recipe, list(_compilers()), {"defines": defines})


def _runtime(compiler: str, name: str) -> Path:
    out = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    path = Path(out)
    if not path.is_absolute() or not path.exists():
        raise nv.NativeBuildError(f"{compiler} has no {name} (got {out!r}): apt-get install gcc g++ libasan8")
    return path.resolve()


def preload() -> str:
    """LD_PRELOAD for an uninstrumented Python: the ASan runtime first, then libstdc++.

    Python does not link libstdc++, so without it ASan's __cxa_throw interceptor finds no real
    __cxa_throw at start-up and aborts ("CHECK failed: asan_interceptors.cpp") on the first C++
    exception, even one llama.cpp catches itself.
    """
    cc, cxx = _compilers()
    return f"{_runtime(cc, 'libasan.so')}:{_runtime(cxx, 'libstdc++.so')}"


def build() -> Path:
    """The sanitized library directory for the current key, built when absent."""
    key, components = lib_key()
    hit = nv.cached("sanitize", key)
    if hit:
        nv.log(f"sanitized llama.cpp cache hit: {hit}")
        return hit / "lib"
    with nv.variant_lock("sanitize"):
        hit = nv.cached("sanitize", key)
        if hit:
            return hit / "lib"
        nb.check_toolchain()
        preload()  # fail before a long build when a runtime is missing
        t0 = time.monotonic()
        with nv.new_cache_entry("sanitize", key, components) as (work, out):
            src = nv.patched_source(work)
            request = work / "build-request.json"
            request.write_text(json.dumps({**components, "build_key": key}, indent=2))
            prefix = work / "prefix"
            defines = {
                **components["settings"]["defines"],
                "FASTV_EDGE_LLAMA_CPP_PYTHON_DIR": src,
                "FASTV_EDGE_BUILD_REQUEST": request,
                "FASTV_EDGE_CCACHE_BASEDIR": work,
                "CMAKE_INSTALL_PREFIX": prefix,
                "SKBUILD_PLATLIB_DIR": prefix,  # llama-cpp-python installs into <this>/llama_cpp/lib
            }
            nv.log(f"building the sanitized llama.cpp (key {key}); logs in {work}")
            nv.cmake_build(nv.REPO_ROOT, work / "cmake-build", defines, nv.build_env(work), work, install=True)
            shutil.copytree(prefix / "llama_cpp" / "lib", out / "lib", symlinks=True)
        nv.log(f"sanitized llama.cpp built in {time.monotonic() - t0:.0f}s")
        return nv.cached("sanitize", key) / "lib"


def sanitizer_env(lib_dir: Path, report_dir: Path, base: dict | None = None) -> dict:
    """Environment that runs Python on the sanitized library, reports going to report_dir.

    Args:
        lib_dir: directory with the sanitized libllama.so, libmtmd.so and libggml*.so.
        report_dir: ASan and UBSan write one file per process there (asan.PID, ubsan.PID).
        base: environment to extend (os.environ when None).
    """
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = preload()
    env["ASAN_OPTIONS"] = f"{ASAN_OPTIONS}:log_path={report_dir / 'asan'}"
    env["UBSAN_OPTIONS"] = f"{UBSAN_OPTIONS}:log_path={report_dir / 'ubsan'}"
    env["LLAMA_CPP_LIB_PATH"] = str(lib_dir)
    env["MTMD_CPP_LIB"] = str(lib_dir)
    env["GGML_NO_BACKTRACE"] = "1"  # ggml_abort() would attach gdb, which inherits LD_PRELOAD and hangs
    env["FASTV_EDGE_SANITIZED_LIB"] = str(lib_dir)  # tests/test_sanitize.py checks it is what got loaded
    return env


def run_c_driver(lib_dir: Path, report_dir: Path, work: Path) -> dict:
    """tests/native/fastv_driver.c on the sanitized library, with LeakSanitizer on.

    Python cannot check leaks (CPython keeps objects until exit); the driver frees everything
    it made, so a leak reported here is the library's. Returns the driver's JSON summary.
    """
    from tools import arm_check

    env = sanitizer_env(lib_dir, report_dir)
    env["ASAN_OPTIONS"] = env["ASAN_OPTIONS"].replace("detect_leaks=0", "detect_leaks=1")
    env["LD_LIBRARY_PATH"] = str(lib_dir)
    model, image = arm_check.make_inputs(work / "inputs")
    return arm_check.run_driver([], arm_check.build_host_driver(), model, image, work / "driver-out", env)


def read_reports(report_dir: Path) -> list[str]:
    """Every sanitizer report written to report_dir, one string per file."""
    return [p.read_text(errors="replace") for p in sorted(report_dir.glob("*san.*")) if p.stat().st_size]


def _run_key(lib: str, pytest_args: list[str]) -> str:
    files = [*(nv.REPO_ROOT / "fastv_edge").rglob("*.py"), *(nv.REPO_ROOT / "tests").rglob("*.py"), Path(__file__)]
    files += [nv.TOOLS_DIR / "arm_check.py", nv.REPO_ROOT / "tests" / "native" / "fastv_driver.c"]  # the C driver run
    extra = {"lib": lib, "tests": TESTS, "deselect": DESELECT, "args": pytest_args, "python": sys.version}
    return nv.files_key(files, extra)


def run(pytest_args: list[str], rerun: bool = False) -> int:
    """Run TESTS under the sanitizers; 0 when pytest passes and no report was written."""
    lib_dir = build()
    key = _run_key(lib_key()[0], pytest_args)
    record = nb.cache_dir() / "sanitize-runs" / f"{key}.json"
    if record.exists() and not rerun:
        done = json.loads(record.read_text())
        nv.log(f"sanitize: PASS (cached, run {key} took {done['seconds']}s: {done['summary']}); --rerun to run again")
        return 0
    with tempfile.TemporaryDirectory(prefix="fastv-edge-sanitize-") as tmp:
        report_dir = Path(tmp)
        deselect = [f"--deselect={t}" for t in DESELECT]
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, *deselect, *pytest_args]
        nv.log(f"sanitize: {' '.join(cmd[1:])} (ASan+UBSan, {lib_dir})")
        t0 = time.monotonic()
        env = sanitizer_env(lib_dir, report_dir, {**os.environ, "FASTV_EDGE_REQUIRE_NATIVE": "1"})
        try:
            proc = subprocess.run(cmd, cwd=nv.REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise nv.NativeBuildError(f"the sanitized tests did not finish in {TIMEOUT}s (killed)") from e
        try:
            driver = run_c_driver(lib_dir, report_dir, Path(tmp))
            nv.log(f"sanitize: C driver ran stock + FastV in {driver['seconds']}s with leak detection")
        except nv.NativeBuildError as e:  # an abort: the report, if any, is read below
            print(e, file=sys.stderr)
            driver = None
        seconds = round(time.monotonic() - t0, 1)
        reports = read_reports(report_dir)
    print(proc.stdout[-6000:], proc.stderr[-3000:], sep="", end="")
    for text in reports:
        print(text, file=sys.stderr)
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1] if lines else "no output"
    if proc.returncode != 0 or reports or driver is None:
        nv.log(f"sanitize: FAIL in {seconds}s (pytest exit {proc.returncode}, {len(reports)} sanitizer report(s))")
        return 1
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"seconds": seconds, "summary": summary, "lib_dir": str(lib_dir)}) + "\n")
    nv.log(f"sanitize: PASS in {seconds}s, no sanitizer reports ({summary})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "build", "key"])
    parser.add_argument("--rerun", action="store_true", help="run the tests even if this tree passed before")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build())
            return 0
        if args.command == "key":
            key, components = lib_key()
            print(json.dumps({"key": key, **components}, indent=2))
            return 0
        return run(args.pytest_args, rerun=args.rerun or os.environ.get("FASTV_EDGE_RERUN") == "1")
    except nv.NativeBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
