"""The clip.* keys of an mmproj, checked as mtmd's vision loader (tools/mtmd/clip.cpp) reads them.

clip.cpp reads keys with typed getters (gguf_get_val_u32 and friends) that abort on a value of
another GGUF type, and divides by several of the sizes it reads (a patch size of 0 is a
SIGFPE in the warm-up). check_key_types and read_vision refuse such files with a
ModelLoadError naming the key before mtmd sees them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError
from .gguf_header import ARRAY, STRING, GGUFHeader

U32, I32, F32_VALUE, BOOL = 4, 5, 6, 7  # GGUF value types
_TYPE_NAMES = {U32: "uint32", I32: "int32", F32_VALUE: "float32", BOOL: "bool", STRING: "string"}
# clip.* keys the pinned clip.cpp reads, with the GGUF type its getter asserts (gguf_get_val_*)
# or, for arrays, the item type it requires
SCALAR_KEYS = {
    "clip.projector_type": STRING,
    "clip.vision.projector_type": STRING,
    "clip.has_vision_encoder": BOOL,
    "clip.has_audio_encoder": BOOL,
    "clip.has_gen_audio_encoder": BOOL,
    "clip.use_gelu": BOOL,
    "clip.use_silu": BOOL,
    "clip.minicpmv_version": I32,
    "clip.minicpmv_query_num": U32,
    "clip.vision.embedding_length": U32,
    "clip.vision.feed_forward_length": U32,
    "clip.vision.block_count": U32,
    "clip.vision.projection_dim": U32,
    "clip.vision.attention.head_count": U32,
    "clip.vision.attention.head_count_kv": U32,
    "clip.vision.attention.head_dim": U32,
    "clip.vision.attention.layer_norm_epsilon": F32_VALUE,
    "clip.vision.image_size": U32,
    "clip.vision.patch_size": U32,
    "clip.vision.image_min_pixels": U32,
    "clip.vision.image_max_pixels": U32,
    "clip.vision.preproc_min_tiles": U32,
    "clip.vision.preproc_max_tiles": U32,
    "clip.vision.preproc_image_size": U32,
    "clip.vision.projector.scale_factor": U32,
    "clip.vision.projector.query_side": U32,
    "clip.vision.projector.window_side": U32,
    "clip.vision.spatial_merge_size": U32,
    "clip.vision.swiglu_clamp": F32_VALUE,
    "clip.vision.mm_patch_merge_type": STRING,
    "clip.vision.n_wa_pattern": U32,
    "clip.vision.window_size": U32,
    "clip.vision.expert_used_count": U32,
    "clip.vision.sam.head_count": U32,
    "clip.vision.sam.block_count": U32,
    "clip.vision.sam.embedding_length": U32,
}
ARRAY_KEYS = {
    "clip.vision.image_mean": F32_VALUE,
    "clip.vision.image_std": F32_VALUE,
    "clip.vision.feature_layer": I32,
    "clip.vision.image_grid_pinpoints": I32,
    "clip.vision.wa_layer_indexes": I32,
    "clip.vision.wa_pattern_mode": I32,
    "clip.vision.projector.spatial_offsets": I32,
}
REQUIRED_KEYS = (  # clip.cpp throws without them; named here so the message says which
    "clip.vision.embedding_length",
    "clip.vision.attention.head_count",
    "clip.vision.feed_forward_length",
    "clip.vision.block_count",
    "clip.vision.projection_dim",
    "clip.vision.attention.layer_norm_epsilon",
    "clip.vision.image_size",
    "clip.vision.patch_size",
)
MAX_SIZE = 1 << 20  # widths, heads, layers: far above any released encoder, far below int32 overflow
MAX_PATCHES_PER_SIDE = 128  # the warm-up graph attends over side^2 patches (Gemma 3: 64, LLaVA: 24)
MAX_LAYERS = 1024


@dataclass(frozen=True)
class Vision:
    """The vision tower's hyperparameters, as clip.cpp reads them."""

    n_embd: int
    n_head: int
    n_head_kv: int
    d_head: int
    n_layer: int
    image_size: int
    patch_size: int
    merge: int | None  # scale_factor / spatial_merge_size when the file has it
    feature_layers: tuple[int, ...]

    @property
    def side(self) -> int:
        """Patches per side of the image_size x image_size input."""
        return self.image_size // self.patch_size


def check_key_types(header: GGUFHeader) -> None:
    """Raise ModelLoadError when a clip.* key clip.cpp reads has another GGUF type than its getter's."""
    name = Path(header.path).name
    for key, (vtype, item) in header.types.items():
        if key in SCALAR_KEYS and vtype != SCALAR_KEYS[key]:
            want = _TYPE_NAMES.get(SCALAR_KEYS[key])
            raise ModelLoadError(f"mmproj {name}: key {key!r} has GGUF type {vtype}, mtmd reads it as {want}")
        if key in ARRAY_KEYS and (vtype != ARRAY or item != ARRAY_KEYS[key]):
            want = _TYPE_NAMES.get(ARRAY_KEYS[key])
            raise ModelLoadError(f"mmproj {name}: key {key!r} must be an array of {want}")


def _int_key(header: GGUFHeader, key: str, default: int | None = None, low: int = 1, high: int = MAX_SIZE):
    value = header.values.get(key, default)
    if value is None:
        raise ModelLoadError(f"mmproj {Path(header.path).name}: key {key!r} is missing (mtmd requires it)")
    if not low <= value <= high:
        raise ModelLoadError(f"mmproj {Path(header.path).name}: {key} = {value} is outside [{low}, {high}]")
    return value


def read_vision(header: GGUFHeader) -> Vision:
    """The vision hyperparameters, each checked usable (clip.cpp divides by several of them).

    Raises:
        ModelLoadError: a required key is missing or a value is out of range or inconsistent.
    """
    name = Path(header.path).name
    for key in REQUIRED_KEYS:
        if key not in header.values:
            raise ModelLoadError(f"mmproj {name}: key {key!r} is missing (mtmd requires it)")
    d = _int_key(header, "clip.vision.embedding_length")
    n_head = _int_key(header, "clip.vision.attention.head_count", high=d)
    n_head_kv = _int_key(header, "clip.vision.attention.head_count_kv", n_head, high=n_head)
    d_head = header.values.get("clip.vision.attention.head_dim") or 0
    if not d_head and d % n_head:
        raise ModelLoadError(f"mmproj {name}: vision n_embd {d} is not a multiple of its {n_head} heads")
    d_head = d_head or d // n_head
    n_layer = _int_key(header, "clip.vision.block_count", high=MAX_LAYERS)
    image_size = _int_key(header, "clip.vision.image_size")
    patch = _int_key(header, "clip.vision.patch_size", high=image_size)
    if image_size // patch > MAX_PATCHES_PER_SIDE:
        raise ModelLoadError(
            f"mmproj {name}: image_size {image_size} / patch_size {patch} = {image_size // patch} patches per side, "
            f"more than {MAX_PATCHES_PER_SIDE} (the warm-up would attend over all of them at once)"
        )
    eps = header.values.get("clip.vision.attention.layer_norm_epsilon")
    if not isinstance(eps, float) or not math.isfinite(eps) or eps < 0:
        raise ModelLoadError(f"mmproj {name}: layer_norm_epsilon {eps!r} is not a finite number >= 0")
    _check_mean_std(header, name)
    merge = header.values.get("clip.vision.projector.scale_factor", header.values.get("clip.vision.spatial_merge_size"))
    features = tuple(v for v in header.values.get("clip.vision.feature_layer") or () if v >= 0)
    if any(v > n_layer for v in features):
        raise ModelLoadError(f"mmproj {name}: feature_layer {list(features)} has a layer above block_count {n_layer}")
    return Vision(d, n_head, n_head_kv, d_head, n_layer, image_size, patch, merge, features)


def _check_mean_std(header: GGUFHeader, name: str) -> None:
    for key in ("clip.vision.image_mean", "clip.vision.image_std"):
        values = header.values.get(key)
        if values is None or len(values) < 3:
            raise ModelLoadError(f"mmproj {name}: {key} needs 3 values (one per RGB channel), got {values!r}")
        if not all(math.isfinite(v) for v in values[:3]) or (key.endswith("std") and min(values[:3]) <= 0):
            raise ModelLoadError(f"mmproj {name}: {key} = {values[:3]} is not usable (finite, std > 0)")
