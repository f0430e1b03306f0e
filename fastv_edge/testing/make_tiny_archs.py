"""Write deterministic tiny GGUFs of the VLM text-model families (text model only, SmolLM2's real tokenizer).

Usage (from the repository root):
    python -m fastv_edge.testing.make_tiny_archs OUT_DIR --arch KIND [--weight-type f32|f16|q8_0] [--seed N]

KIND is a GGUF architecture (qwen2vl, gemma3, qwen3vl, qwen2, qwen3, mistral3, lfm2) or one of
the two Gemma 4 layouts, gemma4-e2b (per-layer inputs, KV sharing) and gemma4-31b (iSWA with
K as V on global layers, KV sharing, no per-layer inputs); both are `gemma4` files.

No mmproj is written: tests feed "images" as embedding rows, the way mtmd hands a
projector's output to llama_decode. Same arguments, same bytes: weights come from numpy's
PCG64 seeded by (seed, part), scaled like fastv_edge/testing/make_tiny.py (attention logits std ~2,
output logits std ~2.5) so that top-k selections have no ties.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fastv_edge.testing.decoder_gguf import DecoderHParams, write_decoder_gguf
from fastv_edge.testing.family_weights import random_decoder_weights, random_gemma4_weights, random_lfm2_weights
from fastv_edge.testing.gemma3_gguf import Gemma3HParams, write_gemma3_gguf
from fastv_edge.testing.gemma3_gguf import tensor_shapes as gemma3_shapes
from fastv_edge.testing.gemma4_gguf import Gemma4HParams, write_gemma4_gguf
from fastv_edge.testing.lfm2_gguf import Lfm2HParams, write_lfm2_gguf
from fastv_edge.testing.llama_gguf import read_tokenizer
from fastv_edge.testing.make_tiny import LOGIT_STD, QK_GAIN, random_llama_weights
from fastv_edge.testing.qwen2vl_gguf import Qwen2VLHParams, write_qwen2vl_gguf

GENERATOR_VERSION = 1  # part of the file names: bump when the weights' recipe changes

# Tiny defaults per arch. qwen2vl: rope base 100 instead of 1e6 so that the x/y sections,
# which get the lowest frequencies, still rotate measurably at positions < 100.
# qwen3vl: head_dim 32 on n_embd 64 (q wider than the model, like Qwen3-VL-4B's 32 x 128 on 2560),
# 16 rope pairs in interleaved sections (8, 4, 4, 0) so pairs 13 and 14 take the 4th (zero)
# position like Qwen3-VL's 61 and 62, and 3 deepstack layers of 6 (Qwen3-VL: 3 of 36).
# mistral3: Ministral-3-style YaRN (factor 4 over 16 original positions) and attention
# temperature, so both change the logits within a 60-token prompt.
_PLAIN = dict(n_layer=4, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, rope_freq_base=1000.0, rms_eps=1e-6)
_GEMMA4_31B_SWA = (True, True, False, True, True, False, True, False)
SHAPES = {
    "qwen2vl": dict(n_layer=4, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, rope_freq_base=100.0, rms_eps=1e-6),
    "gemma3": {},  # Gemma3HParams defaults: 6 layers, window 16, pattern 3
    "qwen3vl": dict(
        _PLAIN,
        arch="qwen3vl",
        n_layer=6,
        key_length=32,
        rope_freq_base=100.0,
        rope_sections=(8, 4, 4, 0),
        n_deepstack=3,
    ),
    "qwen2": dict(_PLAIN, arch="qwen2"),
    "qwen3": dict(_PLAIN, arch="qwen3", key_length=32),
    "mistral3": dict(
        _PLAIN,
        arch="mistral3",
        key_length=32,
        rms_eps=1e-5,
        tie_embeddings=False,
        yarn_factor=4.0,
        yarn_orig_ctx=16,
        yarn_log_mul=1.0,
        attn_temp_scale=0.1,
        rope_freqs=True,
    ),
    "gemma4-e2b": {},  # Gemma4HParams defaults: 8 layers, 3 and 7 global, last 4 share KV, P = 8
    "gemma4-31b": dict(
        swa_layers=_GEMMA4_31B_SWA,
        n_kv_shared=2,
        n_embd_per_layer=0,
        k_eq_v_full=True,
        double_wide_shared=False,
        n_head_kv=2,
    ),
    "lfm2": {},  # Lfm2HParams defaults: 6 layers, attention at 2 and 4, short conv elsewhere
}
HPARAMS = {
    "qwen2vl": Qwen2VLHParams,
    "gemma3": Gemma3HParams,
    **{kind: DecoderHParams for kind in ("qwen3vl", "qwen2", "qwen3", "mistral3")},
    "gemma4-e2b": Gemma4HParams,
    "gemma4-31b": Gemma4HParams,
    "lfm2": Lfm2HParams,
}
# ggml-cpu evaluates GELU through an fp16 table for |x| < 10 and exactly (x or 0) beyond
# (ggml/src/ggml-cpu/vec.h ggml_vec_geglu_f32): a float64 reference rounds a few inputs the
# other way and drifts ~1e-3 on logits. Large gate weights put most inputs in the exact
# branches; post_ffw_norm cancels the scale, so the model's activations stay O(1).
GEMMA3_GATE_GAIN = 128.0  # ~6% of GELU inputs still fall in the table range


@dataclass(frozen=True)
class TinyArchModel:
    """Path and shape of one generated text model."""

    path: Path
    arch: str  # the kind make_tiny_arch was given (gemma4-e2b / gemma4-31b are `gemma4` files)
    hparams: Qwen2VLHParams | Gemma3HParams | DecoderHParams | Gemma4HParams | Lfm2HParams


def _normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _norm_weight(rng: np.random.Generator, n: int, gain: float = 1.0) -> np.ndarray:
    return (gain * (1.0 + 0.1 * rng.standard_normal(n))).astype(np.float32)


def random_qwen2vl_weights(hp: Qwen2VLHParams, seed: int) -> dict[str, np.ndarray]:
    """Deterministic random weights for write_qwen2vl_gguf: the llama recipe plus q/k/v biases."""
    weights = random_llama_weights(hp, seed)
    rng = np.random.default_rng([seed, 2])
    for il in range(hp.n_layer):
        b = f"blk.{il}."
        weights[b + "attn_q.bias"] = _normal(rng, (hp.n_embd,), 0.2)
        weights[b + "attn_k.bias"] = _normal(rng, (hp.n_embd_kv,), 0.2)
        weights[b + "attn_v.bias"] = _normal(rng, (hp.n_embd_kv,), 0.2)
    return weights


def random_gemma3_weights(hp: Gemma3HParams, seed: int, gate_gain: float = GEMMA3_GATE_GAIN) -> dict[str, np.ndarray]:
    """Deterministic random weights for write_gemma3_gguf; gate_gain is the std of the GELU inputs."""
    rng = np.random.default_rng([seed, 3])
    inv_e = hp.n_embd**-0.5
    weights = {}
    for name, shape in gemma3_shapes(hp).items():
        kind = name.rsplit(".", 2)[-2]
        if kind in ("attn_q_norm", "attn_k_norm"):
            # q and k are RMS-normalised per head: the norm weights alone set the logit spread
            weights[name] = _norm_weight(rng, shape[0], QK_GAIN)
        elif kind.endswith("norm"):
            weights[name] = _norm_weight(rng, shape[0])
        elif kind == "token_embd":
            weights[name] = _normal(rng, shape, LOGIT_STD * inv_e)  # tied head: logits std ~2.5
        elif kind == "ffn_gate":
            weights[name] = _normal(rng, shape, gate_gain * inv_e)
        else:  # attn_q/k/v/output, ffn_gate/up/down: unit gain on their fan-in
            weights[name] = _normal(rng, shape, shape[1] ** -0.5)
    return weights


def _file_name(arch: str, hp, weight_type: str, seed: int) -> str:
    digest = hashlib.sha1(repr(sorted(asdict(hp).items())).encode()).hexdigest()[:10]
    return f"tiny-{arch}-L{hp.n_layer}-E{hp.n_embd}-{digest}-{weight_type}-s{seed}-v{GENERATOR_VERSION}.gguf"


def make_tiny_arch(
    out_dir: str | Path, arch: str, seed: int = 0, weight_type: str = "f32", overwrite: bool = False, **shape
) -> TinyArchModel:
    """Write (or reuse) a tiny text GGUF of one family.

    Args:
        out_dir: directory for the file (created if needed).
        arch: a kind of SHAPES: qwen2vl, gemma3, qwen3vl, qwen2, qwen3, mistral3, gemma4-e2b, gemma4-31b, lfm2.
        seed: weights seed; equal arguments give byte-identical files.
        weight_type: 'f32', 'f16' or 'q8_0' for the matrices.
        overwrite: rewrite a file that already exists (the name encodes every argument).
        **shape: fields of HPARAMS[arch]; unset ones take SHAPES[arch], then the dataclass defaults.

    Returns:
        TinyArchModel with the path and the hparams.
    """
    if arch not in HPARAMS:
        raise ValueError(f"arch must be one of {sorted(HPARAMS)}, got {arch!r}")
    hp = HPARAMS[arch](**{**SHAPES[arch], **shape})
    path = Path(out_dir) / _file_name(arch, hp, weight_type, seed)
    if overwrite or not path.is_file():
        tmp = path.with_suffix(".partial")
        write, weights = _WRITERS[type(hp)]
        write(tmp, hp, weights(hp, seed), weight_type, read_tokenizer())
        tmp.replace(path)  # atomic: a crash never leaves a half-written cache hit
    return TinyArchModel(path, arch, hp)


_WRITERS = {
    Qwen2VLHParams: (write_qwen2vl_gguf, random_qwen2vl_weights),
    Gemma3HParams: (write_gemma3_gguf, random_gemma3_weights),
    DecoderHParams: (write_decoder_gguf, random_decoder_weights),
    Gemma4HParams: (write_gemma4_gguf, random_gemma4_weights),
    Lfm2HParams: (write_lfm2_gguf, random_lfm2_weights),
}


def make_tiny_qwen2vl(out_dir: str | Path, seed: int = 0, weight_type: str = "f32", **shape) -> TinyArchModel:
    """make_tiny_arch(out_dir, "qwen2vl", ...): 4 layers, head_dim 16, M-RoPE sections (2, 3, 3, 0)."""
    return make_tiny_arch(out_dir, "qwen2vl", seed, weight_type, **shape)


def make_tiny_gemma3(out_dir: str | Path, seed: int = 0, weight_type: str = "f32", **shape) -> TinyArchModel:
    """make_tiny_arch(out_dir, "gemma3", ...): 6 layers (2 and 5 global), window 16, head_dim 32."""
    return make_tiny_arch(out_dir, "gemma3", seed, weight_type, **shape)


def make_tiny_qwen3vl(out_dir: str | Path, seed: int = 0, weight_type: str = "f32", **shape) -> TinyArchModel:
    """make_tiny_arch(out_dir, "qwen3vl", ...): 6 layers, 3 deepstack, head_dim 32, IMROPE (8, 4, 4, 0)."""
    return make_tiny_arch(out_dir, "qwen3vl", seed, weight_type, **shape)


def make_tiny_decoder(
    out_dir: str | Path, arch: str, seed: int = 0, weight_type: str = "f32", **shape
) -> TinyArchModel:
    """make_tiny_arch(out_dir, arch, ...) for the plain decoders qwen2, qwen3 and mistral3 (4 layers)."""
    if arch not in ("qwen2", "qwen3", "mistral3"):
        raise ValueError(f"arch must be qwen2, qwen3 or mistral3, got {arch!r}")
    return make_tiny_arch(out_dir, arch, seed, weight_type, **shape)


def make_tiny_gemma4(out_dir: str | Path, layout: str = "e2b", seed: int = 0, weight_type: str = "f32", **shape):
    """make_tiny_arch(out_dir, "gemma4-" + layout, ...): layout 'e2b' (per-layer inputs) or '31b' (K as V)."""
    if layout not in ("e2b", "31b"):
        raise ValueError(f"layout must be 'e2b' or '31b', got {layout!r}")
    return make_tiny_arch(out_dir, "gemma4-" + layout, seed, weight_type, **shape)


def make_tiny_lfm2(out_dir: str | Path, seed: int = 0, **shape) -> TinyArchModel:
    """make_tiny_arch(out_dir, "lfm2", ...): 6 layers, attention at 2 and 4, F32 only."""
    return make_tiny_arch(out_dir, "lfm2", seed, "f32", **shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastv_edge.testing.make_tiny_archs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", choices=sorted(HPARAMS), required=True)
    parser.add_argument("--weight-type", choices=["f32", "f16", "q8_0"], default="f32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    model = make_tiny_arch(args.out_dir, args.arch, args.seed, args.weight_type, args.overwrite)
    print(f"{model.arch}: {model.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
