"""Drive a fuzz campaign: seeded cases over the tiny GGUFs, mmprojs, images, templates and API arguments.

    python tests/fuzz_campaign.py --iterations 2000 --seed 7 --out fuzz-out   # a local campaign
    FASTV_EDGE_FUZZ_ITERATIONS=2000 pytest tests/test_fuzz.py                 # the same through pytest

Case i of seed s is made from numpy's Generator seeded by (s, i) alone: a failure is replayed
with --only i. Cases run in worker subprocesses (fuzz_worker.py), several per worker to
amortise its start-up; a worker that dies by a signal, or does not finish a case within the
timeout, is replaced, and the case it was running is run again alone in a fresh worker to
confirm that it, and not an earlier case, is the cause. A case passes when it ends with "ok"
or a documented error (ValueError, FastVEdgeError).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from fuzz_mutators import (  # noqa: E402 - tests/ is not a package
    api_arguments,
    base_images,
    gguf_layout,
    mutate_gguf,
    mutate_image,
    mutate_template,
    rgb_arguments,
)

KINDS = {"model": 0.2, "mmproj": 0.3, "image": 0.15, "rgb": 0.07, "template": 0.18, "args": 0.1}
QWEN3VL = dict(out_std=0.5, n_layer=4, deepstack_layers=(0, 1, 2))  # test_families_mtmd's tiny qwen3vl projector
TIMEOUT = 180.0  # seconds per case: most take a fraction of one, a big image on a busy machine ten
PRUNES = ({"strategy": "none"}, {"strategy": "fastv", "layer": 2}, {"strategy": "divprune", "keep": 8})
MMPROJ_OF = {"llama": "mlp", "qwen2vl": "qwen2vl_merger", "gemma3": "gemma3"}  # 'model' cases: the text's own


@dataclass
class Bases:
    """The clean inputs the cases mutate."""

    pairs: dict[str, tuple[str, str]]  # projector type -> (text model, mmproj)
    text_models: dict[str, str]  # kind -> text GGUF mutated by 'model' cases
    images: dict[str, bytes]
    templates: list[str]
    layouts: dict[str, object] = field(default_factory=dict)

    def layout(self, path: str):
        if path not in self.layouts:
            self.layouts[path] = gguf_layout(Path(path).read_bytes())
        return self.layouts[path]


def make_bases(tiny_dir: Path) -> Bases:
    """Write (or reuse) the tiny models of every projector type the project uses."""
    import skimage.data
    from gguf_edit import make_idefics3

    from fastv_edge.templates import load_template, template_names
    from fastv_edge.testing.make_tiny import make_tiny
    from fastv_edge.testing.make_tiny_archs import (
        make_tiny_gemma3,
        make_tiny_gemma4,
        make_tiny_qwen2vl,
        make_tiny_qwen3vl,
    )
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj
    from fastv_edge.testing.mmproj_gemma4v import make_tiny_gemma4v_mmproj

    tiny = make_tiny(tiny_dir, seed=0, weight_type="f32")
    q2, g3, g4 = make_tiny_qwen2vl(tiny_dir), make_tiny_gemma3(tiny_dir), make_tiny_gemma4(tiny_dir, "e2b")
    q3 = make_tiny_qwen3vl(tiny_dir)
    gemma3_mm = make_tiny_vision_mmproj(tiny_dir, "gemma3", 64, out_std=2.5)[0]
    idefics3 = tiny_dir / "tiny-idefics3-mmproj.gguf"
    if not idefics3.is_file():
        make_idefics3(gemma3_mm, idefics3, 64)
    pairs = {
        "mlp": (tiny.llama_path, tiny.mmproj_path),
        "qwen2vl_merger": (q2.path, make_tiny_vision_mmproj(tiny_dir, "qwen2vl_merger", 64, out_std=0.5)[0]),
        "gemma3": (g3.path, gemma3_mm),
        "gemma4v": (g4.path, make_tiny_gemma4v_mmproj(tiny_dir, 64)[0]),
        "qwen3vl_merger": (q3.path, make_tiny_vision_mmproj(tiny_dir, "qwen3vl_merger", 64, **QWEN3VL)[0]),
        "idefics3": (tiny.llama_path, idefics3),
    }
    pairs = {k: (str(a), str(b)) for k, (a, b) in pairs.items()}
    texts = {"llama": str(tiny.llama_path), "qwen2vl": str(q2.path), "gemma3": str(g3.path)}
    tricky = "{% for m in messages %}{{ m['role'] }}{% for p in m['content'] %}{{ p['text'] }}{% endfor %}{% endfor %}"
    templates = [load_template(n) for n in template_names()] + [tricky]
    return Bases(pairs, texts, base_images(skimage.data.astronaut()), templates)


def make_case(bases: Bases, seed: int, index: int, workdir: Path) -> dict:
    """Case `index` of campaign `seed`: its kind, the files it needs (written to workdir) and what it mutates."""
    rng = np.random.default_rng([seed, index])
    kind = str(rng.choice(list(KINDS), p=list(KINDS.values())))
    projector = str(rng.choice(list(bases.pairs)))
    text, mmproj = bases.pairs[projector]
    case = {"id": index, "kind": kind, "text": text, "mmproj": mmproj}
    if kind not in ("model", "mmproj") and projector == "idefics3":  # its vocabulary check fails every request
        projector = "mlp"
        text, mmproj = bases.pairs[projector]
        case.update(text=text, mmproj=mmproj)
    fastv = projector in ("mlp", "qwen2vl_merger", "gemma3")  # the others select before the LLM only
    case["prune"] = PRUNES[int(rng.integers(len(PRUNES)))] if fastv else PRUNES[2 * int(rng.integers(2))]
    if kind == "model":
        arch = str(rng.choice(list(bases.text_models)))
        src = bases.text_models[arch]
        data, what = mutate_gguf(Path(src).read_bytes(), bases.layout(src), rng)
        case["text"] = _write(workdir, index, "model.gguf", data)
        case["mmproj"] = bases.pairs[MMPROJ_OF[arch]][1]
        case["prune"] = PRUNES[int(rng.integers(len(PRUNES)))]
        case["what"] = f"text model {Path(src).name}: {what}"
    elif kind == "mmproj":
        data, what = mutate_gguf(Path(mmproj).read_bytes(), bases.layout(mmproj), rng)
        case["mmproj"] = _write(workdir, index, "mmproj.gguf", data)
        case["what"] = f"mmproj {projector}: {what}"
    elif kind == "image":
        data, what = mutate_image(bases.images, rng)
        case["image"], case["what"] = _write(workdir, index, "image", data), f"image: {what}"
    elif kind == "rgb":
        case["rgb"], what = rgb_arguments(rng)
        case["what"] = what
    elif kind == "template":
        source, what = mutate_template(bases.templates, rng)
        path = workdir / f"case{index}-template.jinja"
        path.write_text(source, encoding="utf-8", errors="surrogatepass")
        case["template"], case["what"] = str(path), f"template: {what}"
    else:
        case["args"], what = api_arguments(rng)
        case["what"] = f"arguments: {what}"
    if kind not in ("model", "mmproj"):
        case["what"] = f"[{projector} pair, {case['prune']['strategy']}] {case['what']}"
    return case


def _write(workdir: Path, index: int, name: str, data: bytes) -> str:
    path = workdir / f"case{index}-{name}"
    path.write_bytes(data)
    return str(path)


class Worker:
    """A fuzz_worker.py subprocess and a thread that reads its stdout into a queue."""

    def __init__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS / "fuzz_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: killed with everything it started
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # end of output: the worker is gone

    def run(self, case: dict, timeout: float) -> str:
        """The case's outcome; 'CRASH <signal>' or 'HANG' when the worker died or stopped answering."""
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                return "HANG"
            if line is None:
                code = self.proc.wait()
                return f"CRASH {signal.Signals(-code).name}" if code < 0 else f"CRASH exit code {code}"
            if line.startswith(f"DONE {case['id']} "):
                return line.split(" ", 2)[2]

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()


BAD = ("CRASH", "HANG", "UNDOCUMENTED", "UNUSABLE", "MULTILINE")


@dataclass
class Report:
    seed: int
    cases: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)  # (kind, outcome) -> count
    failures: list[dict] = field(default_factory=list)
    examples: dict = field(default_factory=dict)  # (kind, error type) -> a few messages

    def summary(self) -> str:
        kinds = Counter()
        for (kind, _), n in self.outcomes.items():
            kinds[kind] += n
        ok, errors = 0, Counter()
        for (_, outcome), n in self.outcomes.items():
            if outcome == "ok":
                ok += n
            elif not outcome.startswith(BAD):
                errors[outcome] += n
        return (
            f"fuzz seed {self.seed}: {self.cases} cases in {self.seconds:.0f} s ({dict(kinds)}); {ok} ran, "
            f"{sum(errors.values())} documented errors {dict(errors)}, {len(self.failures)} failures"
        )


def campaign(bases: Bases, iterations: int, seed: int, workdir: Path, only: list[int] | None = None) -> Report:
    """Run cases 0..iterations-1 (or `only`) of `seed`; failures are re-run alone to confirm them."""
    report, worker, start = Report(seed), None, time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    for index in only if only is not None else range(iterations):
        case = make_case(bases, seed, index, workdir)
        worker = worker or Worker()
        outcome = worker.run(case, TIMEOUT)
        if outcome.startswith(("CRASH", "HANG")):
            worker = None
            alone = Worker()
            outcome = f"{outcome}; alone: {alone.run(case, TIMEOUT)}"
            alone.close()
        report.cases += 1
        outcome, _, message = outcome.partition(" | ")
        report.outcomes[(case["kind"], outcome.split(":")[0] if outcome.startswith(BAD) else outcome)] += 1
        if message:
            report.examples.setdefault(f"{case['kind']} {outcome}", []).append(f"{case['what'][:100]} -> {message}")
        if outcome.startswith(BAD):
            report.failures.append({**case, "outcome": outcome})
        else:
            for path in workdir.glob(f"case{index}-*"):
                path.unlink()
    if worker is not None:
        worker.close()
    report.seconds = time.monotonic() - start
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, action="append", help="run only these case indices (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"), help="models, failing inputs, report.json")
    args = parser.parse_args(argv)
    bases = make_bases(args.out / "models")
    report = campaign(bases, args.iterations, args.seed, args.out / "cases", args.only)
    print(report.summary())
    for failure in report.failures:
        print(f"  case {failure['id']} ({failure['kind']}): {failure['what']} -> {failure['outcome']}")
    data = {"summary": report.summary(), "outcomes": {f"{k} {o}": n for (k, o), n in report.outcomes.items()}}
    data["examples"] = {k: v[:: max(1, len(v) // 8)][:8] for k, v in report.examples.items()}
    (args.out / "report.json").write_text(json.dumps({**data, "failures": report.failures}, indent=1, default=str))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
