"""Helpers (not fixtures) of the Python-API, chat, handler, CLI and bad-input tests."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from fastv_edge.native_build import install_command


def _has_fastv() -> bool:
    try:
        from fastv_edge import _native
    except Exception:  # no loadable libllama: the native tests are skipped by conftest anyway
        return False
    return _native.HAS_FASTV


needs_fastv = pytest.mark.skipif(
    not _has_fastv(),
    reason=f"the loaded libllama has no llama_fastv_* symbols (stock build); rebuild it: {install_command()}",
)


def run_cli(env, *args, stdin: str | None = None, timeout: float = 120):
    """Run `python -m fastv_edge ARGS`; returns the CompletedProcess (text mode)."""
    return subprocess.run(
        [sys.executable, "-m", "fastv_edge", *map(str, args)],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bounded(call, *args, limit: float, **kwargs):
    """(result or exception, seconds) of call(*args, **kwargs) in a watchdog thread; fails if it runs past `limit`."""
    box = {}

    def run():
        try:
            box["value"] = call(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["value"] = e

    t0 = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"{getattr(call, '__name__', call)} still running after {limit} s: it hangs"
    return box["value"], time.monotonic() - t0
