"""fastv-edge: FastV visual-token pruning for llama.cpp vision-language models.

Commands:
  run      answer one prompt about images, streaming, then one line of statistics
  chat     interactive chat (/image PATH, /reset, /stats, /help, /quit); works with piped stdin
  info     a model's metadata and whether the loaded library has the FastV symbols
  pull     download a preset's model and mmproj into the Hugging Face cache
  presets  list the known model presets
  bench    speed, memory and fidelity of FastV vs stock across budgets and quantizations
  calibrate  measure this machine's time-to-first-token costs of a model pair (for --ttft-budget)
  cache    the image-embedding cache: `cache info`, `cache clear`
  quantize-mmproj  quantize a vision projector (llama.cpp's quantizer); size, encode time, cosine

Flags mirror llama-mtmd-cli where they overlap (-m, --mmproj, --image, -p, -n, -t, -c, --temp,
--seed). Pruning: --strategy fastv|random|divprune|dart|cdpruner|none, -k K (layers that see
every image token; -k 0 selects before the LLM), -r R (share of image tokens dropped) or
--keep N (image tokens kept), --pre STRATEGY:BUDGET (a first stage before the LLM, then FastV).
FastV (-k >= 1) is refused on architectures the patch does not hook; selection before the LLM
(divprune, dart, cdpruner, random with -k 0) runs on every model mtmd can encode, and --strategy
none runs stock llama.cpp. Image tokens: --image-max-tokens N caps them on dynamic-resolution
projectors (Qwen2/2.5/3-VL); an image seen before comes from the embedding cache (--no-cache:
encode every time). --ttft-budget SECONDS lets the planner pick the cap, strategy and keep count
that keep the most image tokens within that time to first token, from this machine's
calibration (`fastv-edge calibrate`). Errors print one line and exit 1 (--debug: traceback).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import traceback
from dataclasses import asdict

from .cli_args import (
    Backend,
    add_generation_args,
    add_model_args,
    add_output_args,
    add_prune_args,
    budget_family,
    load_from_args,
    native_backend,
    runtime_from_args,
    sampling_from_args,
)
from .console import SlowSteps, StepLines, error, format_plan, format_stats, note, over_budget_note, read_stdin
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
    cal = sub.add_parser(
        "calibrate", help="measure this machine's time-to-first-token costs of a model pair (for --ttft-budget)"
    )
    add_model_args(cal)
    cal.add_argument("--force", action="store_true", help="measure again even when a calibration is stored")
    add_output_args(cal)
    cache = sub.add_parser("cache", help="the image-embedding cache on disk: info or clear")
    cache.add_argument("action", choices=("info", "clear"))
    cache.add_argument("--dir", help="the cache folder (default: $FASTV_EDGE_EMBEDDING_CACHE or the user cache)")
    add_output_args(cache)
    _add_quantize_parser(sub)
    return parser


def _add_quantize_parser(sub) -> None:
    from .quantize_mmproj import MMPROJ_TYPES

    qm = sub.add_parser(
        "quantize-mmproj",
        help="quantize a vision projector with llama.cpp's quantizer; print size, encode time and cosine",
    )
    qm.add_argument("input", help="mmproj GGUF (F16/F32; a quantized one is requantized)")
    qm.add_argument("output", help="the quantized mmproj to write")
    qm.add_argument("--type", required=True, choices=list(MMPROJ_TYPES), help="weight type of the 2-D weights")
    qm.add_argument("--image", help="photo to measure on (default: scikit-image's astronaut, 512 x 512)")
    qm.add_argument("-t", "--threads", type=int, default=1, help="quantizer and encoder threads (default 1)")
    qm.add_argument("--reps", type=int, default=3, help="timed encodes of each projector, alternating (default 3)")
    qm.add_argument("--no-measure", action="store_true", help="only quantize: no encode time or cosine")
    qm.add_argument("--verbose", action="store_true", help="show llama.cpp's and mtmd's log")
    add_output_args(qm)


def cmd_run(args, backend: Backend) -> int:
    steps = SlowSteps(not args.quiet and not args.json)
    prompt = read_stdin("the prompt read from stdin") if args.prompt == "-" else args.prompt
    family = budget_family(args) if args.ttft_budget is not None else None
    with load_from_args(args, steps, backend) as model:
        if args.ttft_budget is not None:
            backend.calibration(model, StepLines(not args.quiet and not args.json))
        last, text = None, []
        for r in backend.stream_generate(
            model,
            prompt,
            args.image,
            prune=family if args.ttft_budget is not None else model.prune,
            max_tokens=args.n_predict,
            sampling=sampling_from_args(args),
            system=args.system,
            progress=steps,
            apply_template=not args.raw,
            ttft_budget=args.ttft_budget,
        ):
            if last is None and r.plan is not None and not args.quiet and not args.json:
                print(format_plan(r.plan), file=sys.stderr, flush=True)
            last = r
            text.append(r.text)
            if not args.json:
                print(r.text, end="", flush=True)
        threads = model.threads
        prune = last.plan.prune_config() if last.plan is not None else model.prune
        if args.json:
            record = {"text": "".join(text), **last.summary(), "n_ctx": model.n_ctx, "prune": asdict(prune)}
            print(json.dumps({**record, "threads": asdict(threads)}))
        else:
            print()
            if not args.quiet:
                print(format_stats(last, prune, threads), file=sys.stderr)
                hint = over_budget_note(last.plan, last.ttft_ms, _recalibrate_command(args))
                if hint:
                    note(hint)
    return 0


def _recalibrate_command(args) -> str:
    parts = ["fastv-edge", "calibrate", "-m", args.model] + (["--mmproj", args.mmproj] if args.mmproj else [])
    if args.threads:
        parts += ["-t", str(args.threads)]
    return shlex.join([*parts, "--force"])


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


def cmd_calibrate(args, backend: Backend) -> int:
    from .calibrate import calibrate, summary_lines
    from .calibration_store import calibration_path, load_calibration, save_calibration
    from .config import PruneConfig

    steps = StepLines(not args.quiet and not args.json)
    with steps(f"loading {args.model}"):
        model = backend.load(
            args.model,
            args.mmproj,
            runtime=runtime_from_args(args),
            prune=PruneConfig(strategy="none"),
            template=args.chat_template,
        )
    with model:
        cost = None if args.force else load_calibration(model)
        reused = cost is not None
        if cost is None:
            cost = calibrate(model, steps)
            path = save_calibration(model, cost)
        else:
            path = calibration_path(model)
    if args.json:
        print(json.dumps({"path": str(path), "reused": reused, "cost_model": cost.to_dict()}))
        return 0
    print("\n".join(summary_lines(cost)))
    print(
        f"{'already calibrated, reused' if reused else 'stored in'}: {path}"
        + (" (--force measures again)" if reused else "")
    )
    return 0


def cmd_cache(args, backend: Backend) -> int:
    from .embedding_cache import cache_dir, max_disk_bytes
    from .embedding_store import DiskStore

    store = DiskStore(cache_dir(args.dir), max_disk_bytes())
    if args.action == "clear":
        n, freed = store.clear()
        result = {"dir": str(store.root), "entries_deleted": n, "bytes_freed": freed}
        text = f"deleted {n} entries ({freed / 2**20:.1f} MiB) from {store.root}"
    else:
        result = store.info()
        text = (
            f"{result['dir']}: {result['entries']} entries, {result['bytes'] / 2**20:.1f} MiB "
            f"of {result['max_bytes'] / 2**20:.0f} MiB (least recently used are evicted beyond)"
        )
    print(json.dumps(result) if args.json else text)
    return 0


def cmd_quantize_mmproj(args, backend: Backend) -> int:
    from .images import load_image
    from .quantize_mmproj import run

    image = load_image(args.image) if args.image else None
    measure = not args.no_measure
    if measure and image is None:
        try:
            import skimage  # noqa: F401
        except ImportError:
            raise ValueError(
                "pass --image PHOTO (or pip install scikit-image for the default photo, or --no-measure)"
            ) from None
    steps = SlowSteps(not args.quiet and not args.json)
    with steps(f"quantizing {args.input} to {args.type}" + (" and measuring" if measure else "")):
        report = run(
            args.input,
            args.output,
            args.type,
            image=image,
            n_threads=args.threads,
            reps=args.reps,
            measure_it=measure,
            verbose=args.verbose,
        )
    print(json.dumps(report.to_dict()) if args.json else "\n".join(report.lines()))
    return 0


COMMANDS = {
    "run": cmd_run,
    "chat": cmd_chat,
    "info": cmd_info,
    "pull": cmd_pull,
    "presets": cmd_presets,
    "bench": cmd_bench,
    "cache": cmd_cache,
    "calibrate": cmd_calibrate,
    "quantize-mmproj": cmd_quantize_mmproj,
}
NATIVE_COMMANDS = ("run", "chat", "calibrate")  # the others load llama_cpp themselves when they need it


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
