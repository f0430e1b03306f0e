"""Greedy answers from the PyTorch VLM and their accuracy on an easy-vqa split.

Usage (weights written by train.py):
    python -m models.easyvqa.evaluate --weights out/easyvqa [--split test] [--limit N]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from . import weights
from .data import PromptCodec, Split, load_split, pixels
from .model import VLM, TextConfig, VisionConfig
from .tokenizer import load_tokenizer

MAX_ANSWER_TOKENS = 4  # longest answer is 2 tokens + <|im_end|>


def next_tokens(model: VLM, hidden: torch.Tensor) -> torch.Tensor:
    """Greedy next token from normed hidden (m, d); rows absent from a compact output matrix have logit 0."""
    t = model.text
    logits = hidden @ t.out.T  # (m, n_out)
    if len(t.out_ids) == t.cfg.vocab_size:
        return logits.argmax(-1)
    best = logits.max(-1)
    others = sorted(set(range(t.cfg.vocab_size)) - set(t.out_ids.tolist()))[0]
    return torch.where(best.values > 0, t.out_ids[best.indices], torch.full_like(best.indices, others))


@torch.no_grad()
def greedy_answers(model: VLM, codec: PromptCodec, split: Split, q_index: np.ndarray, images_per_batch=32):
    """Decoded answer text for each question in `q_index` (indices into split.questions)."""
    vcfg = model.vision.cfg
    pre = torch.tensor(codec.before_image)
    by_image = defaultdict(list)
    for q in q_index:
        by_image[int(split.owner[q])].append(int(q))
    rows = sorted(by_image)
    answers: dict[int, str] = {}
    for start in range(0, len(rows), images_per_batch):
        chunk = rows[start : start + images_per_batch]
        _, cache = model.prefill(pre, pixels(split.images[chunk], vcfg.image_mean, vcfg.image_std))
        groups = defaultdict(list)  # same-length prompts decode together: positions must line up
        for j, r in enumerate(chunk):
            for q in by_image[r]:
                ids = codec.after_image(split.questions[q])
                groups[len(ids)].append((q, j, ids))
        for items in groups.values():
            seq = torch.tensor([ids for _, _, ids in items])  # (m, S)
            owner = torch.tensor([j for _, j, _ in items])
            out = []
            for _ in range(MAX_ANSWER_TOKENS):
                h = model.text.extend(model.text.embed_tokens(seq), cache, owner)
                nxt = next_tokens(model, h[:, -1])
                out.append(nxt)
                if (torch.stack(out, 1) == codec.tok.eos_id).any(1).all():
                    break
                seq = torch.cat((seq, nxt[:, None]), dim=1)
            gen = torch.stack(out, 1).tolist()
            for (q, _, _), toks in zip(items, gen, strict=True):
                toks = toks[: toks.index(codec.tok.eos_id)] if codec.tok.eos_id in toks else toks
                answers[q] = codec.tok.decode(toks)
    return [answers[int(q)] for q in q_index]


def accuracy(model: VLM, codec: PromptCodec, split: Split, q_index: np.ndarray) -> tuple[float, list[str]]:
    pred = greedy_answers(model, codec, split, q_index)
    gold = [split.answers[q] for q in q_index]
    return float(np.mean([p == g for p, g in zip(pred, gold, strict=True)])), pred


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="folder with vision.npz, text.npz, config.json")
    ap.add_argument("--split", default="test", choices=["train", "test"])
    ap.add_argument("--limit", type=int, default=0, help="evaluate only the first N questions (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = json.loads((args.weights / "config.json").read_text())
    model = weights.load(
        args.weights / "vision.npz",
        args.weights / "text.npz",
        VisionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["vision"].items()}),
        TextConfig(**cfg["text"]),
    )
    split = load_split(args.split)
    n = len(split.questions) if args.limit <= 0 else min(args.limit, len(split.questions))
    acc, _ = accuracy(model, PromptCodec(load_tokenizer()), split, np.arange(n))
    print(json.dumps({"split": args.split, "n_questions": n, "accuracy": acc}))


if __name__ == "__main__":
    main()
