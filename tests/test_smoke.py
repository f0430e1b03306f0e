"""Smoke tests through the real library: a photo through mtmd into the tiny model, and the
real SmolLM2-135M generating text."""

from __future__ import annotations

import re

import numpy as np
import pytest
import skimage.data
from PIL import Image
from reference import clip_reference

pytestmark = pytest.mark.native

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
TEXT, IMAGE = 0, 1  # mtmd_input_chunk_type


def _session(driver, mmproj_path):
    from llama_driver import MtmdSession

    return MtmdSession(driver, mmproj_path)


@pytest.mark.parametrize("weight_type", ["f32", pytest.param("q8_0", marks=pytest.mark.slow)])
def test_photo_through_mtmd_then_generate(make_tiny_models, llama_driver, weight_type):
    models = make_tiny_models(weight_type)
    driver = llama_driver(models.llama_path)
    with _session(driver, models.mmproj_path) as mtmd:
        prompt = CHAT.format(f"{mtmd.marker}\nWhat is in this photo?")
        chunks = mtmd.tokenize(prompt, skimage.data.astronaut())  # (512, 512, 3), resized by mtmd
        assert [kind for kind, _ in chunks] == [TEXT, IMAGE, TEXT]
        assert chunks[1][1] == models.n_image_tokens == 64  # (64 px / 8 px patches) ** 2
        mtmd.eval()
    assert driver.n_past == sum(n for _, n in chunks)
    generated = []
    for _ in range(5):
        logits = driver.logits()
        assert logits.shape == (driver.n_vocab,) and np.all(np.isfinite(logits)) and logits.std() > 0.1
        generated.append(int(np.argmax(logits)))
        driver.decode_tokens(generated[-1:])


@pytest.mark.parametrize(
    "class_token",
    [
        False,  # the tiny default: one token per patch
        True,  # LLaVA-1.5 layout, with llama.cpp's CLS-last ordering
    ],
)
def test_mmproj_matches_numpy_clip(make_tiny_models, llama_driver, class_token):
    models = make_tiny_models("f32", class_token=class_token)
    size = models.clip.image_size
    photo = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((size, size), Image.BICUBIC))
    driver = llama_driver(models.llama_path)
    with _session(driver, models.mmproj_path) as mtmd:
        chunks = mtmd.tokenize(f"a{mtmd.marker}b", photo)  # already image_size: mtmd copies it
        got = mtmd.encode([kind for kind, _ in chunks].index(IMAGE))  # (64, n_embd)
    expected = clip_reference(models.mmproj_path, photo)
    # ggml's GELU runs through an F16 lookup table: ~1e-3 absolute on O(1) outputs
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-2)
    assert expected.std(axis=0).mean() > 0.1  # the patches differ: the image reaches the output


def test_different_photos_give_different_image_tokens(tiny, llama_driver):
    driver = llama_driver(tiny.llama_path)
    rows = []
    with _session(driver, tiny.mmproj_path) as mtmd:
        for photo in (skimage.data.astronaut(), skimage.data.coffee()):
            chunks = mtmd.tokenize(mtmd.marker, photo)
            rows.append(mtmd.encode([kind for kind, _ in chunks].index(IMAGE)))
    assert rows[0].shape == rows[1].shape == (64, driver.n_embd)
    assert np.abs(rows[0] - rows[1]).mean() > 0.05


@pytest.mark.slow
def test_smollm2_generates_words(smollm2_path, llama_driver):
    driver = llama_driver(smollm2_path)
    driver.decode_tokens(driver.tokenize(CHAT.format("What is the capital of France?")))
    assert np.all(np.isfinite(driver.logits()))
    tokens = driver.generate_greedy(16)
    text = "".join(driver.piece(t) for t in tokens)
    words = re.findall(r"[A-Za-z]{2,}", text)
    assert len(tokens) >= 4 and len(words) >= 3, text
    assert "Paris" in text, text
