"""The FastV bindings on a stock library raise PatchMissingError instead of returning None."""

from __future__ import annotations

import importlib

import pytest

pytestmark = pytest.mark.native


class _StockLib:
    """A library object without the llama_fastv_* symbols, like a stock libllama."""

    _name = "/opt/stock/libllama.so"


def test_stubs_raise_on_a_stock_library(monkeypatch):
    import llama_cpp

    from fastv_edge import _native
    from fastv_edge.errors import PatchMissingError

    monkeypatch.setattr(llama_cpp.llama_cpp, "_lib", _StockLib())
    stock = importlib.reload(_native)
    try:
        assert not stock.HAS_FASTV
        with pytest.raises(PatchMissingError, match="llama_fastv_begin.*-m fastv_edge.native_build install"):
            stock.begin(None, 0, 2)
        for name in stock.SYMBOLS:
            with pytest.raises(PatchMissingError, match=name):
                getattr(stock, name)(*([None] * 5)[: _arity(name)])
    finally:
        monkeypatch.undo()
        importlib.reload(_native)
    assert _native.HAS_FASTV


def _arity(name: str) -> int:
    return {
        "llama_fastv_begin": 3,
        "llama_fastv_finish": 2,
        "llama_fastv_finish_with_keep": 3,
        "llama_fastv_get_scores": 3,
        "llama_fastv_get_kept": 3,
        "llama_fastv_hide": 5,
    }.get(name, 1)


def test_error_codes_become_exceptions(tiny):
    from llama_driver import LlamaDriver

    from fastv_edge import _native
    from fastv_edge.errors import NativeError

    with LlamaDriver(tiny.llama_path) as drv:
        with pytest.raises(NativeError, match=r"llama_fastv_begin failed \(LLAMA_FASTV_STATUS_BAD_ARG \(-1\)"):
            _native.begin(drv.ctx, 0, 99)
        with pytest.raises(NativeError, match="call out of order"):
            _native.finish_with_keep(drv.ctx, [])
