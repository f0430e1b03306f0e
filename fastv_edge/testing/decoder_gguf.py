"""Write qwen2, qwen3, mistral3 and qwen3vl GGUFs (plain decoders and Qwen3-VL's text model) from numpy weights.

These four llama.cpp architectures share the llama block (RMSNorm, GQA attention, SwiGLU FFN,
tied or separate LM head) and differ in a few places; what the pinned llama.cpp reads for each
(src/models/<arch>.cpp, src/llama-model.cpp load_hparams):

- qwen2 (InternVL's and MiniCPM-V's Qwen2 LLMs): q/k/v biases (create_tensor_qkv, optional
  there, always written here); q is (n_embd, n_embd) so head_dim = n_embd / n_head; NEOX rope.
- qwen3 (InternVL3.5's Qwen3 LLMs): no biases; per-head RMS q/k norms (attn_q_norm,
  attn_k_norm, head_dim wide) before rope; head_dim = attention.key_length, independent of
  n_embd / n_head (Qwen3-0.6B: n_embd 1024, 16 heads of 128); NEOX rope.
- mistral3 (Mistral Small 3.x, Ministral 3): rope type NORM (adjacent pairs, like llama);
  head_dim = key_length (Mistral Small 3: 5120 / 32 heads, head_dim 128); optional YaRN rope
  scaling (rope.scaling.type/factor/original_context_length/yarn_log_multiplier) and Llama-4
  attention temperature (attention.temperature_scale: q *= 1 + scale * log(floor(pos / n_orig) + 1),
  src/llama-graph.cpp llm_graph_input_attn_temp::set_input); optional rope_freqs factors.
- qwen3vl (Qwen3-VL's LLM): qwen3's block with interleaved M-RoPE (LLAMA_ROPE_TYPE_IMROPE:
  pair k takes section t/y/x by k % 3, ggml-cpu ops.cpp ggml_mrope_cache_init) over
  rope.dimension_sections, and n_deepstack_layers: the decoder input row is
  n_embd * (1 + n_deepstack) wide (llama_hparams::n_embd_inp); after layer il < n_deepstack
  the graph adds input columns [(il + 1) * n_embd, (il + 2) * n_embd) to the layer output
  (src/models/qwen3vl.cpp:153-157, the `deepstack_out` view of res->t_inp_embd). Token rows are the
  embedding padded with zeros (src/llama-graph.cpp build_inp_embd), so only embedding (image)
  rows carry deepstack slices. Unlike qwen2vl, qwen3vl reads the rms epsilon.

Weights are numpy (n_out, n_in), applied as x @ W.T, like fastv_edge/testing/llama_gguf.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gguf
import numpy as np

from fastv_edge.testing.llama_gguf import LlamaHParams, Tokenizer, add_transformer_keys, write_model_gguf

DECODER_ARCHS = ("qwen2", "qwen3", "mistral3", "qwen3vl")
QK_NORM_ARCHS = ("qwen3", "qwen3vl")


@dataclass(frozen=True)
class DecoderHParams(LlamaHParams):
    """Shape of a qwen2 / qwen3 / mistral3 / qwen3vl text model (GGUF keys <arch>.*).

    key_length: head_dim when > 0 (qwen3, qwen3vl, mistral3), else n_embd // n_head.
    rope_sections, n_deepstack: qwen3vl only (Qwen3-VL: (24, 20, 20, 0) pairs, 3 deepstack layers).
    yarn_factor > 0 turns on YaRN with yarn_orig_ctx / yarn_log_mul; attn_temp_scale > 0 the
    Llama-4 temperature (floor scale = yarn_orig_ctx); rope_freqs writes per-pair factors: mistral3 only.
    """

    arch: str = "qwen3"
    key_length: int = 0
    rope_sections: tuple[int, int, int, int] = (0, 0, 0, 0)
    n_deepstack: int = 0
    yarn_factor: float = 0.0
    yarn_orig_ctx: int = 0
    yarn_log_mul: float = 0.0
    attn_temp_scale: float = 0.0
    rope_freqs: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.arch not in DECODER_ARCHS:
            raise ValueError(f"arch must be one of {DECODER_ARCHS}, got {self.arch!r}")
        if self.key_length and (self.arch == "qwen2" or self.key_length % 2):
            raise ValueError(f"key_length={self.key_length}: qwen2 has none, others need an even one")
        if self.arch == "qwen3vl":
            self._check_qwen3vl()
        elif any(self.rope_sections) or self.n_deepstack:
            raise ValueError("rope_sections and n_deepstack are qwen3vl hyperparameters")
        mistral_only = (self.yarn_factor, self.yarn_log_mul, self.attn_temp_scale, self.rope_freqs)
        if self.arch != "mistral3" and any(mistral_only):
            raise ValueError("yarn_*, attn_temp_scale and rope_freqs are mistral3 hyperparameters here")
        if (self.yarn_factor or self.attn_temp_scale) and self.yarn_orig_ctx <= 0:
            raise ValueError("YaRN and the attention temperature need yarn_orig_ctx > 0")

    def _check_qwen3vl(self):
        sections = tuple(self.rope_sections)
        if len(sections) != 4 or any(s < 0 for s in sections) or not any(sections[:3]):
            raise ValueError(f"rope_sections must be 4 non-negative ints, one of the first three > 0: {sections}")
        if sum(sections) > self.head_dim:  # ggml_mrope_cache_init asserts sect_dims <= ne0
            raise ValueError(f"rope_sections {sections} sum beyond head_dim={self.head_dim}")
        if not 0 <= self.n_deepstack < self.n_layer:
            raise ValueError(f"n_deepstack must be in [0, n_layer={self.n_layer}), got {self.n_deepstack}")

    @property
    def head_dim(self) -> int:
        return self.key_length or self.n_embd // self.n_head

    @property
    def n_embd_q(self) -> int:
        return self.head_dim * self.n_head

    @property
    def n_embd_inp(self) -> int:
        """Width of an embedding (image) row llama_decode takes: llama_model_n_embd_inp."""
        return self.n_embd * (1 + self.n_deepstack)


def tensor_shapes(hp: DecoderHParams) -> dict[str, tuple[int, ...]]:
    """Numpy shapes of every tensor write_decoder_gguf expects, keyed by GGUF name."""
    shapes = {"token_embd.weight": (hp.n_vocab, hp.n_embd), "output_norm.weight": (hp.n_embd,)}
    if not hp.tie_embeddings:
        shapes["output.weight"] = (hp.n_vocab, hp.n_embd)
    if hp.rope_freqs:
        shapes["rope_freqs.weight"] = (hp.head_dim // 2,)
    for il in range(hp.n_layer):
        b = f"blk.{il}."
        shapes[b + "attn_norm.weight"] = (hp.n_embd,)
        shapes[b + "attn_q.weight"] = (hp.n_embd_q, hp.n_embd)
        shapes[b + "attn_k.weight"] = (hp.n_embd_kv, hp.n_embd)
        shapes[b + "attn_v.weight"] = (hp.n_embd_kv, hp.n_embd)
        if hp.arch == "qwen2":
            shapes[b + "attn_q.bias"] = (hp.n_embd_q,)
            shapes[b + "attn_k.bias"] = (hp.n_embd_kv,)
            shapes[b + "attn_v.bias"] = (hp.n_embd_kv,)
        if hp.arch in QK_NORM_ARCHS:
            shapes[b + "attn_q_norm.weight"] = (hp.head_dim,)
            shapes[b + "attn_k_norm.weight"] = (hp.head_dim,)
        shapes[b + "attn_output.weight"] = (hp.n_embd, hp.n_embd_q)
        shapes[b + "ffn_norm.weight"] = (hp.n_embd,)
        shapes[b + "ffn_gate.weight"] = (hp.n_ff, hp.n_embd)
        shapes[b + "ffn_up.weight"] = (hp.n_ff, hp.n_embd)
        shapes[b + "ffn_down.weight"] = (hp.n_embd, hp.n_ff)
    return shapes


def add_decoder_keys(writer: gguf.GGUFWriter, hp: DecoderHParams) -> None:
    """The <arch>.* hyperparameter keys of hp (writer's arch must be hp.arch)."""
    add_transformer_keys(writer, hp)
    if hp.key_length:
        writer.add_key_length(hp.key_length)
        writer.add_value_length(hp.key_length)
    writer.add_rope_dimension_count(hp.head_dim)  # qwen2/qwen3/qwen3vl/mistral3 assert n_rot == head_dim
    writer.add_rope_freq_base(hp.rope_freq_base)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    if hp.arch == "qwen3vl":
        writer.add_rope_dimension_sections([int(s) for s in hp.rope_sections])
        writer.add_num_deepstack_layers(hp.n_deepstack)
    if hp.yarn_factor:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(hp.yarn_factor)
        writer.add_rope_scaling_yarn_log_mul(hp.yarn_log_mul)
    if hp.yarn_orig_ctx:
        writer.add_rope_scaling_orig_ctx_len(hp.yarn_orig_ctx)
    if hp.attn_temp_scale:
        writer.add_attn_temperature_scale(hp.attn_temp_scale)


def write_decoder_gguf(
    path: str | Path,
    hp: DecoderHParams,
    weights: dict[str, np.ndarray],
    weight_type: str = "f32",
    tokenizer: Tokenizer | None = None,
    name: str | None = None,
) -> Path:
    """Write a qwen2 / qwen3 / mistral3 / qwen3vl GGUF that llama.cpp loads.

    Args:
        path: output file.
        hp: model shape (hp.arch picks the architecture); hp.n_vocab must equal the tokenizer's.
        weights: numpy arrays keyed by GGUF tensor name, shapes as tensor_shapes(hp).
        weight_type: 'f32', 'f16' or 'q8_0' for the 2-D matrices (norms, biases, factors stay F32).
        tokenizer: tokenizer keys to copy; None copies SmolLM2-135M's (vocab 49152).
        name: general.name (default tiny-<arch>).

    Returns:
        The path written.
    """
    return write_model_gguf(
        path,
        hp.arch,
        partial(add_decoder_keys, hp=hp),
        tensor_shapes(hp),
        weights,
        hp.n_vocab,
        weight_type,
        tokenizer,
        name or f"tiny-{hp.arch}",
    )
