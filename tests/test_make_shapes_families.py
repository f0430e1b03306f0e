"""models/make_shapes.py's Qwen3-VL-4B and Gemma-4-E4B shapes: their writers at a tiny size load and run.

The real shapes are 2.5 and 4.6 GB in Q4_K_M (docs/benchmarks.md); here the same writer path
(streamed Q8_0, the family's hyperparameter keys and tensor table) on a few layers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest


def test_the_family_shapes_are_the_published_ones():
    from models.make_shapes import SHAPES

    qwen, gemma = SHAPES["qwen3-vl-4b"], SHAPES["gemma-4-e4b"]
    assert (qwen.arch, qwen.hparams.n_layer, qwen.hparams.n_embd, qwen.hparams.n_deepstack) == ("qwen3vl", 36, 2560, 3)
    assert qwen.hparams.n_embd_inp == 4 * 2560 and qwen.clip.n_out == qwen.hparams.n_embd_inp
    assert qwen.n_image_tokens == 576 and qwen.clip.deepstack_layers == (5, 11, 17)
    hp = gemma.hparams
    assert (gemma.arch, hp.n_layer, hp.n_embd, hp.n_embd_per_layer, hp.n_kv_shared) == ("gemma4", 42, 2560, 256, 18)
    assert [il for il in range(hp.n_layer) if not hp.is_swa(il)] == [5, 11, 17, 23, 29, 35, 41]
    assert gemma.clip is None and gemma.n_image_tokens == 280


@pytest.mark.native
@pytest.mark.parametrize(
    "key, shape",
    [
        (
            "qwen3-vl-4b",
            dict(n_layer=4, n_embd=64, n_head=4, n_head_kv=2, key_length=32, n_ff=128, n_deepstack=2)
            | dict(rope_sections=(8, 4, 4, 0)),
        ),
        (
            "gemma-4-e4b",
            dict(n_layer=6, n_embd=64, head_dim=16, head_dim_full=32, n_ff=128, sliding_window=16, n_kv_shared=2)
            | dict(swa_layers=(True, True, True, False, True, False), n_embd_per_layer=32),
        ),
    ],
)
def test_family_shape_writes_a_model_llama_cpp_runs(tmp_path, smollm2_path, key, shape):
    from family_driver import FamilyDriver

    from fastv_edge.testing.llama_gguf import read_tokenizer
    from models.make_shapes import SHAPES, write_text_model

    small = SHAPES[key]
    small = dataclasses.replace(small, hparams=dataclasses.replace(small.hparams, n_vocab=49152, **shape))
    path = write_text_model(tmp_path / "s-q8_0.gguf", "s", small, read_tokenizer(smollm2_path), "q8_0", 0, "SYNTHETIC")
    with FamilyDriver(path, n_threads=1) as drv:
        assert (drv.n_layer, drv.n_embd) == (shape["n_layer"], 64)
        assert drv.n_embd_inp == 64 * (1 + shape.get("n_deepstack", 0))
        drv.decode_tokens(drv.tokenize("The cat sat on the mat and looked around the room"))
        assert np.all(np.isfinite(drv.logits()))
