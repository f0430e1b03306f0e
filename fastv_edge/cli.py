"""fastv-edge: FastV visual-token pruning for llama.cpp vision-language models.

Commands:
  run      answer one prompt about images, streaming, then one line of statistics
  chat     interactive chat (/image PATH, /reset, /stats, /help, /quit); works with piped stdin
  info     a model's metadata and whether the loaded library has the FastV symbols
  pull     download a preset's model and mmproj into the Hugging Face cache
  presets  list the known model presets
  bench    speed, memory and fidelity of FastV vs stock across budgets and quantizations

Flags mirror llama-mtmd-cli where they overlap (-m, --mmproj, --image, -p, -n, -t, -c, --temp,
--seed). Pruning: -k K (layers that see every image token), -r R (share of image tokens
dropped) or --keep N (image tokens kept), --strategy fastv|random|none.
Architectures FastV does not support are refused with an error; use --strategy none to run
them on the stock llama.cpp path. Errors print one line and exit 1 (--debug: traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from dataclasses import asdict

from .cli_args import (
    Backend,
    add_generation_args,
    add_model_args,
    add_output_args,
    add_prune_args,
    load_from_args,
    native_backend,
    sampling_from_args,
)
from .console import SlowSteps, error, format_stats
from .errors import FastVEdgeError


def _version() -> str:
    from . import __version__

    return f"fastv-edge {__version__}"


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of `fastv-edge` (its module docstring is the description)."""
    parser = argparse.ArgumentParser(
        prog="fastv-edge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="answer one prompt about images")
    add_model_args(run)
    run.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    run.add_argument("-p", "--prompt", required=True, help="the question ('-' reads stdin)")
    run.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    add_generation_args(run)
    add_prune_args(run)
    add_output_args(run)
    chat = sub.add_parser("chat", help="interactive chat with images")
    add_model_args(chat)
    chat.add_argument("--image", action="append", default=[], help="image(s) for the first message")
    add_generation_args(chat)
    add_prune_args(chat)
    add_output_args(chat, json_flag=False)
    info = sub.add_parser("info", help="model metadata and FastV support")
    info.add_argument("-m", "--model", required=True, help="text model GGUF or preset name")
    info.add_argument("--mmproj", help="mmproj GGUF (adds the image tokens per image)")
    add_output_args(info)
    pull = sub.add_parser("pull", help="download a preset's files into the Hugging Face cache")
    pull.add_argument("name", help="preset name")
    pull.add_argument("--cache-dir", help="hub cache directory (default: huggingface_hub's)")
    add_output_args(pull, json_flag=False)
    presets = sub.add_parser("presets", help="list model presets")
    add_output_args(presets)
    from .bench.cli import add_parser as add_bench_parser

    add_bench_parser(sub)
    return parser


def cmd_run(args, backend: Backend) -> int:
    steps = SlowSteps(not args.quiet and not args.json)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    with load_from_args(args, steps, backend) as model:
        last, text = None, []
        for r in backend.stream_generate(
            model,
            prompt,
            args.image,
            prune=model.prune,
            max_tokens=args.n_predict,
            sampling=sampling_from_args(args),
            system=args.system,
            progress=steps,
            apply_template=not args.raw,
        ):
            last = r
            text.append(r.text)
            if not args.json:
                print(r.text, end="", flush=True)
        if args.json:
            print(
                json.dumps(
                    {"text": "".join(text), **last.summary(), "n_ctx": model.n_ctx, "prune": asdict(model.prune)}
                )
            )
        else:
            print()
            if not args.quiet:
                print(format_stats(last, model.prune), file=sys.stderr)
    return 0


def cmd_info(args, backend: Backend) -> int:
    from .info import model_report

    report = model_report(args.model, args.mmproj)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>22}: {value}")
    return 0


def cmd_pull(args, backend: Backend) -> int:
    from .hub import pull

    model_path, mmproj_path = pull(args.name, cache_dir=args.cache_dir, progress=not args.quiet)
    print(f"model:  {model_path}\nmmproj: {mmproj_path}")
    return 0


def cmd_presets(args, backend: Backend) -> int:
    from .templates import list_presets

    presets = list_presets()
    if args.json:
        print(json.dumps([asdict(p) for p in presets], indent=2))
        return 0
    for p in presets:
        print(f"{p.name:<14} {p.architecture:<8} {p.repo}  ({p.description})")
    return 0


def cmd_chat(args, backend: Backend) -> int:
    from .chat_loop import chat_loop

    return chat_loop(args, backend)


def cmd_bench(args, backend: Backend) -> int:
    from .bench.cli import cmd_bench as run

    return run(args)


COMMANDS = {
    "run": cmd_run,
    "chat": cmd_chat,
    "info": cmd_info,
    "pull": cmd_pull,
    "presets": cmd_presets,
    "bench": cmd_bench,
}
NATIVE_COMMANDS = ("run", "chat")  # the others load llama_cpp themselves when they need it


def main(argv: list[str] | None = None, *, backend: Backend | None = None) -> int:
    """Entry point of `fastv-edge` (also `python -m fastv_edge`).

    Args:
        argv: arguments without the program name (default: sys.argv[1:]).
        backend: what run and chat load and generate with (default: the native one; the
            tests pass a fake).

    Returns:
        The exit code: 0 on success, 1 on an error, 2 on a usage error, 130 on Ctrl-C.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        parser.print_help()
        return 0
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) and usage errors (2): argparse has printed them
        return int(e.code or 0)
    try:
        if backend is None and args.command in NATIVE_COMMANDS:
            backend = native_backend()
        return COMMANDS[args.command](args, backend)
    except (FastVEdgeError, ValueError, OSError, ImportError) as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        error(_one_line(e))
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _one_line(e: Exception) -> str:
    if isinstance(e, ImportError) and e.name == "llama_cpp":  # info --mmproj, bench: they load models
        from .native_build import install_command

        return f"llama-cpp-python is not installed; install the patched build: {install_command()}"
    if isinstance(e, ImportError) and e.name:  # an optional package a command needs
        return f"{e}; install it with pip"
    return str(e)


if __name__ == "__main__":
    sys.exit(main())
