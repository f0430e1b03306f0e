"""Write a gemma4-architecture GGUF (Gemma 4 text model) from numpy weights, in both layouts.

Gemma 4 ships as E2B/E4B (per-layer inputs, KV sharing) and 26B-A4B/31B (iSWA with a larger
global head, K shared as V on global layers). One arch, `gemma4`; what the pinned llama.cpp
reads and computes (src/models/gemma4.cpp, line numbers of that file):

- iSWA: attention.sliding_window_pattern is a required per-layer bool array (:6); sliding
  layers use key_length_swa / rope.dimension_count_swa / rope.freq_base_swa, global layers
  key_length / rope.dimension_count / rope.freq_base plus the `rope_freqs` factors
  (proportional rope: factor 1 on rotated pairs, 1e30 on the rest, :94-98, :202-206).
  head_count_kv may be a per-layer array (global layers have fewer KV heads).
- attention.shared_kv_layers = S: the last S layers have no K/V of their own (has_kv,
  llama-hparams.cpp) and read the cache of layer n_kv - 2 (sliding) or n_kv - 1 (global),
  n_kv = n_layer - S (llama-model.cpp create_memory `reuse`); those two layers must be one
  sliding and one global. Their attn_k / attn_v / attn_k_norm are not written.
- per layer: attn_norm; Q, per-head RMS q_norm (weighted), rope; K, k_norm (weighted); V is
  attn_v or, when absent (attention_k_eq_v, :246-248), the raw K; V gets an unweighted RMS
  norm (:257); attention scale 1 (:12); attn_output, post_attention_norm, residual; ffn_norm,
  GeGLU, post_ffw_norm, residual; then the per-layer input block (below); then
  layer_output_scale (a scalar, optional, :392-396).
- token rows are scaled by sqrt(n_embd), embedding rows are not (:165).
- per-layer inputs (embedding_length_per_layer_input = P > 0, :176-183, :469-529), computed
  once from the decoder input, before layer 0, for every row:
      proj = rms_norm((per_layer_model_proj @ x_scaled) / sqrt(n_embd)) per layer slice * per_layer_proj_norm
      tok  = per_layer_token_embd[token] * sqrt(P)       (embedding rows: row 0, the padding token)
      pli  = (proj + tok) / sqrt(2)                       # (n_tokens, n_layer, P)
  and after layer il's FFN:  x += post_norm(proj_il(gelu(inp_gate_il @ x) * pli[:, il]))  (:369-390).
  P = 0 (26B/31B) writes none of these tensors.
- feed_forward_length may be per layer (use_double_wide_mlp doubles it on KV-shared layers).
- non-causal decoding (llama_set_causal_attn false) is LLAMA_NON_CAUSAL_TYPE_SWA_ONLY (:26):
  only the sliding layers see the whole ubatch both ways, global layers stay causal
  (src/llama-kv-cache.cpp set_input_kq_mask). mtmd decodes gemma4v images non-causally
  unless the text n_embd is 1536 or 2560 (E2B/E4B; tools/mtmd/mtmd.cpp mtmd_decode_use_non_causal).
- final_logit_softcapping is optional; the LM head is token_embd when output.weight is absent.
Weights are numpy (n_out, n_in), applied as x @ W.T, like fastv_edge/testing/llama_gguf.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gguf
import numpy as np

from fastv_edge.testing.llama_gguf import Tokenizer, write_model_gguf

UNROTATED_FACTOR = 1e30  # rope_freqs value of a pair the proportional rope leaves alone


@dataclass(frozen=True)
class Gemma4HParams:
    """Shape of a gemma4 text model (GGUF keys gemma4.*). Defaults: the E2B/E4B layout, 8 layers.

    swa_layers: per layer, True = sliding. n_kv_shared: trailing layers that reuse earlier KV.
    n_embd_per_layer: P of the per-layer inputs (0 = 26B/31B layout). k_eq_v_full: global
    layers have no attn_v (V = K). double_wide_shared: KV-shared layers have 2 * n_ff.
    rotary_full: fraction of a global head's pairs the proportional rope rotates.
    """

    n_layer: int = 8
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 1  # sliding layers
    n_head_kv_full: int = 1
    head_dim: int = 16  # sliding layers (key_length_swa)
    head_dim_full: int = 32  # global layers (key_length)
    n_ff: int = 128
    n_vocab: int = 49152
    n_ctx_train: int = 4096
    rope_freq_base: float = 10000.0  # global layers
    rope_freq_base_swa: float = 100.0  # sliding layers
    rotary_full: float = 0.25
    sliding_window: int = 16
    swa_layers: tuple[bool, ...] = (True, True, True, False, True, True, True, False)
    n_kv_shared: int = 4
    n_embd_per_layer: int = 8
    k_eq_v_full: bool = False
    double_wide_shared: bool = True
    out_scale: bool = True
    rms_eps: float = 1e-6
    final_logit_softcapping: float | None = 30.0

    def __post_init__(self):
        for name in ("n_layer", "n_embd", "n_head", "n_head_kv", "n_head_kv_full", "head_dim", "head_dim_full"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("n_ff", "n_vocab", "sliding_window"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if len(self.swa_layers) != self.n_layer:
            raise ValueError(f"swa_layers has {len(self.swa_layers)} entries for {self.n_layer} layers")
        if self.n_head % self.n_head_kv or self.n_head % self.n_head_kv_full:
            raise ValueError(f"n_head={self.n_head} must be a multiple of both KV head counts")
        if self.head_dim % 2 or self.head_dim_full % 2 or not 0 < self.rotary_full <= 1:
            raise ValueError("head dims must be even and rotary_full in (0, 1]")
        if self.n_embd_per_layer < 0:
            raise ValueError(f"n_embd_per_layer must be >= 0, got {self.n_embd_per_layer}")
        if not 0 <= self.n_kv_shared < self.n_layer:
            raise ValueError(f"n_kv_shared must be in [0, n_layer={self.n_layer}), got {self.n_kv_shared}")
        if self.n_kv_shared:
            n_kv = self.n_layer - self.n_kv_shared
            # llama.cpp maps shared sliding layers to n_kv - 2 and global ones to n_kv - 1
            if n_kv < 2 or self.swa_layers[n_kv - 1] or not self.swa_layers[n_kv - 2]:
                raise ValueError(
                    f"n_kv_shared={self.n_kv_shared}: layer {n_kv - 1} must be global and {n_kv - 2} sliding"
                )

    def is_swa(self, il: int) -> bool:
        return bool(self.swa_layers[il])

    def has_kv(self, il: int) -> bool:
        return il < self.n_layer - self.n_kv_shared

    def kv_source(self, il: int) -> int:
        """The layer whose KV cache layer il attends to (itself unless KV-shared)."""
        if self.has_kv(il):
            return il
        n_kv = self.n_layer - self.n_kv_shared
        return n_kv - 2 if self.is_swa(il) else n_kv - 1

    def layer_head_dim(self, il: int) -> int:
        return self.head_dim if self.is_swa(il) else self.head_dim_full

    def layer_n_head_kv(self, il: int) -> int:
        return self.n_head_kv if self.is_swa(il) else self.n_head_kv_full

    def layer_n_ff(self, il: int) -> int:
        return self.n_ff * (2 if self.double_wide_shared and not self.has_kv(il) else 1)

    def rope_freqs(self) -> np.ndarray:
        """The rope_freqs tensor of the global layers: 1 on rotated pairs, 1e30 on the others."""
        half = self.head_dim_full // 2
        n_rot = int(self.head_dim_full * self.rotary_full / 2)
        return np.array([1.0] * n_rot + [UNROTATED_FACTOR] * (half - n_rot), dtype=np.float32)


def tensor_shapes(hp: Gemma4HParams) -> dict[str, tuple[int, ...]]:
    """Numpy shapes of every tensor write_gemma4_gguf expects, keyed by GGUF name."""
    n_pl, n_all = hp.n_embd_per_layer, hp.n_embd_per_layer * hp.n_layer
    shapes = {"token_embd.weight": (hp.n_vocab, hp.n_embd)}
    if n_pl:
        shapes["per_layer_token_embd.weight"] = (hp.n_vocab, n_all)
        shapes["per_layer_model_proj.weight"] = (n_all, hp.n_embd)
        shapes["per_layer_proj_norm.weight"] = (n_pl,)
    shapes["output_norm.weight"] = (hp.n_embd,)
    shapes["rope_freqs.weight"] = (hp.head_dim_full // 2,)
    for il in range(hp.n_layer):
        b, hd, n_ff = f"blk.{il}.", hp.layer_head_dim(il), hp.layer_n_ff(il)
        n_kv = hd * hp.layer_n_head_kv(il)
        shapes[b + "attn_norm.weight"] = (hp.n_embd,)
        shapes[b + "attn_q.weight"] = (hd * hp.n_head, hp.n_embd)
        shapes[b + "attn_q_norm.weight"] = (hd,)
        if hp.has_kv(il):
            shapes[b + "attn_k.weight"] = (n_kv, hp.n_embd)
            if hp.is_swa(il) or not hp.k_eq_v_full:
                shapes[b + "attn_v.weight"] = (n_kv, hp.n_embd)
            shapes[b + "attn_k_norm.weight"] = (hd,)
        shapes[b + "attn_output.weight"] = (hp.n_embd, hd * hp.n_head)
        shapes[b + "post_attention_norm.weight"] = (hp.n_embd,)
        shapes[b + "ffn_norm.weight"] = (hp.n_embd,)
        shapes[b + "ffn_gate.weight"] = (n_ff, hp.n_embd)
        shapes[b + "ffn_up.weight"] = (n_ff, hp.n_embd)
        shapes[b + "ffn_down.weight"] = (hp.n_embd, n_ff)
        shapes[b + "post_ffw_norm.weight"] = (hp.n_embd,)
        if n_pl:
            shapes[b + "inp_gate.weight"] = (n_pl, hp.n_embd)
            shapes[b + "proj.weight"] = (hp.n_embd, n_pl)
            shapes[b + "post_norm.weight"] = (hp.n_embd,)
        if hp.out_scale:
            shapes[b + "layer_output_scale.weight"] = (1,)
    return shapes


def add_gemma4_keys(writer: gguf.GGUFWriter, hp: Gemma4HParams) -> None:
    """The gemma4.* hyperparameter keys of hp."""
    writer.add_block_count(hp.n_layer)
    writer.add_context_length(hp.n_ctx_train)
    writer.add_embedding_length(hp.n_embd)
    writer.add_feed_forward_length([hp.layer_n_ff(il) for il in range(hp.n_layer)])
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv([hp.layer_n_head_kv(il) for il in range(hp.n_layer)])
    writer.add_key_length(hp.head_dim_full)
    writer.add_value_length(hp.head_dim_full)
    writer.add_key_length_swa(hp.head_dim)
    writer.add_value_length_swa(hp.head_dim)
    writer.add_rope_dimension_count(hp.head_dim_full)  # the converter's n_rot_full: rope_freqs does the rest
    writer.add_rope_dimension_count_swa(hp.head_dim)
    writer.add_rope_freq_base(hp.rope_freq_base)
    writer.add_rope_freq_base_swa(hp.rope_freq_base_swa)
    writer.add_sliding_window(hp.sliding_window)
    writer.add_sliding_window_pattern([bool(v) for v in hp.swa_layers])
    writer.add_shared_kv_layers(hp.n_kv_shared)
    writer.add_embedding_length_per_layer_input(hp.n_embd_per_layer)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    if hp.final_logit_softcapping is not None:
        writer.add_final_logit_softcapping(hp.final_logit_softcapping)


def write_gemma4_gguf(
    path: str | Path,
    hp: Gemma4HParams,
    weights: dict[str, np.ndarray],
    weight_type: str = "f32",
    tokenizer: Tokenizer | None = None,
    name: str = "tiny-gemma4",
) -> Path:
    """Write a gemma4-arch GGUF that llama.cpp loads.

    Args:
        path: output file.
        hp: model shape; hp.n_vocab must equal the tokenizer's vocabulary size.
        weights: numpy arrays keyed by GGUF tensor name, shapes as tensor_shapes(hp).
        weight_type: 'f32', 'f16' or 'q8_0' for the 2-D matrices (norms, scales, rope_freqs stay F32).
        tokenizer: tokenizer keys to copy; None copies SmolLM2-135M's (vocab 49152).
        name: general.name.

    Returns:
        The path written.
    """
    return write_model_gguf(
        path,
        "gemma4",
        partial(add_gemma4_keys, hp=hp),
        tensor_shapes(hp),
        weights,
        hp.n_vocab,
        weight_type,
        tokenizer,
        name,
    )
