"""Image tokens selected before the LLM, through prefill.prefill, against the float64 references.

A kept subset decoded by the orchestrator must equal the reference fed the same rows at the
same positions (pre_keep: the other rows never enter a layer) to 1e-4, and the KV cells after
the prompt must be exactly the text's plus the kept rows' (the cells of the unpruned decode
without the dropped rows' cells). Two stages (a pre-LLM budget, then FastV at layer K on what
is left) must equal the reference running both, with FastV's scores over the pre-kept rows.
"""

from __future__ import annotations

import numpy as np
import pytest
from api_helpers import needs_fastv
from fastv_helpers import cut_gap
from preselect_helpers import (
    clear,
    continue_decoding,
    encoded_rows,
    family_case,
    forced_tokens,
    image_cell,
    kv_cells,
    load,
    photo,
    pos_range,
    run_reference,
    segments,
)

import fastv_edge as fe
from fastv_edge.prefill import prefill
from fastv_edge.prompt import tokenize
from fastv_edge.pruning import n_keep_for_ratio
from fastv_edge.selection import select_stage

pytestmark = pytest.mark.native
PROMPT = "<|im_start|>user\nLook:{marker}\nWhat is in it?<|im_end|>\n<|im_start|>assistant\n"
STOCK = fe.PruneConfig(strategy="none")
ATOL = 1e-4


@pytest.fixture(scope="module", params=["llama", "qwen2vl", "gemma3", pytest.param("qwen3vl", marks=pytest.mark.slow)])
def family(request, tiny_dir):
    """(case, loaded model, reference) of one family."""
    case = family_case(tiny_dir, request.param)
    with load(case) as model:
        yield case, model, case.reference()


def run(model, prompt, prune, tokens, ext):
    """Prefill from an empty context; (n_past, stats, cells, logits of the prompt and the forced tokens)."""
    clear(model)
    n_past, stats = prefill(model.target, prompt, n_past=0, prune=prune)
    cells = kv_cells(model.ctx, ext=ext)
    return n_past, stats, cells, continue_decoding(model, n_past, tokens)


@pytest.mark.parametrize(
    "strategy, budget",
    [("divprune", {"keep": 12}), ("dart", {"drop_ratio": 0.75}), ("cdpruner", {"keep": 7}), ("random", {"keep": 1})],
)
def test_kept_rows_match_the_reference_and_take_only_their_cells(family, strategy, budget):
    case, model, ref = family
    tokens = forced_tokens(model)
    with tokenize(model.llm, model.mtmd_ctx, PROMPT.format(marker=model.marker), [photo("chelsea")]) as prompt:
        prompt.instruction = list(model.llm.tokenize(b"What is in it?", add_bos=False, special=False))
        [piece] = prompt.images
        n_text, n = prompt.n_tokens - piece.n_tokens, piece.n_tokens
        rows = encoded_rows(model, prompt)
        n_stock, _, stock_cells, _ = run(model, prompt, STOCK, tokens, case.mrope)
        prune = fe.PruneConfig(strategy=strategy, layer=0, **budget)
        n_past, stats, cells, got = run(model, prompt, prune, tokens, case.mrope)
        positions = piece.positions(sum(p.n_pos for p in prompt.pieces[: prompt.pieces.index(piece)]))
    kept = stats.kept
    n_kept = budget.get("keep") or n_keep_for_ratio(n, budget["drop_ratio"])
    assert len(kept) == stats.n_kept == n_kept and kept == sorted(set(kept)) and 0 <= kept[0] and kept[-1] < n
    assert stats.strategy.startswith(strategy) and stats.select_ms > 0 and not stats.pruned
    assert n_past == n_stock  # the text after the image starts where the whole image ends
    segs = segments(prompt, rows)
    want = run_reference(ref, segs, tokens, pre_keep=kept)
    assert ref.n_past == n_stock + len(tokens)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    # the cells: exactly the unpruned decode's minus the dropped rows' ones
    dropped = [image_cell(positions, i, case.mrope) for i in range(n) if i not in set(kept)]
    assert all(c in stock_cells for c in dropped)
    expected = list(stock_cells)
    for c in dropped:
        expected.remove(c)
    assert cells == expected and len(cells) == stats.n_cells == n_text + n_kept
    assert pos_range(model.ctx)[1] == n_past + len(tokens) - 1


def test_reference_sees_positions_and_the_selection(family):
    """Negative controls: the comparison above fails with the kept rows at consecutive positions or
    with another selection of the same size."""
    case, model, ref = family
    tokens = forced_tokens(model)[:2]
    with tokenize(model.llm, model.mtmd_ctx, PROMPT.format(marker=model.marker), [photo("coffee")]) as prompt:
        rows = encoded_rows(model, prompt)
        _, stats, _, got = run(model, prompt, fe.PruneConfig(strategy="divprune", keep=10), tokens, case.mrope)
    segs = segments(prompt, rows)
    kept = stats.kept
    other = [i for i in range(rows[0].shape[0]) if i not in kept][:10]
    assert np.abs(run_reference(ref, segs, tokens, pre_keep=other) - got).max() > 10 * ATOL
    i_img = next(i for i, s in enumerate(segs) if s[0] == "embd")
    opts = dict(segs[i_img][2]) if len(segs[i_img]) == 3 else {}
    opts.pop("grid", None)  # compacted: one row per position, as if the dropped rows had never existed
    compact = segs[:i_img] + [("embd", segs[i_img][1][kept], opts) if opts else ("embd", segs[i_img][1][kept])]
    compact += segs[i_img + 1 :]
    assert np.abs(run_reference(ref, compact, tokens) - got).max() > 10 * ATOL


@needs_fastv
def test_two_stages_match_the_reference(family):
    """divprune keeps B1 of N before the LLM, FastV at layer K keeps B2 of those B1 (its scores rank the
    B1 decoded rows); cells: text + B1, of which B1 - B2 are hidden from layers >= K."""
    from fastv_edge import _native
    from fastv_edge.model import FASTV_ARCHITECTURES

    case, model, ref = family
    k = 3 if case.name == "gemma3" else 2  # gemma3's layer 2 is global: every row is ranked
    tokens = forced_tokens(model)
    if model.info.architecture not in FASTV_ARCHITECTURES:  # the second stage is refused, nothing is decoded
        with tokenize(model.llm, model.mtmd_ctx, PROMPT.format(marker=model.marker), [photo()]) as prompt:
            clear(model)
            prune = fe.PruneConfig(strategy="fastv", layer=k, keep=4, pre="divprune:8")
            with pytest.raises(fe.UnsupportedModelError, match="select image tokens before the LLM"):
                prefill(model.target, prompt, n_past=0, prune=prune)
        assert pos_range(model.ctx) == (-1, -1)
        return
    for name in ("astronaut", "chelsea", "coffee"):  # the first photo without a near-tie at FastV's cut
        with tokenize(model.llm, model.mtmd_ctx, PROMPT.format(marker=model.marker), [photo(name)]) as prompt:
            n_text = prompt.n_tokens - prompt.n_image_tokens
            b1 = prompt.n_image_tokens // 2
            prune = fe.PruneConfig(strategy="fastv", layer=k, keep=b1 // 3, pre=f"divprune:{b1}")
            rows = encoded_rows(model, prompt)
            n_past, stats, cells, got = run(model, prompt, prune, tokens, case.mrope)
        scores, kept_c = np.array(_native.get_scores(model.ctx)), _native.get_kept(model.ctx)
        pre = select_stage(prune.pre_stage, rows)[0].tolist()
        want = run_reference(ref, segments(prompt, rows), tokens, K=k, keep=kept_c, pre_keep=pre)
        ref_scores = ref.prefill(segments(prompt, rows), K=k, pre_keep=pre)["scores"]
        if cut_gap(ref_scores, len(kept_c)) >= 1e-4:
            break
    else:
        pytest.fail("every photo put two scores within 1e-4 of the cut")
    assert (len(scores), len(kept_c)) == (b1, b1 // 3) and stats.pruned and stats.layer == k
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-9)
    assert kept_c == sorted(np.argsort(-ref_scores, kind="stable")[: len(kept_c)].tolist())
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    assert stats.kept == [pre[i] for i in kept_c] and stats.n_kept == b1 // 3
    assert len(cells) == stats.n_cells == n_text + b1 and _native.n_hidden(model.ctx) == b1 - b1 // 3
    assert stats.strategy == f"divprune K=0 keep={b1} + fastv K={k} keep={b1 // 3}"
