"""Draw which image patches each strategy keeps, on 4 test questions whose answer sits in few patches.

    python -m models.yardstick.pictures [--keep 28] [--out docs/img/yardstick-kept.png]
    python -m models.yardstick.pictures --fastv-layers 6 --random-layers 6    # + FastV and random at K = 6
    python -m models.yardstick.pictures --examples docs/img/yardstick-examples.png   # data only

One column per question (a glyph, a count, a spatial relation and an attribute of a small object),
one row per setting of the sweep at the chosen budget (settings.py, so strategies added to the
package later get their row). Dropped patches are dimmed (the kept set is the request's
PrefillStats.kept); the title gives the model's answer. A setting the package rejects is listed
under the figure with the reason.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent.parent / "docs" / "img" / "yardstick-kept.png"
KINDS = ("glyph", "count", "spatial", "attribute")
GRID = 16  # 256 image tokens = 16 x 16 patches, row-major


def pick_questions(questions: list[dict], scenes: list[dict], p: dict) -> list[int]:
    """The first test question of each kind in KINDS whose named objects are all small (glyphs count as small),
    each on a picture of its own."""
    from .scenes import side

    def small(qa: dict) -> bool:
        scene = scenes[qa["image"]]
        words = {w.removesuffix("s") for w in qa["question"].rstrip("?").split()}  # 'circles' names circles
        named = [o for o in scene["objects"] if o["color"] in words and o.get("shape", "letter") in words]
        named = named or [o for o in scene["objects"] if o.get("shape") in words]
        return bool(named) and all(side(o) <= max(p["small_side"][1], 7 * p["glyph_scale"]) for o in named)

    chosen: list[int] = []
    for kind in KINDS:  # one picture per question, so the columns show four different scenes
        used = {questions[c]["image"] for c in chosen}
        chosen.append(
            next(i for i, qa in enumerate(questions) if qa["kind"] == kind and qa["image"] not in used and small(qa))
        )
    return chosen


def kept_mask(stats, grid: int) -> np.ndarray:
    """(grid, grid) bool of the image tokens that reached the deep layers in a request (PrefillStats.kept).

    Args:
        stats: the PrefillStats of the request (all N image tokens when nothing was pruned).
        grid: patches per side.

    Returns:
        The mask, row-major like the image tokens.
    """
    mask = np.zeros(grid * grid, dtype=bool)
    mask[list(stats.kept) if stats.kept else slice(None)] = True
    return mask.reshape(grid, grid)


def draw(cells: list[list[dict]], titles: list[str], rows: list[str], out: Path, skipped: list[str]) -> None:
    """A grid of pictures: one row per setting, one column per question; skipped settings as a footnote."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(titles), figsize=(2.6 * len(titles), 2.5 * len(rows)), squeeze=False)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            ax = axes[r, c]
            ax.axis("off")
            if cell["image"] is not None:
                ax.imshow(cell["image"])
            ax.set_title(cell["text"], fontsize=7)
            if c == 0:
                ax.text(-0.08, 0.5, rows[r], transform=ax.transAxes, rotation=90, va="center", ha="right", fontsize=8)
    for c, title in enumerate(titles):
        axes[0, c].set_title(title + "\n" + axes[0, c].get_title(), fontsize=7)
    fig.tight_layout()
    if skipped:
        fig.subplots_adjust(bottom=0.04 + 0.012 * len(skipped))
        fig.text(
            0.01, 0.005, "not drawn (rejected by the package today):\n" + "\n".join(skipped), fontsize=6, va="bottom"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _cell(model, setting, qi: int, qa: dict, image: np.ndarray, cell_px: int) -> dict:
    from fastv_edge.errors import FastVEdgeError

    from .export import ask, test_image

    try:
        got, stats = ask(model, qa["question"], test_image(qa["image"]), prune=setting.make(qi))
    except (ValueError, TypeError, FastVEdgeError) as e:
        return {"image": None, "text": f"skipped:\n{str(e)[:60]}"}
    mask = kept_mask(stats, GRID)
    shown = image.astype(np.float64)
    dim = ~np.kron(mask, np.ones((cell_px, cell_px), dtype=bool))  # (H, W) dropped pixels
    shown[dim] = 0.25 * shown[dim] + 0.75 * 255
    return {"image": shown.astype(np.uint8), "text": f"answer {got!r} ({int(mask.sum())} kept)"}


def draw_examples(out: Path, n: int = 8) -> None:
    """The first n test pictures at 3x, each with its questions and answers (no model needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .generator import load_params, make_example

    p = load_params()
    fig, axes = plt.subplots(2, (n + 1) // 2, figsize=(3.3 * ((n + 1) // 2), 9.6), squeeze=False)
    for i, ax in enumerate(axes.flat[:n]):
        _, image, questions = make_example(p, "test", i)
        ax.imshow(image)
        ax.axis("off")
        ax.set_title("\n".join(f"{q['question']} {q['answer']}" for q in questions), fontsize=5.5, loc="left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=int, default=28, help="budget (one of settings.BUDGETS)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--fastv-layers", type=int, nargs="+", default=[], help="FastV layers K besides 2, L/4, L/2")
    parser.add_argument("--random-layers", type=int, nargs="+", default=[], help="random layers K besides 0, 2")
    parser.add_argument("--examples", type=Path, help="instead: draw 8 test pictures with their questions here")
    args = parser.parse_args(argv)
    if args.examples:
        draw_examples(args.examples)
        print(args.examples)
        return 0

    from .export import load_gguf
    from .generator import build_split, load_params
    from .settings import BUDGETS, settings

    if args.keep not in BUDGETS:
        parser.error(f"--keep must be one of {BUDGETS}, got {args.keep}")
    p = load_params()
    images, records = build_split(p, "test")
    chosen = pick_questions(records["questions"], records["scenes"], p)
    with load_gguf(1) as model:
        extra = {"extra_fastv": tuple(args.fastv_layers), "extra_random": tuple(args.random_layers)}
        todo = [s for s in settings(model.info.n_layer, **extra) if s.family == "stock" or s.keep == args.keep]
        cell_px = p["image_size"] // GRID
        cells = [
            [
                _cell(model, s, qi, records["questions"][qi], images[records["questions"][qi]["image"]], cell_px)
                for qi in chosen
            ]
            for s in todo
        ]
    shown = [i for i, row in enumerate(cells) if any(c["image"] is not None for c in row)]
    skipped = [f"{todo[i].family}: {cells[i][0]['text'].split(chr(10))[1]}" for i in range(len(todo)) if i not in shown]
    titles = [f"{records['questions'][qi]['question']}\nlabel {records['questions'][qi]['answer']!r}" for qi in chosen]
    labels = [todo[i].family if todo[i].family == "stock" else f"{todo[i].family} keep {todo[i].keep}" for i in shown]
    draw([cells[i] for i in shown], titles, labels, args.out, skipped)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
