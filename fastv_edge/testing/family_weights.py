"""Deterministic random weights for the qwen2 / qwen3 / mistral3 / qwen3vl, gemma4 and lfm2 tiny writers.

Same recipe as fastv_edge/testing/make_tiny.py and make_tiny_archs.py: numpy's PCG64 seeded by
(seed, part), every stage scaled to keep activations O(1), attention logits with std ~2 and
output logits with std ~2.5, so that FastV's top-k has no ties and a wrong convention in a
reference moves the logits far beyond the comparison tolerance.
"""

from __future__ import annotations

import numpy as np

from fastv_edge.testing.decoder_gguf import QK_NORM_ARCHS, DecoderHParams
from fastv_edge.testing.decoder_gguf import tensor_shapes as decoder_shapes
from fastv_edge.testing.gemma4_gguf import Gemma4HParams
from fastv_edge.testing.gemma4_gguf import tensor_shapes as gemma4_shapes
from fastv_edge.testing.lfm2_gguf import Lfm2HParams
from fastv_edge.testing.lfm2_gguf import tensor_shapes as lfm2_shapes
from fastv_edge.testing.make_tiny import LOGIT_STD, QK_GAIN

# parts of the (seed, part) seed; make_tiny uses 0-1, make_tiny_archs 2-3, mmproj_archs 5
PART_DECODER, PART_GEMMA4, PART_LFM2 = 6, 7, 8
# ggml-cpu's GELU goes through an fp16 table for |x| < 10 (see make_tiny_archs.GEMMA3_GATE_GAIN):
# large gate weights push most inputs to the exact branches; the RMS norm after them cancels the scale.
# Gemma 4 looks the table up twice per layer (GeGLU and the per-layer-input gate) over 8 layers:
# at gemma3's 128 (~6% of inputs in the table) a float64 reference rounds one input the other way
# often enough to reach 1e-4 on the logits; at 384 (~2%) 24 prompts stayed below 5e-5 while a
# reference with ReLU for GELU still misses by > 6e-4 (measured on both tiny layouts).
GELU_GATE_GAIN = 384.0


def _normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _norm_weight(rng: np.random.Generator, n: int, gain: float = 1.0) -> np.ndarray:
    return (gain * (1.0 + 0.1 * rng.standard_normal(n))).astype(np.float32)


def random_decoder_weights(hp: DecoderHParams, seed: int) -> dict[str, np.ndarray]:
    """Deterministic random weights for write_decoder_gguf (any of its four archs)."""
    rng = np.random.default_rng([seed, PART_DECODER])
    qk_norm = hp.arch in QK_NORM_ARCHS
    weights = {}
    for name, shape in decoder_shapes(hp).items():
        kind, suffix = name.rsplit(".", 2)[-2:]
        if name == "rope_freqs.weight":  # llama-3-style factors: 1 on fast pairs, up to 4 on slow ones
            weights[name] = np.geomspace(1.0, 4.0, shape[0]).astype(np.float32)
        elif suffix == "bias":
            weights[name] = _normal(rng, shape, 0.2)
        elif kind in ("attn_q_norm", "attn_k_norm"):
            weights[name] = _norm_weight(rng, shape[0], QK_GAIN)  # q, k are RMS-normalised per head
        elif kind.endswith("norm"):
            weights[name] = _norm_weight(rng, shape[0])
        elif kind in ("token_embd", "output"):
            weights[name] = _normal(rng, shape, LOGIT_STD * hp.n_embd**-0.5)  # logits std ~2.5
        elif kind in ("attn_q", "attn_k") and not qk_norm:
            weights[name] = _normal(rng, shape, QK_GAIN * shape[1] ** -0.5)
        else:  # attn_q/k (normed), attn_v, attn_output, ffn_*: unit gain on their fan-in
            weights[name] = _normal(rng, shape, shape[1] ** -0.5)
    return weights


def random_gemma4_weights(hp: Gemma4HParams, seed: int, gate_gain: float = GELU_GATE_GAIN) -> dict[str, np.ndarray]:
    """Deterministic random weights for write_gemma4_gguf; gate_gain is the std of the GELU inputs."""
    rng = np.random.default_rng([seed, PART_GEMMA4])
    weights = {}
    for name, shape in gemma4_shapes(hp).items():
        kind = name.rsplit(".", 2)[-2]
        if name == "rope_freqs.weight":
            weights[name] = hp.rope_freqs()
        elif kind in ("attn_q_norm", "attn_k_norm"):
            # attention scale is 1: q.k of two RMS-normalised heads has std gain**2 * sqrt(head_dim)
            weights[name] = _norm_weight(rng, shape[0], np.sqrt(2.0 / np.sqrt(shape[0])))
        elif kind.endswith("norm"):
            weights[name] = _norm_weight(rng, shape[0])
        elif kind == "layer_output_scale":
            weights[name] = rng.uniform(0.6, 1.0, shape).astype(np.float32)
        elif kind == "token_embd":
            weights[name] = _normal(rng, shape, LOGIT_STD * hp.n_embd**-0.5)  # tied head: logits std ~2.5
        elif kind == "per_layer_token_embd":
            weights[name] = _normal(rng, shape, hp.n_embd_per_layer**-0.5)  # times sqrt(P) in the graph
        elif kind in ("ffn_gate", "inp_gate"):
            weights[name] = _normal(rng, shape, gate_gain * shape[1] ** -0.5)
        else:  # attn_q/k/v/output, ffn_up/down, per_layer_model_proj, proj
            weights[name] = _normal(rng, shape, shape[1] ** -0.5)
    return weights


def random_lfm2_weights(hp: Lfm2HParams, seed: int) -> dict[str, np.ndarray]:
    """Deterministic random weights for write_lfm2_gguf."""
    rng = np.random.default_rng([seed, PART_LFM2])
    weights = {}
    for name, shape in lfm2_shapes(hp).items():
        kind = name.rsplit(".", 2)[-2]
        if kind in ("attn_q_norm", "attn_k_norm"):
            weights[name] = _norm_weight(rng, shape[0], QK_GAIN)
        elif kind.endswith("norm"):
            weights[name] = _norm_weight(rng, shape[0])
        elif kind == "token_embd":
            weights[name] = _normal(rng, shape, LOGIT_STD * hp.n_embd**-0.5)
        elif kind == "conv":  # a 3-tap filter per channel: the previous tokens weigh as much as this one
            weights[name] = _normal(rng, shape, 0.7)
        else:
            weights[name] = _normal(rng, shape, shape[1] ** -0.5)
    return weights
