"""The patch grid mtmd makes of an image, checked against an mmproj's position table before encoding.

gemma4v looks each patch's column and row up in a table of v.position_embd.weight rows
(GGML_ASSERT(i01 < ne01) in get_rows when a patch is past its end). mtmd resizes an image
keeping its aspect ratio to between 70 and 1120 tokens (tools/mtmd/mtmd-image.cpp
calc_size_preserved_ratio, clip.cpp set_limit_image_tokens), so a long thin image can have
more patches along one side than the table has rows, and the encoder aborts. ImageLimit
replays that arithmetic (in float32, as mtmd does) and refuses such an image with a
ValueError before mtmd sees it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GEMMA4V_TOKENS = (70, 1120)  # clip.cpp: set_limit_image_tokens(70, 1120) for gemma4v


@dataclass(frozen=True)
class ImageLimit:
    """How mtmd sizes an image for a projector, and how many patches per side its table holds."""

    patch_size: int
    merge: int
    max_side: int  # rows of the position table: patches along either side
    tokens: tuple[int, int] = GEMMA4V_TOKENS

    def patches(self, nx: int, ny: int) -> tuple[int, int]:
        """Patches along x and y of an nx x ny image after mtmd's resize."""
        align = self.patch_size * self.merge
        area = align * align
        lo, hi = self.tokens[0] * area, self.tokens[1] * area
        f32 = np.float32
        w = max(align, int(math.floor(f32(nx) / f32(align) + f32(0.5))) * align)  # std::round: half away from 0
        h = max(align, int(math.floor(f32(ny) / f32(align) + f32(0.5))) * align)
        if w * h > hi:
            beta = np.sqrt(f32(ny) * f32(nx) / f32(hi), dtype=f32)
            h = max(align, int(math.floor(f32(ny) / beta / f32(align))) * align)
            w = max(align, int(math.floor(f32(nx) / beta / f32(align))) * align)
        elif w * h < lo:
            beta = np.sqrt(f32(lo) / (f32(ny) * f32(nx)), dtype=f32)
            h = int(math.ceil(f32(ny) * beta / f32(align))) * align
            w = int(math.ceil(f32(nx) * beta / f32(align))) * align
        return w // self.patch_size, h // self.patch_size


def check_images(limit: ImageLimit | None, images) -> None:
    """Raise ValueError for an image whose patch grid would run past the position table.

    Args:
        limit: the mmproj's ImageLimit (MmprojInfo.image_limit), None when it has none.
        images: RGBImage objects of one request.
    """
    if limit is None:
        return
    for img in images:
        px, py = limit.patches(img.nx, img.ny)
        if max(px, py) > limit.max_side:
            raise ValueError(
                f"{img.name}: a {img.nx}x{img.ny} image becomes {px}x{py} patches, but this mmproj's position table "
                f"has {limit.max_side} per side; crop it to a less elongated shape"
            )
