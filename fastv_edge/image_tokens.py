"""How many tokens an image becomes: which projectors take a token cap, and the token grid reported.

mtmd's context parameters image_min_tokens / image_max_tokens bound the tokens of one image. Only
dynamic-resolution projectors use them: their preprocessing resizes the image (aspect kept) so its
patch grid, merged, lands between the two bounds. In the pinned clip.cpp these are the projector
types whose hyperparameter loader derives image_min/max_pixels through set_limit_image_tokens
(which prefers the user's values) or applies the user's values itself (deepseek4v). Everything
else ignores them:
- fixed-resolution projectors resize every image to one square: mlp (LLaVA-1.5), ldp, ldpv2,
  gemma3, gemma3nv, yasa2, cogvlm, janus_pro, glm_edge, adapter, ...;
- tilers slice by a fixed grid (minicpmv, internvl, llama4, step3vl, deepseekocr);
- a few read their pixel bounds from the GGUF only (phi4, paddleocr, dots_ocr, mimovl, exaone4_5),
  or only when the GGUF has none (kimik25, hunyuanvl): a cap is not reliably applied, so they are
  not listed either.
"""

from __future__ import annotations

import math
from pathlib import Path

IMAGE_TOKEN_CAP_PROJECTORS = (
    "qwen2vl_merger",
    "qwen2.5vl_merger",
    "qwen3vl_merger",
    "ling3vl",
    "glm4v",
    "glm5v",
    "gemma4v",
    "gemma4uv",
    "lfm2",
    "pixtral",
    "lightonocr",
    "idefics3",
    "kimivl",
    "deepseek4v",
    "minimax_m3",
    "muse-glimmer",
    "youtuvl",
)


def caps_honoured(projector_type: str | None) -> bool:
    """True when mtmd applies image_min_tokens / image_max_tokens to this projector type.

    Args:
        projector_type: clip.projector_type of the mmproj (None: a text-only model).

    Returns:
        Whether a cap changes the image's token count.
    """
    return projector_type in IMAGE_TOKEN_CAP_PROJECTORS


def ignored_caps_message(mmproj, min_tokens: int | None, max_tokens: int | None) -> str | None:
    """The warning for caps that cannot take effect, or None when there is none to give.

    Args:
        mmproj: the model's MmprojInfo, or None for a text-only model.
        min_tokens: image_min_tokens asked for.
        max_tokens: image_max_tokens asked for.

    Returns:
        One line naming the flags, the projector and why; None when no cap is set or it applies.
    """
    given = [f"{name}={v}" for name, v in (("image_min_tokens", min_tokens), ("image_max_tokens", max_tokens)) if v]
    if not given:
        return None
    what = " and ".join(given)
    if mmproj is None:
        return f"{what} has no effect: the model was loaded without an mmproj, so it reads no images"
    if caps_honoured(mmproj.projector_type):
        return None
    return (
        f"{what} has no effect on {Path(mmproj.path).name}: its projector {mmproj.projector_type!r} gives every "
        "image a fixed number of tokens (fixed resolution); the cap applies to dynamic-resolution projectors "
        "such as Qwen2/2.5/3-VL's"
    )


def token_grid(mrope_grid: tuple[int, int] | None, n_tokens: int, fixed: bool) -> tuple[int, int] | None:
    """The (nx, ny) token grid an image's statistics report.

    Args:
        mrope_grid: mtmd's grid of an M-RoPE image, else None.
        n_tokens: the image's tokens.
        fixed: the projector has a fixed resolution (every image becomes the same square).

    Returns:
        mtmd's grid; (s, s) for a fixed-resolution projector when n_tokens == s * s; else None.
    """
    if mrope_grid is not None:
        return mrope_grid
    side = math.isqrt(n_tokens)
    return (side, side) if fixed and side * side == n_tokens else None
