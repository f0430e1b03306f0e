"""The flags of `fastv-edge run` and `chat`, defined once, and what they turn into.

Each group is added by one function and read back by one `*_from_args` function, so a new
pruning flag or strategy is a change here and nowhere else. `Backend` is what the commands
call to load and generate: the native one, or a fake in the tests.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from .config import STRATEGIES, PruneConfig, RuntimeConfig, SamplingConfig
from .errors import PatchMissingError

DEFAULT_LAYER = PruneConfig().layer


def add_model_args(p: argparse.ArgumentParser) -> None:
    """-m, --mmproj and the llama.cpp context flags."""
    p.add_argument("-m", "--model", required=True, help="text model GGUF, or a preset name (see `presets`)")
    p.add_argument("--mmproj", help="mmproj (vision projector) GGUF; default: the preset's")
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context size in tokens (default 4096)")
    p.add_argument(
        "-t",
        "--threads",
        type=int,
        help="CPU threads of decode, prompt (batch) and the vision encoder alike (default: the physical cores)",
    )
    p.add_argument("-b", "--batch-size", type=int, default=512, help="logical batch size (default 512)")
    p.add_argument("-ub", "--ubatch-size", type=int, default=512, help="physical batch size (default 512)")
    p.add_argument("-fa", "--flash-attn", action="store_true", help="use flash attention")
    p.add_argument("--chat-template", help="chat template name (see fastv_edge/data/templates) or .jinja file")
    add_image_token_args(p)
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="encode every image: neither read nor write the image-embedding cache (see `fastv-edge cache info`)",
    )
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def add_image_token_args(p: argparse.ArgumentParser) -> None:
    """--image-max-tokens and --image-min-tokens (run, chat and bench)."""
    p.add_argument(
        "--image-max-tokens",
        type=int,
        metavar="N",
        help="at most N tokens per image: mtmd downscales larger images (dynamic-resolution projectors such as "
        "Qwen2/2.5/3-VL; fixed-resolution ones like LLaVA-1.5 and Gemma 3 ignore it, with a warning)",
    )
    p.add_argument(
        "--image-min-tokens",
        type=int,
        metavar="N",
        help="at least N tokens per image: mtmd upscales smaller images (dynamic-resolution projectors only)",
    )


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """-n, --temp, --seed, --system."""
    p.add_argument("-n", "--n-predict", type=int, default=256, help="max tokens to generate (default 256)")
    p.add_argument("--temp", type=float, default=0.0, help="temperature; 0 = greedy (default 0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, also the 'random' strategy's (default 0)")
    p.add_argument("--system", help="system message")


def add_prune_args(p: argparse.ArgumentParser) -> None:
    """-k, -r | --keep and --strategy: the pruning flags."""
    p.add_argument(
        "-k",
        "--layer",
        type=int,
        help=f"K: layers that see every image token; 0 = select before the LLM "
        f"(default {DEFAULT_LAYER} for fastv/random, 0 for divprune/dart/cdpruner)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("-r", "--drop-ratio", type=float, help="R: share of image tokens dropped (default 0.5)")
    budget.add_argument("--keep", type=int, help="number of image tokens kept (instead of -r)")
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="fastv (default: attention at layer K-1), divprune | dart | cdpruner (from the image embeddings, "
        "before the LLM), random (seeded baseline, before the LLM with -k 0), none (stock llama.cpp); "
        "with --ttft-budget the one strategy the plan may use (default: the planner chooses)",
    )
    p.add_argument(
        "--pre",
        metavar="STRATEGY:BUDGET",
        help="a first stage before the LLM, then --strategy at -k K on what is left, e.g. --pre divprune:192 "
        "--keep 64 (budget: a count, or r=RATIO; cdpruner also takes theta=T)",
    )
    p.add_argument(
        "--relevance-weight",
        type=float,
        default=0.5,
        help="cdpruner's theta in [0, 1): weight of relevance to the prompt against diversity (default 0.5)",
    )
    add_budget_arg(p)


def add_budget_arg(p: argparse.ArgumentParser, repeatable: bool = False) -> None:
    """--ttft-budget SECONDS (run, chat; bench takes several)."""
    p.add_argument(
        "--ttft-budget",
        type=float,
        metavar="SECONDS",
        action="append" if repeatable else "store",
        help="time to first token to plan for: the image-token cap, strategy and keep count that keep the most "
        "image tokens within it, from this machine's calibration (`fastv-edge calibrate`; measured first when "
        "missing)" + (" (repeatable)" if repeatable else ""),
    )


def add_output_args(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    """--json, --quiet, --debug."""
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quiet", action="store_true", help="no progress lines or statistics on stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def prune_from_args(args) -> PruneConfig:
    """PruneConfig from the -k/-r/--keep/--strategy/--seed flags."""
    return PruneConfig(
        layer=args.layer,  # None: the strategy's default
        drop_ratio=args.drop_ratio,
        keep=args.keep,
        strategy=args.strategy or ("none" if getattr(args, "ttft_budget", None) and not args.pre else "fastv"),
        seed=args.seed,
        pre=getattr(args, "pre", None),
        relevance_weight=getattr(args, "relevance_weight", 0.5),
    )


def budget_family(args) -> PruneConfig | None:
    """With --ttft-budget: the strategy the planner may use (None: its own choice).

    Raises:
        ValueError: -r or --keep with --ttft-budget (the planner chooses the keep count).
    """
    given = [flag for flag, value in (("-r", args.drop_ratio), ("--keep", args.keep)) if value is not None]
    if given:
        raise ValueError(
            f"{' and '.join(given)} with --ttft-budget: the planner chooses how many image tokens to keep; "
            "drop one or the other (--strategy, -k and --pre still narrow the plan)"
        )
    if args.strategy is None and getattr(args, "pre", None) is None:
        return None
    return prune_from_args(args)


def ignored_prune_flags(args) -> list[str]:
    """Pruning flags given with --strategy none, which runs stock llama.cpp and reads none of them."""
    if args.strategy != "none":
        return []
    given = {"-k": args.layer, "-r": args.drop_ratio, "--keep": args.keep}
    return [flag for flag, value in given.items() if value is not None]


def runtime_from_args(args) -> RuntimeConfig:
    """RuntimeConfig from -c/-t/-b/-ub/-fa/--verbose/--image-min-tokens/--image-max-tokens/--no-cache."""
    return RuntimeConfig(
        n_ctx=args.ctx_size,
        n_threads=args.threads,
        n_batch=args.batch_size,
        n_ubatch=args.ubatch_size,
        flash_attn=args.flash_attn,
        verbose=args.verbose,
        image_min_tokens=getattr(args, "image_min_tokens", None),
        image_max_tokens=getattr(args, "image_max_tokens", None),
        embedding_cache=not getattr(args, "no_cache", False),
    )


def sampling_from_args(args) -> SamplingConfig:
    """SamplingConfig from --temp/--seed."""
    return SamplingConfig(temp=args.temp, seed=args.seed)


@dataclass(frozen=True)
class Backend:
    """What the commands call: load(model, mmproj, runtime=, prune=, template=) -> Model,
    stream_generate(model, prompt, images, **kw) -> responses, chat_session(model, **kw),
    calibration(model, progress) -> the stored (or just measured) cost model."""

    load: Callable
    stream_generate: Callable
    chat_session: Callable
    calibration: Callable


def calibration_announced(model, progress):
    """budget.ensure_calibration, saying first that a missing calibration is measured now (and how long it takes)."""
    from .budget import ensure_calibration
    from .calibration_store import load_calibration
    from .console import note

    if load_calibration(model) is None:
        note(
            f"no calibration of this model with {model.runtime.threads} thread(s) on this machine yet: measuring it "
            "first (about a minute on a 2-7B model; `fastv-edge calibrate` does it ahead of time)"
        )
    return ensure_calibration(model, progress)[0]


def native_backend() -> Backend:
    """The real thing: llama-cpp-python with the patched library.

    Raises:
        PatchMissingError: llama-cpp-python is not installed or its library does not load,
            naming the command that installs the patched build.
    """
    from .native_build import install_command

    try:
        from .chat import ChatSession
        from .generate import stream_generate
        from .model import load
    except ImportError as e:
        if e.name != "llama_cpp":
            raise
        raise PatchMissingError(
            f"llama-cpp-python is not installed; install the patched build: {install_command()}"
        ) from e
    except (OSError, RuntimeError) as e:  # llama_cpp found, libllama not loadable
        raise PatchMissingError(
            f"llama-cpp-python's library does not load ({e}); rebuild it: {install_command()}"
        ) from e
    return Backend(
        load=load, stream_generate=stream_generate, chat_session=ChatSession, calibration=calibration_announced
    )


def load_from_args(args, steps, backend: Backend):
    """Load the model the common flags name; warn about flags that will be ignored and about
    a context size llama.cpp rounded.

    Args:
        args: parsed `run` or `chat` arguments.
        steps: progress hook (console.SlowSteps).
        backend: from native_backend() (or a fake).

    Returns:
        The loaded Model.
    """
    from .console import warn

    prune = prune_from_args(args)
    ignored = ignored_prune_flags(args)
    if ignored and not args.quiet:
        warn(f"{' and '.join(ignored)} ignored: --strategy none runs stock llama.cpp, which prunes nothing")
    runtime = runtime_from_args(args)
    with steps(f"loading {args.model}"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # e.g. an image-token cap the projector ignores: one line, not a traceback
        model = backend.load(args.model, args.mmproj, runtime=runtime, prune=prune, template=args.chat_template)
    for w in caught if not args.quiet else ():
        warn(str(w.message))  # one line, like every other message of the CLI
    if model.n_ctx != args.ctx_size and not args.quiet:
        warn(f"llama.cpp rounded the context size -c {args.ctx_size} to {model.n_ctx} tokens")
    return model
