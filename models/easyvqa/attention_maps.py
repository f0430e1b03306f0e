"""Draw which image patches FastV keeps: the layer K-1 attention of the last prompt token
(the ranking score) over the 16x16 patch grid, with the kept patches outlined, for a few test
questions of the shipped easy-vqa model.

    python -m models.easyvqa.attention_maps --out docs/img/easyvqa-attention.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GRID = 16  # 64 px / 4 px patches


def scores_for(model, text: str, image: str, k: int, drop_ratio: float):
    """(scores (16, 16), kept mask (16, 16), answer) of one FastV answer."""
    import fastv_edge
    from fastv_edge import PruneConfig, _native

    answer = fastv_edge.generate(
        model, text, [image], apply_template=False, max_tokens=4, prune=PruneConfig(layer=k, drop_ratio=drop_ratio)
    ).strip()
    scores = np.array(_native.get_scores(model.ctx)).reshape(GRID, GRID)  # row-major patches
    kept = np.zeros(GRID * GRID, dtype=bool)
    kept[_native.get_kept(model.ctx)] = True
    return scores, kept.reshape(GRID, GRID), answer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, nargs="+", default=[0, 3, 11, 42])
    parser.add_argument("-k", type=int, default=2)
    parser.add_argument("-r", "--drop-ratio", type=float, default=0.75)
    parser.add_argument("--out", type=Path, default=Path("docs/img/easyvqa-attention.png"))
    args = parser.parse_args(argv)

    import easy_vqa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    import fastv_edge
    from fastv_edge import RuntimeConfig

    prompt = json.loads((HERE / "prompt.json").read_text())
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    model = fastv_edge.load(
        HERE / "easyvqa-lm-q8_0.gguf", HERE / "easyvqa-mmproj-f32.gguf", runtime=RuntimeConfig(n_ctx=1024, n_threads=1)
    )
    fig, axes = plt.subplots(2, len(args.questions), figsize=(3.2 * len(args.questions), 6.6))
    for col, qi in enumerate(args.questions):
        text = prompt["before_image"] + prompt["media_marker"] + prompt["after_image"].format(question=questions[qi])
        path = paths[image_ids[qi]]
        scores, kept, answer = scores_for(model, text, path, args.k, args.drop_ratio)
        image = np.asarray(Image.open(path).convert("RGB"))  # (64, 64, 3)
        axes[0, col].imshow(image)
        axes[0, col].set_title(f"{questions[qi]}\nlabel {answers[qi]}, FastV {answer}", fontsize=8)
        axes[1, col].imshow(image)
        axes[1, col].imshow(np.kron(scores, np.ones((4, 4))), cmap="magma", alpha=0.6)  # (64, 64) heat
        ys, xs = np.nonzero(kept)
        for y, x in zip(ys, xs, strict=True):
            axes[1, col].add_patch(plt.Rectangle((x * 4 - 0.5, y * 4 - 0.5), 4, 4, fill=False, lw=0.6, ec="cyan"))
        axes[1, col].set_title(f"layer {args.k - 1} attention; kept {kept.sum()}/256 (cyan)", fontsize=8)
        for ax in axes[:, col]:
            ax.axis("off")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
