"""easy-vqa data: images as uint8 arrays, prompts as SmolLM2 token ids, and mtmd's pixel preprocessing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .tokenizer import Tokenizer

PROMPT_FILE = Path(__file__).with_name("prompt.json")


@dataclass
class Split:
    images: np.ndarray  # (n_images, H, W, 3) uint8, RGB
    image_ids: list[int]  # easy-vqa image id of each row of `images`
    owner: np.ndarray  # (n_questions,) row of `images` each question is about
    questions: list[str]
    answers: list[str]


def load_split(name: str) -> Split:
    """easy-vqa's own 'train' or 'test' split, with every image decoded to RGB uint8."""
    import easy_vqa

    if name == "train":
        texts, answers, ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif name == "test":
        texts, answers, ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise ValueError(f"split must be 'train' or 'test', got {name!r}")
    image_ids = sorted(paths)
    row = {img_id: i for i, img_id in enumerate(image_ids)}
    # convert("RGB") drops alpha like mtmd's stbi_load(..., 3); easy-vqa PNGs are RGB already
    images = np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in image_ids])
    owner = np.array([row[i] for i in ids], dtype=np.int64)
    return Split(images, image_ids, owner, list(texts), list(answers))


def pixels(images: np.ndarray, mean, std) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, H, W) float32, as clip_image_f32::from_u8 + normalize do.

    Images must already be image_size x image_size: mtmd then copies them without resizing
    (tools/mtmd/mtmd-image.cpp img_tool::resize, `dst.get_size() == src.get_size()`).
    """
    x = torch.from_numpy(images).float() / 255.0  # float32 division, like (float) u8 / 255.0f
    x = (x - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(std, dtype=torch.float32)
    return x.permute(0, 3, 1, 2).contiguous()


class PromptCodec:
    """Token ids of the prompt template in prompt.json (see its comment for the exact layout)."""

    def __init__(self, tokenizer: Tokenizer, template: dict | None = None):
        self.tok = tokenizer
        self.template = template or json.loads(PROMPT_FILE.read_text())
        self.before_image = tokenizer.encode(self.template["before_image"])

    def after_image(self, question: str) -> list[int]:
        return self.tok.encode(self.template["after_image"].format(question=question))

    def answer(self, answer: str) -> list[int]:
        return self.tok.encode(self.template["answer"].format(answer=answer))

    def prompt_text(self, question: str) -> str:
        """The full prompt for llama.cpp/mtmd, with the media marker where the image goes."""
        t = self.template
        return t["before_image"] + t["media_marker"] + t["after_image"].format(question=question)


@dataclass
class EncodedQuestions:
    suffix: torch.Tensor  # (n_q, S) after-image prompt + answer + eos, right-padded with eos
    target: torch.Tensor  # (n_q, S) next-token target at answer positions, -1 elsewhere
    prompt_len: torch.Tensor  # (n_q,) tokens of the after-image prompt (generation starts after it)
    attr_pos: torch.Tensor  # (n_q,) suffix index of the last token of the colour/shape word asked about, -1 none
    attr_present: torch.Tensor  # (n_q,) 1/0: is that attribute in the image (yes/no questions), -1 unknown


def is_negated(question: str) -> bool:
    return " not " in question or " no " in question


def attribute_position(codec: PromptCodec, question: str) -> int:
    """Index, in codec.after_image(question), of the last token of the colour or shape word; -1 if none.

    The pre-tokenizer splits at word boundaries, so the text up to the word's end tokenizes to a
    prefix of the full token list.
    """
    words = question.rstrip("?").split(" ")
    named = [w for w in words if w in SHAPES or w in COLORS]
    if not named:
        return -1
    end = question.index(named[0]) + len(named[0])
    head = codec.template["after_image"].split("{question}")[0]
    return len(codec.tok.encode(head + question[:end])) - 1


def encode_questions(codec: PromptCodec, questions: list[str], answers: list[str]) -> EncodedQuestions:
    prompts = {q: codec.after_image(q) for q in set(questions)}
    replies = {a: codec.answer(a) for a in set(answers)}
    attr = {q: attribute_position(codec, q) for q in set(questions)}
    seqs = [(prompts[q], replies[a]) for q, a in zip(questions, answers, strict=True)]
    width = max(len(p) + len(r) for p, r in seqs)
    suffix = torch.full((len(seqs), width), codec.tok.eos_id, dtype=torch.long)
    target = torch.full((len(seqs), width), -1, dtype=torch.long)
    for i, (p, r) in enumerate(seqs):
        suffix[i, : len(p) + len(r)] = torch.tensor(p + r)
        target[i, len(p) - 1 : len(p) + len(r) - 1] = torch.tensor(r)
    present = [
        float((a == "yes") != is_negated(q)) if a in ("yes", "no") and attr[q] >= 0 else -1.0
        for q, a in zip(questions, answers, strict=True)
    ]
    return EncodedQuestions(
        suffix,
        target,
        torch.tensor([len(p) for p, _ in seqs]),
        torch.tensor([attr[q] for q in questions]),
        torch.tensor(present),
    )


def token_sets(codec: PromptCodec, questions: list[str], answers: list[str]) -> tuple[list[int], list[int]]:
    """(ids fed to the LM, ids the LM must produce), both sorted."""
    fed = set(codec.before_image)
    for q in set(questions):
        fed.update(codec.after_image(q))
    produced = set()
    for a in set(answers):
        produced.update(codec.answer(a))
    fed |= produced
    return sorted(fed), sorted(produced)


SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")


def image_labels(split: Split, classes: tuple[str, ...]) -> np.ndarray:
    """(n_images,) index into `classes` (SHAPES or COLORS) per image, -1 where the questions leave it open.

    Read from the split's own questions: an answer in `classes` names it; a question naming a member
    ('what is the red shape?', 'is there a circle?') keeps it, or with a yes/no answer that says it
    is absent ('no', or 'yes' to a 'not'/'no' question), excludes it.
    """
    candidates = [set(classes) for _ in split.image_ids]
    for q, a, row in zip(split.questions, split.answers, split.owner, strict=True):
        if a in classes:
            candidates[row] &= {a}
            continue
        words = q.rstrip("?").split(" ")
        named = [c for c in classes if c in words]
        if not named:
            continue
        present = (a == "yes") != (" not " in q or " no " in q) if a in ("yes", "no") else True
        candidates[row] &= {named[0]} if present else set(classes) - {named[0]}
    return np.array([classes.index(next(iter(c))) if len(c) == 1 else -1 for c in candidates])
