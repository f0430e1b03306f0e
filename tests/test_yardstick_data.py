"""The yardstick generator (models/yardstick): deterministic by seed, and every question answerable from
its scene description by the independent checker. Pure Python (numpy + Pillow), no torch, no native library."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest

from models.yardstick.generator import build_split, load_params, make_example
from models.yardstick.questions import check, kind_of, relation
from models.yardstick.scenes import render, sample_scene


@pytest.fixture(scope="module")
def params():
    return load_params()


@pytest.fixture(scope="module")
def test_sample(params):
    return build_split(params, "test", 150)


def test_same_seed_same_example_and_other_seed_differs(params):
    for split, index in (("train", 0), ("train", 4321), ("test", 7)):
        a, b = make_example(params, split, index), make_example(params, split, index)
        assert a[0] == b[0] and a[2] == b[2]
        assert np.array_equal(a[1], b[1])
    other = {**params, "seed": params["seed"] + 1}
    assert not np.array_equal(make_example(params, "test", 7)[1], make_example(other, "test", 7)[1])
    assert not np.array_equal(make_example(params, "val", 7)[1], make_example(params, "test", 7)[1])


def test_checker_answers_every_question_like_the_generator(params, test_sample):
    images, records = test_sample
    assert images.shape == (150, 96, 96, 3) and images.dtype == np.uint8
    questions = records["questions"]
    for q in questions:
        assert check(records["scenes"][q["image"]], q["question"], params) == q["answer"]
        assert kind_of(q["question"]) == q["kind"]
    _, val = build_split(params, "val", 60)
    assert all(check(val["scenes"][q["image"]], q["question"], params) == q["answer"] for q in val["questions"])


def test_checker_reads_the_scene_not_the_stored_answer(params, test_sample):
    """Moving or recolouring an object changes the checker's answer the way the question implies."""
    _, records = test_sample
    q = next(q for q in records["questions"] if q["kind"] == "exist" and q["answer"] == "yes")
    scene = copy.deepcopy(records["scenes"][q["image"]])
    color, shape = q["question"].removesuffix("?").split()[-2:]
    target = next(o for o in scene["objects"] if o.get("shape") == shape and o["color"] == color)
    target["shape"] = next(
        s
        for s in params["shapes"]
        if s != shape and not any(o.get("shape") == s and o["color"] == color for o in scene["objects"])
    )
    assert check(scene, q["question"], params) == "no"

    q = next(q for q in records["questions"] if q["kind"] == "glyph")
    scene = copy.deepcopy(records["scenes"][q["image"]])
    glyph = next(o for o in scene["objects"] if o["kind"] == "glyph" and o["letter"] == q["answer"])
    glyph["letter"] = next(a for a in params["letters"] if a != q["answer"])
    assert check(scene, q["question"], params) == glyph["letter"]


def test_checker_refuses_questions_that_are_not_well_posed(params):
    a = {"kind": "shape", "shape": "circle", "color": "red", "box": [10, 10, 10, 10]}
    b = {"kind": "shape", "shape": "square", "color": "blue", "box": [14, 40, 10, 10]}
    scene = {"background": "plain", "objects": [a, b, {**a, "color": "green", "box": [60, 60, 10, 10]}]}
    assert check(scene, "where is the red circle relative to the blue square?", params) == "above"
    assert relation(b, a, params) == "below"
    with pytest.raises(ValueError, match="exactly one"):
        check(scene, "what color is the circle?", params)  # two circles
    with pytest.raises(ValueError, match="too close"):
        check(scene, "is the red circle bigger than the blue square?", params)
    with pytest.raises(ValueError, match="clear-cut"):
        check(scene, "where is the red circle relative to the green circle?", params)  # diagonal
    with pytest.raises(ValueError, match="not a yardstick question"):
        check(scene, "what is the meaning of this?", params)


def test_kinds_answers_and_sizes_make_token_choice_matter(params, test_sample):
    images, records = test_sample
    questions = records["questions"]
    assert set(Counter(q["kind"] for q in questions)) == set(params["kinds"])
    for kind in ("exist", "size"):
        answers = Counter(q["answer"] for q in questions if q["kind"] == kind)
        assert set(answers) == {"yes", "no"} and 0.35 < answers["yes"] / sum(answers.values()) < 0.65
    assert {q["answer"] for q in questions if q["kind"] == "count"} == {"one", "two", "three", "four"}
    objects = [o for s in records["scenes"] for o in s["objects"]]
    small = [o for o in objects if o["kind"] == "shape" and o["box"][2] <= params["small_side"][1]]
    assert 0.3 < len(small) / sum(o["kind"] == "shape" for o in objects) < 0.7
    assert {s["background"] for s in records["scenes"]} == {"plain", "cluttered"}
    assert all(len(s["objects"]) >= 3 for s in records["scenes"])


def test_training_split_has_at_least_20000_questions(params):
    per_image = np.mean([len(make_example(params, "train", i)[2]) for i in range(100)])
    assert params["splits"]["train"]["images"] * per_image >= 20_000


def test_render_draws_objects_in_their_colour(params):
    rng = np.random.default_rng(0)
    scene = sample_scene(params, rng)
    while not any(o.get("shape") == "square" for o in scene["objects"]):
        scene = sample_scene(params, rng)
    image = render({**scene, "background": "plain"}, {**params, "color_jitter": 0}, rng)
    squares = [o for o in scene["objects"] if o.get("shape") == "square"]
    for o in squares:
        x0, y0, w, h = o["box"]
        inner = image[y0 + 1 : y0 + h - 1, x0 + 1 : x0 + w - 1].reshape(-1, 3)  # (n_pixels, 3)
        assert (np.abs(inner.astype(int) - params["colors"][o["color"]]).max(axis=1) <= 1).all()
