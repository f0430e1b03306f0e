"""Run a test scenario in a fresh interpreter, so that a C-level abort fails one test instead of the run.

A scenario is a module-level function of a test module that takes plain arguments (paths as str) and
returns a JSON-serializable dict of what it observed; the test asserts on that dict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PREFIX = "ISOLATED-RESULT "


def run_isolated(module: str, func: str, *args, timeout: float = 600) -> dict:
    """Call tests/<module>.py's func(*args) in a subprocess and return its result.

    Args:
        module: test module name, e.g. "test_fastv_contract".
        func: the scenario function in it.
        *args: str/int/float/bool arguments.
        timeout: seconds before the subprocess is killed.

    Returns:
        The dict the scenario returned.
    """
    code = (
        f"import json, sys; sys.path.insert(0, {str(TESTS)!r}); import {module} as m; "
        f"print({PREFIX!r} + json.dumps(m.{func}(*{args!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-25:])
        raise AssertionError(f"{func} exited with code {proc.returncode} (a crash or abort in the library?):\n{tail}")
    return json.loads(lines[-1][len(PREFIX) :])
