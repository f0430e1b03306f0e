"""The patched llama.cpp on aarch64: cross-compiled, run under qemu, compared with x86.

    python -m tools.arm_check          # toolchain (apt-get if missing), build, qemu run, then the tests
    python -m tools.arm_check build    # only the aarch64 driver; prints its path
    python -m tools.arm_check key      # the build key and what it is made of

tests/native/fastv_driver.c (C API only) is built twice: for aarch64, statically linked against
the patched llama.cpp (ggml CPU + llama) cross-compiled with Debian's aarch64-linux-gnu toolchain
for ARM_ARCH, and for the host against the installed wheel's libllama. Both decode the same tiny
GGUF and pseudo image (stock, FastV R=0, FastV R=0.5); tests/test_arm_check.py compares them.
The aarch64 build and its qemu outputs are cached by content hash, so only a change to the
patches, the driver, the recipe or the inputs runs qemu again.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fastv_edge import native_build as nb
from tools import native_variants as nv

# Raspberry Pi 5 (Cortex-A76): ARMv8.2-A with the dot-product and half-precision vector extensions
# ggml's ARM kernels use. qemu emulates exactly that CPU (-cpu cortex-a76), so an instruction a Pi 5
# lacks (SVE, i8mm) faults instead of passing unnoticed under qemu's default "max" CPU.
ARM_ARCH = "armv8.2-a+dotprod+fp16"
QEMU_CPU = "cortex-a76"
SYSROOT = "/usr/aarch64-linux-gnu"
APT_PACKAGES = ["gcc-aarch64-linux-gnu", "g++-aarch64-linux-gnu", "qemu-user"]
CROSS = ["aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++"]
TOOLCHAIN = nv.TOOLS_DIR / "aarch64-linux-gnu.cmake"
DRIVER_DIR = nv.REPO_ROOT / "tests" / "native"
DRIVER_SRC = DRIVER_DIR / "fastv_driver.c"
HOST_CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"]

# what the driver decodes: the tiny test llama, a pseudo image of N_IMG rows, FastV at layer K
K = 2
RATIOS = ("0", "0.5")
N_IMG = 40
IMAGE_SEED = 9  # its top-20 cut has a score margin of 2e-3: no rounding can flip the selection
RUNS = ("stock", "fastv-0", "fastv-1")  # the driver's output names: stock, then one per ratio


def arm_key() -> tuple[str, dict]:
    """Cache key of the aarch64 driver: patches, sdist, driver, CMake recipe, cross compilers, flags."""
    recipe = [TOOLCHAIN, DRIVER_DIR / "CMakeLists.txt", DRIVER_SRC, nv.TOOLS_DIR / "native_variants.py"]
    return nv.variant_key("arm", recipe, CROSS, {"GGML_CPU_ARM_ARCH": ARM_ARCH, "build_type": "Release"})


def build_arm() -> Path:
    """The statically linked aarch64 fastv_driver for the current key, built when absent."""
    nv.apt_install(APT_PACKAGES, [*CROSS, "qemu-aarch64"])
    key, components = arm_key()
    hit = nv.cached("arm", key)
    if hit is None:
        with nv.variant_lock("arm"):
            if nv.cached("arm", key) is None:
                _build_arm_locked(key, components)
        hit = nv.cached("arm", key)
    return hit / "fastv_driver"


def _build_arm_locked(key: str, components: dict) -> None:
    t0 = time.monotonic()
    with nv.new_cache_entry("arm", key, components) as (work, out):
        src = nv.patched_source(work) / "vendor" / "llama.cpp"
        defines = {
            "CMAKE_TOOLCHAIN_FILE": TOOLCHAIN,
            "CMAKE_BUILD_TYPE": "Release",
            "FASTV_EDGE_LLAMA_CPP": src,
            "GGML_NATIVE": "OFF",
            "GGML_CPU_ARM_ARCH": ARM_ARCH,
        }
        nv.log(f"cross-compiling llama.cpp + fastv_driver for aarch64 ({ARM_ARCH}, key {key}); logs in {work}")
        nv.cmake_build(DRIVER_DIR, work / "cmake-build", defines, nv.build_env(work), work)
        shutil.copy2(work / "cmake-build" / "fastv_driver", out / "fastv_driver")
    nv.log(f"aarch64 build done in {time.monotonic() - t0:.0f}s")


def installed_lib_dir() -> Path:
    """llama_cpp/lib of the installed (patched) wheel, found without loading it."""
    spec = importlib.util.find_spec("llama_cpp")
    lib = Path(spec.origin).parent / "lib" if spec and spec.origin else None
    if lib is None or not (lib / "libllama.so").exists():
        raise nv.NativeBuildError("no installed llama_cpp/lib/libllama.so: run make setup")
    return lib


def build_host_driver() -> Path:
    """fastv_driver for the host, linked against the installed wheel's libllama (run with LD_LIBRARY_PATH)."""
    cc = os.environ.get("CC", "cc")
    key, components = nv.variant_key(
        "driver-host", [DRIVER_SRC, nv.TOOLS_DIR / "native_variants.py"], [cc], {"cflags": HOST_CFLAGS}
    )
    if nv.cached("driver-host", key) is None:
        lib = installed_lib_dir()
        with nv.variant_lock("driver-host"), nv.new_cache_entry("driver-host", key, components) as (work, out):
            llama = nv.patched_source(work) / "vendor" / "llama.cpp"
            includes = ["-I", llama / "include", "-I", llama / "ggml" / "include"]
            cmd = [cc, *HOST_CFLAGS, *includes, DRIVER_SRC, "-o", out / "fastv_driver"]
            cmd += ["-L", lib, f"-Wl,-rpath-link,{lib}", "-lllama"]
            nv.run_logged(cmd, work / "compile.log")
    return nv.cached("driver-host", key) / "fastv_driver"


def make_inputs(out_dir: Path) -> tuple[Path, Path]:
    """The tiny F32 test llama and a pseudo image (N_IMG rows at the token embeddings' scale).

    Returns:
        (model GGUF path, image path: N_IMG x n_embd little-endian float32).
    """
    from fastv_edge.testing.make_tiny import LOGIT_STD, make_tiny

    tiny = make_tiny(out_dir, seed=0, weight_type="f32")
    n_embd = tiny.llama.n_embd
    img = np.random.default_rng(IMAGE_SEED).standard_normal((N_IMG, n_embd)) * (LOGIT_STD * n_embd**-0.5)
    image = Path(out_dir) / f"pseudo-image-{N_IMG}x{n_embd}-s{IMAGE_SEED}.f32"
    image.write_bytes(img.astype("<f4").tobytes())  # (N_IMG, n_embd)
    return tiny.llama_path, image


def run_driver(prefix: list[str], driver: Path, model: Path, image: Path, out_dir: Path, env: dict) -> dict:
    """Run fastv_driver (under prefix, e.g. qemu) and load its outputs.

    Returns:
        The driver's JSON summary plus "logits": {run name: (1 + n_steps, n_vocab) float32 array}
        and "seconds" (wall time of the run).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [*prefix, str(driver), str(model), str(image), str(out_dir), str(K), *RATIOS]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise nv.NativeBuildError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    (out_dir / "summary.json").write_text(proc.stdout)
    return {**load_outputs(out_dir), "seconds": round(seconds, 2)}


def load_outputs(out_dir: Path) -> dict:
    """A driver run's summary.json with its logits files."""
    summary = json.loads((out_dir / "summary.json").read_text())
    rows = 1 + len(summary["steps"])
    summary["logits"] = {
        name: np.fromfile(out_dir / f"{name}.f32", dtype="<f4").reshape(rows, summary["n_vocab"]) for name in RUNS
    }
    return summary


def host_run(model: Path, image: Path, out_dir: Path) -> dict:
    """The host driver on the installed wheel's library."""
    lib = installed_lib_dir()
    env = {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":")}
    return run_driver([], build_host_driver(), model, image, out_dir, env)


def qemu_prefix() -> list[str]:
    return ["qemu-aarch64", "-cpu", QEMU_CPU, "-L", SYSROOT]


def run_key() -> tuple[str, str]:
    """(key of the qemu outputs, qemu's version): the aarch64 build, the input writers, this recipe."""
    qemu = nv.compiler_id("qemu-aarch64")
    inputs = [*(nv.REPO_ROOT / "fastv_edge" / "testing").glob("*.py"), Path(__file__)]
    return nv.files_key(inputs, {"arm": arm_key()[0], "qemu": qemu, "cpu": QEMU_CPU}), qemu


def cached_arm_outputs() -> Path | None:
    """The cached aarch64 outputs of the current tree, or None (never builds or runs anything)."""
    try:
        return nv.cached("arm-runs", run_key()[0])
    except nv.NativeBuildError:  # no cross compiler or qemu here
        return None


def arm_outputs(rerun: bool = False) -> Path:
    """Directory with the aarch64 driver's outputs for the current key, running qemu when absent."""
    driver = build_arm()
    key, qemu = run_key()
    hit = nv.cached("arm-runs", key)
    if hit and not rerun:
        return hit
    with nv.variant_lock("arm-runs"), nv.new_cache_entry("arm-runs", key, {"qemu": qemu}) as (work, out):
        model, image = make_inputs(work / "inputs")
        res = run_driver(qemu_prefix(), driver, model, image, out, dict(os.environ))
        sums = {"model_sha256": nb.file_sha256(model), "image_sha256": nb.file_sha256(image)}
        (out / "run.json").write_text(json.dumps({"qemu_seconds": res["seconds"], **sums}, indent=2) + "\n")
        nv.log(f"qemu-aarch64 -cpu {QEMU_CPU} ran the driver in {res['seconds']}s")
    return nv.cached("arm-runs", key)


def compare(arm: dict, x86: dict) -> dict:
    """The numbers the ARM check is about (see tests/test_arm_check.py for the bounds)."""
    la, lx = arm["logits"], x86["logits"]
    return {
        "arm_r0_vs_stock": float(np.abs(la["fastv-0"] - la["stock"]).max()),
        "x86_r0_vs_stock": float(np.abs(lx["fastv-0"] - lx["stock"]).max()),
        **{f"arm_vs_x86_{name}": float(np.abs(la[name] - lx[name]).max()) for name in RUNS},
        "kept_equal": arm["runs"]["fastv-1"]["kept"] == x86["runs"]["fastv-1"]["kept"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="check", choices=["check", "build", "key"])
    parser.add_argument("--rerun", action="store_true", help="run qemu even if these outputs are cached")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build_arm())
            return 0
        if args.command == "key":
            key, components = arm_key()
            print(json.dumps({"key": key, **components}, indent=2))
            return 0
        out = arm_outputs(rerun=args.rerun or os.environ.get("FASTV_EDGE_RERUN") == "1")
    except nv.NativeBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    run = json.loads((out / "run.json").read_text())
    nv.log(f"aarch64 outputs: {out} (qemu run {run['qemu_seconds']}s)")
    env = {**os.environ, "FASTV_EDGE_REQUIRE_ARM": "1", "FASTV_EDGE_REQUIRE_NATIVE": "1"}
    # the ARM comparisons; the x86 driver against the float64 reference runs with the whole suite
    tests = ["tests/test_arm_check.py", "-k", "not x86_driver", "-rA"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    return subprocess.run(cmd, cwd=nv.REPO_ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
