"""How many tokens an image becomes under an image-token cap, without running mtmd.

The TTFT planner compares caps before it opens mtmd with one, so it needs mtmd's own resize rule.
For the Qwen-VL projectors (qwen2vl_merger, qwen2.5vl_merger, qwen3vl_merger) mtmd uses its
dynamic-size preprocessor (mtmd-image.cpp, calc_size_preserved_ratio, "smart_resize" in
transformers): with align = patch_size * spatial_merge,

    w = max(align, round(W / align) align), h likewise                   (aspect kept, aligned)
    if w h > max_tokens align^2:  beta = sqrt(H W / (max_tokens align^2)), w = max(align, floor(W / beta / align) align)
    elif w h < min_tokens align^2: beta = sqrt(min_tokens align^2 / (H W)), w = ceil(W beta / align) align
    tokens = (w / align) (h / align)

computed in float32 as clip.cpp does (a double can land on the other side of a rounding). The
defaults come from clip.cpp's set_limit_image_tokens(8, 4096) for these projector types. Other
projectors: `rule_for` returns None and the planner uses the token count mtmd reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

QWEN_DEFAULT_MIN_TOKENS = 8
QWEN_DEFAULT_MAX_TOKENS = 4096
QWEN_PROJECTORS = ("qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger")

_F = np.float32


@dataclass(frozen=True)
class ResizeRule:
    """mtmd's dynamic-size rule for one projector: the token grid of a W x H image under caps."""

    patch_size: int
    merge: int = 2
    default_min_tokens: int = QWEN_DEFAULT_MIN_TOKENS
    default_max_tokens: int = QWEN_DEFAULT_MAX_TOKENS

    @property
    def align(self) -> int:
        return self.patch_size * self.merge

    def grid(self, width: int, height: int, max_tokens: int | None = None, min_tokens: int | None = None):
        """The (nx, ny) token grid mtmd gives a width x height image.

        Args:
            width: image width in pixels (>= 1).
            height: image height in pixels (>= 1).
            max_tokens: image_max_tokens (None: the projector's default).
            min_tokens: image_min_tokens (None: the projector's default).

        Returns:
            (nx, ny): tokens per row and per column after merging.
        """
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        f = self.align
        area = f * f
        max_px = (max_tokens or self.default_max_tokens) * area
        min_px = (min_tokens or self.default_min_tokens) * area
        w = max(f, _round_by(_F(width), f))
        h = max(f, _round_by(_F(height), f))
        if w * h > max_px:
            beta = np.sqrt(_F(height) * _F(width) / _F(max_px), dtype=_F)
            h = max(f, _floor_by(_F(height) / beta, f))
            w = max(f, _floor_by(_F(width) / beta, f))
        elif w * h < min_px:
            beta = np.sqrt(_F(min_px) / (_F(height) * _F(width)), dtype=_F)
            h = _ceil_by(_F(height) * beta, f)
            w = _ceil_by(_F(width) * beta, f)
        return w // f, h // f

    def n_tokens(self, width: int, height: int, max_tokens: int | None = None, min_tokens: int | None = None) -> int:
        """Tokens of a width x height image under the caps (see grid)."""
        nx, ny = self.grid(width, height, max_tokens, min_tokens)
        return nx * ny


def _round_by(x, f: int) -> int:
    q = float(x / _F(f))  # the float32 quotient, exactly; then std::round: half away from zero (q >= 0 here)
    return math.floor(q + 0.5) * f


def _floor_by(x, f: int) -> int:
    return math.floor(float(x / _F(f))) * f


def _ceil_by(x, f: int) -> int:
    return math.ceil(float(x / _F(f))) * f


def rule_for(projector_type: str | None, patch_size: int | None, merge: int | None = None) -> ResizeRule | None:
    """The resize rule of an mmproj, or None when fastv_edge does not know its rule.

    Args:
        projector_type: clip.projector_type.
        patch_size: clip.vision.patch_size.
        merge: clip.vision.spatial_merge_size (None: 2, clip.cpp's default for these types).

    Returns:
        A ResizeRule for the Qwen-VL projectors, else None.
    """
    if projector_type not in QWEN_PROJECTORS or not patch_size:
        return None
    return ResizeRule(int(patch_size), int(merge or 2))
