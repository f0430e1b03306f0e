"""Write deterministic tiny test models: a llama-arch GGUF with SmolLM2's real tokenizer and
a matching mmproj GGUF (CLIP ViT + LLaVA 'mlp' projector) that mtmd encodes images with.

Usage (from the repository root):
    python -m fastv_edge.testing.make_tiny OUT_DIR [--shape tiny|larger] [--weight-type f32|f16|q8_0]
                                       [--seed N] [--n-layer N] [--n-embd N] ...

Same arguments, same bytes: every tensor comes from numpy's PCG64 seeded by (seed, part).
Weights are scaled so activations stay O(1) and logits and attention rows have spread
(no all-tie top-k): attention logits have std ~2, output logits std ~2.5.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastv_edge.testing.llama_gguf import LlamaHParams, read_tokenizer, write_llama_gguf
from fastv_edge.testing.llama_gguf import tensor_shapes as llama_shapes
from fastv_edge.testing.mmproj import ClipHParams, write_mmproj_gguf
from fastv_edge.testing.mmproj import tensor_shapes as clip_shapes

GENERATOR_VERSION = 1  # part of the file names: bump when the weights' recipe changes

# Named shapes: "tiny" for exact tests (64 image tokens), "larger" for savings measurements.
SHAPES = {
    "tiny": dict(n_layer=4, n_embd=64, n_head=4, n_head_kv=2, n_ff=128),
    "larger": dict(
        n_layer=8,
        n_embd=256,
        n_head=8,
        n_head_kv=4,
        n_ff=768,
        vision_n_embd=128,
        vision_n_ff=256,
        image_size=96,
        patch_size=4,
    ),  # 24x24 = 576 image tokens, like LLaVA-1.5
}
# make_tiny keyword -> ClipHParams field; projection_dim always follows the LM's n_embd
VISION_KEYS = {
    "image_size": "image_size",
    "patch_size": "patch_size",
    "vision_n_embd": "n_embd",
    "vision_n_ff": "n_ff",
    "vision_n_head": "n_head",
    "vision_n_layer": "n_layer",
    "class_token": "class_token",
}
QK_GAIN = 1.4  # q.k/sqrt(head_dim) then has std ~QK_GAIN**2 ~ 2
LOGIT_STD = 2.5


@dataclass(frozen=True)
class TinyModels:
    """Paths and shapes of one generated text model + mmproj pair."""

    llama_path: Path
    mmproj_path: Path
    llama: LlamaHParams
    clip: ClipHParams

    @property
    def n_image_tokens(self) -> int:
        """Image tokens one picture becomes in the text model's prompt."""
        return self.clip.n_image_tokens


def _normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _norm_weight(rng: np.random.Generator, n: int) -> np.ndarray:
    return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)


def random_llama_weights(hp: LlamaHParams, seed: int) -> dict[str, np.ndarray]:
    """Deterministic random weights for write_llama_gguf."""
    rng = np.random.default_rng([seed, 0])
    inv_e, inv_f = hp.n_embd**-0.5, hp.n_ff**-0.5
    weights = {}
    for name, shape in llama_shapes(hp).items():
        kind = name.rsplit(".", 2)[-2]
        if kind.endswith("norm"):
            weights[name] = _norm_weight(rng, shape[0])
        elif kind in ("token_embd", "output"):
            weights[name] = _normal(rng, shape, LOGIT_STD * inv_e)  # tied head: logits std ~2.5
        elif kind in ("attn_q", "attn_k"):
            weights[name] = _normal(rng, shape, QK_GAIN * inv_e)
        elif kind == "ffn_down":
            weights[name] = _normal(rng, shape, inv_f)
        else:  # attn_v, attn_output, ffn_gate, ffn_up
            weights[name] = _normal(rng, shape, inv_e)
    return weights


def random_clip_weights(hp: ClipHParams, seed: int) -> dict[str, np.ndarray]:
    """Deterministic random weights for write_mmproj_gguf."""
    rng = np.random.default_rng([seed, 1])
    inv_d = hp.n_embd**-0.5
    fan_in = {
        "v.patch_embd.weight": 3 * hp.patch_size**2,
        "mm.0.weight": hp.n_embd,
        "mm.2.weight": hp.hidden,
    }
    weights = {}
    for name, shape in clip_shapes(hp).items():
        if name.endswith(".bias"):
            weights[name] = _normal(rng, shape, 0.1)
        elif name in fan_in:
            weights[name] = _normal(rng, shape, fan_in[name] ** -0.5)
        elif name in ("v.class_embd", "v.position_embd.weight"):
            weights[name] = _normal(rng, shape, 0.5)
        elif len(shape) == 1:  # layer norm scales
            weights[name] = _norm_weight(rng, shape[0])
        elif ".attn_q." in name or ".attn_k." in name:
            weights[name] = _normal(rng, shape, QK_GAIN * inv_d)
        elif ".ffn_down." in name:
            weights[name] = _normal(rng, shape, hp.n_ff**-0.5)
        else:  # attn_v, attn_out, ffn_up
            weights[name] = _normal(rng, shape, inv_d)
    return weights


def _split_shape(shape: dict) -> tuple[LlamaHParams, ClipHParams]:
    llama_fields = {f.name for f in dataclasses.fields(LlamaHParams)}
    unknown = set(shape) - llama_fields - set(VISION_KEYS)
    if unknown:
        raise ValueError(
            f"unknown shape argument(s) {sorted(unknown)}; known: {sorted(llama_fields | set(VISION_KEYS))}"
        )
    llama = LlamaHParams(**{k: v for k, v in shape.items() if k in llama_fields})
    vision = {VISION_KEYS[k]: v for k, v in shape.items() if k in VISION_KEYS}
    return llama, ClipHParams(projection_dim=llama.n_embd, **vision)


def _names(llama: LlamaHParams, clip: ClipHParams, weight_type: str, seed: int) -> tuple[str, str]:
    tail = f"{weight_type}-s{seed}-v{GENERATOR_VERSION}.gguf"
    lm = (
        f"tiny-llama-L{llama.n_layer}-E{llama.n_embd}-H{llama.n_head}-KV{llama.n_head_kv}"
        f"-FF{llama.n_ff}-R{llama.rope_freq_base:g}-T{int(llama.tie_embeddings)}-{tail}"
    )
    cls = "-cls" if clip.class_token else ""
    mm = (
        f"tiny-mmproj-I{clip.image_size}-P{clip.patch_size}-E{clip.n_embd}-L{clip.n_layer}"
        f"-H{clip.n_head}-FF{clip.n_ff}-D{clip.projection_dim}{cls}-{tail}"
    )
    return lm, mm


def make_tiny(
    out_dir: str | Path, seed: int = 0, weight_type: str = "f32", overwrite: bool = False, **shape
) -> TinyModels:
    """Write (or reuse) a tiny llama GGUF and its matching mmproj GGUF.

    Args:
        out_dir: directory for the two files (created if needed).
        seed: weights seed; equal arguments give byte-identical files.
        weight_type: 'f32', 'f16' or 'q8_0' for both files' matrices.
        overwrite: rewrite files that already exist (names encode every argument).
        **shape: LlamaHParams fields (n_layer, n_embd, n_head, n_head_kv, n_ff,
            rope_freq_base, rms_eps, tie_embeddings) and vision fields (image_size,
            patch_size, vision_n_embd, vision_n_ff, vision_n_head, vision_n_layer,
            class_token). Unset ones take SHAPES["tiny"], then the dataclass defaults.

    Returns:
        TinyModels with both paths, both hparams and n_image_tokens.
    """
    llama, clip = _split_shape({**SHAPES["tiny"], **shape})
    lm_name, mm_name = _names(llama, clip, weight_type, seed)
    out_dir = Path(out_dir)
    result = TinyModels(out_dir / lm_name, out_dir / mm_name, llama, clip)
    if overwrite or not result.llama_path.is_file():
        tmp = result.llama_path.with_suffix(".partial")
        write_llama_gguf(tmp, llama, random_llama_weights(llama, seed), weight_type, read_tokenizer())
        tmp.replace(result.llama_path)  # atomic: a crash never leaves a half-written cache hit
    if overwrite or not result.mmproj_path.is_file():
        tmp = result.mmproj_path.with_suffix(".partial")
        write_mmproj_gguf(tmp, clip, random_clip_weights(clip, seed), weight_type)
        tmp.replace(result.mmproj_path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastv_edge.testing.make_tiny", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--weight-type", choices=["f32", "f16", "q8_0"], default="f32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    for key in ("n_layer", "n_embd", "n_head", "n_head_kv", "n_ff", *VISION_KEYS):
        if key != "class_token":
            parser.add_argument("--" + key.replace("_", "-"), type=int, dest=key)
    parser.add_argument("--class-token", action="store_true", default=None)
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head", "n_head_kv", "n_ff", *VISION_KEYS)}
    shape = {**SHAPES[args.shape], **{k: v for k, v in overrides.items() if v is not None}}
    models = make_tiny(args.out_dir, args.seed, args.weight_type, args.overwrite, **shape)
    print(f"llama:  {models.llama_path}")
    print(f"mmproj: {models.mmproj_path}")
    print(f"image tokens per picture: {models.n_image_tokens}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
