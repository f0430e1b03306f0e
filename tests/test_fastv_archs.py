"""FastV on qwen2vl (M-RoPE image grids) and gemma3 (iSWA, non-causal image block).

The same exactness bar as tests/test_fastv_exact.py for llama, against the float64
references of tests/reference_archs.py, on tiny F32 models with F32 KV.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastv_helpers import cut_gap, forced_tokens, run_fastv, run_ref, run_stock

from fastv_edge.errors import Status

pytestmark = pytest.mark.native

GRID = (8, 5)  # qwen2vl image: nx, ny = 40 tokens


@pytest.fixture(scope="module", params=["qwen2vl", "gemma3"])
def arch(request, tiny_dir):
    from reference_archs import RefGemma3, RefQwen2VL

    from fastv_edge.testing.make_tiny_archs import make_tiny_gemma3, make_tiny_qwen2vl

    if request.param == "qwen2vl":
        model = make_tiny_qwen2vl(tiny_dir)
        return {
            "name": "qwen2vl",
            "path": model.path,
            "ref": RefQwen2VL(model.path),
            "std": 0.5,
            "n_img": 40,
            "opts": {"grid": GRID},
        }
    model = make_tiny_gemma3(tiny_dir)  # 6 layers, 2 and 5 global, window 16
    return {
        "name": "gemma3",
        "path": model.path,
        "ref": RefGemma3(model.path),
        "std": 2.5,
        "n_img": 32,
        "opts": {"causal": False},
    }


def make_prompt(drv, arch, seed: int):
    rows = np.random.default_rng(seed).standard_normal((arch["n_img"], drv.n_embd)) * arch["std"]
    return [
        ("tokens", drv.tokenize("<|im_start|>user\nLook at this picture:")),
        ("embd", rows.astype(np.float32), arch["opts"]),
        ("tokens", drv.tokenize("\nWhat is in it?<|im_end|>\n<|im_start|>assistant\n")),
    ]


@pytest.mark.parametrize("k", [2, pytest.param(-1, marks=pytest.mark.slow)])
def test_drop_ratio_zero_is_stock(arch, native, llama_driver, k):
    drv = llama_driver(arch["path"])
    k = k if k > 0 else drv.n_layer - 1
    segments = make_prompt(drv, arch, seed=1)
    tokens = forced_tokens(drv)
    stock = run_stock(drv, segments, tokens)
    same, scores, kept = run_fastv(native, drv, segments, tokens, k, 0.0)
    assert kept == list(range(arch["n_img"])) and len(scores) == arch["n_img"]
    assert np.abs(same - stock).max() <= 1e-6


@pytest.mark.parametrize(
    "k, drop_ratio",
    [  # K=2, R=0.5 (the paper's defaults) stays in the quick set; the sweep is slow
        pytest.param(k, r, marks=() if (k, r) == (2, 0.5) else pytest.mark.slow)
        for k in (1, 2, 3, -1)
        for r in (0.25, 0.5, 0.75, 1.0)
    ],
)
def test_fastv_matches_reference(arch, native, llama_driver, k, drop_ratio):
    from reference import topk_keep

    drv = llama_driver(arch["path"])
    k = k if k > 0 else drv.n_layer - 1
    ref = arch["ref"]
    tokens = forced_tokens(drv)
    for seed in range(10, 20):
        segments = make_prompt(drv, arch, seed)
        got, scores, kept = run_fastv(native, drv, segments, tokens, k, drop_ratio)
        want, ref_scores = run_ref(ref, segments, tokens, k=k, keep=kept)
        if cut_gap(ref_scores, len(kept)) >= 1e-4:
            break
    else:
        pytest.fail("every seed put two scores within 1e-4 of the cut")

    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-9)
    assert kept == topk_keep(scores, drop_ratio).tolist()
    assert kept == topk_keep(ref_scores, drop_ratio).tolist()
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.slow
def test_chunking_invariance(arch, native, llama_driver):
    results = []
    for n_ubatch in (512, 48, 33):  # the image block must fit one ubatch when it is non-causal
        drv = llama_driver(arch["path"], n_ubatch=n_ubatch)
        results.append(run_fastv(native, drv, make_prompt(drv, arch, seed=4), forced_tokens(drv), 2, 0.5))
    logits0, scores0, kept0 = results[0]
    for logits, scores, kept in results[1:]:
        assert kept == kept0
        np.testing.assert_allclose(scores, scores0, rtol=1e-5, atol=1e-9)
        assert np.abs(logits - logits0).max() < 1e-5


def test_gemma3_window_overwritten_before_finish(native, tiny_dir):
    """Without swa_full the sliding-window cache may reuse a prompt cell before finish: a clear error."""
    import llama_cpp
    from llama_driver import LlamaDriver

    from fastv_edge.testing.make_tiny_archs import make_tiny_gemma3

    model = make_tiny_gemma3(tiny_dir)
    with LlamaDriver(model.path, n_ctx=1024, n_batch=64, n_ubatch=64, swa_full=False) as drv:
        assert native.llama_fastv_begin(drv.ctx, 0, 2) == Status.OK
        for _ in range(6):  # 6 * 60 text tokens, far beyond window 16 + ubatch 64 padded to 256 cells
            drv.decode_tokens(drv.tokenize(" word" * 60), logits_last=False)
        rows = np.random.default_rng(0).standard_normal((16, drv.n_embd)).astype(np.float32)
        drv.decode_embd(rows, causal=False)
        drv.decode_tokens(drv.tokenize(" end"))
        assert native.llama_fastv_finish(drv.ctx, 8) == Status.BAD_PROMPT
        assert not llama_cpp.llama_get_logits_ith(drv.ctx, -1)
