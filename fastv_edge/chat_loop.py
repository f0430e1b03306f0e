"""`fastv-edge chat`: the interactive loop, for a terminal or piped stdin.

Commands: /image PATH (attach to the next message), /reset, /stats, /quit (or end of input).
Ctrl-C during an answer stops that answer and keeps the session; at the prompt it clears
the line. Errors in a turn are printed and the session goes on.
"""

from __future__ import annotations

import sys
from contextlib import closing

from .cli import SlowSteps, format_stats, load_from_args
from .config import SamplingConfig
from .errors import FastVEdgeError
from .images import load_image

HELP = "commands: /image PATH, /reset, /stats, /quit"


def _stats(session) -> str:
    if session.last is None:
        return f"[no answer yet | context {session.n_used}/{session.model.n_ctx} tokens]"
    return f"{format_stats(session.last, session.prune)} [context {session.n_used}/{session.model.n_ctx} tokens]"


def _command(line: str, session, pending: list) -> bool:
    """Run a /command; returns False when the loop should end."""
    cmd, _, rest = line.partition(" ")
    if cmd in ("/quit", "/exit"):
        return False
    if cmd == "/reset":
        session.reset()
        pending.clear()
        print("[conversation cleared]", flush=True)
    elif cmd == "/stats":
        print(_stats(session), flush=True)
    elif cmd == "/image":
        img = load_image(rest.strip())  # ValueError -> printed by the loop
        pending.append(img)
        print(f"[image attached: {img.name} ({img.nx}x{img.ny})]", flush=True)
    else:
        print(f"[unknown command {cmd}; {HELP}]", flush=True)
    return True


def _answer(session, text: str, pending: list) -> None:
    try:
        with closing(session.send(text, list(pending))) as stream:
            for r in stream:
                print(r.text, end="", flush=True)
        print(flush=True)
    except KeyboardInterrupt:
        print("\n[interrupted]", flush=True)
    finally:
        pending.clear()


def chat_loop(args) -> int:
    """Run the chat loop until /quit or end of input.

    Args:
        args: parsed `fastv-edge chat` arguments.

    Returns:
        The exit code (0).
    """
    from .chat import ChatSession

    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:  # Windows
            pass
    steps = SlowSteps(not args.quiet)
    with load_from_args(args, steps) as model:
        session = ChatSession(
            model,
            prune=model.prune,
            sampling=SamplingConfig(temp=args.temp, seed=args.seed),
            system=args.system,
            max_tokens=args.n_predict,
            progress=steps,
        )
        pending = [load_image(p) for p in args.image]
        if interactive:
            print(f"fastv-edge chat ({model.prune.describe()}); {HELP}", flush=True)
        while True:
            try:
                line = input("> " if interactive else "").strip()
            except EOFError:
                break
            except KeyboardInterrupt:
                print(flush=True)
                continue
            try:
                if line.startswith("/"):
                    if not _command(line, session, pending):
                        break
                elif line:
                    _answer(session, line, pending)
            except (FastVEdgeError, ValueError, OSError) as e:
                print(f"fastv-edge: error: {e}", file=sys.stderr, flush=True)
    return 0
