"""Write a tiny Gemma 4 vision projector ('gemma4v') mmproj GGUF that mtmd loads.

What the pinned mtmd reads and computes (tools/mtmd/models/gemma4v.cpp, clip.cpp build_vit and
load_tensors, mtmd.cpp):
- pixels go to 2 * x - 1 after mean/std normalisation; one patch kernel, no bias; learned
  positions as two lookup tables in one tensor v.position_embd.weight, ggml ne
  [n_embd, pos_size, 2] (x table, then y table), indexed by each patch's column and row.
- ViT (build_vit, NORM_TYPE_RMS): ln1, q/k/v with per-head RMS q/k norms, 2-D NEOX rope
  (first half of a head by column, second by row, theta 100), V gets an unweighted RMS norm,
  attention scale 1, attn_out, attn_post_norm; ln2, gated GELU FFN (ffn_gate, ffn_up,
  ffn_down), ffn_post_norm. RMS norms have no biases.
- pooler: average over merge x merge patches (clip.vision.projector.scale_factor, default 3),
  times sqrt(n_embd); then an unweighted RMS norm and mm.input_projection.weight (ggml ne
  [n_embd, n_embd_text]: clip_n_mmproj_embd reads ne[1]).
- mtmd resizes the image, aspect kept, to a multiple of patch * merge with 70 to 1120 tokens
  (clip.cpp set_limit_image_tokens), wraps the image in the text "<|image>" ... "<image|>",
  and decodes it non-causally unless the text model's n_embd is 1536 or 2560 (E2B / E4B,
  mtmd_decode_use_non_causal): a tiny text model (n_embd 64) always gets the non-causal
  decode, whatever its layout.
Weights are random; tests use mtmd's own output rows (no numpy reference of the encoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from fastv_edge.testing.mmproj import add_vision_keys, write_clip_gguf

GEMMA4V_MEAN, GEMMA4V_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # the graph itself maps [0, 1] to [-1, 1]
MIN_TOKENS = 70  # clip.cpp: set_limit_image_tokens(70, 1120) for gemma4v


@dataclass(frozen=True)
class Gemma4VisionHParams:
    """Shape of a tiny gemma4v tower; pos_size is the rows of each position table (max patch columns/rows)."""

    image_size: int = 96
    patch_size: int = 8
    n_embd: int = 32
    n_ff: int = 64
    n_head: int = 2
    n_layer: int = 2
    projection_dim: int = 64  # the text model's n_embd
    merge: int = 3
    pos_size: int = 64
    eps: float = 1e-6

    def __post_init__(self):
        for name in ("image_size", "patch_size", "n_embd", "n_ff", "n_head", "n_layer", "projection_dim", "merge"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 4:
            raise ValueError("gemma4v needs a head size divisible by 4 (two NEOX ropes of half a head)")
        if self.n_ff == self.n_embd:
            raise ValueError(f"n_ff must differ from n_embd={self.n_embd}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def tensor_shapes(hp: Gemma4VisionHParams) -> dict[str, tuple[int, ...]]:
    """Numpy shapes of every tensor, keyed by GGUF name; a linear map is (n_out, n_in)."""
    d, p = hp.n_embd, hp.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "v.patch_embd.weight": (d, 3, p, p),  # Conv2d (out, in, kh, kw)
        "v.position_embd.weight": (2, hp.pos_size, d),  # ggml ne [n_embd, pos_size, 2]
    }
    for il in range(hp.n_layer):
        b = f"v.blk.{il}."
        for name in ("ln1", "ln2", "attn_post_norm", "ffn_post_norm"):
            shapes[f"{b}{name}.weight"] = (d,)
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            shapes[f"{b}{proj}.weight"] = (d, d)
        shapes[b + "attn_q_norm.weight"] = shapes[b + "attn_k_norm.weight"] = (hp.head_dim,)
        shapes[b + "ffn_gate.weight"] = shapes[b + "ffn_up.weight"] = (hp.n_ff, d)
        shapes[b + "ffn_down.weight"] = (d, hp.n_ff)
    shapes["mm.input_projection.weight"] = (hp.projection_dim, d)
    return shapes


def random_gemma4v_weights(hp: Gemma4VisionHParams, seed: int, out_std: float = 1.0) -> dict[str, np.ndarray]:
    """Deterministic random weights; out_std is the std of the projector's output rows."""
    rng = np.random.default_rng([seed, 9])
    weights = {}
    for name, shape in tensor_shapes(hp).items():
        if name.endswith(("q_norm.weight", "k_norm.weight")):  # attention scale 1: q.k std ~2
            w = np.sqrt(2.0 / np.sqrt(hp.head_dim)) * (1.0 + 0.1 * rng.standard_normal(shape))
        elif len(shape) == 1:
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name == "v.position_embd.weight":
            w = rng.standard_normal(shape) * 0.5
        elif name == "mm.input_projection.weight":  # applied to RMS-normalised rows
            w = rng.standard_normal(shape) * out_std * shape[1] ** -0.5
        else:
            w = rng.standard_normal(shape) * float(np.prod(shape[1:])) ** -0.5
        weights[name] = w.astype(np.float32)
    return weights


def write_gemma4v_mmproj(path: str | Path, hp: Gemma4VisionHParams, weights: dict[str, np.ndarray]) -> Path:
    """Write an F32 gemma4v mmproj GGUF for llama.cpp's mtmd.

    Args:
        path: output file.
        hp: shape; hp.projection_dim must equal the text model's n_embd.
        weights: arrays keyed by GGUF name, shapes as tensor_shapes(hp).

    Returns:
        The path written.
    """
    expected = tensor_shapes(hp)
    got = {n: tuple(a.shape) for n, a in weights.items()}
    bad = sorted(n for n in set(expected) | set(got) if got.get(n) != expected.get(n))
    if bad:
        raise ValueError(f"weights do not match hparams: {bad[:5]}")

    def add_keys(w: gguf.GGUFWriter) -> None:
        w.add_name("tiny-gemma4v-mmproj")
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        w.add_clip_has_vision_encoder(True)
        w.add_clip_projector_type("gemma4v")
        add_vision_keys(w, hp, True, GEMMA4V_MEAN, GEMMA4V_STD)  # gelu_pytorch_tanh
        w.add_uint32("clip.vision.projector.scale_factor", hp.merge)

    return write_clip_gguf(path, add_keys, {n: weights[n] for n in expected}, gguf.GGMLQuantizationType.F32)


def make_tiny_gemma4v_mmproj(
    out_dir: str | Path, projection_dim: int, seed: int = 0, out_std: float = 2.5
) -> tuple[Path, Gemma4VisionHParams]:
    """Write (or reuse) a tiny gemma4v projector for a text model of width projection_dim."""
    hp = Gemma4VisionHParams(projection_dim=projection_dim)
    path = Path(out_dir) / f"tiny-gemma4v-mmproj-D{projection_dim}-o{out_std:g}-s{seed}.gguf"
    if not path.is_file():
        tmp = path.with_suffix(".partial")
        write_gemma4v_mmproj(tmp, hp, random_gemma4v_weights(hp, seed, out_std))
        tmp.replace(path)  # atomic: a crash never leaves a half-written cache hit
    return path, hp
