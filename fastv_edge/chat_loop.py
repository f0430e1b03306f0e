"""`fastv-edge chat`: the interactive loop, for a terminal or piped stdin.

Commands: /image PATH (attach to the next message), /stats, /reset, /help, /quit (or end of
input). Ctrl-C during an answer stops that answer and keeps the session; at the prompt it
clears the line. Errors in a turn are printed and the session goes on.
"""

from __future__ import annotations

import sys
from contextlib import closing
from dataclasses import dataclass

from .cli_args import Backend, budget_family, load_from_args, sampling_from_args
from .console import SlowSteps, StepLines, error, format_stats
from .errors import FastVEdgeError
from .images import load_image

COMMANDS = {
    "/image PATH": "attach an image to the next message",
    "/stats": "statistics of the last answer and of the whole conversation",
    "/reset": "forget the conversation",
    "/help": "this list",
    "/quit": "leave (also /exit or end of input)",
}
HELP = "commands: " + ", ".join(COMMANDS)


@dataclass
class ConversationStats:
    """Totals over the answered turns since the last /reset."""

    turns: int = 0
    images: int = 0
    n_image_tokens: int = 0
    n_kept: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    encode_ms: float = 0.0
    prefill_ms: float = 0.0

    def add(self, last, n_images: int) -> None:
        """Count one turn from its final response."""
        self.turns += 1
        self.images += n_images
        self.n_image_tokens += last.n_image_tokens
        self.n_kept += last.n_kept
        self.prompt_tokens += last.prompt_tokens
        self.generation_tokens += last.generation_tokens
        self.encode_ms += last.encode_ms
        self.prefill_ms += last.prefill_ms

    def describe(self) -> str:
        """One line, e.g. '[conversation: 2 turns, 1 image | kept 32/64 image tokens | ...]'."""
        return (
            f"[conversation: {self.turns} turns, {self.images} images | kept {self.n_kept}/{self.n_image_tokens} "
            f"image tokens | {self.prompt_tokens} prompt + {self.generation_tokens} generated tokens | "
            f"encode {self.encode_ms:.0f} ms | prefill {self.prefill_ms:.0f} ms]"
        )


class ChatLoop:
    """The /commands and turns of one chat, around a session from the backend."""

    def __init__(self, session, out=None):
        self.session = session
        self.out = out or sys.stdout
        self.pending: list = []
        self.last = None
        self.totals = ConversationStats()

    def say(self, text: str, end: str = "\n") -> None:
        print(text, end=end, file=self.out, flush=True)

    def stats(self) -> str:
        s = self.session
        context = f"[context {s.n_used}/{s.model.n_ctx} tokens]"
        if self.last is None:
            return f"[no answer yet] {context}"
        prune = self.last.plan.prune_config() if self.last.plan is not None else s.prune
        return f"{format_stats(self.last, prune, s.model.threads)}\n{self.totals.describe()} {context}"

    def command(self, line: str) -> bool:
        """Run a /command; returns False when the loop should end."""
        cmd, _, rest = line.partition(" ")
        if cmd in ("/quit", "/exit"):
            return False
        if cmd == "/reset":
            self.session.reset()
            self.pending.clear()
            self.last, self.totals = None, ConversationStats()
            self.say("[conversation cleared]")
        elif cmd == "/stats":
            self.say(self.stats())
        elif cmd == "/help":
            self.say("\n".join(f"  {name:<12} {what}" for name, what in COMMANDS.items()))
        elif cmd == "/image":
            img = load_image(rest.strip())  # ValueError -> printed by the loop
            self.pending.append(img)
            self.say(f"[image attached: {img.name} ({img.nx}x{img.ny})]")
        else:
            self.say(f"[unknown command {cmd}; {HELP}]")
        return True

    def answer(self, text: str) -> None:
        images, last = list(self.pending), None
        self.pending.clear()
        try:
            with closing(self.session.send(text, images)) as stream:
                for r in stream:
                    last = r
                    self.say(r.text, end="")
            self.say("")
        except KeyboardInterrupt:
            self.say("\n[interrupted]")
        finally:
            if last is not None:  # the turn reached the cache, interrupted or not
                self.last = last
                self.totals.add(last, len(images))

    def handle(self, line: str) -> bool:
        """One input line; returns False when the loop should end. Errors are printed, not raised."""
        try:
            if line.startswith("/"):
                return self.command(line)
            if line:
                self.answer(line)
        except (FastVEdgeError, ValueError, OSError) as e:
            error(str(e))
        return True


def chat_loop(args, backend: Backend) -> int:
    """Run the chat loop until /quit or end of input.

    Args:
        args: parsed `fastv-edge chat` arguments.
        backend: what loads the model and makes the session.

    Returns:
        The exit code (0).
    """
    interactive = sys.stdin.isatty()
    if hasattr(sys.stdin, "reconfigure"):  # a line in another encoding becomes one error, not the end of the chat
        sys.stdin.reconfigure(errors="surrogateescape")
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:  # Windows
            pass
    steps = SlowSteps(not args.quiet)
    budget = args.ttft_budget
    family = budget_family(args) if budget is not None else None
    with load_from_args(args, steps, backend) as model:
        if budget is not None:
            backend.calibration(model, StepLines(not args.quiet))
        session = backend.chat_session(
            model,
            prune=family if budget is not None else model.prune,
            sampling=sampling_from_args(args),
            system=args.system,
            max_tokens=args.n_predict,
            progress=steps,
            ttft_budget=budget,
        )
        loop = ChatLoop(session)
        loop.pending = [load_image(p) for p in args.image]
        if interactive:
            loop.say(f"fastv-edge chat ({model.prune.describe()}); {HELP}")
        while True:
            try:
                line = input("> " if interactive else "").strip()
            except EOFError:
                break
            except KeyboardInterrupt:
                loop.say("")
                continue
            if not loop.handle(line):
                break
    return 0
