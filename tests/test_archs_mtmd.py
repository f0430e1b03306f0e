"""FastV on qwen2vl and gemma3 with their own projector types, end to end through mtmd.

tests/test_fastv_archs.py feeds embedding rows with positions we assign. Here mtmd does it
as it does for real Qwen2-VL / Gemma 3 files: a 'qwen2vl_merger' projector gives an image
an (nx, ny) token grid that follows the photo's aspect and 4-section M-RoPE positions; a
'gemma3' projector pools SigLIP patches and mtmd decodes the block non-causally. The float64
reference gets mtmd's own output rows, text tokens and grid, so agreement shows that the
patch recorded and replayed exactly what mtmd decoded.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from fastv_helpers import continue_decoding, cut_gap, finish_by_ratio, forced_tokens, run_ref
from PIL import Image

import fastv_edge as fe

pytestmark = pytest.mark.native
TEXT, IMAGE = 0, 1  # mtmd_input_chunk_type
PHOTO_SIZE = (128, 80)  # qwen2vl: patch 8, merge 2 -> an 8 x 5 grid; gemma3 resizes to 96 x 96
PROMPT = "<|im_start|>user\nLook:{marker}\nWhat is in it?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow) for n in ("qwen2vl", "gemma3")])
def pair(request, tiny_dir):
    """Tiny text model + a projector of its family (output std like test_fastv_archs' rows)."""
    from reference_archs import RefGemma3, RefQwen2VL

    from fastv_edge.testing.make_tiny_archs import make_tiny_gemma3, make_tiny_qwen2vl
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj

    if request.param == "qwen2vl":
        lm = make_tiny_qwen2vl(tiny_dir)
        mmproj, hp = make_tiny_vision_mmproj(tiny_dir, "qwen2vl_merger", lm.hparams.n_embd, out_std=0.5)
        return {
            "name": "qwen2vl",
            "lm": lm.path,
            "mmproj": mmproj,
            "ref": RefQwen2VL(lm.path),
            "n_img": 40,
            "template": "qwen2-vl",
        }
    lm = make_tiny_gemma3(tiny_dir)  # 6 layers, 2 and 5 global, window 16
    mmproj, hp = make_tiny_vision_mmproj(tiny_dir, "gemma3", lm.hparams.n_embd, out_std=2.5)  # 96 px -> 6 x 6
    return {
        "name": "gemma3",
        "lm": lm.path,
        "mmproj": mmproj,
        "ref": RefGemma3(lm.path),
        "n_img": hp.n_image_tokens,
        "template": "gemma-3",
    }


def resized(name: str) -> np.ndarray:
    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).resize(PHOTO_SIZE, Image.BICUBIC))


@pytest.fixture(scope="module")
def photo():
    return resized("astronaut")


def mtmd_prefill(session, native=None, k=2, drop_ratio=0.0):
    """Clear, then decode every chunk with mtmd_helper_eval_chunks, stock or inside FastV."""
    session.driver.clear()
    if native is None:
        session.eval()
        return
    assert native.llama_fastv_begin(session.driver.ctx, 0, k) == 0  # C's own ranking
    try:
        session.eval()
    except BaseException:
        native.abort(session.driver.ctx)
        raise
    assert finish_by_ratio(native, session.driver.ctx, drop_ratio) == 0


def reference_segments(session, chunks, name):
    """The prompt as the reference takes it: mtmd's text tokens, output rows and image grid."""
    segments = []
    for i, (kind, _) in enumerate(chunks):
        if kind == TEXT:
            segments.append(("tokens", session.chunk_tokens(i)))
        else:
            opts = {"grid": session.image_grid(i)} if name == "qwen2vl" else {"causal": False}
            segments.append(("embd", session.encode(i).astype(np.float64), opts))
    return segments


def test_mtmd_lays_out_the_image_as_the_family_does(pair, llama_driver, photo):
    from llama_driver import MtmdSession

    drv = llama_driver(pair["lm"])
    with MtmdSession(drv, pair["mmproj"]) as session:
        chunks = session.tokenize(PROMPT.format(marker=session.marker), photo)
        assert [kind for kind, _ in chunks] == [TEXT, IMAGE, TEXT]
        assert chunks[1][1] == pair["n_img"]
        if pair["name"] == "qwen2vl":
            assert session.image_grid(1) == (8, 5)  # the photo's aspect, not a square
        rows = session.encode(1)
        assert np.all(np.isfinite(rows)) and rows.std(axis=0).mean() > 0.1  # tokens differ from each other
        session.eval()
    n_text = chunks[0][1] + chunks[2][1]
    # M-RoPE: the image advances positions by max(nx, ny) = 8, not by its 40 tokens
    assert drv.n_past == n_text + (8 if pair["name"] == "qwen2vl" else pair["n_img"])


@pytest.mark.parametrize("k", [2, -1])
def test_drop_ratio_zero_is_stock(pair, native, llama_driver, photo, k):
    from llama_driver import MtmdSession

    drv = llama_driver(pair["lm"])
    k = k if k > 0 else drv.n_layer - 1
    tokens = forced_tokens(drv)
    with MtmdSession(drv, pair["mmproj"]) as session:
        session.tokenize(PROMPT.format(marker=session.marker), photo)
        mtmd_prefill(session)
        stock = np.array(continue_decoding(drv, tokens))
        mtmd_prefill(session, native, k, 0.0)
        same = np.array(continue_decoding(drv, tokens))
    assert native.get_kept(drv.ctx) == list(range(pair["n_img"]))
    assert np.abs(same - stock).max() <= 1e-6


@pytest.mark.parametrize("k,drop_ratio", [(1, 0.5), (2, 0.5), (2, 0.75), (3, 0.25), (-1, 0.9)])
def test_fastv_matches_reference(pair, native, llama_driver, k, drop_ratio):
    from llama_driver import MtmdSession
    from reference import topk_keep

    drv = llama_driver(pair["lm"])
    k = k if k > 0 else drv.n_layer - 1
    tokens = forced_tokens(drv)
    with MtmdSession(drv, pair["mmproj"]) as session:
        for name in ("astronaut", "chelsea", "coffee"):  # the first photo without a near-tie at the cut
            chunks = session.tokenize(PROMPT.format(marker=session.marker), resized(name))
            segments = reference_segments(session, chunks, pair["name"])
            mtmd_prefill(session, native, k, drop_ratio)
            scores = np.array(native.get_scores(drv.ctx))
            kept = native.get_kept(drv.ctx)
            got = np.array(continue_decoding(drv, tokens))
            want, ref_scores = run_ref(pair["ref"], segments, tokens, k=k, keep=kept)
            if cut_gap(ref_scores, len(kept)) >= 1e-4:
                break
        else:
            pytest.fail("every photo put two scores within 1e-4 of the cut")
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-9)
    assert kept == topk_keep(ref_scores, drop_ratio).tolist()
    assert np.abs(got - want).max() < 1e-4


def test_python_api_with_the_family_template(pair, photos):
    """load() + the preset's chat template + stream_generate: strategy none == R=0, R=0.5 keeps the top half."""
    from fastv_edge import _native
    from fastv_edge.pruning import select_top_k

    runtime = fe.RuntimeConfig(n_ctx=2048, n_threads=1)
    with fe.load(pair["lm"], pair["mmproj"], runtime=runtime, template=pair["template"]) as model:

        def run(prune):
            out = list(
                fe.stream_generate(model, "What is in the image?", [photos["chelsea"]], max_tokens=6, prune=prune)
            )
            return [r.token for r in out], out[-1]

        # K=3: layer 2 is global in the tiny gemma3 (window 16), so every image token is ranked
        stock, last = run(fe.PruneConfig(strategy="none"))
        assert last.n_kept == last.n_image_tokens > 0
        assert run(fe.PruneConfig(layer=3, drop_ratio=0.0))[0] == stock
        _, last = run(fe.PruneConfig(layer=3, drop_ratio=0.5))
        n = last.n_image_tokens
        assert last.n_kept == n // 2 and last.flops_ratio < 1.0 and last.n_unranked == 0
        scores = _native.get_scores(model.ctx)
        assert min(scores) > 0 and _native.get_kept(model.ctx) == select_top_k(scores, n // 2).tolist()


def test_reference_sees_a_wrong_layout(pair, native, llama_driver, photo):
    """Negative control: the comparison above would catch a wrong grid or a causal image block."""
    from llama_driver import MtmdSession

    drv = llama_driver(pair["lm"])
    tokens = forced_tokens(drv)
    with MtmdSession(drv, pair["mmproj"]) as session:
        chunks = session.tokenize(PROMPT.format(marker=session.marker), photo)
        segments = reference_segments(session, chunks, pair["name"])
        mtmd_prefill(session, native, 2, 0.0)
        got = np.array(continue_decoding(drv, tokens))
    kind, rows, opts = segments[1]
    wrong = {"grid": opts["grid"][::-1]} if pair["name"] == "qwen2vl" else {"causal": True}  # (5, 8) / causal
    want, _ = run_ref(
        pair["ref"], [segments[0], (kind, rows, wrong), segments[2]], tokens, k=2, keep=list(range(len(rows)))
    )
    assert np.abs(got - want).max() > 1e-2


def test_gemma3_warns_when_layer_k_minus_1_cannot_see_every_image_token(tiny_dir, photos):
    """Window 16, pattern 3: layer 1 is local, layer 2 global. A long question pushes the image out of
    layer 1's window: K=2 warns and counts the unranked tokens, K=3 (global layer 2) does not."""
    import warnings

    from fastv_edge.testing.make_tiny_archs import make_tiny_gemma3
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj

    lm = make_tiny_gemma3(tiny_dir)
    mmproj, hp = make_tiny_vision_mmproj(tiny_dir, "gemma3", lm.hparams.n_embd, out_std=2.5)
    question = "Please describe the picture in detail, every object and every colour in it."
    with fe.load(lm.path, mmproj, runtime=fe.RuntimeConfig(n_ctx=1024, n_threads=1)) as model:
        with pytest.warns(RuntimeWarning, match="outside its sliding window"):
            out = list(
                fe.stream_generate(
                    model, question, [photos["coffee"]], max_tokens=1, prune=fe.PruneConfig(layer=2, drop_ratio=0.5)
                )
            )
        assert 0 < out[-1].n_unranked <= hp.n_image_tokens
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = list(
                fe.stream_generate(
                    model, question, [photos["coffee"]], max_tokens=1, prune=fe.PruneConfig(layer=3, drop_ratio=0.5)
                )
            )
        assert out[-1].n_unranked == 0
