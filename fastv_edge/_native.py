"""ctypes bindings for the llama_fastv_* symbols of the patched libllama.

The library is the one llama-cpp-python loads (llama_cpp._lib), so FastV calls act on the
same llama_context objects as llama-cpp-python. On a stock library every binding raises
PatchMissingError instead of silently returning None.

The raw bindings mirror llama.h (its contract is in patches/README.md). The wrappers below them
(begin, finish, ...) are what the rest of the package calls: they take the budget as an integer
n_keep (the floor of N*(1-R) is computed once, in pruning.n_keep) and turn every status code into
a NativeError.
"""

from __future__ import annotations

import ctypes

import llama_cpp
from llama_cpp._ctypes_extensions import ctypes_function_for_shared_library

from .errors import NativeError, PatchMissingError
from .native_build import install_command
from .native_info import FASTV_SYMBOLS

_lib = llama_cpp.llama_cpp._lib
_ctypes_function = ctypes_function_for_shared_library(_lib)

SYMBOLS = FASTV_SYMBOLS
HAS_FASTV = all(hasattr(_lib, name) for name in SYMBOLS)

_ctx_p = llama_cpp.llama_context_p_ctypes


def _missing(name: str) -> PatchMissingError:
    return PatchMissingError(
        f"{_lib._name} has no {name}: this is a stock llama-cpp-python build. "
        f"Rebuild the patched one: {install_command()}"
    )


# LLAMA_API int32_t llama_fastv_begin(struct llama_context * ctx, llama_seq_id seq_id, int32_t k);
@_ctypes_function(
    "llama_fastv_begin",
    [_ctx_p, llama_cpp.llama_seq_id, ctypes.c_int32],
    ctypes.c_int32,
    enabled=HAS_FASTV,
)
def llama_fastv_begin(ctx, seq_id, k, /) -> int:
    raise _missing("llama_fastv_begin")


# LLAMA_API int32_t llama_fastv_finish(struct llama_context * ctx, int32_t n_keep);
@_ctypes_function("llama_fastv_finish", [_ctx_p, ctypes.c_int32], ctypes.c_int32, enabled=HAS_FASTV)
def llama_fastv_finish(ctx, n_keep, /) -> int:
    raise _missing("llama_fastv_finish")


# LLAMA_API int32_t llama_fastv_finish_with_keep(struct llama_context * ctx, const int32_t * keep, int32_t n_keep);
@_ctypes_function(
    "llama_fastv_finish_with_keep",
    [_ctx_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32],
    ctypes.c_int32,
    enabled=HAS_FASTV,
)
def llama_fastv_finish_with_keep(ctx, keep, n_keep, /) -> int:
    raise _missing("llama_fastv_finish_with_keep")


# LLAMA_API void llama_fastv_abort(struct llama_context * ctx);
@_ctypes_function("llama_fastv_abort", [_ctx_p], None, enabled=HAS_FASTV)
def llama_fastv_abort(ctx, /) -> None:
    raise _missing("llama_fastv_abort")


# LLAMA_API int32_t llama_fastv_get_scores(struct llama_context * ctx, float * out, int32_t n_max);
@_ctypes_function(
    "llama_fastv_get_scores",
    [_ctx_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int32],
    ctypes.c_int32,
    enabled=HAS_FASTV,
)
def llama_fastv_get_scores(ctx, out, n_max, /) -> int:
    raise _missing("llama_fastv_get_scores")


# LLAMA_API int32_t llama_fastv_get_kept(struct llama_context * ctx, int32_t * out, int32_t n_max);
@_ctypes_function(
    "llama_fastv_get_kept",
    [_ctx_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32],
    ctypes.c_int32,
    enabled=HAS_FASTV,
)
def llama_fastv_get_kept(ctx, out, n_max, /) -> int:
    raise _missing("llama_fastv_get_kept")


# LLAMA_API int32_t llama_fastv_hide(struct llama_context * ctx, llama_seq_id seq_id,
#                                    const llama_pos * pos, int32_t n_pos, int32_t k);
@_ctypes_function(
    "llama_fastv_hide",
    [_ctx_p, llama_cpp.llama_seq_id, ctypes.POINTER(llama_cpp.llama_pos), ctypes.c_int32, ctypes.c_int32],
    ctypes.c_int32,
    enabled=HAS_FASTV,
)
def llama_fastv_hide(ctx, seq_id, pos, n_pos, k, /) -> int:
    raise _missing("llama_fastv_hide")


# LLAMA_API int32_t llama_fastv_n_hidden(struct llama_context * ctx);
@_ctypes_function("llama_fastv_n_hidden", [_ctx_p], ctypes.c_int32, enabled=HAS_FASTV)
def llama_fastv_n_hidden(ctx, /) -> int:
    raise _missing("llama_fastv_n_hidden")


def _check(func: str, code: int, hint: str = "") -> int:
    if code < 0:
        raise NativeError(func, code, hint)
    return code


def begin(ctx, seq_id: int, layer: int) -> None:
    """Start a FastV prefill of seq_id at layer K: decode the prompt next, then call finish().

    Args:
        ctx: llama_context pointer.
        seq_id: the sequence the prompt is decoded into.
        layer: K, the number of layers that see every prompt token.
    """
    _check("llama_fastv_begin", llama_fastv_begin(ctx, seq_id, layer))


def finish(ctx, n_keep: int) -> None:
    """Keep the n_keep image tokens the last prompt token attends to most; run layers >= K on them.

    C ranks the image tokens (ties to the earlier token). On an error other than a bad n_keep
    the library has already removed the prompt's cells; see patches/README.md.

    Args:
        ctx: llama_context pointer.
        n_keep: how many image tokens to keep, 0 <= n_keep <= N.
    """
    _check("llama_fastv_finish", llama_fastv_finish(ctx, int(n_keep)))


def finish_with_keep(ctx, keep) -> None:
    """Like finish(), with the kept image-token indices (distinct, any order) chosen by the caller.

    Args:
        ctx: llama_context pointer.
        keep: indices into the N image tokens of the prompt.
    """
    keep = [int(i) for i in keep]
    arr = (ctypes.c_int32 * max(len(keep), 1))(*keep)
    _check("llama_fastv_finish_with_keep", llama_fastv_finish_with_keep(ctx, arr, len(keep)))


def abort(ctx) -> None:
    """End the FastV prefill in progress, if any; the library removes the cells it wrote."""
    llama_fastv_abort(ctx)


def get_scores(ctx) -> list[float]:
    """Layer K-1 attention of the last prompt token to each image token, prompt order."""
    n = _check("llama_fastv_get_scores", llama_fastv_get_scores(ctx, None, 0))
    out = (ctypes.c_float * max(n, 1))()
    _check("llama_fastv_get_scores", llama_fastv_get_scores(ctx, out, n))
    return list(out[:n])


def get_kept(ctx) -> list[int]:
    """Indices (ascending, into the image tokens) kept by the last finish."""
    n = _check("llama_fastv_get_kept", llama_fastv_get_kept(ctx, None, 0))
    out = (ctypes.c_int32 * max(n, 1))()
    _check("llama_fastv_get_kept", llama_fastv_get_kept(ctx, out, n))
    return list(out[:n])


def hide(ctx, seq_id: int, positions, layer: int) -> None:
    """Hide the cells of seq_id at `positions` from layers >= K (layers < K still see them)."""
    positions = [int(p) for p in positions]
    arr = (llama_cpp.llama_pos * max(len(positions), 1))(*positions)
    _check("llama_fastv_hide", llama_fastv_hide(ctx, seq_id, arr, len(positions), layer))


def n_hidden(ctx) -> int:
    """Number of tokens hidden from the layers >= K (per KV stream; an iSWA model counts each token once)."""
    return _check("llama_fastv_n_hidden", llama_fastv_n_hidden(ctx))
