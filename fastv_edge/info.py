"""`fastv-edge info`: what a model is and whether FastV can prune it here."""

from __future__ import annotations

import os
from pathlib import Path

from .image_tokens import caps_honoured
from .model import FASTV_ARCHITECTURES, read_mmproj_info, read_model_info
from .native_info import native_info
from .templates import resolve_template


def image_tokens_per_image(model_path: str, mmproj_path: str, image_size: int | None) -> int:
    """Tokens one image_size x image_size picture becomes (loads the pair; tokenizes only)."""
    from .config import PruneConfig, RuntimeConfig
    from .images import RGBImage
    from .model import load
    from .prompt import tokenize

    side = image_size or 336
    img = RGBImage(side, side, bytes(side * side * 3), "probe")
    with load(model_path, mmproj_path, runtime=RuntimeConfig(n_ctx=512), prune=PruneConfig(strategy="none")) as m:
        with tokenize(m.llm, m.mtmd_ctx, m.marker, [img], add_special=False) as prompt:
            return prompt.n_image_tokens


def model_report(model: str | os.PathLike, mmproj: str | os.PathLike | None = None) -> dict:
    """Metadata of a model (and its mmproj) plus the FastV status of the loaded library.

    Args:
        model: text GGUF path or preset name (pulled).
        mmproj: mmproj GGUF path; None with a preset: the preset's.

    Returns:
        An ordered dict, snake_case key -> value (the CLI shows the keys with spaces).
    """
    from .model import _resolve_paths

    model_path, mmproj_path = _resolve_paths(model, mmproj)
    info = read_model_info(model_path)
    try:
        template = resolve_template(info.chat_template, model_path)[1]
    except ValueError:
        template = "none (pass --chat-template)"
    native = native_info()
    report = {
        "file": str(Path(model_path)),
        "name": info.name,
        "architecture": info.architecture,
        "layers": info.n_layer,
        "n_embd": info.n_embd,
        "n_ff": info.n_ff,
        "heads": info.n_head,
        "trained_context": info.n_ctx_train,
        "quantization": info.quantization,
        "size_mib": round(info.size_bytes / 2**20, 1),
        "chat_template": template,
        "fastv_architecture": (
            "supported" if info.architecture in FASTV_ARCHITECTURES else "not supported (--strategy none)"
        ),
        "fastv_symbols": "present" if native["has_fastv"] else f"MISSING ({native['error'] or native['lib_path']})",
    }
    if mmproj_path:
        mm = read_mmproj_info(mmproj_path)
        report.update(
            {
                "mmproj": str(Path(mmproj_path)),
                "projector": mm.projector_type,
                "projector_n_embd": mm.n_embd_out,
                "image_size": mm.image_size,
                "image_tokens_per_image": image_tokens_per_image(model_path, mmproj_path, mm.image_size),
                "image_token_caps": (
                    "honoured (dynamic resolution: --image-max-tokens)"
                    if caps_honoured(mm.projector_type)
                    else "ignored (fixed resolution)"
                ),
            }
        )
    return report
