"""Text features: token_embd rows read from a GGUF without dequantizing the vocabulary, checked
against gguf's own reader and a full dequantization, on generated and real quantized files."""

import functools
import math

import gguf
import numpy as np
import pytest

from fastv_edge.errors import ModelLoadError
from fastv_edge.selection import relevance
from fastv_edge.text_features import TOKEN_EMBD, TokenEmbeddings


@functools.lru_cache(maxsize=2)  # GGUFReader takes seconds on a 49k-token vocabulary: once per file
def full_table(path) -> tuple[np.ndarray, gguf.GGUFReader]:
    """Every row of token_embd.weight, dequantized by gguf's reader (the reference)."""
    reader = gguf.GGUFReader(path)
    tensor = next(t for t in reader.tensors if t.name == TOKEN_EMBD)
    table = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(table, np.float32).reshape(int(tensor.shape[1]), int(tensor.shape[0])), reader


def check_against_full_dequantization(path, ids):
    table, reader = full_table(path)
    with TokenEmbeddings(path) as emb:
        assert (emb.n_vocab, emb.n_embd) == table.shape
        assert emb.architecture == reader.fields["general.architecture"].contents()
        rows = emb.rows(ids)
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, table[ids])


@pytest.mark.parametrize("ids", [[0], [1, 2, 3], [49151, 0, 17, 17], []])
def test_tiny_f32_rows_equal_the_table(tiny, ids):
    check_against_full_dequantization(tiny.llama_path, ids)


@pytest.mark.slow
def test_smollm2_rows_equal_the_dequantized_table(smollm2_path):
    # the real file: Q4_1 weights with a Q8_0 token_embd, 49152 x 576
    with TokenEmbeddings(smollm2_path) as emb:
        assert emb.qtype != gguf.GGMLQuantizationType.F32  # the point: a quantized table
        assert emb.input_scale == 1.0  # llama does not scale its inputs
    check_against_full_dequantization(smollm2_path, [1, 28, 3933, 49151])


@pytest.fixture(scope="module")
def gemma3_path():
    from fastv_edge.errors import FastVEdgeError
    from fastv_edge.weights import gemma3_270m_path

    try:
        return gemma3_270m_path()
    except FastVEdgeError as exc:
        pytest.skip(str(exc))


def test_gemma_scale_is_sqrt_n_embd_and_leaves_relevance_unchanged(gemma3_path):
    ids = [2, 818, 5279, 262143]
    with TokenEmbeddings(gemma3_path) as emb:
        assert (emb.architecture, emb.n_embd, emb.n_vocab) == ("gemma3", 640, 262144)
        assert emb.input_scale == pytest.approx(math.sqrt(640))
        raw, scaled = emb.rows(ids), emb.rows(ids, scaled=True)
        images = emb.rows(np.arange(100, 164))  # stand-in image rows in the same space
    np.testing.assert_allclose(scaled, raw * math.sqrt(640), rtol=1e-6)
    images = images.astype(np.float64)
    # only the float32 rounding of the scaled rows (~6e-8 relative) separates the two
    np.testing.assert_allclose(relevance(images, raw), relevance(images, scaled), atol=1e-6)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        TokenEmbeddings(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"not a gguf file at all, but long enough to read a header from")
    with pytest.raises(ModelLoadError, match="magic"):
        TokenEmbeddings(path)


def test_truncated_gguf(tiny, tmp_path):
    data = tiny.llama_path.read_bytes()
    for cut in (20, len(data) // 2):  # inside the header; inside the tensor data
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="not a readable GGUF"):
            TokenEmbeddings(path)


def test_a_file_without_token_embeddings(tiny):
    with pytest.raises(ModelLoadError, match="no token_embd.weight"):
        TokenEmbeddings(tiny.mmproj_path)  # the projector has no vocabulary


@pytest.mark.parametrize(
    "ids, message",
    [
        ([49152], r"\[0, 49152\)"),  # one past the vocabulary
        ([-1], r"\[0, 49152\)"),  # negative id
        ([1.5], "integer"),  # not an id
        ([[1, 2]], "1-D"),  # two-dimensional
    ],
)
def test_bad_ids(tiny, ids, message):
    with TokenEmbeddings(tiny.llama_path) as emb, pytest.raises(ValueError, match=message):
        emb.rows(ids)
