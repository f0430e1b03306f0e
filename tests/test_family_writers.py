"""The family writers' and references' own rules (no llama.cpp needed).

tests/test_reference_families.py checks the references against stock llama.cpp; here: the
shapes each writer refuses, byte-identical files for equal arguments, and the reference rules
that are facts read off the pinned source (IMROPE's pair layout, Gemma 4's KV-sharing map,
deepstack and per-layer columns carried by each row).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from reference_families import RefQwen3VL, imrope_sections
from reference_gemma4 import RefGemma4
from reference_lfm2 import RefLfm2

from fastv_edge.testing.decoder_gguf import DecoderHParams
from fastv_edge.testing.gemma4_gguf import Gemma4HParams
from fastv_edge.testing.mmproj_archs import VisionHParams
from fastv_edge.testing.mmproj_gemma4v import Gemma4VisionHParams


@pytest.fixture(scope="module")
def family(tiny_dir):
    from fastv_edge.testing.make_tiny_archs import make_tiny_arch

    return lambda kind: make_tiny_arch(tiny_dir, kind)


def test_imrope_pairs_interleave_t_y_x():
    # Qwen3-VL: sections (24, 20, 20, 0) over 64 pairs; y and x run out at sector 60, so pairs 61
    # and 62 take the 4th position while t keeps every third pair up to 63
    layout = imrope_sections((24, 20, 20, 0), 64)
    assert layout[:6].tolist() == [0, 1, 2, 0, 1, 2]
    assert layout[60:].tolist() == [0, 3, 3, 0]
    assert np.bincount(layout).tolist() == [22, 20, 20, 2]
    # the tiny qwen3vl: (8, 4, 4, 0) over 16 pairs keeps the same two 4th-position pairs
    assert imrope_sections((8, 4, 4, 0), 16).tolist() == [0, 1, 2] * 4 + [0, 3, 3, 0]


@pytest.mark.parametrize(
    "kind, sources",
    [
        ("gemma4-e2b", [0, 1, 2, 3, 2, 2, 2, 3]),  # n_kv 4: sliding layers read 2, the global layer 7 reads 3
        ("gemma4-31b", [0, 1, 2, 3, 4, 5, 4, 5]),  # n_kv 6: layer 6 (sliding) reads 4, layer 7 (global) 5
    ],
)
def test_gemma4_kv_sharing_map(family, kind, sources):
    model = family(kind)
    assert [model.hparams.kv_source(il) for il in range(8)] == sources
    ref = RefGemma4(model.path)
    assert [ref.kv_source(il) for il in range(8)] == sources
    ref.prefill([("tokens", [1, 504, 2683]), ("embd", np.ones((5, 64)) * 0.3), ("tokens", [30, 2])])
    for il, src in enumerate(sources):
        assert ref.cache_k[il] is ref.cache_k[src] or il == src  # a shared layer reads its source's cells
        assert len(ref.cache_pos[il]) == 10


@pytest.mark.parametrize(
    "kind, width",
    [("qwen3vl", 64 * 4), ("gemma4-e2b", 64 + 8 * 8), ("gemma4-31b", 64)],
)
def test_reference_rows_carry_their_extra_columns_under_fastv(family, kind, width):
    """Deepstack slices (qwen3vl) and per-layer inputs (gemma4 E2B) travel with their row: keeping every
    image row from layer K on changes nothing, dropping half of them changes the logits - except on
    gemma4 when every layer from K on is KV-shared: those layers attend to the cells their source
    layer (< K) wrote for all rows, so the rows dropped there never reach the last token."""
    model = family(kind)
    ref = (RefQwen3VL if kind == "qwen3vl" else RefGemma4)(model.path)
    rng = np.random.default_rng(3)
    image = rng.standard_normal((12, ref.n_embd_inp))
    opts = {"grid": (4, 3)} if kind == "qwen3vl" else {"causal": False}
    segments = [("tokens", [1, 504, 2683]), ("embd", image, opts), ("tokens", [30, 2, 17])]
    assert ref._token_rows(np.array([1, 2])).shape == (2, width)
    if kind == "qwen3vl":
        np.testing.assert_array_equal(ref._token_rows(np.array([1, 2]))[:, 64:], 0.0)  # text has no deepstack
    plain = ref.prefill(segments)
    for k in (1, 2, ref.n_layer - 1):
        kept_all = ref.prefill(segments, K=k, keep=np.arange(12))
        np.testing.assert_allclose(kept_all["logits"], plain["logits"], rtol=0, atol=1e-12)
        pruned = ref.prefill(segments, K=k, keep=np.arange(0, 12, 2))
        shared_from_k = kind.startswith("gemma4") and k >= ref.n_kv
        assert (np.abs(pruned["logits"] - plain["logits"]).max() > 1e-3) != shared_from_k


def test_lfm2_reference_refuses_fastv(family):
    ref = RefLfm2(family("lfm2").path)
    with pytest.raises(ValueError, match="hybrid recurrent"):
        ref.prefill([("tokens", [1, 2]), ("embd", np.zeros((3, 64)))], K=1)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DecoderHParams(arch="llama"), "arch must be one of"),
        (lambda: DecoderHParams(arch="qwen3", rope_sections=(2, 2, 2, 0)), "qwen3vl hyperparameters"),
        (lambda: DecoderHParams(arch="qwen3vl", n_layer=4, rope_sections=(2, 3, 3, 0), n_deepstack=4), "n_deepstack"),
        (lambda: DecoderHParams(arch="qwen3vl", rope_sections=(0, 0, 0, 4)), "rope_sections"),
        (lambda: DecoderHParams(arch="qwen2", key_length=32), "qwen2 has none"),
        (lambda: DecoderHParams(arch="qwen3", yarn_factor=4.0, yarn_orig_ctx=16), "mistral3 hyperparameters"),
        (lambda: DecoderHParams(arch="mistral3", attn_temp_scale=0.1), "yarn_orig_ctx"),
        (lambda: Gemma4HParams(n_kv_shared=3), "layer 4 must be global"),  # a sliding layer as the global source
        (lambda: Gemma4HParams(swa_layers=(True,) * 4), "swa_layers has 4 entries"),
        (lambda: Gemma4HParams(n_kv_shared=-1), "n_kv_shared must be in"),
        (lambda: Gemma4HParams(n_head_kv=3), "multiple of both"),
        (lambda: VisionHParams("qwen2vl_merger", deepstack_layers=(0,)), "qwen3vl_merger hyperparameter"),
        (lambda: VisionHParams("qwen3vl_merger", n_layer=2, deepstack_layers=(1, 0)), "distinct ascending"),
        (lambda: VisionHParams("qwen3vl_merger", n_layer=2, deepstack_layers=(2,)), "distinct ascending"),
        (lambda: Gemma4VisionHParams(n_embd=30, n_head=5), "divisible by 4"),  # two half-head ropes
    ],
)
def test_hparams_refuse_what_llama_cpp_cannot_load(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_qwen3vl_merger_output_width():
    hp = VisionHParams("qwen3vl_merger", n_layer=4, projection_dim=64, deepstack_layers=(0, 1, 2))
    assert hp.n_out == 256  # what mtmd compares with llama_model_n_embd_inp of the tiny qwen3vl


def test_lfm2_writer_is_f32_only(tmp_path):
    from fastv_edge.testing.make_tiny_archs import make_tiny_arch

    with pytest.raises(ValueError, match="F32 only"):
        make_tiny_arch(tmp_path, "lfm2", weight_type="f16")


@pytest.mark.parametrize("kind", ["qwen3vl", "gemma4-e2b", "lfm2"])
def test_same_arguments_same_bytes(tmp_path, kind):
    from fastv_edge.testing.make_tiny_archs import make_tiny_arch

    digests = set()
    for sub in ("a", "b"):
        path = make_tiny_arch(tmp_path / sub, kind).path
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    other = make_tiny_arch(tmp_path / "c", kind, seed=1).path
    assert hashlib.sha256(other.read_bytes()).hexdigest() not in digests
