"""The native build pipeline: cache key, x86 flag choice, patches, and the installed library."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastv_edge import native_build as nb
from fastv_edge.native_info import FASTV_SYMBOLS, native_info
from fastv_edge.native_info import main as native_info_main

REPO_ROOT = Path(__file__).resolve().parent.parent

# /proc/cpuinfo of a Sapphire Rapids-like x86 CPU (reports AMX) and of a Raspberry Pi 5.
XEON_AMX = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\n"
    "flags\t\t: fpu sse2 sse4_2 avx avx2 fma f16c bmi2 avx512f avx512cd avx512vl avx512dq "
    "avx512bw avx512_vnni avx512_bf16 avx512vbmi avx_vnni amx_bf16 amx_tile amx_int8\n"
)
RASPBERRY_PI_5 = (
    "processor\t: 0\nBogoMIPS\t: 108.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimddp\n"
    "CPU implementer\t: 0x41\n"
)
ALL_BUT_AMX = [
    "SSE42",
    "AVX",
    "AVX2",
    "FMA",
    "F16C",
    "BMI2",
    "AVX_VNNI",
    "AVX512",
    "AVX512_VNNI",
    "AVX512_BF16",
]


@pytest.fixture(autouse=True)
def _no_flag_override(monkeypatch):
    monkeypatch.delenv("FASTV_EDGE_X86_FLAGS", raising=False)


@pytest.fixture
def inputs(tmp_path):
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "0001-first.patch").write_text("diff --git a/x b/x\n")
    cmakelists = tmp_path / "CMakeLists.txt"
    cmakelists.write_text("project(x)\n")
    return patches, cmakelists


def _key(patches: Path, cmakelists: Path, flags=("AVX", "AVX2"), cmake_args: str = "") -> str:
    flags = None if flags is None else list(flags)
    return nb.cache_key(nb.key_components(nb.patch_files(patches), cmakelists, flags, cmake_args))


def test_cache_key_depends_on_content_not_location(inputs, tmp_path):
    """A wheel's copies of the patches and CMakeLists.txt must give a clone's key."""
    patches, cmakelists = inputs
    elsewhere = tmp_path / "site-packages" / "fastv_edge" / "native_src"
    shutil.copytree(patches, elsewhere / "patches")
    shutil.copyfile(cmakelists, elsewhere / "CMakeLists.txt")
    assert _key(elsewhere / "patches", elsewhere / "CMakeLists.txt") == _key(*inputs)
    assert len(_key(*inputs)) == 16


@pytest.mark.parametrize(
    "change",
    [
        lambda p, c: (p / "0001-first.patch").write_text("diff --git a/y b/y\n"),  # patch edited
        lambda p, c: (p / "0002-second.patch").write_text("diff\n"),  # patch added
        lambda p, c: (p / "0001-first.patch").rename(p / "0003-first.patch"),  # patch renamed
        lambda p, c: c.write_text("project(y)\n"),  # CMakeLists edited
    ],
)
def test_cache_key_changes_with_inputs(inputs, change):
    before = _key(*inputs)
    change(*inputs)
    assert _key(*inputs) != before


@pytest.mark.parametrize(
    "flags, cmake_args",
    [
        (("AVX",), ""),  # fewer x86 flags
        (("AVX", "AVX2", "AVX512"), ""),  # more x86 flags
        (None, ""),  # ARM / macOS: llama.cpp defaults
        ((), ""),  # x86 with no extensions differs from defaults
        (("AVX", "AVX2"), "-DGGML_VULKAN=ON"),  # extra CMAKE_ARGS
    ],
)
def test_cache_key_changes_with_flags(inputs, flags, cmake_args):
    assert _key(*inputs, flags=flags, cmake_args=cmake_args) != _key(*inputs)


def test_cache_key_ignores_patches_that_are_not_patch_files(inputs):
    before = _key(*inputs)
    (inputs[0] / "README.md").write_text("docs\n")
    assert _key(*inputs) == before


@pytest.mark.parametrize(
    "system, machine, cpuinfo, expected",
    [
        ("Linux", "x86_64", XEON_AMX, ALL_BUT_AMX),  # AMX reported, never selected
        (
            "Linux",
            "x86_64",
            "flags : sse4_2 avx avx2 fma f16c bmi2\n",
            ["SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2"],
        ),  # AVX2 desktop
        (
            "Linux",
            "x86_64",
            "flags : avx avx2 avx512f avx512_vnni\n",
            ["AVX", "AVX2"],
        ),  # AVX512 needs f+cd+vl+dq+bw; VNNI needs AVX512
        ("Linux", "x86_64", "flags : avx_vnni\n", []),  # AVX-VNNI needs AVX2
        ("Linux", "x86_64", "flags : fpu sse2\n", []),  # old CPU: no extensions
        ("Windows", "AMD64", XEON_AMX, ALL_BUT_AMX),  # Windows spells x86_64 AMD64
        ("Linux", "aarch64", RASPBERRY_PI_5, None),  # Raspberry Pi: llama.cpp's -mcpu=native
        ("Darwin", "x86_64", XEON_AMX, None),  # Intel Mac: llama-cpp-python's own settings
        ("Darwin", "arm64", "", None),  # Apple Silicon: Metal path untouched
    ],
)
def test_x86_flag_selection(system, machine, cpuinfo, expected):
    assert nb.build_x86_flags(system, machine, cpuinfo) == expected


def test_amx_is_never_selected():
    every_flag = {f for _, needs in nb.X86_FLAG_RULES for f in needs} | {"amx_tile", "amx_int8"}
    chosen = nb.select_x86_flags(every_flag)
    assert chosen and not [f for f in chosen if "AMX" in f]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("avx,avx2", ["AVX", "AVX2"]),  # case and commas are forgiven
        ("AVX;FMA F16C", ["AVX", "FMA", "F16C"]),  # ; and spaces too
        ("native", ["native"]),  # -march=native on request (AMX risk is the user's)
        ("NONE", ["none"]),  # generic x86-64
    ],
)
def test_x86_flag_override(monkeypatch, override, expected):
    monkeypatch.setenv("FASTV_EDGE_X86_FLAGS", override)
    assert nb.build_x86_flags("Linux", "x86_64", XEON_AMX) == expected


def test_x86_flag_override_rejects_unknown(monkeypatch):
    monkeypatch.setenv("FASTV_EDGE_X86_FLAGS", "AVX,AMX_INT8")
    with pytest.raises(nb.NativeBuildError, match="AMX_INT8"):
        nb.build_x86_flags("Linux", "x86_64", XEON_AMX)


def test_build_script_runs_with_stdlib_only():
    # -S: no site-packages, as on a machine where nothing is installed yet.
    proc = subprocess.run(
        [sys.executable, "-S", str(REPO_ROOT / "fastv_edge" / "native_build.py"), "key"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout)["key"] == nb.cache_key(nb.current_components())


def test_a_wheel_layout_builds_with_the_same_key(tmp_path):
    """An installed package carries patches/ and CMakeLists.txt in fastv_edge/native_src (setup.py)."""
    package = tmp_path / "site-packages" / "fastv_edge"
    (package / "native_src").mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "fastv_edge" / "native_build.py", package / "native_build.py")
    shutil.copytree(REPO_ROOT / "patches", package / "native_src" / "patches")
    shutil.copyfile(REPO_ROOT / "CMakeLists.txt", package / "native_src" / "CMakeLists.txt")
    proc = subprocess.run(
        [sys.executable, "-S", str(package / "native_build.py"), "key"], capture_output=True, text=True, check=True
    )
    assert json.loads(proc.stdout)["key"] == nb.cache_key(nb.current_components())
    shutil.rmtree(package / "native_src")
    proc = subprocess.run(
        [sys.executable, "-S", str(package / "native_build.py"), "key"], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "no patches/ and CMakeLists.txt in" in proc.stderr


def test_install_command_runs_this_interpreter(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: sys.executable)  # an activated environment
    assert nb.install_command() == "python -m fastv_edge.native_build install"
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no `python` on PATH, or another one
    assert nb.install_command() == f"{shlex.quote(sys.executable)} -m fastv_edge.native_build install"


def test_patches_apply_to_pinned_source(tmp_path):
    tarball = nb.cached_sdist()
    if tarball is None:
        pytest.skip(f"pinned sdist not in the cache yet; {nb.install_command()}")
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    patches = nb.patch_files()
    nb.apply_patches(nb.extract_sdist(tarball, tmp_path), patches)  # raises naming the patch


def test_native_info_reports_a_missing_library(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    info = native_info()
    assert info["error"].endswith(nb.install_command())
    assert info["pinned_version"] == nb.LLAMA_CPP_PYTHON_VERSION
    assert not info["has_fastv"] and info["lib_path"] is None
    assert native_info_main([]) == 1
    assert "FastV patch:      MISSING" in capsys.readouterr().out


# ---------------------------------------------------------------- the installed library


@pytest.fixture(scope="module")
def info():
    try:
        import llama_cpp  # noqa: F401
    except Exception as e:
        msg = f"llama_cpp not importable ({e}); run: {nb.install_command()}"
        if os.environ.get("FASTV_EDGE_REQUIRE_NATIVE") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return native_info()


@pytest.fixture
def built_info(info):
    if os.environ.get("LLAMA_CPP_LIB_PATH"):
        pytest.skip("LLAMA_CPP_LIB_PATH overrides the installed library; no build stamp to check")
    assert info["build"], (
        f"{info['lib_path']} was not built by native_build.py (no build stamp); run: {nb.install_command()}"
    )
    return info


@pytest.mark.native
def test_loaded_library_exports_fastv_symbols(info):
    missing = [name for name in FASTV_SYMBOLS if not info["fastv_symbols"][name]]
    assert not missing, (
        f"{info['lib_path']} lacks {missing}: patches/ has no FastV patch yet, or the installed "
        f"wheel is stale; run: {nb.install_command()}"
    )
    assert info["has_fastv"]


@pytest.mark.native
def test_native_info_reports_pin_and_flags(built_info):
    assert built_info["llama_cpp_python_version"] == nb.LLAMA_CPP_PYTHON_VERSION
    assert built_info["pinned_version"] == nb.LLAMA_CPP_PYTHON_VERSION
    options = built_info["build"]["ggml_options"]
    assert built_info["build_flags"]
    assert built_info["system_info"]
    if platform.machine().lower() in nb.X86_MACHINES and platform.system() != "Darwin":
        assert options["GGML_NATIVE"] == "OFF"
        assert all(options[f"GGML_AMX_{k}"] == "OFF" for k in ("TILE", "INT8", "BF16"))
        assert "AMX_INT8 = 1" not in built_info["system_info"]


@pytest.mark.native
def test_installed_build_matches_checkout(built_info):
    expected = nb.cache_key(nb.current_components())
    assert built_info["build"]["build_key"] == expected, (
        "the installed llama-cpp-python was built from other patches, CMakeLists.txt or flags; "
        f"run: {nb.install_command()}"
    )
