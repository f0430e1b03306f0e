"""What native library fastv_edge runs on: version, build flags, and the FastV patch.

    python -m fastv_edge.native_info          # human-readable
    python -m fastv_edge.native_info --json   # for scripts

Never raises for a missing or stock library: it reports what it found, so it is the first
thing to run when something native looks wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .native_build import LLAMA_CPP_PYTHON_VERSION, STAMP_NAME, install_command

# The one list of the patch's symbols; _native binds them (it cannot load without libllama).
FASTV_SYMBOLS = (
    "llama_fastv_begin",
    "llama_fastv_finish",
    "llama_fastv_finish_with_keep",
    "llama_fastv_abort",
    "llama_fastv_get_scores",
    "llama_fastv_get_kept",
    "llama_fastv_hide",
    "llama_fastv_n_hidden",
)


def _read_stamp(lib_dir: Path) -> dict | None:
    try:
        return json.loads((lib_dir / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def native_info() -> dict:
    """Describe the llama.cpp library that llama-cpp-python loads in this process.

    Returns:
        A dict with: pinned_version, llama_cpp_python_version, lib_path, build (the build
        stamp written by CMakeLists.txt, or None for a build not made by native_build.py),
        build_flags (GGML_* options of that build), system_info (llama_print_system_info),
        fastv_symbols (name -> present), has_fastv (all present) and error (why llama_cpp
        could not be loaded, else None).
    """
    info: dict = {
        "pinned_version": LLAMA_CPP_PYTHON_VERSION,
        "llama_cpp_python_version": None,
        "lib_path": None,
        "build": None,
        "build_flags": [],
        "system_info": None,
        "fastv_symbols": dict.fromkeys(FASTV_SYMBOLS, False),
        "has_fastv": False,
        "error": None,
    }
    try:
        import llama_cpp
    except Exception as e:  # ImportError, or OSError from a libllama that fails to load
        info["error"] = f"cannot import llama_cpp ({e}); build and install the patched copy: {install_command()}"
        return info
    lib = llama_cpp.llama_cpp._lib
    info["llama_cpp_python_version"] = llama_cpp.__version__
    info["lib_path"] = str(lib._name)
    stamp = _read_stamp(Path(lib._name).parent)
    info["build"] = stamp
    if stamp:
        info["build_flags"] = [f"{k}={v}" for k, v in sorted(stamp.get("ggml_options", {}).items())]
    info["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    info["fastv_symbols"] = {name: hasattr(lib, name) for name in FASTV_SYMBOLS}
    info["has_fastv"] = all(info["fastv_symbols"].values())
    return info


def _format(info: dict) -> str:
    build = info["build"] or {}
    lines = [
        f"llama-cpp-python: {info['llama_cpp_python_version'] or 'not loaded'} (pinned {info['pinned_version']})",
        f"library:          {info['lib_path'] or '-'}",
        f"build key:        {build.get('build_key', '- (not built by native_build.py)')}",
        f"patches:          {', '.join(build.get('patches', [])) or '-'}",
        f"build flags:      {' '.join(info['build_flags']) or '-'}",
        f"system info:      {info['system_info'] or '-'}",
        f"FastV patch:      {'present' if info['has_fastv'] else 'MISSING'}",
    ]
    missing = [n for n, ok in info["fastv_symbols"].items() if not ok]
    if missing and info["lib_path"]:
        lines.append(f"missing symbols:  {', '.join(missing)}")
    if info["error"]:
        lines.append(f"error:            {info['error']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Report the native llama.cpp build in use.")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    info = native_info()
    print(json.dumps(info, indent=2) if args.json else _format(info))
    return 1 if info["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
