"""Export the trained easy-VQA weights (.npz, GGUF names, PyTorch shapes) to the GGUF pair llama.cpp loads.

    python -m models.easyvqa.export [--weights out/easyvqa] [--out models/easyvqa]

Writes easyvqa-lm-q8_0.gguf (llama arch, SmolLM2 tokenizer, matrices Q8_0) and
easyvqa-mmproj-f32.gguf (CLIP ViT + LLaVA 'mlp' projector; F32 because it is only ~3.5 MB and
keeps the vision side bit-close to PyTorch). The hyperparameters come from the trainer's
config.json; the conventions they must follow are in README.md ("What llama.cpp computes").
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from fastv_edge.testing.llama_gguf import LlamaHParams, read_tokenizer, write_llama_gguf
from fastv_edge.testing.mmproj import ClipHParams, write_mmproj_gguf

HERE = Path(__file__).resolve().parent
DEFAULT_WEIGHTS = Path("out/easyvqa")
LM_NAME = "easyvqa-lm-q8_0.gguf"
MMPROJ_NAME = "easyvqa-mmproj-f32.gguf"


def text_hparams(cfg: dict) -> LlamaHParams:
    """The LM's shape; untied output (the trainer zeroes unused output rows, token_embd keeps its init)."""
    return LlamaHParams(
        n_layer=cfg["n_layer"],
        n_embd=cfg["n_embd"],
        n_head=cfg["n_head"],
        n_head_kv=cfg["n_head_kv"],
        n_ff=cfg["n_ff"],
        n_vocab=cfg["vocab_size"],
        rope_freq_base=cfg["rope_base"],
        rms_eps=cfg["rms_eps"],
        tie_embeddings=False,
    )


def vision_hparams(cfg: dict, lm_embd: int) -> ClipHParams:
    """ViT + projector shape; feature_layer = n_layer so llava runs every block (README, 'depth')."""
    return ClipHParams(
        image_size=cfg["image_size"],
        patch_size=cfg["patch_size"],
        n_embd=cfg["n_embd"],
        n_ff=cfg["n_ff"],
        n_head=cfg["n_head"],
        n_layer=cfg["n_layer"],
        projection_dim=lm_embd,
        mm_hidden=lm_embd,
        eps=cfg["eps"],
        use_gelu=True,
        class_token=False,
        feature_layer=cfg["n_layer"],
        image_mean=tuple(cfg["image_mean"]),
        image_std=tuple(cfg["image_std"]),
    )


def load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: train first (python -m models.easyvqa.train) or pass --weights")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def fold_patch_bias(vision: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add v.patch_embd.bias to every row of v.position_embd.weight and drop it.

    llava adds the conv bias and then the position embedding to each patch row, with nothing in
    between and no class token, so (conv + b) + pos == conv + (pos + b): exact up to float rounding.
    fastv_edge/testing/mmproj.py writes no patch bias, and this keeps it that way.
    """
    vision = dict(vision)
    bias = vision.pop("v.patch_embd.bias")
    vision["v.position_embd.weight"] = vision["v.position_embd.weight"] + bias[None, :]
    return vision


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(weights_dir: Path = DEFAULT_WEIGHTS, out_dir: Path = HERE) -> tuple[Path, Path]:
    """Write the (LM, mmproj) GGUF pair into out_dir and return their paths."""
    cfg = json.loads((weights_dir / "config.json").read_text())
    thp = text_hparams(cfg["text"])
    vhp = vision_hparams(cfg["vision"], thp.n_embd)
    # add_bos_token is false in SmolLM2's GGUF, as trained; fail loudly if a tokenizer source ever differs
    tok = read_tokenizer()
    add_bos = [v for k, v, *_ in tok.fields if k == "tokenizer.ggml.add_bos_token"]
    if add_bos != [False]:
        raise ValueError(f"tokenizer.ggml.add_bos_token is {add_bos}, the model was trained without BOS")
    lm = write_llama_gguf(
        out_dir / LM_NAME, thp, load_npz(weights_dir / "text.npz"), weight_type="q8_0", tokenizer=tok, name="easyvqa-lm"
    )
    mmproj = write_mmproj_gguf(
        out_dir / MMPROJ_NAME,
        vhp,
        fold_patch_bias(load_npz(weights_dir / "vision.npz")),
        weight_type="f32",
        name="easyvqa-mmproj",
    )
    return lm, mmproj


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights", type=Path, default=DEFAULT_WEIGHTS, help="dir with vision.npz, text.npz, config.json"
    )
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    for path in export(args.weights, args.out):
        print(f"{path}  {path.stat().st_size} bytes  sha256 {sha256(path)}")


if __name__ == "__main__":
    main()
