"""The qwen3vl, qwen2, qwen3, mistral3, gemma4 (both layouts) and lfm2 references against stock llama.cpp.

Stock means the ordinary llama_decode path (no FastV call), tiny F32 models from
fastv_edge/testing/make_tiny_archs.py, F32 K/V, flash attention off: last-prompt logits and 8
forced decode steps agree to 1e-4. The prompt is text, an "image" of embedding rows, then text,
as three decode calls like mtmd: qwen3vl images carry M-RoPE grid positions and rows of
llama_model_n_embd_inp floats (deepstack slices), gemma4 images are decoded causally (E2B/E4B,
as mtmd does for them) or non-causally (26B/31B). Each family also has negative controls: the
same comparison with one convention changed must fail, so a pass means the convention was exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference_families
import reference_gemma4
from reference_families import RefMistral3, RefQwen2, RefQwen3, RefQwen3VL
from reference_gemma4 import RefGemma4
from reference_lfm2 import RefLfm2

ATOL = 1e-4
PROMPT_HEAD = "<|im_start|>user\nLook at this picture:"
PROMPT_TAIL = "\nWhat is in it?<|im_end|>\n<|im_start|>assistant\n"
FORCED = " A small red boat is tied to the old wooden dock."
GRID = (8, 5)  # nx, ny: 40 image tokens, the image advances positions by 8
REFS = {
    "qwen3vl": RefQwen3VL,
    "qwen2": RefQwen2,
    "qwen3": RefQwen3,
    "mistral3": RefMistral3,
    "gemma4-e2b": RefGemma4,
    "gemma4-31b": RefGemma4,
    "lfm2": RefLfm2,
}
IMAGE_STD = {"gemma4-e2b": 2.5, "gemma4-31b": 2.5}  # Gemma's image rows are large, like its scaled tokens


@pytest.fixture(scope="module")
def family(tiny_dir):
    """Factory: family(kind) -> TinyArchModel, written once per session directory."""
    from fastv_edge.testing.make_tiny_archs import make_tiny_arch

    return lambda kind: make_tiny_arch(tiny_dir, kind)


@pytest.fixture
def family_driver():
    """Factory: family_driver(model_path, **LlamaDriver kwargs) -> FamilyDriver, closed afterwards."""
    from family_driver import FamilyDriver

    drivers = []

    def factory(model_path, **kwargs):
        drivers.append(FamilyDriver(model_path, n_threads=1, **kwargs))
        return drivers[-1]

    yield factory
    for driver in drivers:
        driver.close()


def _image(kind: str, n: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, width)) * IMAGE_STD.get(kind, 0.5)).astype(np.float32)  # (n, n_embd_inp)


def _segments(driver, kind: str, opts: dict, n_image: int = 40, seed: int = 0):
    image = _image(kind, n_image, driver.n_embd_inp, seed)
    return [("tokens", driver.tokenize(PROMPT_HEAD)), ("embd", image, opts), ("tokens", driver.tokenize(PROMPT_TAIL))]


def _stock(driver, segments, forced) -> np.ndarray:
    driver.clear()
    driver.decode_segments_inp(segments)
    out = [driver.logits()]
    for token in forced:
        driver.decode_tokens([token])
        out.append(driver.logits())
    return np.array(out)  # (1 + steps, n_vocab)


def _reference(ref, segments, forced) -> np.ndarray:
    out = [ref.prefill(segments)["logits"]]
    out += [ref.decode(token) for token in forced]
    return np.array(out)


def _forced(driver) -> list[int]:
    forced = driver.tokenize(FORCED)[:8]
    assert len(forced) == 8
    return forced


@pytest.mark.native
@pytest.mark.parametrize(
    "kind, opts, n_batch, n_ubatch",
    [
        ("qwen3vl", {"grid": GRID}, 512, 512),  # image wider than tall, deepstack slices on every image row
        ("qwen3vl", {"grid": GRID[::-1]}, 512, 512),  # transposed grid: other (y, x), same n_past advance
        ("qwen3vl", {"grid": GRID}, 512, 8),  # 5 ubatches: each reads its own rows' deepstack columns
        ("qwen3vl", {"grid": GRID}, 16, 16),  # 3 llama_decode calls, as mtmd splits by n_batch
        ("qwen3vl", {}, 512, 512),  # 1-D embedding rows: (p, p, p, p) like mtmd's audio positions
        ("qwen2", {}, 512, 512),
        ("qwen3", {}, 512, 512),
        ("mistral3", {}, 512, 512),  # positions up to 68 cross 4 temperature steps of 16
        ("mistral3", {}, 512, 8),
        ("gemma4-e2b", {"causal": True}, 512, 512),  # E2B/E4B: mtmd decodes their images causally
        ("gemma4-e2b", {"causal": False}, 512, 512),  # what mtmd does for a gemma4v text width not 1536/2560
        ("gemma4-e2b", {"causal": True}, 512, 8),
        ("gemma4-31b", {"causal": False}, 512, 512),  # 26B/31B: sliding layers see the image both ways
        ("gemma4-31b", {"causal": True}, 512, 512),
        ("lfm2", {}, 512, 512),
        ("lfm2", {}, 16, 8),  # the conv state crosses ubatches and decode calls
    ],
)
def test_reference_matches_stock(family, family_driver, kind, opts, n_batch, n_ubatch):
    model = family(kind)
    driver = family_driver(model.path, n_batch=n_batch, n_ubatch=n_ubatch)
    segments = _segments(driver, kind, opts)
    forced = _forced(driver)
    stock = _stock(driver, segments, forced)
    ref = REFS[kind](model.path)
    np.testing.assert_allclose(_reference(ref, segments, forced), stock, rtol=0, atol=ATOL)
    advance = max(opts["grid"]) if "grid" in opts else 40
    assert driver.n_past == ref.n_past == len(segments[0][1]) + advance + len(segments[2][1]) + len(forced)
    if kind.startswith("gemma4"):
        assert driver.n_past > 3 * model.hparams.sliding_window  # the window hides cells


# ---- negative controls: each breaks one convention of a reference ----


def _zero_deepstack(ref, segments, monkeypatch):
    rows = segments[1][1].copy()
    rows[:, ref.n_embd :] = 0.0  # the layers < n_deepstack no longer add the image's deepstack slices
    segments[1] = ("embd", rows, segments[1][2])


def _sequential_sections(ref, segments, monkeypatch):
    def sequential(sections, n_pairs):  # qwen2vl's M-RoPE layout instead of the interleaved one
        sector = np.arange(n_pairs) % sum(sections)
        return np.searchsorted(np.cumsum(sections), sector, side="right")

    monkeypatch.setattr(reference_families, "imrope_sections", sequential)


def _text_fourth_position(ref, segments, monkeypatch):
    plain = ref._segment_meta

    def meta(n, kind, opts):  # text rows rotating their 4th-position pairs by p instead of 0
        out = plain(n, kind, opts)
        if kind == "tokens":
            out["rope"][:, 3] = out["p"]
        return out

    monkeypatch.setattr(ref, "_segment_meta", meta)


def _set(**attrs):
    def breaker(ref, segments, monkeypatch):
        for name, value in attrs.items():
            monkeypatch.setattr(ref, name, value)

    breaker.__name__ = "_".join(attrs)
    return breaker


def _image_causal(ref, segments, monkeypatch):
    segments[1] = ("embd", segments[1][1], {"causal": True})


def _all_layers_non_causal(ref, segments, monkeypatch):
    monkeypatch.setattr(ref, "_visible", lambda il, q, k: reference_gemma4._ArchRef._visible(ref, il, q, k))


def _no_padding_token_rows(ref, segments, monkeypatch):
    zero = np.zeros((1, ref.n_layer * ref.n_pl))  # instead of per_layer_token_embd's row 0
    monkeypatch.setattr(ref, "_embd_rows", lambda embd: np.concatenate([embd, ref._per_layer_inputs(embd, zero)], 1))


def _shared_layers_read_first_kv(ref, segments, monkeypatch):
    def source(il):  # the first layer of the same type instead of n_kv - 2 / n_kv - 1
        return il if il < ref.n_kv else next(j for j in range(ref.n_kv) if ref._is_swa(j) == ref._is_swa(il))

    monkeypatch.setattr(ref, "kv_source", source)


def _relu_for_gelu(ref, segments, monkeypatch):
    monkeypatch.setattr(reference_gemma4, "gelu_ggml", lambda x: np.maximum(x, 0.0))


def _conv_state_reset(ref, segments, monkeypatch):
    plain = ref._conv

    def conv(il, h):  # each decode call starts from a zero state
        ref.conv_state[il] = np.zeros_like(ref.conv_state[il])
        return plain(il, h)

    monkeypatch.setattr(ref, "_conv", conv)


@pytest.mark.native
@pytest.mark.parametrize(
    "kind, opts, break_ref",
    [
        ("qwen3vl", {"grid": GRID}, _zero_deepstack),  # deepstack slices reach the logits
        ("qwen3vl", {"grid": GRID}, _sequential_sections),  # pairs interleave t, y, x
        ("qwen3vl", {"grid": GRID}, _text_fourth_position),  # text's 4th position is 0 in the graph
        ("qwen3vl", {"grid": GRID}, _set(QK_NORM=False)),
        ("qwen2", {}, _set(QKV_BIAS=False)),
        ("qwen3", {}, _set(QK_NORM=False)),
        ("mistral3", {}, _set(ext_factor=0.0, freq_scale=1.0)),  # YaRN interpolates
        ("mistral3", {}, _set(temp_scale=0.0)),  # the attention temperature grows with position
        ("mistral3", {}, _set(freq_factors=None)),  # rope_freqs divide the angles
        ("gemma4-31b", {"causal": False}, _image_causal),  # sliding layers see the image both ways
        ("gemma4-31b", {"causal": False}, _all_layers_non_causal),  # global layers stay causal (SWA_ONLY)
        ("gemma4-31b", {"causal": False}, _set(n_swa=10**6)),  # sliding layers really slide
        ("gemma4-31b", {"causal": True}, _shared_layers_read_first_kv),  # shared layers read n_kv - 2 / n_kv - 1
        ("gemma4-e2b", {"causal": True}, _no_padding_token_rows),  # image rows add token 0's per-layer embedding
        ("gemma4-e2b", {"causal": True}, _set(n_pl=0)),  # the per-layer input block
        ("gemma4-e2b", {"causal": True}, _shared_layers_read_first_kv),
        ("gemma4-e2b", {"causal": True}, _set(embd_scale=1.0)),  # token rows are scaled by sqrt(n_embd)
        ("gemma4-e2b", {"causal": True}, _relu_for_gelu),  # GELU inputs in (-10, 10) still matter
        ("lfm2", {}, _conv_state_reset),  # the conv state carries across decode calls
    ],
)
def test_broken_reference_disagrees(family, family_driver, monkeypatch, kind, opts, break_ref):
    model = family(kind)
    driver = family_driver(model.path)
    segments = _segments(driver, kind, opts, seed=2)
    forced = _forced(driver)[:2]  # two one-token decode calls after the prompt
    stock = _stock(driver, segments, forced)
    ref = REFS[kind](model.path)
    break_ref(ref, segments, monkeypatch)
    assert np.abs(_reference(ref, segments, forced) - stock).max() > 5 * ATOL  # well beyond the tolerance


@pytest.mark.native
def test_lfm2_seq_rm_drops_middle_cells_from_attention_layers_only(family, family_driver):
    """What removing the image from an lfm2 context does (why FastV's cell removal does not apply to
    hybrids): llama_memory_seq_rm of the image's positions returns true, the attention layers lose
    those cells, and the conv layers keep the state that already absorbed the image; later tokens
    match a reference whose attention caches alone lost the range."""
    import llama_cpp

    model = family("lfm2")
    driver = family_driver(model.path)
    segments = _segments(driver, "lfm2", {})
    forced = _forced(driver)[:3]
    driver.decode_segments_inp(segments)
    mem = llama_cpp.llama_get_memory(driver.ctx)
    p0 = len(segments[0][1])
    p1 = p0 + 40  # the image's positions
    assert llama_cpp.llama_memory_seq_rm(mem, 0, p0, p1)
    assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == driver.n_past - 1
    got = []
    for token in forced:
        driver.decode_tokens([token])
        got.append(driver.logits())
    ref = RefLfm2(model.path)
    ref.prefill(segments)
    for il in ref.attn_layers:
        keep = (ref.cache_pos[il] < p0) | (ref.cache_pos[il] >= p1)
        ref.cache_k[il], ref.cache_v[il] = ref.cache_k[il][keep], ref.cache_v[il][keep]
        ref.cache_meta[il] = {key: val[keep] for key, val in ref.cache_meta[il].items()}
    want = np.array([ref.decode(t) for t in forced])
    np.testing.assert_allclose(np.array(got), want, rtol=0, atol=ATOL)
    ref.prefill(segments)  # negative control: with the image still in the attention caches
    assert np.abs(np.array([ref.decode(t) for t in forced]) - np.array(got)).max() > 5 * ATOL
