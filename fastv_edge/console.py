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
        if self.after <= 0:  # every step is announced: no timer thread
            print(f"{message} ...", file=self.stream, flush=True)
            t0 = time.perf_counter()
            yield
            print(f"{message}: done in {time.perf_counter() - t0:.1f} s", file=self.stream, flush=True)
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


class StepLines(SlowSteps):
    """Progress hook that prints every step at once: '<step> ...', then '<step>: done in X s'."""

    def __init__(self, enabled: bool = True, stream=None):
        super().__init__(enabled, after=0.0, stream=stream)


def format_plan(plan) -> str:
    """The TTFT planner's choice, one line: 'plan (budget 5.0 s): cap 256 -> 234 image tokens, ...'."""
    parts = ", ".join(f"{k} {v / 1e3:.2f} s" for k, v in plan.parts.items() if v >= 0.5)
    return f"plan (budget {plan.budget_ms / 1e3:.1f} s): {plan.describe()} ({parts})"


def format_stats(r, prune: PruneConfig, threads=None) -> str:
    """One line of request statistics from a final GenerationResponse (and the model's ThreadCounts).

    The strategy shown is what the prefill ran (r.stats.strategy: 'none (no image)' for a turn
    without an image), falling back to `prune` for responses that carry none.
    """
    stats = r.stats
    strategy = getattr(stats, "strategy", None) or prune.describe()
    pruning = f"kept {r.n_kept}/{r.n_image_tokens} image tokens ({strategy})"
    images = "".join(f" | {format_image(i, img)}" for i, img in enumerate(stats.images, 1))
    return (
        f"[{pruning}{images} | {stats.n_cells} KV cells | encode {r.encode_ms:.0f} ms | "
        f"select {stats.select_ms:.1f} ms | "
        f"prefill {r.prefill_ms:.0f} ms (shallow {r.shallow_ms:.0f} + deep {r.deep_ms:.0f}) | "
        f"ttft {r.ttft_ms:.0f} ms | {r.decode_tps:.1f} tok/s | FLOPs ratio {r.flops_ratio:.2f}"
        f"{' | ' + threads.describe() if threads is not None else ''}"
        f"{_predicted(r)}]"
    )


def _predicted(r) -> str:
    plan = getattr(r, "plan", None)
    if plan is None:
        return ""
    return f" | predicted ttft {plan.predicted_ms:.0f} ms (budget {plan.budget_ms / 1e3:.1f} s)"


# A first token this much later than its budget is more than run-to-run noise (the planner's median
# error is about 5%): the calibration was probably measured at another load than the machine has now.
OVER_BUDGET = 1.25


def over_budget_note(plan, ttft_ms: float, recalibrate: str) -> str | None:
    """A one-line hint when a budgeted request missed its budget by more than noise, else None."""
    if plan is None or plan.budget_ms is None or ttft_ms <= plan.budget_ms * OVER_BUDGET:
        return None
    return (
        f"the first token took {ttft_ms / 1e3:.1f} s against a budget of {plan.budget_ms / 1e3:.1f} s "
        f"(predicted {plan.predicted_ms / 1e3:.1f} s): the calibration may come from a quieter or faster "
        f"machine state than now; `{recalibrate}` measures it again"
    )


def format_image(index: int, img) -> str:
    """'image 1: 36x27 grid, 972 tokens, cached' from an ImageStats."""
    grid = f"{img.grid[0]}x{img.grid[1]} grid, " if img.grid else ""
    return f"image {index}: {grid}{img.n_tokens} tokens{', cached' if img.cached else ''}"


def note(message: str) -> None:
    """One 'fastv-edge: ...' line on stderr."""
    print(f"fastv-edge: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """One 'fastv-edge: warning: ...' line on stderr."""
    print(f"fastv-edge: warning: {one_line(message)}", file=sys.stderr, flush=True)


def error(message: str) -> None:
    """One 'fastv-edge: error: ...' line on stderr."""
    print(f"fastv-edge: error: {one_line(message)}", file=sys.stderr, flush=True)


def one_line(message: str) -> str:
    """message with its line breaks turned into spaces (llama.cpp's and Jinja's messages carry some)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def read_stdin(what: str) -> str:
    """All of stdin as text; ValueError naming `what` and the byte when it is not UTF-8."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text stream with no bytes underneath (io.StringIO)
        return sys.stdin.read()
    data = stream.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} is not valid UTF-8 text: byte 0x{data[e.start]:02x} at byte {e.start}") from None
