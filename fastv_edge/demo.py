"""`python -m fastv_edge.demo`: the CLI end to end on the best model available offline.

1. The easy-VQA model trained for this project, when its GGUF pair exists in models/easyvqa/
   (a real, if small, vision-language model: shapes and colours), asked about an easy-vqa
   test image.
2. Otherwise the tiny generated model with a real scikit-image photo. Its weights are
   RANDOM: the answer is gibberish; the demo then shows the pipeline and the statistics.

Each model runs twice through `fastv-edge run`: stock (--strategy none) and FastV (K=2, R=0.5).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .cli import main as cli_main
from .errors import ModelLoadError

ROOT = Path(__file__).resolve().parent.parent
RUNS = (("stock llama.cpp", ["--strategy", "none"]), ("FastV K=2 R=0.5", ["-k", "2", "-r", "0.5"]))


def find_easyvqa(directory: Path = ROOT / "models" / "easyvqa") -> tuple[Path, Path] | None:
    """(text GGUF, mmproj GGUF) of the trained easy-VQA model, if both are there."""
    from .model import read_mmproj_info, read_model_info

    text, mmproj = None, None
    for path in sorted(directory.glob("*.gguf")):
        try:
            read_mmproj_info(path)
            mmproj = path
        except ModelLoadError:
            try:
                read_model_info(path)
                text = path
            except ModelLoadError:
                continue
    return (text, mmproj) if text and mmproj else None


def easyvqa_question() -> tuple[str, str]:
    """(image path, question) of the first easy-vqa test question."""
    import easy_vqa

    questions, _answers, image_ids = easy_vqa.get_test_questions()
    return easy_vqa.get_test_image_paths()[image_ids[0]], questions[0]


def easyvqa_prompt(question: str, directory: Path = ROOT / "models" / "easyvqa") -> str:
    """The exact prompt the model was trained on (prompt.json), for `run --raw`.

    The chat-template path would join the media marker and the question without the
    trained newline between them, so the demo sends the trained text as is.
    """
    import json

    fmt = json.loads((directory / "prompt.json").read_text())
    return fmt["before_image"] + fmt["media_marker"] + fmt["after_image"].format(question=question)


def tiny_setup(workdir: Path) -> tuple[Path, Path, Path, str]:
    """Generate the tiny model pair and save scikit-image's astronaut photo."""
    from PIL import Image
    from skimage import data

    from fastv_edge.testing.make_tiny import make_tiny

    tiny = make_tiny(workdir)
    photo = workdir / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    return tiny.llama_path, tiny.mmproj_path, photo, "What is in the image?"


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit code of the last CLI run."""
    parser = argparse.ArgumentParser(prog="python -m fastv_edge.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where to write the tiny model (default: a temp dir)")
    parser.add_argument("--tiny", action="store_true", help="use the tiny random model even if easy-VQA exists")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        found = None if args.tiny else find_easyvqa()
        if found:
            (model, mmproj), (image, question) = found, easyvqa_question()
            print(f"demo: easy-VQA model {model.name} (trained weights), image {image}")
            print(f"      question: {question!r} (sent in the trained ChatML prompt, --raw)")
            question, extra = easyvqa_prompt(question), ["-n", "8", "--raw"]
        else:
            model, mmproj, image, question = tiny_setup(workdir)
            print("demo: NOTE the tiny generated model has RANDOM weights: its answers are gibberish;")
            print("      this run shows the pipeline (image encode, FastV prefill, streaming) and the statistics.")
            extra = ["-n", "16"]
        rc = 0
        for label, flags in RUNS:
            print(
                f"\n== {label}: fastv-edge run -m {model.name} --mmproj {mmproj.name} --image {Path(image).name} "
                f"-p {question!r} {' '.join(flags)}",
                flush=True,
            )
            rc = cli_main(
                [
                    "run",
                    "-m",
                    str(model),
                    "--mmproj",
                    str(mmproj),
                    "--image",
                    str(image),
                    "-p",
                    question,
                    "-c",
                    "1024",
                    *extra,
                    *flags,
                ]
            )
            if rc != 0:
                return rc
        return rc


if __name__ == "__main__":
    sys.exit(main())
