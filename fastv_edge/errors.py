"""Exceptions raised by fastv_edge.

Bad arguments raise ValueError. Problems with the environment, the model files or the
native library raise a FastVEdgeError subclass whose message names the fix.
"""


class FastVEdgeError(Exception):
    """Base class for environment, model and native-library errors."""


class PatchMissingError(FastVEdgeError):
    """The loaded libllama has no llama_fastv_* symbols (stock llama-cpp-python)."""


class ModelLoadError(FastVEdgeError):
    """A GGUF model or mmproj file is missing, corrupt or incompatible."""


class NativeError(FastVEdgeError):
    """A llama_fastv_* call returned an error code."""

    def __init__(self, func: str, code: int, hint: str = ""):
        self.func = func
        self.code = code
        reason = _REASONS.get(code, "unknown error")
        msg = f"{func} failed with code {code} ({reason})"
        super().__init__(f"{msg}: {hint}" if hint else msg)


class ContextOverflowError(FastVEdgeError):
    """The prompt (text plus image tokens) does not fit in the context window."""


class UnsupportedModelError(FastVEdgeError):
    """The model's architecture has no FastV support in the patched llama.cpp."""


# Mirrors enum llama_fastv_status in the patched llama.h.
_REASONS = {
    -1: "invalid argument",
    -2: "unsupported model or context setting",
    -3: "call out of order",
    -4: "the recorded prompt cannot be pruned",
    -5: "the deep pass failed to decode",
}
