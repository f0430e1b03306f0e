"""The `fastv-edge bench` subcommand: arguments and the command (heavy imports stay inside)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import STRATEGIES

DESCRIPTION = """\
Measure stock vs. pruned prefill on this machine: image encode, selection time, prefill phase 1
and 2, time to first token, decode tok/s, peak RSS, KV cells (occupied, hidden), N and kept, the
tokens ratio and the FLOPs ratio of the paper's eq. 5, and fidelity against the unpruned run
(argmax agreement, KL) for real weights. Strategies: fastv at each -k >= 1; divprune, dart and
cdpruner before the LLM (K=0) with the same budgets; random at each -k (0: before the LLM);
--pre STRATEGY:B1 adds two stages (that selection, then FastV at each -k on what it left).
Give several -m files (quantizations of one model) sharing one --mmproj; without --mmproj a
pseudo image of --pseudo-image-tokens embedding rows is used. Stock is always measured.

examples:
  fastv-edge bench --quick --out bench-quick
  fastv-edge bench -m m-q8_0.gguf -m m-q4_k_m.gguf --mmproj mmproj.gguf -r .5 -r .75 -r .9 --reps 3
  fastv-edge bench -m m.gguf --keep 192 --keep 64 --strategy fastv --strategy divprune --strategy dart \
      --strategy cdpruner --pre divprune:192 -t 1 --reps 3
  fastv-edge bench -m m.gguf --mmproj mmproj.gguf --image photo.jpg --ttft-budget 5 --ttft-budget 10 -t 1

With --ttft-budget the bench runs the TTFT planner instead of the grid: per image, stock and the plan
of each budget (or its refusal), printing the plan, the predicted and the measured time to first token.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    """Add `bench` to the subparsers of the fastv-edge CLI."""
    p = sub.add_parser(
        "bench",
        help="speed, memory and fidelity across budgets and quantizations",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-m", "--model", action="append", default=[], help="text GGUF (repeatable: quantizations)")
    p.add_argument("--mmproj", help="mmproj GGUF shared by every -m (else a pseudo image)")
    p.add_argument("--n-images", type=int, default=1, help="images per prompt (SmolVLM tiles: 17; default 1)")
    p.add_argument("--image", action="append", default=[], help="image file instead of the synthetic picture")
    p.add_argument(
        "--prompt",
        help="raw prompt with one media marker per image, '-' reads it from stdin (keeps a final newline, "
        "which $(...) would strip); default: a LLaVA-style prompt",
    )
    p.add_argument("--pseudo-image-tokens", type=int, default=576, help="rows of the pseudo image (default 576)")
    p.add_argument(
        "-k", "--layer", type=int, action="append", help="K values (repeatable; default 2; 0: random before the LLM)"
    )
    p.add_argument(
        "-r", "--drop-ratio", type=float, action="append", help="R values (default .5 .75 .9 unless --keep is given)"
    )
    p.add_argument("--keep", type=int, action="append", default=[], help="absolute budgets (repeatable)")
    p.add_argument(
        "--strategy",
        action="append",
        choices=[s for s in STRATEGIES if s != "none"],
        help="pruned strategies (repeatable; default fastv and random; stock is always run)",
    )
    p.add_argument(
        "--pre",
        action="append",
        default=[],
        metavar="STRATEGY:B1",
        help="two stages: this pre-LLM selection, then FastV at each -k and budget (repeatable, e.g. divprune:192)",
    )
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds, the first is the fidelity pass (default 1)")
    p.add_argument("-n", "--n-decode", type=int, default=32, help="decoded tokens per run, EOS ignored (default 32)")
    p.add_argument(
        "-t",
        "--threads",
        type=int,
        help="CPU threads for prefill and decode (default 2; --quick: 1, immune to busy cores)",
    )
    p.add_argument("-c", "--ctx-size", type=int, default=2048, help="context size (default 2048)")
    p.add_argument("-b", "--batch-size", type=int, default=2048, help="logical batch (default 2048)")
    p.add_argument("-ub", "--ubatch-size", type=int, default=512, help="physical batch (default 512)")
    p.add_argument("-fa", "--flash-attn", action="store_true", help="flash attention")
    from ..cli_args import add_budget_arg, add_image_token_args

    add_image_token_args(p)
    add_budget_arg(p, repeatable=True)
    p.add_argument("--no-fidelity", action="store_true", help="skip the agreement/KL pass")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots")
    p.add_argument("--quick", action="store_true", help="tiny models and a small grid (< 2 min): checks the harness")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder (default bench-results)")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def _settings(args):
    from .grid import BenchSettings

    return BenchSettings(
        layers=tuple(args.layer or (2,)),
        drop_ratios=tuple(args.drop_ratio or (() if args.keep else (0.5, 0.75, 0.9))),
        keeps=tuple(args.keep),
        strategies=tuple(args.strategy or ("fastv", "random")),
        pre=tuple(args.pre),
        reps=args.reps,
        warmup=args.warmup,
        n_decode=args.n_decode,
        n_threads=args.threads or 2,
        n_ctx=args.ctx_size,
        n_batch=args.batch_size,
        n_ubatch=args.ubatch_size,
        flash_attn=args.flash_attn,
        image_min_tokens=args.image_min_tokens,
        image_max_tokens=args.image_max_tokens,
        fidelity=not args.no_fidelity,
    )


def cmd_bench(args) -> int:
    """Run the benchmark, print the table (or JSON) and where the files went."""
    from ..console import read_stdin
    from . import run_bench
    from .grid import ModelSpec
    from .quick import quick_models, quick_settings
    from .report import format_table

    if args.ttft_budget:
        from .budgets import cmd_budgets

        return cmd_budgets(args)
    notes = []
    if args.quick:
        if args.model:
            raise ValueError("--quick brings its own tiny models; drop -m or drop --quick")
        specs, notes = quick_models(args.out / "models")
        settings = quick_settings(args.threads or 1)
    else:
        if not args.model:
            raise ValueError("give at least one -m MODEL.gguf (or --quick)")
        n_images = len(args.image) or args.n_images
        prompt = read_stdin("the prompt read from stdin") if args.prompt == "-" else args.prompt
        specs = [
            ModelSpec(m, args.mmproj, n_images, args.pseudo_image_tokens, tuple(args.image), prompt) for m in args.model
        ]
        settings = _settings(args)
    plots = not args.no_plots
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("fastv-edge: matplotlib is not installed; no plots (pip install matplotlib)", file=sys.stderr)
            plots = False
    result = run_bench(
        specs,
        settings,
        args.out,
        progress=not args.quiet,
        plots=plots,
        notes=notes,
        command=["fastv-edge", *sys.argv[1:]] if sys.argv[1:2] == ["bench"] else None,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
        print(
            f"\nwrote {', '.join(Path(p).name for p in result['files'].values() if isinstance(p, str))}"
            f"{' + ' + str(len(result['files'].get('plots', []))) + ' plots' if plots else ''} to {args.out}"
        )
    return 0
