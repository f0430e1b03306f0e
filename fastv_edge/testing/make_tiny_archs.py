"""Write deterministic tiny qwen2vl and gemma3 GGUFs (text model only, SmolLM2's real tokenizer).

Usage (from the repository root):
    python -m fastv_edge.testing.make_tiny_archs OUT_DIR --arch qwen2vl|gemma3 [--weight-type f32|f16|q8_0] [--seed N]

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

from fastv_edge.testing.gemma3_gguf import Gemma3HParams, write_gemma3_gguf
from fastv_edge.testing.gemma3_gguf import tensor_shapes as gemma3_shapes
from fastv_edge.testing.llama_gguf import read_tokenizer
from fastv_edge.testing.make_tiny import LOGIT_STD, QK_GAIN, random_llama_weights
from fastv_edge.testing.qwen2vl_gguf import Qwen2VLHParams, write_qwen2vl_gguf

GENERATOR_VERSION = 1  # part of the file names: bump when the weights' recipe changes

# Tiny defaults per arch. qwen2vl: rope base 100 instead of 1e6 so that the x/y sections,
# which get the lowest frequencies, still rotate measurably at positions < 100.
SHAPES = {
    "qwen2vl": dict(n_layer=4, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, rope_freq_base=100.0, rms_eps=1e-6),
    "gemma3": {},  # Gemma3HParams defaults: 6 layers, window 16, pattern 3
}
HPARAMS = {"qwen2vl": Qwen2VLHParams, "gemma3": Gemma3HParams}
# ggml-cpu evaluates GELU through an fp16 table for |x| < 10 and exactly (x or 0) beyond
# (ggml/src/ggml-cpu/vec.h ggml_vec_geglu_f32): a float64 reference rounds a few inputs the
# other way and drifts ~1e-3 on logits. Large gate weights put most inputs in the exact
# branches; post_ffw_norm cancels the scale, so the model's activations stay O(1).
GEMMA3_GATE_GAIN = 128.0  # ~6% of GELU inputs still fall in the table range


@dataclass(frozen=True)
class TinyArchModel:
    """Path and shape of one generated text model."""

    path: Path
    arch: str
    hparams: Qwen2VLHParams | Gemma3HParams


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
    """Write (or reuse) a tiny qwen2vl or gemma3 GGUF.

    Args:
        out_dir: directory for the file (created if needed).
        arch: 'qwen2vl' or 'gemma3'.
        seed: weights seed; equal arguments give byte-identical files.
        weight_type: 'f32', 'f16' or 'q8_0' for the matrices.
        overwrite: rewrite a file that already exists (the name encodes every argument).
        **shape: Qwen2VLHParams / Gemma3HParams fields; unset ones take SHAPES[arch], then
            the dataclass defaults.

    Returns:
        TinyArchModel with the path and the hparams.
    """
    if arch not in HPARAMS:
        raise ValueError(f"arch must be one of {sorted(HPARAMS)}, got {arch!r}")
    hp = HPARAMS[arch](**{**SHAPES[arch], **shape})
    path = Path(out_dir) / _file_name(arch, hp, weight_type, seed)
    if overwrite or not path.is_file():
        tmp = path.with_suffix(".partial")
        if arch == "qwen2vl":
            write_qwen2vl_gguf(tmp, hp, random_qwen2vl_weights(hp, seed), weight_type, read_tokenizer())
        else:
            write_gemma3_gguf(tmp, hp, random_gemma3_weights(hp, seed), weight_type, read_tokenizer())
        tmp.replace(path)  # atomic: a crash never leaves a half-written cache hit
    return TinyArchModel(path, arch, hp)


def make_tiny_qwen2vl(out_dir: str | Path, seed: int = 0, weight_type: str = "f32", **shape) -> TinyArchModel:
    """make_tiny_arch(out_dir, "qwen2vl", ...): 4 layers, head_dim 16, M-RoPE sections (2, 3, 3, 0)."""
    return make_tiny_arch(out_dir, "qwen2vl", seed, weight_type, **shape)


def make_tiny_gemma3(out_dir: str | Path, seed: int = 0, weight_type: str = "f32", **shape) -> TinyArchModel:
    """make_tiny_arch(out_dir, "gemma3", ...): 6 layers (2 and 5 global), window 16, head_dim 32."""
    return make_tiny_arch(out_dir, "gemma3", seed, weight_type, **shape)


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
