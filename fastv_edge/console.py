"""What the commands print besides the answer: slow-step progress, statistics lines, warnings."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

from .config import PruneConfig


class SlowSteps:
    """Progress hook: prints a step on stderr only if it is still running after `after` s."""

    def __init__(self, enabled: bool, after: float = 1.0, stream=None):
        self.enabled = enabled
        self.after = after
        self.stream = stream or sys.stderr

    @contextmanager
    def __call__(self, message: str):
        if not self.enabled:
            yield
            return
        shown = threading.Event()

        def show():
            shown.set()
            print(f"{message} ...", file=self.stream, flush=True)

        timer = threading.Timer(self.after, show)
        t0 = time.perf_counter()
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            if shown.is_set():
                print(f"{message}: done in {time.perf_counter() - t0:.1f} s", file=self.stream, flush=True)


def format_stats(r, prune: PruneConfig) -> str:
    """One line of request statistics from a final GenerationResponse."""
    pruning = f"kept {r.n_kept}/{r.n_image_tokens} image tokens ({prune.describe()})"
    return (
        f"[{pruning} | encode {r.encode_ms:.0f} ms | prefill {r.prefill_ms:.0f} ms "
        f"(shallow {r.shallow_ms:.0f} + deep {r.deep_ms:.0f}) | ttft {r.ttft_ms:.0f} ms | "
        f"{r.decode_tps:.1f} tok/s | FLOPs ratio {r.flops_ratio:.2f}]"
    )


def warn(message: str) -> None:
    """One 'fastv-edge: warning: ...' line on stderr."""
    print(f"fastv-edge: warning: {message}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    """One 'fastv-edge: error: ...' line on stderr."""
    print(f"fastv-edge: error: {message}", file=sys.stderr, flush=True)
