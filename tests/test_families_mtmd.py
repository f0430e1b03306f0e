"""Qwen3-VL and Gemma 4 end to end through mtmd: a tiny `qwen3vl_merger` projector with deepstack
mergers, and a tiny `gemma4v` projector, encode a photo that is decoded into the family's tiny text model.

mtmd writes rows of llama_model_n_embd_inp = n_embd * (1 + n_deepstack) floats (the main
merger's output, then one slice per deepstack merger), gives the image an (nx, ny) grid that
follows the photo's aspect with M-RoPE positions (t, y, x, 0), and advances n_past by
mtmd_input_chunk_get_n_pos = max(nx, ny). These tests decode mtmd's own rows at mtmd's own
positions through tests/family_driver.py and compare with mtmd's decode (<= 1e-6), and feed the
float64 reference the same rows (<= 1e-4): the layout the pre-LLM selection and FastV build on.
Gemma 4: mtmd wraps the image in "<|image>" ... "<image|>" text, gives it 1-D positions and
decodes it non-causally, because the tiny text width (64) is not E2B's 1536 or E4B's 2560
(mtmd_decode_use_non_causal): real E2B/E4B images are decoded causally, the tiny E2B layout's are not.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

pytestmark = pytest.mark.native
TEXT, IMAGE = 0, 1  # mtmd_input_chunk_type
PHOTO_SIZE = (128, 80)  # patch 8, merge 2 -> an 8 x 5 token grid
PROMPT = "<|im_start|>user\nLook:{marker}\nWhat is in it?<|im_end|>\n<|im_start|>assistant\n"
N_DEEPSTACK = 3
ATOL = 1e-4


@pytest.fixture(scope="module")
def qwen3vl(tiny_dir):
    """Tiny qwen3vl LLM (6 layers, 3 deepstack) + a qwen3vl_merger of 4 vision layers, mergers after 0, 1, 2."""
    from fastv_edge.testing.make_tiny_archs import make_tiny_qwen3vl
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj

    lm = make_tiny_qwen3vl(tiny_dir)
    mmproj, hp = make_tiny_vision_mmproj(
        tiny_dir, "qwen3vl_merger", lm.hparams.n_embd, out_std=0.5, n_layer=4, deepstack_layers=(0, 1, 2)
    )
    assert hp.n_out == lm.hparams.n_embd_inp
    return lm, mmproj


@pytest.fixture
def session(qwen3vl):
    """Factory: session(**driver kwargs) -> FamilyMtmdSession on a fresh FamilyDriver; both closed afterwards."""
    from family_driver import FamilyDriver, FamilyMtmdSession

    opened = []

    def factory(**kwargs):
        driver = FamilyDriver(qwen3vl[0].path, n_threads=1, **kwargs)
        opened.append(driver)
        opened.append(FamilyMtmdSession(driver, qwen3vl[1], n_threads=1))
        return opened[-1]

    yield factory
    for obj in reversed(opened):
        obj.close()


def photo(name: str = "astronaut") -> np.ndarray:
    return np.asarray(Image.fromarray(getattr(skimage.data, name)()).resize(PHOTO_SIZE, Image.BICUBIC))


def forced_tokens(driver) -> list[int]:
    return driver.tokenize(" A small red boat is tied to the old wooden dock.")[:6]


def continue_decoding(driver, tokens) -> np.ndarray:
    """(1 + len(tokens), n_vocab): the prompt's last logits, then one per forced token."""
    out = [driver.logits()]
    for token in tokens:
        driver.decode_tokens([token])
        out.append(driver.logits())
    return np.array(out)


def own_decode(sess, chunks, rows) -> None:
    """Decode the chunks ourselves: text tokens, then mtmd's rows at mtmd's positions with mtmd's causal rule."""
    drv = sess.driver
    drv.clear()
    for i, (kind, _) in enumerate(chunks):
        last = i == len(chunks) - 1
        if kind == TEXT:
            drv.decode_tokens(sess.chunk_tokens(i), logits_last=last)
        else:
            before = drv.n_past
            grid = sess.image_grid(i) if drv.n_pos_per_embd == 4 else None  # M-RoPE grid, else 1-D positions
            drv.decode_embd_inp(rows, logits_last=last, grid=grid, causal=not sess.use_non_causal(i))
            assert drv.n_past - before == sess.chunk_n_pos(i)


def test_mtmd_lays_out_a_qwen3vl_image(session):
    sess = session()
    drv = sess.driver
    chunks = sess.tokenize(PROMPT.format(marker=sess.marker), photo())
    assert [kind for kind, _ in chunks] == [TEXT, IMAGE, TEXT]
    assert chunks[1][1] == 40 and sess.image_grid(1) == (8, 5)  # the photo's aspect, not a square
    assert sess.chunk_n_pos(1) == 8 and not sess.use_non_causal(1)
    rows = sess.encode_inp(1)  # (40, n_embd * 4)
    assert rows.shape == (40, drv.n_embd_inp) == (40, drv.n_embd * (1 + N_DEEPSTACK))
    slices = rows.reshape(40, 1 + N_DEEPSTACK, drv.n_embd)  # main merger, then deepstack 0, 1, 2
    assert np.all(np.isfinite(rows)) and np.all(slices.std(axis=0).mean(axis=1) > 0.05)  # every part varies
    for a in range(1 + N_DEEPSTACK):
        for b in range(a):
            assert np.abs(slices[:, a] - slices[:, b]).max() > 0.1  # four different mergers
    n0 = chunks[0][1]
    drv.n_past = n0
    np.testing.assert_array_equal(sess.decoder_positions(1, n0), drv.embd_positions(40, (8, 5))[0])


@pytest.mark.parametrize("n_batch", [512, 16])  # 16: mtmd splits the 40 image rows into 3 decode calls
def test_decoding_mtmd_rows_ourselves_equals_mtmd(session, n_batch):
    sess = session(n_batch=n_batch, n_ubatch=n_batch)
    drv = sess.driver
    tokens = forced_tokens(drv)
    chunks = sess.tokenize(PROMPT.format(marker=sess.marker), photo("chelsea"))
    rows = sess.encode_inp(1)
    drv.clear()
    sess.eval(n_batch=n_batch)  # mtmd_helper_eval_chunks
    n_past = drv.n_past
    assert n_past == chunks[0][1] + sess.chunk_n_pos(1) + chunks[2][1]
    by_mtmd = continue_decoding(drv, tokens)
    own_decode(sess, chunks, rows)
    assert drv.n_past == n_past
    assert np.abs(continue_decoding(drv, tokens) - by_mtmd).max() <= 1e-6


def test_reference_matches_mtmd(qwen3vl, session):
    from reference_families import RefQwen3VL

    sess = session()
    drv = sess.driver
    tokens = forced_tokens(drv)
    chunks = sess.tokenize(PROMPT.format(marker=sess.marker), photo("coffee"))
    assert [kind for kind, _ in chunks] == [TEXT, IMAGE, TEXT]
    rows = sess.encode_inp(1).astype(np.float64)
    segments = [
        ("tokens", sess.chunk_tokens(0)),
        ("embd", rows, {"grid": sess.image_grid(1)}),
        ("tokens", sess.chunk_tokens(2)),
    ]
    drv.clear()
    sess.eval()
    got = continue_decoding(drv, tokens)
    ref = RefQwen3VL(qwen3vl[0].path)
    want = np.array([ref.prefill(segments)["logits"]] + [ref.decode(t) for t in tokens])
    assert ref.n_past == drv.n_past
    assert np.abs(got - want).max() <= ATOL
    no_deepstack = rows.copy()
    no_deepstack[:, drv.n_embd :] = 0.0  # negative control: the deepstack slices reach the logits
    segments[1] = ("embd", no_deepstack, segments[1][2])
    assert np.abs(ref.prefill(segments)["logits"] - got[0]).max() > 5 * ATOL


@pytest.mark.parametrize("layout", ["e2b", "31b"])
def test_gemma4v_image_through_mtmd(tiny_dir, layout):
    from family_driver import FamilyDriver, FamilyMtmdSession
    from reference_gemma4 import RefGemma4

    from fastv_edge.testing.make_tiny_archs import make_tiny_gemma4
    from fastv_edge.testing.mmproj_gemma4v import MIN_TOKENS, make_tiny_gemma4v_mmproj

    lm = make_tiny_gemma4(tiny_dir, layout)
    mmproj, _ = make_tiny_gemma4v_mmproj(tiny_dir, lm.hparams.n_embd)
    prompt = "<start_of_turn>user\nLook:{marker}\nWhat is in it?<end_of_turn>\n<start_of_turn>model\n"
    with FamilyDriver(lm.path, n_threads=1) as drv, FamilyMtmdSession(drv, mmproj, n_threads=1) as sess:
        chunks = sess.tokenize(prompt.format(marker=sess.marker), photo())
        assert [kind for kind, _ in chunks] == [TEXT, IMAGE, TEXT]
        n_img = chunks[1][1]
        assert n_img >= MIN_TOKENS and sess.chunk_n_pos(1) == n_img  # 1-D positions: one per token
        assert sess.use_non_causal(1)  # tiny n_embd 64: not E2B/E4B's width, so mtmd goes non-causal
        assert "".join(drv.piece(t) for t in sess.chunk_tokens(0)).endswith("<|image>")
        rows = sess.encode_inp(1)  # (n_img, n_embd)
        tokens = forced_tokens(drv)
        drv.clear()
        sess.eval()
        by_mtmd = continue_decoding(drv, tokens)
        own_decode(sess, chunks, rows)
        assert np.abs(continue_decoding(drv, tokens) - by_mtmd).max() <= 1e-6
        segments = [
            ("tokens", sess.chunk_tokens(0)),
            ("embd", rows.astype(np.float64), {"causal": False}),
            ("tokens", sess.chunk_tokens(2)),
        ]
    ref = RefGemma4(lm.path)
    want = np.array([ref.prefill(segments)["logits"]] + [ref.decode(t) for t in tokens])
    assert np.abs(by_mtmd - want).max() <= ATOL
    segments[1] = ("embd", segments[1][1], {"causal": True})  # negative control: mtmd's block is non-causal
    assert np.abs(ref.prefill(segments)["logits"] - by_mtmd[0]).max() > 5 * ATOL


def test_driver_refuses_rows_narrower_than_n_embd_inp(session):
    # llama_decode's llama_batch path reads llama_model_n_embd_inp floats per row whatever the
    # caller allocated (llama-batch.cpp llama_batch_compat::init): n_embd-wide rows must be refused
    # before C reads past them
    drv = session().driver
    with pytest.raises(ValueError, match=r"rows must be \(n, 256\)"):
        drv.decode_embd_inp(np.zeros((4, drv.n_embd), dtype=np.float32))
