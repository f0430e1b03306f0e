"""The machine a benchmark ran on, and per-configuration peak memory.

Peak RSS method (Linux): before each measured run the kernel's resident-set high-water mark
(VmHWM) is reset by writing "5" to /proc/self/clear_refs; after the run VmHWM is the peak
resident memory of the whole process during that run: weights touched, KV cache, compute
buffers and whatever FastV allocates (hidden states of the prompt, the attention row, the
deep-pass batch). One process, so stock and FastV runs see the same mapped weights. Where
clear_refs is unavailable, the process-lifetime maximum (getrusage) is reported instead,
and the method says so: then it is NOT a per-configuration number.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from pathlib import Path

from ..calibration_store import cpu_name

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakRSS:
    """Per-run peak resident memory: reset() before a run, peak_mb() after it."""

    def __init__(self):
        self.per_run = self._try_reset()
        self.method = (
            "VmHWM after resetting it through /proc/self/clear_refs before each run (per-configuration peak)"
            if self.per_run
            else "getrusage ru_maxrss (process-lifetime peak, NOT per configuration)"
        )

    @staticmethod
    def _try_reset() -> bool:
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            return False
        return _status_kb("VmHWM") is not None

    def reset(self) -> None:
        if self.per_run:
            _CLEAR_REFS.write_text("5")

    def current_mb(self) -> float:
        kb = _status_kb("VmRSS")
        return kb / 1024 if kb is not None else float("nan")

    def peak_mb(self) -> float:
        if self.per_run:
            return _status_kb("VmHWM") / 1024
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _cpu_flags() -> list[str]:
    wanted = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """nproc, CPU model and flags, RAM, load average, OS, Python and the libllama in use."""
    import llama_cpp

    from .. import _native

    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_name(),
        "cpu_flags": _cpu_flags(),
        "ram_gib": _ram_gib(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "libllama": str(getattr(llama_cpp.llama_cpp._lib, "_name", "?")),
        "fastv_symbols": _native.HAS_FASTV,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
