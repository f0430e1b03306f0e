"""Greedy answers of the trained yardstick VLM in PyTorch, and its accuracy per question kind.

    python -m models.yardstick.evaluate --weights out/yardstick/run [--split test] [--limit N]

Writes {split}_predictions.json (every answer) and {split}_accuracy.json next to the weights.
Decoding is models.easyvqa.evaluate.greedy_answers: the same prefix-cached greedy loop, over the
full 49152-token vocabulary the GGUF export has.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from models.easyvqa import weights
from models.easyvqa.data import PromptCodec
from models.easyvqa.evaluate import greedy_answers
from models.easyvqa.tokenizer import load_tokenizer

from .generator import DEFAULT_DATA, load_split
from .model import configs_from_json


def by_kind(pred: list[str], gold: list[str], kinds: list[str]) -> dict[str, float]:
    """Accuracy per question kind (in first-seen order) and over all questions ('all').

    Args:
        pred: predicted answers.
        gold: right answers.
        kinds: question kind of each answer.

    Returns:
        {kind: accuracy, ..., 'all': accuracy}.
    """
    hits = np.array([p == g for p, g in zip(pred, gold, strict=True)])
    kinds_arr = np.array(kinds)
    out = {k: float(hits[kinds_arr == k].mean()) for k in dict.fromkeys(kinds)}
    out["all"] = float(hits.mean())
    return out


def load_model(weights_dir: Path):
    """The PyTorch VLM from vision.npz / text.npz / config.json (full-vocab, as exported)."""
    vcfg, tcfg = configs_from_json(json.loads((weights_dir / "config.json").read_text()))
    return weights.load(weights_dir / "vision.npz", weights_dir / "text.npz", vcfg, tcfg)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="folder with vision.npz, text.npz, config.json")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--limit", type=int, default=0, help="evaluate only the first N questions (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    data = load_split(args.data, args.split)
    n = len(data.split.questions) if args.limit <= 0 else min(args.limit, len(data.split.questions))
    pred = greedy_answers(model, PromptCodec(load_tokenizer()), data.split, np.arange(n))
    result = {"split": args.split, "n_questions": n, **by_kind(pred, data.split.answers[:n], data.kinds[:n])}
    (args.weights / f"{args.split}_predictions.json").write_text(json.dumps(pred))
    (args.weights / f"{args.split}_accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
