"""The sanitizer run (`make sanitize`, tools/sanitize.py) checks what it claims to check.

Inside the sanitized run: the process really uses the sanitized libraries. In an ordinary run:
the cached sanitized library is instrumented, and AddressSanitizer reports an out-of-bounds
write through the FastV API with its file and line, so a clean sanitized run means something.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools import sanitize

pytestmark = pytest.mark.native

SANITIZED = os.environ.get("FASTV_EDGE_SANITIZED_LIB")
TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def lib_dir():
    """The cached sanitized library of this tree; never builds (that is `make sanitize`'s job)."""
    if SANITIZED:
        pytest.skip("inside the sanitized run: the ordinary run checks the instrumentation")
    hit = sanitize.nv.cached("sanitize", sanitize.lib_key()[0])
    if hit is None:
        pytest.skip("no sanitized library for this tree: run `make sanitize`")
    return hit / "lib"


@pytest.mark.skipif(not SANITIZED, reason="only inside `make sanitize`")
def test_sanitized_libraries_are_the_ones_loaded():
    import llama_cpp  # noqa: F401
    import llama_cpp.mtmd_cpp  # noqa: F401

    maps = Path("/proc/self/maps").read_text().splitlines()
    loaded = {Path(line.split()[-1]) for line in maps if ".so" in line and "/" in line}
    assert any(p.name.startswith("libasan.so") for p in loaded)
    ours = {p for p in loaded if p.name.split(".so")[0] in {n.removesuffix(".so") for n in sanitize.LIBS}}
    assert {p.name.split(".so")[0] for p in ours} == {n.removesuffix(".so") for n in sanitize.LIBS}
    assert all(p.parent == Path(SANITIZED).resolve() for p in ours), ours


def test_sanitized_library_is_instrumented(lib_dir):
    symbols = subprocess.run(["nm", "-D", "--undefined-only", lib_dir / "libllama.so"], capture_output=True, text=True)
    assert "__asan_report_" in symbols.stdout
    assert "__ubsan_handle_" in symbols.stdout


CANARY = textwrap.dedent(
    """
    import ctypes, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from llama_driver import LlamaDriver
    from fastv_edge import _native
    from fastv_edge.testing.make_tiny import make_tiny

    tiny = make_tiny({tmp!r})
    with LlamaDriver(tiny.llama_path) as drv:
        assert _native.llama_fastv_begin(drv.ctx, 0, 2) == 0
        drv.decode_tokens(drv.tokenize("Look: "), logits_last=False)
        drv.decode_embd(np.full((16, drv.n_embd), 0.1, dtype=np.float32))
        drv.decode_tokens(drv.tokenize(" what?"))
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        small = ctypes.cast(libc.malloc(4 * 4), ctypes.POINTER(ctypes.c_float))  # room for 4 scores
        _native.llama_fastv_get_scores(drv.ctx, small, 16)  # says 16: writes past the end
    print("not caught")
    """
)


def test_asan_reports_an_overflow_through_the_fastv_api(lib_dir, tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    code = CANARY.format(tests=str(TESTS_DIR), tmp=str(tmp_path))
    env = sanitize.sanitizer_env(lib_dir, reports)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    found = sanitize.read_reports(reports)
    assert proc.returncode != 0 and "not caught" not in proc.stdout, proc.stderr[-2000:]
    assert len(found) == 1, proc.stderr[-2000:]
    assert "heap-buffer-overflow" in found[0] and "WRITE of size 4" in found[0]
    assert "fastv_get_scores" in found[0] and "llama-fastv.cpp:" in found[0]  # symbolized to file:line
