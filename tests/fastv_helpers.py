"""Shared steps of the FastV exactness tests: run stock, run FastV, run the reference."""

from __future__ import annotations

import numpy as np

STEPS = 6


def forced_tokens(drv) -> list[int]:
    # decode steps feed fixed tokens, so a wrong logit cannot change what is compared next
    return drv.tokenize(" The picture shows a small cat sitting on a mat")[:STEPS]


def continue_decoding(drv, tokens) -> list[np.ndarray]:
    out = [drv.logits()]
    for t in tokens:
        drv.decode_tokens([t])
        out.append(drv.logits())
    return out


def run_stock(drv, segments, tokens):
    drv.clear()
    drv.decode_segments(segments)
    return np.array(continue_decoding(drv, tokens))


def budget(n_image: int, drop_ratio: float) -> int:
    """floor(N * (1 - R)) as fastv_edge.pruning computes it (R in float32); R = 1 keeps nothing."""
    from fastv_edge.pruning import n_keep_for_ratio

    return 0 if drop_ratio == 1.0 else n_keep_for_ratio(n_image, drop_ratio)


def finish_by_ratio(native, ctx, drop_ratio: float) -> int:
    """The raw llama_fastv_finish() with the budget of R for the N image tokens decoded; returns its status."""
    n_image = native.llama_fastv_get_scores(ctx, None, 0)
    assert n_image >= 0, f"llama_fastv_get_scores returned {n_image}"
    return native.llama_fastv_finish(ctx, budget(n_image, drop_ratio))


def run_fastv(native, drv, segments, tokens, k, drop_ratio=0.0, keep=None):
    drv.clear()
    # the raw C calls: C's own ranking of the top floor(N * (1 - R)) is what these tests check
    assert native.llama_fastv_begin(drv.ctx, 0, k) == 0
    drv.decode_segments(segments)
    if keep is None:
        assert finish_by_ratio(native, drv.ctx, drop_ratio) == 0
    else:
        native.finish_with_keep(drv.ctx, keep)
    scores = np.array(native.get_scores(drv.ctx))
    kept = native.get_kept(drv.ctx)
    return np.array(continue_decoding(drv, tokens)), scores, kept


def run_ref(ref, segments, tokens, k=None, keep=None):
    out = ref.prefill(segments, K=k, keep=keep)
    logits = [out["logits"]]
    for t in tokens:
        logits.append(ref.decode(t))
    return np.array(logits), out["scores"]


def cut_gap(scores, n_keep: int) -> float:
    """Score margin at the top-k boundary; inf when the selection cannot be ambiguous.

    Columns outside a sliding window score exactly 0 in the library and the reference
    alike, so a cut between two such zeros is decided by the same tie rule in both."""
    if n_keep in (0, len(scores)):
        return np.inf
    s = np.sort(scores)[::-1]
    if s[n_keep - 1] == 0.0 and s[n_keep] == 0.0:
        return np.inf
    return float(s[n_keep - 1] - s[n_keep])
