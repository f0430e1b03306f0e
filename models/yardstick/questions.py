"""Questions about a scene, and a checker that answers any question from the scene data alone.

Six kinds, each needing a different part of the picture (single-word answers):

| kind | template | answers |
|---|---|---|
| attribute | what color is the {shape}? / what shape is the {color} object? | a colour / a shape |
| count | how many {shape}s are there? | one .. four |
| exist | is there a(n) {color} {shape}? | yes / no |
| spatial | where is the {color} {shape} relative to the {color} {shape}? | left / right / above / below |
| glyph | what is the {color} letter? | a letter |
| size | is the {color} {shape} bigger than the {color} {shape}? | yes / no |

`ask` draws questions with answers balanced where the scene allows; `check` parses the text
back and recomputes the answer from the objects, raising ValueError when a question is not
well posed (ambiguous referent, unclear relation): the two must always agree.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from .scenes import center, side

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
RELATIONS = ("left", "right", "above", "below")


def _shapes(scene: dict) -> list[dict]:
    return [o for o in scene["objects"] if o["kind"] == "shape"]


def _name(obj: dict) -> str:
    return f"{obj['color']} {obj['shape']}"


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def relation(a: dict, b: dict, p: dict) -> str | None:
    """Where a is relative to b ('left', 'right', 'above', 'below'), or None when not clear-cut.

    Clear-cut: the centres differ by >= spatial_min_offset px along one axis and that offset is
    >= spatial_axis_ratio times the offset along the other axis.
    """
    (ax, ay), (bx, by) = center(a), center(b)
    dx, dy = ax - bx, ay - by
    lo, ratio = p["spatial_min_offset"], p["spatial_axis_ratio"]
    if abs(dx) >= lo and abs(dx) >= ratio * abs(dy):
        return "left" if dx < 0 else "right"
    if abs(dy) >= lo and abs(dy) >= ratio * abs(dx):
        return "above" if dy < 0 else "below"  # image rows grow downwards
    return None


def _pick(items: list, rng: np.random.Generator, p: dict, key=None):
    """One item, from the small objects with probability small_target_share when there are small and large ones."""
    key = key or (lambda it: it)
    small = [it for it in items if side(key(it)) <= p["small_side"][1]]
    large = [it for it in items if side(key(it)) > p["small_side"][1]]
    group = small if small and (not large or rng.random() < p["small_target_share"]) else large
    return group[rng.integers(len(group))]


def _attribute(scene: dict, p: dict, rng) -> tuple[str, str] | None:
    shapes, objects = _shapes(scene), scene["objects"]
    candidates = []
    for o in shapes:
        if sum(s["shape"] == o["shape"] for s in shapes) == 1:
            candidates.append((o, f"what color is the {o['shape']}?", o["color"]))
        if sum(s["color"] == o["color"] for s in objects) == 1:
            candidates.append((o, f"what shape is the {o['color']} object?", o["shape"]))
    if not candidates:
        return None
    _, q, a = _pick(candidates, rng, p, key=lambda c: c[0])
    return q, a


def _count(scene: dict, p: dict, rng) -> tuple[str, str]:
    counts = Counter(o["shape"] for o in _shapes(scene))
    by_count: dict[int, list[str]] = {}
    for shape, n in sorted(counts.items()):
        by_count.setdefault(n, []).append(shape)
    # most shapes in a scene occur once: asking mostly about the most frequent one balances the answers
    n = max(by_count) if rng.random() < 0.8 else sorted(by_count)[rng.integers(len(by_count))]
    shape = by_count[n][rng.integers(len(by_count[n]))]
    return f"how many {shape}s are there?", NUMBERS[n]


def _exist(scene: dict, p: dict, rng) -> tuple[str, str]:
    shapes = _shapes(scene)
    if rng.random() < 0.5:
        return f"is there {_article(_name(_pick(shapes, rng, p)))}?", "yes"
    pairs = {(o["color"], o["shape"]) for o in shapes}
    absent = [(c, s) for c in p["colors"] for s in p["shapes"] if (c, s) not in pairs]
    # hard negatives: colour and shape both in the picture, just not together
    hard = [(c, s) for c, s in absent if any(o["color"] == c for o in shapes) and any(o["shape"] == s for o in shapes)]
    pool = hard if hard and rng.random() < 0.7 else absent
    c, s = pool[rng.integers(len(pool))]
    return f"is there {_article(f'{c} {s}')}?", "no"


def _spatial(scene: dict, p: dict, rng) -> tuple[str, str] | None:
    shapes = _shapes(scene)
    by_rel: dict[str, list] = {}
    for a in shapes:
        for b in shapes:
            rel = relation(a, b, p) if a is not b else None
            if rel:
                by_rel.setdefault(rel, []).append((a, b))
    if not by_rel:
        return None
    rel = sorted(by_rel)[rng.integers(len(by_rel))]  # balances the four answers
    a, b = by_rel[rel][rng.integers(len(by_rel[rel]))]
    return f"where is the {_name(a)} relative to the {_name(b)}?", rel


def _glyph(scene: dict, p: dict, rng) -> tuple[str, str]:
    glyphs = [o for o in scene["objects"] if o["kind"] == "glyph"]
    g = glyphs[rng.integers(len(glyphs))]
    return f"what is the {g['color']} letter?", g["letter"]


def _size(scene: dict, p: dict, rng) -> tuple[str, str] | None:
    shapes = _shapes(scene)
    pairs = [(a, b) for a in shapes for b in shapes if side(a) >= p["size_min_ratio"] * side(b)]
    if not pairs:
        return None
    big, small = pairs[rng.integers(len(pairs))]
    a, b, ans = (big, small, "yes") if rng.random() < 0.5 else (small, big, "no")
    return f"is the {_name(a)} bigger than the {_name(b)}?", ans


ASK = {
    "attribute": _attribute,
    "count": _count,
    "exist": _exist,
    "spatial": _spatial,
    "glyph": _glyph,
    "size": _size,
}


def ask(scene: dict, p: dict, rng: np.random.Generator, per_kind: int) -> list[dict]:
    """Up to `per_kind` distinct questions of each kind in p['kinds'] about `scene`.

    Args:
        scene: from scenes.sample_scene.
        p: generator parameters.
        rng: the image's generator.
        per_kind: questions wanted per kind (fewer when the scene allows fewer distinct ones).

    Returns:
        [{'kind', 'question', 'answer'}], kinds in p['kinds'] order.
    """
    out = []
    for kind in p["kinds"]:
        seen = set()
        for _ in range(4 * per_kind):
            qa = ASK[kind](scene, p, rng)
            if qa and qa[0] not in seen:
                seen.add(qa[0])
                out.append({"kind": kind, "question": qa[0], "answer": qa[1]})
            if len(seen) == per_kind:
                break
    return out


_COLOR = r"(\w+)"
_OBJ = r"(\w+) (\w+)"
TEMPLATES = (
    ("attribute", re.compile(rf"what color is the {_COLOR}\?")),
    ("attribute", re.compile(rf"what shape is the {_COLOR} object\?")),
    ("count", re.compile(r"how many (\w+)s are there\?")),
    ("exist", re.compile(rf"is there an? {_OBJ}\?")),
    ("spatial", re.compile(rf"where is the {_OBJ} relative to the {_OBJ}\?")),
    ("glyph", re.compile(rf"what is the {_COLOR} letter\?")),
    ("size", re.compile(rf"is the {_OBJ} bigger than the {_OBJ}\?")),
)


def kind_of(question: str) -> str:
    """The kind of a question text (ValueError if it matches no template)."""
    for kind, pattern in TEMPLATES:
        if pattern.fullmatch(question):
            return kind
    raise ValueError(f"not a yardstick question: {question!r}")


def _one(objects: list[dict], what: str) -> dict:
    if len(objects) != 1:
        raise ValueError(f"{what} names {len(objects)} objects, not exactly one")
    return objects[0]


def referents(scene: dict, question: str) -> list[int]:
    """Indices into scene['objects'] of the objects a question is about: the evidence for its answer.

    attribute, glyph: the named object; count: every shape of that kind; spatial, size: both objects;
    exist: the named object if present, else every object sharing its colour or its shape (what a
    reader checks before saying no). Used only by the training loss that points the LM at them.
    """
    objects = scene["objects"]
    kind = kind_of(question)
    g = next(m.groups() for _, pat in TEMPLATES if (m := pat.fullmatch(question)))
    shape_ids = [i for i, o in enumerate(objects) if o["kind"] == "shape"]
    if kind == "attribute":
        word = g[0]
        return [i for i in shape_ids if objects[i]["shape"] == word] or [
            i for i, o in enumerate(objects) if o["color"] == word
        ]
    if kind == "count":
        return [i for i in shape_ids if objects[i]["shape"] == g[0]]
    if kind == "glyph":
        return [i for i, o in enumerate(objects) if o["kind"] == "glyph" and o["color"] == g[0]]
    pairs = [(g[0], g[1])] if kind == "exist" else [(g[0], g[1]), (g[2], g[3])]
    named = [i for c, s in pairs for i in shape_ids if objects[i]["color"] == c and objects[i]["shape"] == s]
    if named or kind != "exist":
        return named
    return [i for i in shape_ids if objects[i]["color"] == g[0] or objects[i]["shape"] == g[1]]


def check(scene: dict, question: str, p: dict) -> str:
    """The answer to `question`, computed from the scene description only.

    Args:
        scene: {'background', 'objects'} as stored with the data set.
        question: a question text in one of the TEMPLATES.
        p: generator parameters (for the spatial and size thresholds).

    Returns:
        The single-word answer. Raises ValueError if the question is not well posed for the scene.
    """
    shapes, objects = _shapes(scene), scene["objects"]

    def named(color: str, shape: str) -> dict:
        return _one([o for o in shapes if o["color"] == color and o["shape"] == shape], f"{color} {shape}")

    for i, (_, pattern) in enumerate(TEMPLATES):
        m = pattern.fullmatch(question)
        if not m:
            continue
        g = m.groups()
        if i == 0:
            return _one([o for o in shapes if o["shape"] == g[0]], g[0])["color"]
        if i == 1:
            return _one([o for o in objects if o["color"] == g[0]], f"{g[0]} object")["shape"]
        if i == 2:
            return NUMBERS[sum(o["shape"] == g[0] for o in shapes)]
        if i == 3:
            return "yes" if any(o["color"] == g[0] and o["shape"] == g[1] for o in shapes) else "no"
        if i == 4:
            rel = relation(named(g[0], g[1]), named(g[2], g[3]), p)
            if rel is None:
                raise ValueError(f"no clear-cut relation in {question!r}")
            return rel
        if i == 5:
            return _one([o for o in objects if o["kind"] == "glyph" and o["color"] == g[0]], "letter")["letter"]
        a, b = side(named(g[0], g[1])), side(named(g[2], g[3]))
        if max(a, b) < p["size_min_ratio"] * min(a, b):
            raise ValueError(f"sizes {a} and {b} too close in {question!r}")
        return "yes" if a > b else "no"
    raise ValueError(f"not a yardstick question: {question!r}")
