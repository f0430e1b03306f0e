"""fastv-edge: FastV visual-token pruning for llama.cpp vision-language models.

Commands:
  run      answer one prompt about images, streaming, then one line of statistics
  chat     interactive chat (/image PATH, /reset, /stats, /quit); works with piped stdin
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
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict

from .config import STRATEGIES, PruneConfig, RuntimeConfig, SamplingConfig
from .errors import FastVEdgeError


class SlowSteps:
    """Progress hook: prints a step on stderr only if it is still running after `after` s."""

    def __init__(self, enabled: bool, after: float = 1.0, stream=None):
        self.enabled = enabled
        self.after = after
        self.stream = stream or sys.stderr

    @contextmanager
    def __call__(self, message: str):
        if not self.enabled:
            yield
            return
        shown = threading.Event()

        def show():
            shown.set()
            print(f"{message} ...", file=self.stream, flush=True)

        timer = threading.Timer(self.after, show)
        t0 = time.perf_counter()
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            if shown.is_set():
                print(f"{message}: done in {time.perf_counter() - t0:.1f} s", file=self.stream, flush=True)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, help="text model GGUF, or a preset name (see `presets`)")
    p.add_argument("--mmproj", help="mmproj (vision projector) GGUF; default: the preset's")
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context size in tokens (default 4096)")
    p.add_argument("-t", "--threads", type=int, help="CPU threads (default: half the cores)")
    p.add_argument("-b", "--batch-size", type=int, default=512, help="logical batch size (default 512)")
    p.add_argument("-ub", "--ubatch-size", type=int, default=512, help="physical batch size (default 512)")
    p.add_argument("-fa", "--flash-attn", action="store_true", help="use flash attention")
    p.add_argument("--chat-template", help="chat template name (fastv_edge/data/templates) or .jinja file")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def _add_gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--n-predict", type=int, default=256, help="max tokens to generate (default 256)")
    p.add_argument("--temp", type=float, default=0.0, help="temperature; 0 = greedy (default 0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, also the 'random' strategy's (default 0)")
    p.add_argument("--system", help="system message")
    p.add_argument("-k", "--layer", type=int, default=2, help="FastV K: layers that see every image token (default 2)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("-r", "--drop-ratio", type=float, help="FastV R: share of image tokens dropped (default 0.5)")
    budget.add_argument("--keep", type=int, help="number of image tokens kept (instead of -r)")
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="fastv",
        help="fastv (default), random (seeded baseline) or none (stock llama.cpp)",
    )


def _add_output_args(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quiet", action="store_true", help="no progress lines or statistics on stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of `fastv-edge` (its module docstring is the description)."""
    parser = argparse.ArgumentParser(
        prog="fastv-edge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="answer one prompt about images")
    _add_model_args(run)
    run.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    run.add_argument("-p", "--prompt", required=True, help="the question ('-' reads stdin)")
    run.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    _add_gen_args(run)
    _add_output_args(run)
    chat = sub.add_parser("chat", help="interactive chat with images")
    _add_model_args(chat)
    chat.add_argument("--image", action="append", default=[], help="image(s) for the first message")
    _add_gen_args(chat)
    _add_output_args(chat, json_flag=False)
    info = sub.add_parser("info", help="model metadata and FastV support")
    info.add_argument("-m", "--model", required=True, help="text model GGUF or preset name")
    info.add_argument("--mmproj", help="mmproj GGUF (adds the image tokens per image)")
    _add_output_args(info)
    pull = sub.add_parser("pull", help="download a preset's files into the Hugging Face cache")
    pull.add_argument("name", help="preset name")
    pull.add_argument("--cache-dir", help="hub cache directory (default: huggingface_hub's)")
    _add_output_args(pull, json_flag=False)
    presets = sub.add_parser("presets", help="list model presets")
    _add_output_args(presets)
    from .bench.cli import add_parser as add_bench_parser

    add_bench_parser(sub)
    return parser


def prune_from_args(args) -> PruneConfig:
    """PruneConfig from the -k/-r/--keep/--strategy/--seed flags."""
    return PruneConfig(
        layer=args.layer, drop_ratio=args.drop_ratio, keep=args.keep, strategy=args.strategy, seed=args.seed
    )


def load_from_args(args, steps: SlowSteps):
    """Load the model named by the common flags."""
    from .model import load

    runtime = RuntimeConfig(
        n_ctx=args.ctx_size,
        n_threads=args.threads,
        n_batch=args.batch_size,
        n_ubatch=args.ubatch_size,
        flash_attn=args.flash_attn,
        verbose=args.verbose,
    )
    prune = prune_from_args(args)
    with steps(f"loading {args.model}"):
        return load(args.model, args.mmproj, runtime=runtime, prune=prune, template=args.chat_template)


def format_stats(r, prune: PruneConfig) -> str:
    """One line of request statistics."""
    pruning = f"kept {r.n_kept}/{r.n_image_tokens} image tokens ({prune.describe()})"
    return (
        f"[{pruning} | encode {r.encode_ms:.0f} ms | prefill {r.prefill_ms:.0f} ms "
        f"(shallow {r.shallow_ms:.0f} + deep {r.deep_ms:.0f}) | ttft {r.ttft_ms:.0f} ms | "
        f"{r.decode_tps:.1f} tok/s | FLOPs ratio {r.flops_ratio:.2f}]"
    )


def cmd_run(args) -> int:
    from .generate import stream_generate

    steps = SlowSteps(not args.quiet and not args.json)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    with load_from_args(args, steps) as model:
        sampling = SamplingConfig(temp=args.temp, seed=args.seed)
        last, text = None, []
        for r in stream_generate(
            model,
            prompt,
            args.image,
            prune=model.prune,
            max_tokens=args.n_predict,
            sampling=sampling,
            system=args.system,
            progress=steps,
            apply_template=not args.raw,
        ):
            last = r
            text.append(r.text)
            if not args.json:
                print(r.text, end="", flush=True)
        if args.json:
            stats = {k: v for k, v in asdict(last).items() if k not in ("text", "token")}
            print(json.dumps({"text": "".join(text), **stats, "prune": asdict(model.prune)}))
        else:
            print()
            if not args.quiet:
                print(format_stats(last, model.prune), file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    from .info import model_report

    report = model_report(args.model, args.mmproj)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>22}: {value}")
    return 0


def cmd_pull(args) -> int:
    from .hub import pull

    model_path, mmproj_path = pull(args.name, cache_dir=args.cache_dir, progress=not args.quiet)
    print(f"model:  {model_path}\nmmproj: {mmproj_path}")
    return 0


def cmd_presets(args) -> int:
    from .templates import list_presets

    presets = list_presets()
    if args.json:
        print(json.dumps([asdict(p) for p in presets], indent=2))
        return 0
    for p in presets:
        print(f"{p.name:<14} {p.architecture:<8} {p.repo}  ({p.description})")
    return 0


def cmd_chat(args) -> int:
    from .chat_loop import chat_loop

    return chat_loop(args)


def cmd_bench(args) -> int:
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of `fastv-edge` (also `python -m fastv_edge`).

    Args:
        argv: arguments without the program name (default: sys.argv[1:]).

    Returns:
        The exit code: 0 on success, 1 on an error, 130 on Ctrl-C.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (FastVEdgeError, ValueError, OSError) as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"fastv-edge: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
