"""Write tiny Qwen2-VL ('qwen2vl_merger'), Qwen2.5-VL ('qwen2.5vl_merger'), Qwen3-VL ('qwen3vl_merger') and
Gemma 3 ('gemma3') mmprojs that mtmd loads.

fastv_edge/testing/mmproj.py writes the LLaVA 'mlp' projector. These three are the projectors whose image
tokens the text model handles differently, which is what FastV's qwen2vl and gemma3 paths
must get right end to end:

- qwen2vl_merger (tools/mtmd/models/qwen2vl.cpp): two patch kernels summed (the temporal
  pair of Qwen2-VL's 3-D conv; a still image feeds both), a pre-norm ViT with 2-D M-RoPE and
  no position table, v.post_ln (HF merger.ln_q), then each 2x2 block of patches is
  concatenated and mapped by mm.0 -> GELU -> mm.2. mtmd resizes the image to a multiple of
  2 * patch_size (aspect kept), so the token grid follows the image: an (nx, ny) grid whose
  M-RoPE positions mtmd assigns per row and column.
- qwen2.5vl_merger (tools/mtmd/models/qwen2vl.cpp, the same graph builder): Qwen2-VL's patch pair
  and 2x2 merger, but RMS norms without biases (ln1, ln2, v.post_ln), a SwiGLU FFN with biases
  (ffn_gate, ffn_up, ffn_down; clip.use_silu) and window attention: every layer attends within
  112-pixel windows (grouped by window_idx / inv_window_idx) except each clip.vision.n_wa_pattern-th,
  which attends to the whole image (Qwen2.5-VL: fullatt_block_indexes 7, 15, 23, 31 -> 8).
- qwen3vl_merger (tools/mtmd/models/qwen3vl.cpp, tensors from clip.cpp load_tensors): Qwen2-VL's
  patch pair plus v.patch_embd.bias and a learned v.position_embd table (n_side^2 rows,
  bilinearly resized to the image's patch grid), a LayerNorm ViT with fused attn_qkv and
  2-D M-RoPE (head size divisible by 4), GELU (clip.use_gelu); v.post_ln, 2x2 merge, mm.0 ->
  GELU -> mm.2 as Qwen2-VL. Each vision layer listed in deepstack_layers also has a deepstack
  merger v.deepstack.<il>.{norm (LayerNorm over the 4 merged patches), fc1, fc2} whose output
  (projection_dim wide) is concatenated after the main one: a row is projection_dim *
  (1 + n_deepstack) floats (clip_n_mmproj_embd), which mtmd checks against the text model's
  llama_model_n_embd_inp. Mean/std are 0.5 (Qwen3-VL's SigLIP-2 preprocessing).
- gemma3 (tools/mtmd/models/siglip.cpp): a SigLIP ViT (learned positions, GELU, v.post_ln),
  average pooling with a kernel of clip.vision.projector.scale_factor, RMS norm times
  mm.soft_emb_norm.weight, then mm.input_projection.weight. mtmd resizes to image_size
  squared and decodes the block with non-causal attention.

Weights are random; no numpy reference of these encoders exists (they are stock mtmd, not
FastV code): tests use mtmd's own output rows as the text model's input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from fastv_edge.testing.llama_gguf import WEIGHT_TYPES
from fastv_edge.testing.mmproj import add_vision_keys, write_clip_gguf

PROJECTORS = ("qwen2vl_merger", "gemma3", "qwen3vl_merger", "qwen2.5vl_merger")
QWEN_MERGERS = ("qwen2vl_merger", "qwen3vl_merger", "qwen2.5vl_merger")
QWEN25_WINDOW = 112  # pixels per window side: clip.cpp's default for qwen2.5vl_merger (no GGUF key)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # Gemma 3's SigLIP preprocessing
QWEN2VL_MEAN = (0.48145466, 0.4578275, 0.40821073)  # Qwen2-VL uses OpenAI CLIP's statistics
QWEN2VL_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionHParams:
    """Shape of a qwen2vl_merger, qwen3vl_merger or gemma3 vision tower + projector.

    image_size: gemma3 - the fixed square input; qwen2vl - only the nominal size mtmd reports
    (real images keep their aspect, between 8 and 4096 tokens).
    merge: qwen2vl - the spatial merge (2 in every released model); gemma3 - the pooling
    kernel (4 in the released models: 896 px / 14 px = 64 patches -> 16 x 16 = 256 tokens).
    deepstack_layers: qwen3vl - vision layers with a deepstack merger (Qwen3-VL: 3, e.g. 5, 11, 17).
    n_wa_pattern: qwen2.5vl - every n_wa_pattern-th layer attends to the whole image, the others
        within windows (Qwen2.5-VL: 8).
    """

    projector: str
    image_size: int = 96
    patch_size: int = 8
    n_embd: int = 32
    n_ff: int = 64  # must differ from n_embd: clip.cpp guesses a legacy up/down swap from it
    n_head: int = 2
    n_layer: int = 2
    projection_dim: int = 64  # the text model's n_embd
    merge: int = 2
    eps: float = 1e-6
    deepstack_layers: tuple[int, ...] = ()
    n_wa_pattern: int = 0

    def __post_init__(self):
        if self.projector not in PROJECTORS:
            raise ValueError(f"projector must be one of {PROJECTORS}, got {self.projector!r}")
        for name in ("image_size", "patch_size", "n_embd", "n_ff", "n_head", "n_layer", "projection_dim", "merge"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_ff == self.n_embd:
            raise ValueError(f"n_ff must differ from n_embd={self.n_embd} (clip.cpp swaps up/down)")
        side = self.image_size // self.patch_size
        if self.image_size % self.patch_size or side % self.merge:
            step = self.patch_size * self.merge
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size * merge = {step}")
        if self.projector in QWEN_MERGERS and ((self.n_embd // self.n_head) % 4 or self.merge != 2):
            raise ValueError(f"{self.projector} needs a head size divisible by 4 (2-D M-RoPE) and merge 2")
        layers = tuple(self.deepstack_layers)
        if layers and self.projector != "qwen3vl_merger":
            raise ValueError("deepstack_layers is a qwen3vl_merger hyperparameter")
        if list(layers) != sorted(set(layers)) or any(not 0 <= il < self.n_layer for il in layers):
            raise ValueError(f"deepstack_layers {layers} must be distinct ascending layers < n_layer={self.n_layer}")
        # n_wa_pattern 1 would leave no windowed layer, and mtmd aborts setting the unused window mask
        qwen25 = self.projector == "qwen2.5vl_merger"
        if (qwen25 and self.n_wa_pattern < 2) or (not qwen25 and self.n_wa_pattern):
            raise ValueError(f"n_wa_pattern must be >= 2 for qwen2.5vl_merger, 0 otherwise, got {self.n_wa_pattern}")

    @property
    def n_out(self) -> int:
        """Floats per output row: projection_dim, plus projection_dim per deepstack merger (qwen3vl)."""
        return self.projection_dim * (1 + len(self.deepstack_layers))

    @property
    def n_image_tokens(self) -> int:
        """Tokens of an image_size x image_size image."""
        return (self.image_size // self.patch_size // self.merge) ** 2


def tensor_shapes(hp: VisionHParams) -> dict[str, tuple[int, ...]]:
    """Numpy shapes of every tensor, keyed by GGUF name; a linear map is (n_out, n_in)."""
    d, p = hp.n_embd, hp.patch_size
    shapes: dict[str, tuple[int, ...]] = {"v.patch_embd.weight": (d, 3, p, p)}  # Conv2d (out, in, kh, kw)
    if hp.projector in QWEN_MERGERS:
        shapes["v.patch_embd.weight.1"] = (d, 3, p, p)  # second temporal slice of the 3-D conv
    if hp.projector not in ("qwen2vl_merger", "qwen2.5vl_merger"):  # no patch bias, no position table
        shapes["v.patch_embd.bias"] = (d,)
        shapes["v.position_embd.weight"] = ((hp.image_size // p) ** 2, d)
    rms = hp.projector == "qwen2.5vl_merger"  # RMS norms: weights only
    for il in range(hp.n_layer):
        b = f"v.blk.{il}."
        for norm in ("ln1", "ln2"):
            shapes[f"{b}{norm}.weight"] = (d,)
            if not rms:
                shapes[f"{b}{norm}.bias"] = (d,)
        if hp.projector == "qwen3vl_merger":  # qwen3vl.cpp reads only the fused projection
            shapes[b + "attn_qkv.weight"], shapes[b + "attn_qkv.bias"] = (3 * d, d), (3 * d,)
        projs = ("attn_out",) if hp.projector == "qwen3vl_merger" else ("attn_q", "attn_k", "attn_v", "attn_out")
        for proj in projs:
            shapes[f"{b}{proj}.weight"] = (d, d)
            shapes[f"{b}{proj}.bias"] = (d,)
        if rms:  # SwiGLU: down(silu(gate(x)) * up(x))
            shapes[b + "ffn_gate.weight"], shapes[b + "ffn_gate.bias"] = (hp.n_ff, d), (hp.n_ff,)
        shapes[b + "ffn_up.weight"], shapes[b + "ffn_up.bias"] = (hp.n_ff, d), (hp.n_ff,)
        shapes[b + "ffn_down.weight"], shapes[b + "ffn_down.bias"] = (d, hp.n_ff), (d,)
    shapes["v.post_ln.weight"] = (d,)
    if not rms:
        shapes["v.post_ln.bias"] = (d,)
    d4, out = d * hp.merge**2, hp.projection_dim  # a 2x2 block of patches, concatenated
    for il in hp.deepstack_layers:
        b = f"v.deepstack.{il}."
        shapes[b + "norm.weight"] = shapes[b + "norm.bias"] = (d4,)
        shapes[b + "fc1.weight"], shapes[b + "fc1.bias"] = (d4, d4), (d4,)
        shapes[b + "fc2.weight"], shapes[b + "fc2.bias"] = (out, d4), (out,)
    if hp.projector in QWEN_MERGERS:
        shapes["mm.0.weight"], shapes["mm.0.bias"] = (d4, d4), (d4,)
        shapes["mm.2.weight"], shapes["mm.2.bias"] = (out, d4), (out,)
    else:
        shapes["mm.soft_emb_norm.weight"] = (d,)
        # stored as HF keeps it, (vision, text): clip.cpp multiplies by its transpose
        shapes["mm.input_projection.weight"] = (d, hp.projection_dim)
    return shapes


def random_vision_weights(hp: VisionHParams, seed: int, out_std: float = 1.0) -> dict[str, np.ndarray]:
    """Deterministic random weights; out_std is the std of the projector's output rows."""
    rng = np.random.default_rng([seed, 5])
    weights = {}
    for name, shape in tensor_shapes(hp).items():
        if name.endswith(".bias"):
            w = rng.standard_normal(shape) * 0.1
        elif len(shape) == 1:  # norm scales
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name == "v.position_embd.weight":
            w = rng.standard_normal(shape) * 0.5
        elif name == "mm.input_projection.weight":  # applied to RMS-normalised rows of size d
            w = rng.standard_normal(shape) * out_std * shape[0] ** -0.5
        elif name == "mm.2.weight" or name.endswith(".fc2.weight"):  # the rows the text model reads
            w = rng.standard_normal(shape) * out_std * shape[1] ** -0.5
        else:  # fan-in scaling keeps every stage O(1)
            w = rng.standard_normal(shape) * float(np.prod(shape[1:])) ** -0.5
        weights[name] = w.astype(np.float32)
    return weights


def write_vision_mmproj(
    path: str | Path,
    hp: VisionHParams,
    weights: dict[str, np.ndarray],
    weight_type: str = "f32",
    name: str | None = None,
) -> Path:
    """Write a qwen2vl_merger, qwen3vl_merger or gemma3 mmproj GGUF for llama.cpp's mtmd.

    Args:
        path: output file.
        hp: shape; hp.projection_dim must equal the text model's n_embd (and hp.n_out its
            llama_model_n_embd_inp: qwen3vl's deepstack layers).
        weights: arrays keyed by GGUF name, shapes as tensor_shapes(hp).
        weight_type: 'f32', 'f16' or 'q8_0' for the linear weights (norms, biases and
            position embeddings stay F32).
        name: general.name (default tiny-<projector>-mmproj).

    Returns:
        The path written.
    """
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type must be one of {sorted(WEIGHT_TYPES)}, got {weight_type!r}")
    expected = tensor_shapes(hp)
    got = {n: tuple(a.shape) for n, a in weights.items()}
    bad = sorted(n for n in set(expected) | set(got) if got.get(n) != expected.get(n))
    if bad:
        raise ValueError(f"weights do not match hparams: {bad[:5]}")
    qtype, ftype = WEIGHT_TYPES[weight_type]
    qwen2 = hp.projector == "qwen2vl_merger"

    def add_keys(w: gguf.GGUFWriter) -> None:
        w.add_name(name or f"tiny-{hp.projector}-mmproj")
        w.add_file_type(ftype)
        w.add_clip_has_vision_encoder(True)
        w.add_clip_projector_type(hp.projector)
        mean, std = (QWEN2VL_MEAN, QWEN2VL_STD) if qwen2 or hp.n_wa_pattern else (SIGLIP_MEAN, SIGLIP_STD)
        # Qwen2-VL's ViT uses quick-GELU, Qwen2.5-VL's SiLU (SwiGLU), the others GELU
        add_vision_keys(w, hp, hp.projector in ("gemma3", "qwen3vl_merger"), mean, std)
        if hp.n_wa_pattern:
            w.add_bool("clip.use_silu", True)
            w.add_uint32("clip.vision.n_wa_pattern", hp.n_wa_pattern)
        if hp.projector in QWEN_MERGERS:
            w.add_uint32("clip.vision.spatial_merge_size", hp.merge)
        else:
            w.add_uint32("clip.vision.projector.scale_factor", hp.merge)
        if hp.deepstack_layers:  # written by the converter; clip.cpp finds the mergers by tensor name
            w.add_vision_is_deepstack_layers([il in hp.deepstack_layers for il in range(hp.n_layer)])

    return write_clip_gguf(path, add_keys, {n: weights[n] for n in expected}, qtype)


def make_tiny_vision_mmproj(
    out_dir: str | Path, projector: str, projection_dim: int, seed: int = 0, out_std: float = 1.0, **shape
) -> tuple[Path, VisionHParams]:
    """Write (or reuse) a tiny F32 projector of `projector` type for a text model of width projection_dim."""
    hp = VisionHParams(projector=projector, projection_dim=projection_dim, **shape)
    tag = "-".join(f"{k}{'.'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in sorted(shape.items()))
    path = Path(out_dir) / f"tiny-{projector}-mmproj-D{projection_dim}-{tag or 'default'}-o{out_std:g}-s{seed}.gguf"
    if not path.is_file():
        tmp = path.with_suffix(".partial")
        write_vision_mmproj(tmp, hp, random_vision_weights(hp, seed, out_std))
        tmp.replace(path)  # atomic: a crash never leaves a half-written cache hit
    return path, hp
