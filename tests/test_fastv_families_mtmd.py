"""FastV on Qwen3-VL and Gemma 4 end to end: mtmd's own projectors, rows and positions, then the package API.

tests/test_fastv_families.py feeds embedding rows we make. Here a tiny `qwen3vl_merger` (deepstack
mergers after vision layers 0, 1, 2) and a tiny `gemma4v` projector encode a photo and mtmd decodes it
inside the FastV prefill (mtmd_helper_eval_chunks): n_embd_inp-wide rows with M-RoPE grid positions
for Qwen3-VL, a non-causal block for the tiny Gemma 4 (its text width 64 is neither E2B's nor E4B's).
The float64 reference gets mtmd's text tokens, rows and grid, so agreement shows the patch recorded and
replayed what mtmd decoded. Then load() + stream_generate with the families' chat templates, the row
width check and the refusal of hybrid models through the public API.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from fastv_helpers import budget, cut_gap
from PIL import Image

import fastv_edge as fe
from fastv_edge.errors import Status

pytestmark = pytest.mark.native
TEXT = 0  # mtmd_input_chunk_type
PHOTO_SIZE = (128, 80)  # qwen3vl_merger: patch 8, merge 2 -> an 8 x 5 grid
QWEN_PROMPT = "<|im_start|>user\nLook:{marker}\nWhat is in it?<|im_end|>\n<|im_start|>assistant\n"
GEMMA_PROMPT = "<|turn>user\nLook:{marker}\nWhat is in it?<turn|>\n<|turn>model\n"
ATOL = {"qwen3vl": 1e-4, "gemma4-e2b": 1e-3, "gemma4-31b": 1e-3}  # see test_fastv_families.ATOL


@pytest.fixture(scope="module", params=["qwen3vl", pytest.param("gemma4-e2b", marks=pytest.mark.slow), "gemma4-31b"])
def pair(request, tiny_dir):
    """Tiny text model of the family + its projector, and the family's reference."""
    from reference_families import RefQwen3VL
    from reference_gemma4 import RefGemma4

    from fastv_edge.testing.make_tiny_archs import make_tiny_arch
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj
    from fastv_edge.testing.mmproj_gemma4v import make_tiny_gemma4v_mmproj

    kind = request.param
    lm = make_tiny_arch(tiny_dir, kind)
    if kind == "qwen3vl":
        mmproj, _ = make_tiny_vision_mmproj(
            tiny_dir, "qwen3vl_merger", lm.hparams.n_embd, out_std=0.5, n_layer=4, deepstack_layers=(0, 1, 2)
        )
        return {"kind": kind, "lm": lm, "mmproj": mmproj, "ref": RefQwen3VL(lm.path), "prompt": QWEN_PROMPT}
    mmproj, _ = make_tiny_gemma4v_mmproj(tiny_dir, lm.hparams.n_embd)
    return {"kind": kind, "lm": lm, "mmproj": mmproj, "ref": RefGemma4(lm.path), "prompt": GEMMA_PROMPT}


@pytest.fixture
def session(pair):
    """Factory: session(**driver kwargs) -> FamilyMtmdSession on a fresh FamilyDriver; both closed afterwards."""
    from family_driver import FamilyDriver, FamilyMtmdSession

    opened = []

    def factory(**kwargs):
        driver = FamilyDriver(pair["lm"].path, n_threads=1, **kwargs)
        opened.append(driver)
        opened.append(FamilyMtmdSession(driver, pair["mmproj"], n_threads=1))
        return opened[-1]

    yield factory
    for obj in reversed(opened):
        obj.close()


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).resize(PHOTO_SIZE, Image.BICUBIC))


def forced(drv) -> list[int]:
    return drv.tokenize(" A small red boat is tied to the old wooden dock.")[:6]


def continue_decoding(drv, tokens) -> np.ndarray:
    out = [drv.logits()]
    for token in tokens:
        drv.decode_tokens([token])
        out.append(drv.logits())
    return np.array(out)  # (1 + len(tokens), n_vocab)


def mtmd_prefill(sess, native=None, k: int = 2, drop_ratio: float = 0.0) -> None:
    """Clear, then decode every chunk with mtmd_helper_eval_chunks: stock, or inside a FastV prefill."""
    drv = sess.driver
    drv.clear()
    if native is None:
        sess.eval()
        return
    assert native.llama_fastv_begin(drv.ctx, 0, k) == Status.OK
    try:
        sess.eval()
    except BaseException:
        native.abort(drv.ctx)
        raise
    n_image = native.llama_fastv_get_scores(drv.ctx, None, 0)
    assert native.llama_fastv_finish(drv.ctx, budget(n_image, drop_ratio)) == Status.OK


def reference_segments(sess, chunks, kind: str):
    """The prompt as the reference takes it: mtmd's text tokens, n_embd_inp-wide rows and image layout."""
    segments = []
    for i, (chunk_type, _) in enumerate(chunks):
        if chunk_type == TEXT:
            segments.append(("tokens", sess.chunk_tokens(i)))
        else:
            opts = {"grid": sess.image_grid(i)} if kind == "qwen3vl" else {"causal": not sess.use_non_causal(i)}
            segments.append(("embd", sess.encode_inp(i).astype(np.float64), opts))
    return segments


@pytest.mark.parametrize("k", [2, -1])
def test_drop_ratio_zero_is_stock(pair, native, session, k):
    sess = session()
    drv = sess.driver
    k = k if k > 0 else drv.n_layer - 1
    tokens = forced(drv)
    chunks = sess.tokenize(pair["prompt"].format(marker=sess.marker), photo("astronaut"))
    n_img = chunks[1][1]
    mtmd_prefill(sess)
    stock = continue_decoding(drv, tokens)
    mtmd_prefill(sess, native, k, 0.0)
    same = continue_decoding(drv, tokens)
    assert native.get_kept(drv.ctx) == list(range(n_img))
    assert np.abs(same - stock).max() <= 1e-6
    if pair["kind"] == "qwen3vl":
        assert drv.n_embd_inp == 4 * drv.n_embd and sess.image_grid(1) == (8, 5)  # deepstack rows, M-RoPE grid
    else:
        assert sess.use_non_causal(1)  # the tiny width makes mtmd decode the image as one bidirectional block


@pytest.mark.parametrize("k, drop_ratio", [(2, 0.5), pytest.param(1, 0.75, marks=pytest.mark.slow), (-1, 0.5)])
def test_fastv_matches_reference(pair, native, session, k, drop_ratio):
    from reference import topk_keep

    sess = session()
    drv = sess.driver
    k = k if k > 0 else drv.n_layer - 1
    tokens = forced(drv)
    for name in ("coffee", "chelsea", "astronaut"):  # the first photo without a near-tie at the cut
        chunks = sess.tokenize(pair["prompt"].format(marker=sess.marker), photo(name))
        segments = reference_segments(sess, chunks, pair["kind"])
        mtmd_prefill(sess, native, k, drop_ratio)
        scores, kept = np.array(native.get_scores(drv.ctx)), native.get_kept(drv.ctx)
        got = continue_decoding(drv, tokens)
        out = pair["ref"].prefill(segments, K=k, keep=kept)
        want = np.array([out["logits"]] + [pair["ref"].decode(t) for t in tokens])
        if cut_gap(out["scores"], len(kept)) >= 1e-4:
            break
    else:
        pytest.fail("every photo put two scores within 1e-4 of the cut")
    np.testing.assert_allclose(scores, out["scores"], rtol=1e-5, atol=1e-9)
    assert kept == topk_keep(out["scores"], drop_ratio).tolist()
    assert pair["ref"].n_past == drv.n_past
    assert np.abs(got - want).max() < ATOL[pair["kind"]]


TEMPLATES = {"qwen3vl": "qwen3-vl", "gemma4-e2b": "gemma-4", "gemma4-31b": "gemma-4"}
# qwen3vl: K = 2 < n_deepstack = 3; gemma4: a K whose layer K-1 attends globally, so every image token is ranked
LAYER = {"qwen3vl": 2, "gemma4-e2b": 4, "gemma4-31b": 3}


def test_python_api_with_the_family_template(pair, photos):
    """load() + the family's chat template + stream_generate: strategy none == R=0, R=0.5 keeps C's top half."""
    from fastv_edge import _native
    from fastv_edge.pruning import select_top_k

    runtime = fe.RuntimeConfig(n_ctx=2048, n_threads=1)
    with fe.load(pair["lm"].path, pair["mmproj"], runtime=runtime, template=TEMPLATES[pair["kind"]]) as model:
        assert model.info.n_ff == pair["lm"].hparams.n_ff  # gemma4 stores it per layer, as an array

        def run(prune):
            images = [photos["chelsea"]]
            out = list(fe.stream_generate(model, "What is in the image?", images, max_tokens=6, prune=prune))
            return [r.token for r in out], out[-1]

        layer = LAYER[pair["kind"]]
        stock, last = run(fe.PruneConfig(strategy="none"))
        assert last.n_kept == last.n_image_tokens > 0
        assert run(fe.PruneConfig(layer=layer, drop_ratio=0.0))[0] == stock
        _, last = run(fe.PruneConfig(layer=layer, drop_ratio=0.5))
        n = last.n_image_tokens
        assert last.n_kept == n // 2 and last.flops_ratio < 1.0 and last.n_unranked == 0
        scores = _native.get_scores(model.ctx)
        assert _native.get_kept(model.ctx) == select_top_k(scores, n // 2).tolist()


def test_rows_narrower_than_the_decoder_input_are_refused(tiny_dir):
    """qwen3vl takes n_embd * 4 floats per row; llama_decode would read past n_embd-wide rows unchecked."""
    import llama_cpp
    from family_driver import FamilyDriver

    from fastv_edge.decode import decode_rows
    from fastv_edge.testing.make_tiny_archs import make_tiny_arch

    lm = make_tiny_arch(tiny_dir, "qwen3vl")
    with FamilyDriver(lm.path, n_threads=1) as drv:
        positions = np.tile(np.arange(4, dtype=np.int32), (4, 1))  # (4, n): M-RoPE sections
        narrow = np.zeros((4, drv.n_embd), dtype=np.float32)
        with pytest.raises(ValueError, match=r"64 floats wide but this model takes 256"):
            decode_rows(drv.ctx, narrow, positions, non_causal=False, n_batch=16)
        assert llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(drv.ctx), 0) == -1  # nothing decoded
        decode_rows(drv.ctx, np.zeros((4, drv.n_embd_inp), dtype=np.float32), positions, non_causal=False, n_batch=16)
        assert llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(drv.ctx), 0) == 3


def test_hybrid_model_refused_per_request(tiny_dir):
    """An lfm2 model loaded for the stock path: a FastV request names pre-LLM selection, and the model keeps working."""
    from fastv_edge.testing.make_tiny_archs import make_tiny_lfm2

    lm = make_tiny_lfm2(tiny_dir)
    runtime = fe.RuntimeConfig(n_ctx=512, n_threads=1)
    with fe.load(lm.path, runtime=runtime, prune=fe.PruneConfig(strategy="none"), template="chatml") as model:
        with pytest.raises(fe.UnsupportedModelError, match=r"--strategy divprune -k 0"):
            list(fe.stream_generate(model, "Hello", prune=fe.PruneConfig(layer=2, drop_ratio=0.5), max_tokens=2))
        out = list(fe.stream_generate(model, "Hello", max_tokens=2))
        assert len(out) == 2
