"""The fuzz test's worker process: runs cases read from stdin, one JSON object per line.

For each case it prints "START <id>", runs it, then "DONE <id> <outcome>" where outcome is
"ok" or the name of a documented error (a ValueError or FastVEdgeError subclass) then " | " and
its message. Any other
exception prints "DONE <id> UNDOCUMENTED <type>: <message>". A crash (signal) or a hang shows
up in the parent as a START without its DONE. Clean models are loaded once and reused across
cases, so every error must also leave them working: after an error the worker checks that the
same model still answers (else "UNUSABLE").
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np

import fastv_edge as fe
from fastv_edge.errors import FastVEdgeError
from fastv_edge.images import RGBImage

DOCUMENTED = (ValueError, FastVEdgeError)
RUNTIME = dict(n_ctx=1024, n_threads=1)
PROMPT = "What is in the image?"
_loaded: dict = {}


def _image() -> RGBImage:
    rng = np.random.default_rng(3)
    return RGBImage(40, 32, rng.integers(0, 255, 40 * 32 * 3, dtype=np.uint8).tobytes(), "fuzz-photo")


def clean_model(text: str, mmproj: str | None):
    """A clean pair loaded once per worker and reused by every case that does not mutate it."""
    key = (text, mmproj)
    if key not in _loaded:
        stock = fe.PruneConfig(strategy="none")  # each request passes its own
        _loaded[key] = fe.load(text, mmproj, runtime=fe.RuntimeConfig(**RUNTIME), prune=stock, template="chatml")
    return _loaded[key]


def _prune(case: dict) -> fe.PruneConfig:
    return fe.PruneConfig(**case.get("prune", {"strategy": "none"}))


def op_load(case: dict) -> None:
    """A mutated text model or mmproj: load the pair, answer about an image."""
    runtime = fe.RuntimeConfig(**RUNTIME)
    with fe.load(case["text"], case["mmproj"], runtime=runtime, prune=_prune(case), template="chatml") as model:
        fe.generate(model, PROMPT, [_image()], max_tokens=2)


def op_image(case: dict) -> None:
    model = clean_model(case["text"], case["mmproj"])
    fe.generate(model, PROMPT, [case["image"]], max_tokens=2, prune=_prune(case))


def op_rgb(case: dict) -> None:
    nx, ny, length, kind = case["rgb"]
    raw = bytes(np.random.default_rng(length).integers(0, 255, length, dtype=np.uint8))
    data = {"bytes": raw, "bytearray": bytearray(raw), "memoryview": memoryview(raw), "str": "x" * length}.get(kind)
    data = [0] * length if kind == "list" else data
    img = RGBImage(nx, ny, data)
    fe.generate(clean_model(case["text"], case["mmproj"]), PROMPT, [img], max_tokens=2)


def op_template(case: dict) -> None:
    """A mutated chat template: given at load (parsed there), then two chat turns on the clean model."""
    runtime = fe.RuntimeConfig(**RUNTIME)
    with fe.load(case["text"], case["mmproj"], runtime=runtime, prune=_prune(case), template=case["template"]) as m:
        session = fe.ChatSession(m, max_tokens=2)
        session.ask(PROMPT, [_image()])
        session.ask("And now?")


def op_args(case: dict) -> None:
    model = clean_model(case["text"], case["mmproj"])
    group, kwargs = case["args"]["group"], case["args"]["kwargs"]
    if group == "prune":
        fe.generate(model, PROMPT, [_image()], max_tokens=2, prune=fe.PruneConfig(**kwargs))
    elif group == "sampling":
        fe.generate(model, PROMPT, [_image()], max_tokens=2, sampling=fe.SamplingConfig(**kwargs))
    else:
        fe.generate(model, PROMPT, [_image()], **kwargs)


OPS = {"model": op_load, "mmproj": op_load, "image": op_image, "rgb": op_rgb, "template": op_template, "args": op_args}


def _still_works(case: dict) -> bool:
    key = (case["text"], case["mmproj"])
    if key not in _loaded:
        return True  # the case loaded its own (mutated) model; nothing shared to check
    return bool(fe.generate(_loaded[key], "Hello", max_tokens=1, apply_template=False) is not None)


def run_case(case: dict) -> str:
    """The outcome of one case: 'ok', a documented error's type name, or UNDOCUMENTED/UNUSABLE."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            OPS[case["kind"]](case)
        return "ok"
    except DOCUMENTED as e:
        outcome = f"{type(e).__name__} | {str(e)[:300]}"
        if "\n" in str(e):
            return f"MULTILINE {type(e).__name__}: {str(e)[:300]!r}"
    except Exception as e:  # noqa: BLE001 - what the fuzz test is looking for
        return f"UNDOCUMENTED {type(e).__name__}: {str(e)[:300]!r}"
    try:
        return outcome if _still_works(case) else f"UNUSABLE after {outcome}"
    except Exception as e:  # noqa: BLE001
        return f"UNUSABLE after {outcome}: {type(e).__name__}: {str(e)[:200]!r}"


def main() -> int:
    for line in sys.stdin:
        case = json.loads(line)
        print(f"START {case['id']}", flush=True)
        print(f"DONE {case['id']} {run_case(case)}", flush=True)
    for model in _loaded.values():
        model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
