"""Exceptions raised by fastv_edge.

Bad arguments raise ValueError. Problems with the environment, the model files or the
native library raise a FastVEdgeError subclass whose message names the fix.
"""

from enum import IntEnum


class Status(IntEnum):
    """enum llama_fastv_status of the patched llama.h: the one spelling of its codes."""

    OK = 0
    BAD_ARG = -1
    UNSUPPORTED = -2
    BAD_STATE = -3
    BAD_PROMPT = -4
    DECODE = -5

    @classmethod
    def describe(cls, code: int) -> str:
        """'LLAMA_FASTV_STATUS_BAD_ARG (-1): invalid argument' for a known code."""
        try:
            status = cls(code)
        except ValueError:
            return f"unknown status {code}"
        return f"LLAMA_FASTV_STATUS_{status.name} ({code}): {_REASONS[status]}"


_REASONS = {
    Status.OK: "ok",
    Status.BAD_ARG: "invalid argument",
    Status.UNSUPPORTED: "unsupported model or context setting",
    Status.BAD_STATE: "call out of order",
    Status.BAD_PROMPT: "the recorded prompt cannot be pruned",
    Status.DECODE: "the deep pass failed to decode",
}


class FastVEdgeError(Exception):
    """Base class for environment, model and native-library errors."""


class PatchMissingError(FastVEdgeError):
    """The loaded libllama has no llama_fastv_* symbols (stock llama-cpp-python)."""


class ModelLoadError(FastVEdgeError):
    """A GGUF model or mmproj file is missing, corrupt or incompatible."""


class NativeError(FastVEdgeError):
    """A llama_fastv_* (or other llama.cpp) call returned an error code."""

    def __init__(self, func: str, code: int, hint: str = ""):
        self.func = func
        self.code = code
        reason = Status.describe(code) if func.startswith("llama_fastv_") else f"code {code}"
        msg = f"{func} failed ({reason})"
        super().__init__(f"{msg}: {hint}" if hint else msg)


class ContextOverflowError(FastVEdgeError):
    """The prompt (text plus image tokens) does not fit in the context window."""


class UnsupportedModelError(FastVEdgeError):
    """The model's architecture has no FastV support in the patched llama.cpp."""
