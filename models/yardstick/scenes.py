"""Scenes of the yardstick data set: several coloured shapes and letter glyphs, sampled and rendered.

A scene is plain data (a dict that round-trips through JSON): the background kind and a list of
objects, each with its kind ('shape' or 'glyph'), colour, shape or letter, and bounding box
(x0, y0, w, h) in pixels. `render` turns it into an RGB uint8 image; the questions and the
checker (questions.py) read only the dict.

Sizes are chosen so that the answer lives in few image tokens: at 96 px and 6 px patches, a small
shape (8-11 px) covers about 4 of the 256 patches and a glyph (10 x 14 px) about 6-12.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges
FONT = {  # 5 x 7 capitals, one string per row, '#' = ink
    "a": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "e": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "h": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "k": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "m": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "r": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "s": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "t": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "x": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
}


def center(obj: dict) -> tuple[float, float]:
    x0, y0, w, h = obj["box"]
    return x0 + w / 2, y0 + h / 2


def side(obj: dict) -> int:
    """Size of an object: the side of its bounding box (shapes have square boxes)."""
    return max(obj["box"][2], obj["box"][3])


def _shape_objects(p: dict, rng: np.random.Generator) -> list[dict]:
    """The coloured shapes: `count` of one target shape plus 1-3 of the others, (colour, shape) all distinct."""
    colors, shapes = list(p["colors"]), p["shapes"]
    target = shapes[rng.integers(len(shapes))]
    count = int(rng.integers(p["count_range"][0], p["count_range"][1] + 1))
    pairs = [(c, target) for c in rng.choice(colors, size=count, replace=False)]
    others = [(c, s) for c in colors for s in shapes if s != target]
    n_extra = int(rng.integers(p["extra_shapes"][0], p["extra_shapes"][1] + 1))
    pairs += [others[i] for i in rng.choice(len(others), size=n_extra, replace=False)]
    objects = []
    for color, shape in pairs:
        small = rng.random() < p["small_share"]
        lo, hi = p["small_side"] if small else p["large_side"]
        s = int(rng.integers(lo, hi + 1))
        objects.append({"kind": "shape", "shape": str(shape), "color": str(color), "box": [0, 0, s, s]})
    return objects


def _glyph_objects(p: dict, rng: np.random.Generator) -> list[dict]:
    n = int(rng.integers(p["glyphs"][0], p["glyphs"][1] + 1))
    letters = rng.choice(p["letters"], size=n, replace=False)
    colors = rng.choice(list(p["colors"]), size=n, replace=False)
    w, h = 5 * p["glyph_scale"], 7 * p["glyph_scale"]
    return [
        {"kind": "glyph", "letter": str(a), "color": str(c), "box": [0, 0, w, h]}
        for a, c in zip(letters, colors, strict=True)
    ]


def _place(objects: list[dict], size: int, margin: int, rng: np.random.Generator) -> bool:
    """Give every object a position, boxes `margin` px apart; False if random placement fails."""
    placed: list[list[int]] = []
    for obj in sorted(objects, key=side, reverse=True):
        w, h = obj["box"][2:]
        for _ in range(200):
            x0, y0 = int(rng.integers(1, size - w)), int(rng.integers(1, size - h))
            if all(
                x0 + w + margin <= a or a + c + margin <= x0 or y0 + h + margin <= b or b + d + margin <= y0
                for a, b, c, d in placed
            ):
                break
        else:
            return False
        obj["box"] = [x0, y0, w, h]
        placed.append(obj["box"])
    return True


def sample_scene(p: dict, rng: np.random.Generator) -> dict:
    """A random scene under generator parameters `p` (generator_params.json).

    Args:
        p: generator parameters.
        rng: the image's own generator (default_rng([seed, split, index])).

    Returns:
        {'background': 'plain' | 'cluttered', 'objects': [...]}, objects in drawing order.
    """
    while True:
        objects = _shape_objects(p, rng) + _glyph_objects(p, rng)
        if _place(objects, p["image_size"], p["margin"], rng):
            break
    order = rng.permutation(len(objects))
    background = "cluttered" if rng.random() < p["cluttered_share"] else "plain"
    return {"background": background, "objects": [objects[i] for i in order]}


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float background: a flat grey, or grey gradient + noise + lines + blobs."""
    light = rng.random() < 0.7
    level = rng.uniform(190, 245) if light else rng.uniform(25, 70)
    img = np.full((size, size, 3), level) + rng.uniform(-8, 8, size=3)  # (size, size, 3)
    if kind == "plain":
        return img
    ramp = np.linspace(-1, 1, size)
    img += rng.uniform(-25, 25) * ramp[None, :, None] + rng.uniform(-25, 25) * ramp[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(int(rng.integers(3, 7))):  # soft grey blobs
        cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(5, 18)
        img += rng.uniform(-45, 45) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
    canvas = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(8, 17))):  # thin grey lines
        xy = [float(v) for v in rng.uniform(0, size * SUPERSAMPLE, size=4)]
        draw.line(xy, fill=int(rng.integers(60, 256)), width=int(rng.integers(3, 7)))
    lines = _downsample(canvas, size)  # (size, size) in [0, 1]
    shade = 0.0 if light else 255.0
    img = img * (1 - 0.5 * lines[..., None]) + shade * 0.5 * lines[..., None]
    return img + rng.normal(0, 8, size=img.shape)


def _downsample(canvas: Image.Image, size: int) -> np.ndarray:
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float64) / 255.0


def shape_mask(shape: str, box: list[int], size: int) -> np.ndarray:
    """(size, size) coverage in [0, 1] of one shape drawn in its box."""
    s = SUPERSAMPLE
    x0, y0, w, h = (v * s for v in box)
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    x1, y1 = x0 + w - 1, y0 + h - 1
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=255)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "diamond":
        draw.polygon([((x0 + x1) / 2, y0), (x1, (y0 + y1) / 2), ((x0 + x1) / 2, y1), (x0, (y0 + y1) / 2)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return _downsample(canvas, size)


def glyph_mask(letter: str, box: list[int], size: int) -> np.ndarray:
    """(size, size) 0/1 ink of one letter, each font pixel a (scale x scale) block."""
    x0, y0, w, h = box
    scale = w // 5
    bitmap = np.array([[c == "#" for c in row] for row in FONT[letter]], dtype=np.float64)  # (7, 5)
    mask = np.zeros((size, size))
    mask[y0 : y0 + h, x0 : x0 + w] = np.kron(bitmap, np.ones((scale, scale)))
    return mask


def render(scene: dict, p: dict, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8 RGB picture of `scene`; rng draws the background and colour jitter."""
    size = p["image_size"]
    img = _background(scene["background"], size, rng)
    for obj in scene["objects"]:
        if obj["kind"] == "shape":
            mask = shape_mask(obj["shape"], obj["box"], size)
        else:
            mask = glyph_mask(obj["letter"], obj["box"], size)
        rgb = np.array(p["colors"][obj["color"]], dtype=np.float64) + rng.uniform(-1, 1, 3) * p["color_jitter"]
        img = img * (1 - mask[..., None]) + rgb * mask[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
