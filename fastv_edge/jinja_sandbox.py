"""Chat templates are code from a model file: they run in Jinja's immutable sandbox, bounded in time and size.

The sandbox already refuses attribute tricks, mutation and range() over 100000 items, but a
template can still loop for ever in effect (nested loops over big ranges, recursive macros)
or build a huge string ('x' * 10**10). render_limited adds the missing bounds:

- time: while the template's own code runs (its frames are compiled from "<template>"),
  a trace function checks a deadline on every line it executes, so a loop that produces no
  output still stops;
- output: the rendered text is streamed (Template.generate) and stops past MAX_CHARS;
- arithmetic: `*` and `**` are intercepted, so a sequence repeated or a power that would be
  larger than MAX_CHARS is refused before Python allocates it.
Exceeding a bound raises TemplateLimitError, which templates.render turns into a one-line
error naming the template.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from functools import lru_cache

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_SECONDS = 2.0  # chat templates render in milliseconds
MAX_CHARS = 4_000_000  # more text than any context window holds
_TEMPLATE_FILE = "<template>"  # co_filename of code Jinja compiles from a string


class TemplateLimitError(Exception):
    """A template ran past MAX_SECONDS or produced more than MAX_CHARS."""


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context, operator, left, right):
        """`*` and `**` with operands whose result would exceed MAX_CHARS are refused unevaluated."""
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > MAX_CHARS:
                    raise TemplateLimitError(f"it repeats a sequence of {len(seq)} items {count} times")
        if operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)):
            if abs(left) > 1 and right * max(abs(left).bit_length(), 1) > 64 * 1024:
                raise TemplateLimitError(f"it raises {left} to the power {right}")
        return super().call_binop(context, operator, left, right)


_ENV = _LimitedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])


@lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template of a source (cached: a chat renders the same one every turn).

    Raises:
        jinja2.TemplateSyntaxError: it does not parse.
    """
    return _ENV.from_string(source)


@contextmanager
def _deadline(seconds: float):
    end = time.monotonic() + seconds
    previous = sys.gettrace()

    def local(frame, event, arg):
        if time.monotonic() > end:
            raise TemplateLimitError(f"it ran for more than {seconds:g} s")
        return local

    def calls(frame, event, arg):
        return local(frame, event, arg) if frame.f_code.co_filename == _TEMPLATE_FILE else None

    sys.settrace(calls)
    try:
        yield
    finally:
        sys.settrace(previous)


def render_limited(template: jinja2.Template, variables: dict, *, seconds: float | None = None) -> str:
    """Render within MAX_SECONDS (or `seconds`) and MAX_CHARS.

    Args:
        template: from compile_template.
        variables: the template's variables.
        seconds: the time bound (default MAX_SECONDS).

    Returns:
        The rendered text.

    Raises:
        TemplateLimitError: a bound was exceeded.
        Exception: whatever the template itself raises.
    """
    seconds = MAX_SECONDS if seconds is None else seconds
    out, size = [], 0
    with _deadline(seconds):
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > MAX_CHARS:
                raise TemplateLimitError(f"its output passed {MAX_CHARS} characters")
            out.append(chunk)
    return "".join(out)
