"""The kept-rows decode path (decode.decode_rows) against mtmd's own decode, on every family.

Keeping every row must be mtmd's decode exactly: the same logits (<= 1e-6), the same n_past
and the same KV cells (positions, M-RoPE (x, y), token ids of text cells). Through mtmd with
the tiny projectors on llama, qwen2vl (M-RoPE), gemma3 (non-causal block), qwen3vl (deepstack
rows wider than n_embd) and gemma4 (gemma4v); through the embedding path (prompt.pseudo_image's
rows) on gemma4's two layouts and the hybrid lfm2, compared with tests/family_driver.py's own
decode of the same rows and with the float64 references.
"""

from __future__ import annotations

import numpy as np
import pytest
from preselect_helpers import (
    clear,
    continue_decoding,
    decode_all_rows,
    encoded_rows,
    f32_kv,
    family_case,
    forced_tokens,
    kv_cells,
    load,
    photo,
    run_reference,
    segments,
)

import fastv_edge as fe
from fastv_edge.prefill import prefill
from fastv_edge.prompt import Prompt, TextPiece, pseudo_image, tokenize

pytestmark = pytest.mark.native
PROMPT = "<|im_start|>user\nLook:{marker}\nWhat is in it?<|im_end|>\n<|im_start|>assistant\n"
STOCK = fe.PruneConfig(strategy="none")


@pytest.mark.parametrize(
    "name, n_batch",
    [
        ("llama", 512),
        ("llama", 16),  # 64 rows in 4 llama_decode calls, as mtmd splits them
        ("qwen2vl", 512),
        ("gemma3", 512),
        ("qwen3vl", 512),
        ("qwen3vl", 16),
        pytest.param("gemma4", 512, marks=pytest.mark.slow),
    ],
)
def test_keep_all_rows_is_mtmds_decode(tiny_dir, name, n_batch):
    case = family_case(tiny_dir, name)
    with load(case, n_batch) as model:
        tokens = forced_tokens(model)
        with tokenize(model.llm, model.mtmd_ctx, PROMPT.format(marker=model.marker), [photo()]) as prompt:
            [piece] = prompt.images
            assert piece.chunk is not None and piece.mrope == case.mrope and piece.non_causal == case.non_causal
            rows = encoded_rows(model, prompt)
            assert rows[0].shape[1] == model.encoder.n_embd_inp  # qwen3vl: n_embd * 4 with the deepstack slices
            clear(model)
            n_mtmd, stats = prefill(model.target, prompt, n_past=0, prune=STOCK)  # mtmd_helper_decode_image_chunk
            cells_mtmd = kv_cells(model.ctx, ext=case.mrope)
            by_mtmd = continue_decoding(model, n_mtmd, tokens)
            clear(model)
            n_rows = decode_all_rows(model, prompt, rows)
            cells_rows = kv_cells(model.ctx, ext=case.mrope)
            by_rows = continue_decoding(model, n_rows, tokens)
    n_text = prompt.n_tokens - piece.n_tokens
    assert n_rows == n_mtmd == n_text + piece.n_pos
    assert cells_rows == cells_mtmd and len(cells_rows) == stats.n_cells == prompt.n_tokens
    assert np.abs(by_rows - by_mtmd).max() <= 1e-6
    if case.mrope:  # the image advances positions by max(nx, ny), its cells share t and differ in (x, y)
        assert piece.n_pos == max(piece.grid) < piece.n_tokens
        assert len({c for c in cells_rows if c[3] == -1}) == piece.n_tokens


def test_a_pre_llm_strategy_keeping_every_row_is_stock(tiny_dir):
    """keep = N with a selection strategy decodes through mtmd's own path: nothing differs from stock."""
    case = family_case(tiny_dir, "qwen2vl")
    with load(case) as model:
        tokens = forced_tokens(model)
        with tokenize(model.llm, model.mtmd_ctx, PROMPT.format(marker=model.marker), [photo("coffee")]) as prompt:
            n = prompt.n_image_tokens
            clear(model)
            n_stock, _ = prefill(model.target, prompt, n_past=0, prune=STOCK)
            stock = continue_decoding(model, n_stock, tokens)
            clear(model)
            n_all, stats = prefill(model.target, prompt, n_past=0, prune=fe.PruneConfig(strategy="divprune", keep=n))
            same = continue_decoding(model, n_all, tokens)
    assert (n_all, stats.n_kept, stats.kept) == (n_stock, n, list(range(n)))
    assert np.abs(same - stock).max() == 0.0


@pytest.mark.parametrize("kind", ["gemma4-e2b", "gemma4-31b", "lfm2"])
def test_embedding_path_on_families_without_fastv(tiny_dir, kind):
    """Pseudo-image rows through prefill (decode_rows) == the family driver's own decode of them (<= 1e-6)
    == the float64 reference (<= 1e-4); a subset == the reference fed that subset at its positions."""
    from family_driver import FamilyDriver
    from reference_gemma4 import RefGemma4
    from reference_lfm2 import RefLfm2

    from fastv_edge.testing.make_tiny_archs import make_tiny_arch

    path = make_tiny_arch(tiny_dir, kind).path
    ref = (RefLfm2 if kind == "lfm2" else RefGemma4)(path)
    with f32_kv(), fe.load(path, runtime=fe.RuntimeConfig(n_ctx=512, n_threads=1), prune=STOCK) as model:
        tokens = forced_tokens(model)
        head = list(model.llm.tokenize(b"<|im_start|>user\nLook:", add_bos=True, special=True))
        tail = list(model.llm.tokenize(b"\nWhat is in it?<|im_end|>\n<|im_start|>assistant\n", special=True))
        image = pseudo_image(model, 40, seed=3)
        image.embd = (image.embd * (2.5 / image.embd.std())).astype(np.float32)  # the families tests' image scale
        prompt = Prompt([TextPiece(head), image, TextPiece(tail)])
        clear(model)
        n_all, _ = prefill(model.target, prompt, n_past=0, prune=STOCK)
        got_all = continue_decoding(model, n_all, tokens)
        clear(model)
        sub = fe.PruneConfig(strategy="divprune", keep=12)
        n_sub, stats = prefill(model.target, prompt, n_past=0, prune=sub)
        cells = [c[0] for c in kv_cells(model.ctx)]  # positions; the attention cache of a hybrid
        got_sub = continue_decoding(model, n_sub, tokens)
    with FamilyDriver(path, n_threads=1) as drv:
        drv.decode_segments_inp([("tokens", head), ("embd", image.embd, {"causal": True}), ("tokens", tail)])
        by_driver = np.array([drv.logits()] + [_step(drv, t) for t in tokens])
    segs = segments(prompt, [image.embd])
    assert n_all == n_sub == len(head) + 40 + len(tail)  # the text after the image keeps its position
    assert np.abs(got_all - by_driver).max() <= 1e-6
    np.testing.assert_allclose(got_all, run_reference(ref, segs, tokens), rtol=0, atol=1e-4)
    kept = stats.kept
    assert stats.n_kept == 12 and stats.n_cells == len(head) + 12 + len(tail)
    np.testing.assert_allclose(got_sub, run_reference(ref, segs, tokens, pre_keep=kept), rtol=0, atol=1e-4)
    n0 = len(head)
    assert cells == [*range(n0), *(n0 + k for k in kept), *range(n0 + 40, n_sub)]  # text + kept, nothing else
    shifted = [segs[0], ("embd", segs[1][1][kept]), segs[2]]  # negative control: kept rows at consecutive positions
    assert np.abs(run_reference(ref, shifted, tokens[:1])[0] - got_sub[0]).max() > 1e-3


def _step(drv, token) -> np.ndarray:
    drv.decode_tokens([token])
    return drv.logits()
