"""Write an lfm2-architecture GGUF (LFM2 / LFM2-VL text model, a hybrid recurrent decoder) from numpy weights.

LFM2 mixes gated short-convolution layers (a recurrent state of the last L-1 inputs per
sequence) with GQA attention layers. What the pinned llama.cpp reads and computes
(src/models/lfm2.cpp):
- a layer is recurrent (short conv) when its head_count_kv entry is 0 (head_count_kv is a
  per-layer array), attention otherwise; shortconv.l_cache = L (3 in released models).
- every layer: x += mixer(rms_norm(x) * attn_norm); x += SwiGLU(rms_norm(x) * ffn_norm).
- conv mixer: b, c, h = split(in_proj @ x, 3); y_t = sum_k conv[:, k] * (b * h)_{t - (L-1) + k}
  over the state of the previous L-1 tokens (zero at the start), then out_proj(c * y).
- attention mixer: per-head RMS q/k norms, NEOX rope, scale 1/sqrt(head_dim).
- the final norm is stored as `token_embd_norm` (llama-arch.cpp LLM_TENSOR_OUTPUT_NORM_LFM2);
  the LM head is token_embd when output.weight is absent.
The memory is llama_memory_hybrid (KV cells for attention layers, recurrent cells for the
conv state), so a context has one conv state per sequence: removing cells from the middle of
a sequence is not possible, which is why FastV refuses hybrids.
Weights are numpy (n_out, n_in), applied as x @ W.T, like fastv_edge/testing/llama_gguf.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gguf
import numpy as np

from fastv_edge.testing.llama_gguf import Tokenizer, write_model_gguf


@dataclass(frozen=True)
class Lfm2HParams:
    """Shape of an lfm2 text model (GGUF keys lfm2.*); attn_layers lists the attention layers."""

    n_layer: int = 6
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_vocab: int = 49152
    n_ctx_train: int = 4096
    attn_layers: tuple[int, ...] = (2, 4)
    l_cache: int = 3
    rope_freq_base: float = 10000.0
    rms_eps: float = 1e-5

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "n_head", "n_head_kv", "n_ff", "n_vocab"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head or self.n_head % self.n_head_kv or (self.n_embd // self.n_head) % 2:
            raise ValueError("n_embd / n_head must be an even integer and n_head a multiple of n_head_kv")
        if any(not 0 <= il < self.n_layer for il in self.attn_layers):
            raise ValueError(f"attn_layers {self.attn_layers} out of range for {self.n_layer} layers")
        if self.l_cache < 2:
            raise ValueError(f"l_cache must be >= 2 (lfm2.cpp asserts it), got {self.l_cache}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def is_attn(self, il: int) -> bool:
        return il in self.attn_layers


def tensor_shapes(hp: Lfm2HParams) -> dict[str, tuple[int, ...]]:
    """Numpy shapes of every tensor write_lfm2_gguf expects, keyed by GGUF name."""
    d, n_kv = hp.n_embd, hp.head_dim * hp.n_head_kv
    shapes = {"token_embd.weight": (hp.n_vocab, d), "token_embd_norm.weight": (d,)}
    for il in range(hp.n_layer):
        b = f"blk.{il}."
        shapes[b + "attn_norm.weight"] = (d,)
        if hp.is_attn(il):
            shapes[b + "attn_q.weight"] = (d, d)
            shapes[b + "attn_k.weight"] = (n_kv, d)
            shapes[b + "attn_v.weight"] = (n_kv, d)
            shapes[b + "attn_q_norm.weight"] = (hp.head_dim,)
            shapes[b + "attn_k_norm.weight"] = (hp.head_dim,)
            shapes[b + "attn_output.weight"] = (d, d)
        else:
            shapes[b + "shortconv.conv.weight"] = (d, hp.l_cache)  # ggml ne = [l_cache, n_embd]
            shapes[b + "shortconv.in_proj.weight"] = (3 * d, d)
            shapes[b + "shortconv.out_proj.weight"] = (d, d)
        shapes[b + "ffn_norm.weight"] = (d,)
        shapes[b + "ffn_gate.weight"] = (hp.n_ff, d)
        shapes[b + "ffn_up.weight"] = (hp.n_ff, d)
        shapes[b + "ffn_down.weight"] = (d, hp.n_ff)
    return shapes


def add_lfm2_keys(writer: gguf.GGUFWriter, hp: Lfm2HParams) -> None:
    """The lfm2.* hyperparameter keys of hp."""
    writer.add_block_count(hp.n_layer)
    writer.add_context_length(hp.n_ctx_train)
    writer.add_embedding_length(hp.n_embd)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv([hp.n_head_kv if hp.is_attn(il) else 0 for il in range(hp.n_layer)])
    writer.add_rope_freq_base(hp.rope_freq_base)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_shortconv_l_cache(hp.l_cache)


def write_lfm2_gguf(
    path: str | Path,
    hp: Lfm2HParams,
    weights: dict[str, np.ndarray],
    weight_type: str = "f32",
    tokenizer: Tokenizer | None = None,
    name: str = "tiny-lfm2",
) -> Path:
    """Write an lfm2-arch GGUF that llama.cpp loads.

    Args:
        path: output file.
        hp: model shape; hp.n_vocab must equal the tokenizer's vocabulary size.
        weights: numpy arrays keyed by GGUF tensor name, shapes as tensor_shapes(hp).
        weight_type: 'f32' only (the short-conv kernel must stay F32).
        tokenizer: tokenizer keys to copy; None copies SmolLM2-135M's (vocab 49152).
        name: general.name.

    Returns:
        The path written.
    """
    if weight_type != "f32":  # ggml_ssm_conv takes an F32 kernel, and 3 columns do not fill a Q8_0 block
        raise ValueError(f"lfm2 tiny models are F32 only, got weight_type={weight_type!r}")
    return write_model_gguf(
        path,
        "lfm2",
        partial(add_lfm2_keys, hp=hp),
        tensor_shapes(hp),
        weights,
        hp.n_vocab,
        weight_type,
        tokenizer,
        name,
    )
