"""Export the trained yardstick VLM to the GGUF pair llama.cpp loads, and check it against PyTorch.

    python -m models.yardstick.export --weights out/yardstick/run              # write the GGUFs
    python -m models.yardstick.export --weights out/yardstick/run --reference 300   # + PyTorch answers
    python -m models.yardstick.export --parity                                       # GGUF vs those answers

The writers and conventions are models.easyvqa.export's (llama arch LM with SmolLM2's tokenizer,
Q8_0 matrices; CLIP ViT + LLaVA 'mlp' mmproj in F32, patch bias folded into the position
embeddings). `--reference N` stores the PyTorch greedy answers to N test questions (the same
number of each kind) in reference_answers.json; `--parity` answers them through the real patched
llama.cpp (fastv_edge.generate, stock path) and prints how many agree. Test images are rebuilt by
the seeded generator, so no data files are needed for the parity check.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from models.easyvqa.export import fold_patch_bias, load_npz, sha256, text_hparams, vision_hparams
from models.easyvqa.tokenizer import load_tokenizer

HERE = Path(__file__).resolve().parent
LM_NAME = "yardstick-lm-q8_0.gguf"
MMPROJ_NAME = "yardstick-mmproj-f32.gguf"
REFERENCE = HERE / "reference_answers.json"
PROMPT_FILE = HERE.parent / "easyvqa" / "prompt.json"  # the same ChatML prompt as the easy-vqa model


def export(weights_dir: Path, out_dir: Path = HERE) -> tuple[Path, Path]:
    """Write (LM, mmproj) GGUFs from vision.npz / text.npz / config.json and return their paths.

    Args:
        weights_dir: the trainer's --out folder.
        out_dir: where the two GGUF files go.

    Returns:
        (LM path, mmproj path).
    """
    from fastv_edge.testing.llama_gguf import read_tokenizer, write_llama_gguf
    from fastv_edge.testing.mmproj import write_mmproj_gguf

    cfg = json.loads((weights_dir / "config.json").read_text())
    thp = text_hparams(cfg["text"])
    tok = read_tokenizer()
    add_bos = [v for k, v, *_ in tok.fields if k == "tokenizer.ggml.add_bos_token"]
    if add_bos != [False]:
        raise ValueError(f"tokenizer.ggml.add_bos_token is {add_bos}, the model was trained without BOS")
    text = load_npz(weights_dir / "text.npz")
    lm = write_llama_gguf(out_dir / LM_NAME, thp, text, weight_type="q8_0", tokenizer=tok, name="yardstick-lm")
    vision = fold_patch_bias(load_npz(weights_dir / "vision.npz"))
    vhp = vision_hparams(cfg["vision"], thp.n_embd)
    mmproj = write_mmproj_gguf(out_dir / MMPROJ_NAME, vhp, vision, weight_type="f32", name="yardstick-mmproj")
    return lm, mmproj


def prompt_text(question: str) -> str:
    """The exact trained prompt, with mtmd's media marker where the 256 image tokens go."""
    t = json.loads(PROMPT_FILE.read_text())
    return t["before_image"] + t["media_marker"] + t["after_image"].format(question=question)


def stratified_sample(kinds: list[str], per_kind: int, seed: int = 0) -> list[int]:
    """Sorted indices of `per_kind` seeded random questions of every kind."""
    rng = np.random.default_rng(seed)
    kinds_arr = np.array(kinds)
    out = []
    for kind in dict.fromkeys(kinds):
        idx = np.flatnonzero(kinds_arr == kind)
        out += rng.choice(idx, size=min(per_kind, len(idx)), replace=False).tolist()
    return sorted(int(i) for i in out)


def write_reference(weights_dir: Path, data: Path, n: int) -> dict:
    """PyTorch greedy answers to n test questions (n / 6 per kind) -> reference_answers.json."""
    from models.easyvqa.data import PromptCodec
    from models.easyvqa.evaluate import greedy_answers

    from .evaluate import load_model
    from .generator import load_split

    test = load_split(data, "test")
    kinds = list(dict.fromkeys(test.kinds))
    index = stratified_sample(test.kinds, n // len(kinds), seed=1)
    pred = greedy_answers(load_model(weights_dir), PromptCodec(load_tokenizer()), test.split, np.array(index))
    rows = [
        {
            "q": i,
            "image": int(test.split.owner[i]),
            "kind": test.kinds[i],
            "question": test.split.questions[i],
            "label": test.split.answers[i],
            "torch": a,
        }
        for i, a in zip(index, pred, strict=True)
    ]
    ref = {
        "comment": "PyTorch greedy answers (models.yardstick.export --reference) for the GGUF parity test",
        "rows": rows,
    }
    REFERENCE.write_text(json.dumps(ref, indent=1) + "\n")
    return ref


def test_image(index: int):
    """Test image `index` as a fastv_edge RGBImage, rebuilt by the seeded generator."""
    from fastv_edge.images import RGBImage

    from .generator import load_params, make_example

    _, image, _ = make_example(load_params(), "test", index)
    return RGBImage(image.shape[1], image.shape[0], image.tobytes(), name=f"test-{index}")


def load_gguf(threads: int = 1, out_dir: Path = HERE):
    """The shipped GGUF pair through fastv_edge (stock pruning unless a request says otherwise)."""
    import fastv_edge
    from fastv_edge import PruneConfig, RuntimeConfig

    return fastv_edge.load(
        out_dir / LM_NAME,
        out_dir / MMPROJ_NAME,
        runtime=RuntimeConfig(n_ctx=1024, n_threads=threads),
        prune=PruneConfig(strategy="none"),
    )


def ask(model, question: str, image, prune=None):
    """Greedy answer of the GGUF model to the exact trained prompt (no chat template), with its prefill stats.

    CDPruner ranks the image tokens against the question alone (not the system line or ChatML markers).

    Args:
        model: from load_gguf().
        question: the question text.
        image: an RGBImage (test_image()).
        prune: a PruneConfig; None: the model's (stock).

    Returns:
        (answer, fastv_edge PrefillStats: kept image-token indices among all 256, strategy, timings).
    """
    import fastv_edge

    steps = list(
        fastv_edge.stream_generate(
            model, prompt_text(question), [image], apply_template=False, prune=prune, max_tokens=4, instruction=question
        )
    )
    return "".join(r.text for r in steps).strip(), steps[-1].stats


def answer(model, question: str, image, prune=None) -> str:
    """Greedy answer of the GGUF model to the exact trained prompt (see ask())."""
    return ask(model, question, image, prune)[0]


def parity(threads: int = 1) -> dict:
    """Answer every reference question through llama.cpp; agreement with PyTorch and with the labels."""
    rows = json.loads(REFERENCE.read_text())["rows"]
    with load_gguf(threads) as model:
        got = [answer(model, r["question"], test_image(r["image"])) for r in rows]
    agree = sum(g == r["torch"] for g, r in zip(got, rows, strict=True))
    correct = sum(g == r["label"] for g, r in zip(got, rows, strict=True))
    torch_correct = sum(r["torch"] == r["label"] for r in rows)
    return {"n": len(rows), "agree_with_pytorch": agree, "gguf_correct": correct, "pytorch_correct": torch_correct}


def main(argv: list[str] | None = None) -> None:
    from .generator import DEFAULT_DATA

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, help="the trainer's --out folder (vision.npz, text.npz, config.json)")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--reference", type=int, default=0, help="store PyTorch answers to N test questions")
    ap.add_argument("--parity", action="store_true", help="compare the GGUF answers with the stored PyTorch ones")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.weights:
        for path in export(args.weights, args.out):
            print(f"{path.name}  {path.stat().st_size} bytes  sha256 {sha256(path)}")
    if args.reference:
        import torch

        torch.set_num_threads(args.threads)
        rows = write_reference(args.weights, args.data, args.reference)["rows"]
        print(f"{REFERENCE.name}: {len(rows)} questions, PyTorch {sum(r['torch'] == r['label'] for r in rows)} right")
    if args.parity:
        print(json.dumps(parity(args.threads)))


if __name__ == "__main__":
    main()
