"""Write a gemma3-architecture GGUF (Gemma 3 text model) from numpy weights.

What llama.cpp reads and computes (src/models/gemma3.cpp, src/llama-hparams.cpp):
- gemma3.attention.sliding_window > 0 turns on iSWA: layer il is local (sliding window)
  unless il % pattern == pattern - 1 (set_swa_pattern; pattern key default 6). Local
  layers rotate with gemma3.rope.freq_base_swa (default 10000), global ones with
  gemma3.rope.freq_base; the rope type is NEOX.
- head_dim is gemma3.attention.key_length / value_length, independent of n_embd / n_head
  (Gemma 3 270M: n_embd 640, 4 heads of 256).
- per layer: attn_norm, q/k/v/o, attn_q_norm + attn_k_norm (RMS over head_dim),
  post_attention_norm, ffn_norm, GeGLU ffn_gate/up/down, post_ffw_norm. RMSNorm weights are
  used as stored (HF's "1 + w" is folded in by the converter).
- no output.weight: the LM head is token_embd.weight; the token input (not embedding input)
  is scaled by sqrt(n_embd); final_logit_softcapping is optional.
Weights are numpy (n_out, n_in), applied as x @ W.T, like fastv_edge/testing/llama_gguf.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gguf
import numpy as np

from fastv_edge.testing.llama_gguf import Tokenizer, add_transformer_keys, write_model_gguf


@dataclass(frozen=True)
class Gemma3HParams:
    """Shape of a gemma3 text model (GGUF keys gemma3.*).

    Defaults: 6 layers with pattern 3, so layers 2 and 5 are global and the rest local
    with a 16-token window; small rope bases so that positions matter in a tiny model.
    """

    n_layer: int = 6
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 32
    n_ff: int = 128
    n_vocab: int = 49152
    n_ctx_train: int = 4096
    rope_freq_base: float = 10000.0  # global layers
    rope_freq_base_swa: float = 100.0  # local (sliding-window) layers
    sliding_window: int = 16
    swa_pattern: int = 3  # every swa_pattern-th layer is global
    rms_eps: float = 1e-6
    final_logit_softcapping: float | None = None

    def __post_init__(self):
        for name in (
            "n_layer",
            "n_embd",
            "n_head",
            "n_head_kv",
            "head_dim",
            "n_ff",
            "n_vocab",
            "sliding_window",
            "swa_pattern",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_head % self.n_head_kv != 0:
            raise ValueError(f"n_head={self.n_head} is not divisible by n_head_kv={self.n_head_kv}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.final_logit_softcapping is not None and self.final_logit_softcapping <= 0:
            raise ValueError(f"final_logit_softcapping must be positive or None, got {self.final_logit_softcapping}")

    def is_swa(self, il: int) -> bool:
        """Whether layer il uses the sliding window (llama_hparams::set_swa_pattern)."""
        return il % self.swa_pattern < self.swa_pattern - 1


def tensor_shapes(hp: Gemma3HParams) -> dict[str, tuple[int, ...]]:
    """Numpy shapes of every tensor write_gemma3_gguf expects, keyed by GGUF name."""
    n_q, n_kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    shapes = {
        "token_embd.weight": (hp.n_vocab, hp.n_embd),
        "output_norm.weight": (hp.n_embd,),
    }
    for il in range(hp.n_layer):
        b = f"blk.{il}."
        shapes[b + "attn_norm.weight"] = (hp.n_embd,)
        shapes[b + "attn_q.weight"] = (n_q, hp.n_embd)
        shapes[b + "attn_k.weight"] = (n_kv, hp.n_embd)
        shapes[b + "attn_v.weight"] = (n_kv, hp.n_embd)
        shapes[b + "attn_q_norm.weight"] = (hp.head_dim,)
        shapes[b + "attn_k_norm.weight"] = (hp.head_dim,)
        shapes[b + "attn_output.weight"] = (hp.n_embd, n_q)
        shapes[b + "post_attention_norm.weight"] = (hp.n_embd,)
        shapes[b + "ffn_norm.weight"] = (hp.n_embd,)
        shapes[b + "ffn_gate.weight"] = (hp.n_ff, hp.n_embd)
        shapes[b + "ffn_up.weight"] = (hp.n_ff, hp.n_embd)
        shapes[b + "ffn_down.weight"] = (hp.n_embd, hp.n_ff)
        shapes[b + "post_ffw_norm.weight"] = (hp.n_embd,)
    return shapes


def write_gemma3_gguf(
    path: str | Path,
    hp: Gemma3HParams,
    weights: dict[str, np.ndarray],
    weight_type: str = "f32",
    tokenizer: Tokenizer | None = None,
    name: str = "tiny-gemma3",
) -> Path:
    """Write a gemma3-arch GGUF that llama.cpp loads.

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
        "gemma3",
        partial(add_gemma3_keys, hp=hp),
        tensor_shapes(hp),
        weights,
        hp.n_vocab,
        weight_type,
        tokenizer,
        name,
    )


def add_gemma3_keys(writer: gguf.GGUFWriter, hp: Gemma3HParams) -> None:
    """The gemma3.* hyperparameter keys of hp."""
    add_transformer_keys(writer, hp)
    writer.add_key_length(hp.head_dim)
    writer.add_value_length(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_freq_base)
    writer.add_rope_freq_base_swa(hp.rope_freq_base_swa)
    writer.add_sliding_window(hp.sliding_window)
    writer.add_sliding_window_pattern(hp.swa_pattern)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    if hp.final_logit_softcapping is not None:
        writer.add_final_logit_softcapping(hp.final_logit_softcapping)
