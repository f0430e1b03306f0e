"""The tiny 'qwen2.5vl_merger' projector (Qwen2.5-VL's vision shape) through the pinned mtmd.

Window attention is what sets it apart from Qwen2-VL: layers other than every n_wa_pattern-th
attend only within 112-pixel windows. With patch 8 and merge 2 a window is 7 x 7 merged tokens,
so a 128 x 80 image (8 x 5 tokens) spans two windows and a 48 x 48 one (3 x 3) a single window:
turning layer 1 from full to windowed attention must change the first image's rows and leave
the second's exactly as they were.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from PIL import Image

import fastv_edge as fe
from fastv_edge.images import RGBImage
from fastv_edge.testing.mmproj_archs import QWEN25_WINDOW, VisionHParams, tensor_shapes


def photo(size) -> RGBImage:
    pixels = np.asarray(Image.fromarray(skimage.data.astronaut()).resize(size, Image.BICUBIC))  # (ny, nx, 3)
    return RGBImage(size[0], size[1], pixels.tobytes(), f"astronaut-{size[0]}x{size[1]}")


def test_the_writer_follows_qwen25vl():
    hp = VisionHParams(projector="qwen2.5vl_merger", n_wa_pattern=2)
    shapes = tensor_shapes(hp)
    assert "v.blk.0.ffn_gate.weight" in shapes and "v.blk.0.ffn_gate.bias" in shapes  # SwiGLU with biases
    assert "v.blk.0.ln1.bias" not in shapes and "v.post_ln.bias" not in shapes  # RMS norms
    assert "v.patch_embd.weight.1" in shapes and "v.patch_embd.bias" not in shapes
    assert "v.position_embd.weight" not in shapes
    for bad in (0, 1):  # 1 leaves no windowed layer: mtmd would abort on the unused window mask
        with pytest.raises(ValueError, match="n_wa_pattern"):
            VisionHParams(projector="qwen2.5vl_merger", n_wa_pattern=bad)
    with pytest.raises(ValueError, match="n_wa_pattern"):
        VisionHParams(projector="qwen2vl_merger", n_wa_pattern=2)


def test_make_shapes_has_the_real_qwen25vl_vision_shape():
    from models.make_shapes import SHAPES

    shape = SHAPES["qwen2.5-vl-3b"]
    clip, hp = shape.clip, shape.hparams
    assert (clip.projector, clip.patch_size, clip.n_embd, clip.n_ff, clip.n_head, clip.n_layer) == (
        "qwen2.5vl_merger",
        14,
        1280,
        3420,
        16,
        32,
    )
    assert clip.n_wa_pattern == 8 and clip.projection_dim == hp.n_embd == 2048  # full attention in 7, 15, 23, 31
    assert (shape.arch, hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_ff) == ("qwen2vl", 36, 16, 2, 11008)
    assert sum(hp.rope_sections) * 2 == hp.head_dim  # 16 + 24 + 24 pairs of a 128-wide head


def rows(tiny_dir, n_wa_pattern: int, sizes) -> list[np.ndarray]:
    from fastv_edge.prompt import tokenize
    from fastv_edge.testing.make_tiny_archs import make_tiny_qwen2vl
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj

    lm = make_tiny_qwen2vl(tiny_dir)
    mmproj, _ = make_tiny_vision_mmproj(tiny_dir, "qwen2.5vl_merger", 64, out_std=0.5, n_wa_pattern=n_wa_pattern)
    rt = fe.RuntimeConfig(n_ctx=512, n_threads=1, embedding_cache=False)
    out = []
    with fe.load(lm.path, mmproj, runtime=rt, prune=fe.PruneConfig(strategy="none")) as model:
        for size in sizes:
            with tokenize(model.llm, model.mtmd_ctx, model.marker, [photo(size)], add_special=False) as prompt:
                piece = prompt.images[0]
                assert piece.grid == (size[0] // 16, size[1] // 16)
                out.append(model.encoder.encode(piece).embd.copy())  # (n_tokens, 64)
    return out


@pytest.mark.native
def test_mtmd_encodes_with_window_attention(tiny_dir):
    assert QWEN25_WINDOW // 8 // 2 == 7  # merged tokens per window side at patch 8
    sizes = [(128, 80), (48, 48)]
    windowed_then_full = rows(tiny_dir, 2, sizes)  # layer 0 windowed, layer 1 full
    all_windowed = rows(tiny_dir, 3, sizes)  # no layer of the two is a full-attention one
    for a in windowed_then_full + all_windowed:
        assert np.isfinite(a).all() and 0.1 < a.std() < 10
    assert np.abs(windowed_then_full[0] - all_windowed[0]).max() > 1e-2  # two windows: layer 1 differs
    np.testing.assert_array_equal(windowed_then_full[1], all_windowed[1])  # one window: nothing to mask
