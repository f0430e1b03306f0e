"""Which ggml ops the patches add to a graph, and whether ggml's Metal backend supports each.

    python -m tools.metal_ops       # a table: ggml call -> op -> Metal's condition (or UNSUPPORTED)

Everything is read from text: the '+' lines of patches/*.patch for ggml_*() calls, the pinned
ggml/src/ggml.c for the op(s) each call creates (result->op = GGML_OP_*, followed through the
ggml_* helpers it calls, with the GGML_UNARY_OP_* / GGML_GLU_OP_* it passes), and the pinned
ggml/src/ggml-metal/ggml-metal-device.m for the case of each op in ggml_metal_device_supports_op().
An op is unsupported when it has no case there (the default returns false) or its case only
returns false. The case's condition (types, contiguity) is reported, not evaluated.
"""

from __future__ import annotations

import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from fastv_edge import native_build as nb

GGML_C = "vendor/llama.cpp/ggml/src/ggml.c"
METAL_DEVICE = "vendor/llama.cpp/ggml/src/ggml-metal/ggml-metal-device.m"
METAL_SUPPORTS_OP = "ggml_metal_device_supports_op"
# sub-op families: the op whose case holds a nested switch over them
SUB_OPS = {"GGML_UNARY_OP_": "GGML_OP_UNARY", "GGML_GLU_OP_": "GGML_OP_GLU"}

_DEF = re.compile(r"^(?:static\s+)?(?:inline\s+)?struct\s+ggml_tensor\s*\*\s*(ggml_\w+)\s*\(", re.M)
_LABEL = re.compile(r"\{|\}|\bcase\s+(\w+)\s*:|\bdefault\s*:")


@dataclass(frozen=True)
class OpUse:
    """One op a patch adds to a graph, with where it comes from and Metal's verdict."""

    call: str  # the ggml_* function the patch calls
    op: str  # GGML_OP_*
    sub_op: str | None  # GGML_UNARY_OP_* / GGML_GLU_OP_* for those families
    patches: tuple[str, ...]
    metal: str | None  # the supports_op case's code, None when Metal does not support the op


def read_pinned(names: tuple[str, ...] = (GGML_C, METAL_DEVICE)) -> dict[str, str]:
    """Text of files of the pinned sdist (downloaded with pip if not cached), by path under its root."""
    root = f"llama_cpp_python-{nb.LLAMA_CPP_PYTHON_VERSION}/"
    with tarfile.open(nb.ensure_sdist()) as tar:
        return {name: tar.extractfile(root + name).read().decode("utf-8", "replace") for name in names}


def _matching(text: str, start: int, open_ch: str, close_ch: str) -> int:
    """Index just past the bracket closing the one at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        depth += (text[i] == open_ch) - (text[i] == close_ch)
        if depth == 0:
            return i + 1
    raise ValueError(f"unbalanced {open_ch}{close_ch} from offset {start}")


def tensor_functions(ggml_c: str) -> dict[str, str]:
    """Body of every ggml.c function definition that returns struct ggml_tensor *, by name."""
    bodies = {}
    for m in _DEF.finditer(ggml_c):
        end_params = _matching(ggml_c, m.end() - 1, "(", ")")
        brace = re.compile(r"\s*\{").match(ggml_c, end_params)
        if brace:  # a definition, not a prototype
            bodies[m.group(1)] = ggml_c[brace.end() - 1 : _matching(ggml_c, brace.end() - 1, "{", "}")]
    return bodies


def _collect(func: str, bodies: dict[str, str], seen: frozenset) -> tuple[set[str], set[str]]:
    """GGML_OP_* assigned and sub-op constants named in func and the ggml_* helpers it calls."""
    body = bodies[func]
    ops = set(re.findall(r"->op\s*=\s*(GGML_OP_\w+)", body))
    subs = {s for s in re.findall(r"\b(GGML_(?:UNARY|GLU)_OP_\w+)", body) if not s.endswith("_COUNT")}
    for callee in set(re.findall(r"\b(ggml_\w+)\s*\(", body)) & bodies.keys() - seen:
        more_ops, more_subs = _collect(callee, bodies, seen | {callee})
        ops |= more_ops
        subs |= more_subs
    return ops, subs


def ops_of(func: str, bodies: dict[str, str]) -> set[tuple[str, str | None]]:
    """(op, sub op) pairs a call of func adds; {("GGML_OP_NONE", None)} for a leaf tensor or a rename."""
    ops, subs = _collect(func, bodies, frozenset({func}))
    pairs = set()
    for op in ops or {"GGML_OP_NONE"}:
        family = [s for s in subs if SUB_OPS.get(s[: s.index("_OP_") + 4]) == op]
        if family:
            pairs.update((op, s) for s in family)
        else:
            pairs.add((op, None))
    return pairs


def patch_calls(patches: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """ggml_*() calls on the lines the patches add (comments dropped), with the patches using each."""
    calls: dict[str, set[str]] = {}
    for name, text in patches.items():
        for line in text.splitlines():
            if line.startswith("+") and not line.startswith("+++"):
                code = line[1:].split("//")[0]
                for call in re.findall(r"\b(ggml_\w+)\s*\(", code):
                    calls.setdefault(call, set()).add(name)
    return {call: tuple(sorted(names)) for call, names in sorted(calls.items())}


def case_block(switch_body: str, label: str) -> str | None:
    """Code run for `case label:` of a switch body (its own braces stripped), None if no such case."""
    depth, groups, current = 0, [], None
    for m in _LABEL.finditer(switch_body):
        tok = m.group(0)
        if tok in "{}":
            depth += 1 if tok == "{" else -1
            continue
        if depth != 1:  # labels of nested switches
            continue
        if current and not switch_body[current["end"] : m.start()].strip():
            current["labels"].append(m.group(1))  # stacked labels share one block
        else:
            current = {"labels": [m.group(1)], "start": m.start()}
            groups.append(current)
        current["end"] = m.end()
    for i, g in enumerate(groups):
        if label in g["labels"]:
            stop = groups[i + 1]["start"] if i + 1 < len(groups) else len(switch_body) - 1
            return switch_body[g["end"] : stop].strip()
    return None


def _switch_on(code: str, subject: str) -> str | None:
    m = re.search(r"switch\s*\(\s*" + re.escape(subject) + r"\s*\)\s*\{", code)
    return code[m.end() - 1 : _matching(code, m.end() - 1, "{", "}")] if m else None


def metal_condition(metal_src: str, op: str, sub_op: str | None) -> str | None:
    """The code of Metal's supports_op case for op (and sub_op); None when Metal does not support it."""
    m = re.search(r"\bbool\s+" + METAL_SUPPORTS_OP + r"\s*\(", metal_src)
    if not m:
        raise ValueError(f"{METAL_SUPPORTS_OP}() not found in {METAL_DEVICE}: update tools/metal_ops.py")
    brace = metal_src.index("{", _matching(metal_src, m.end() - 1, "(", ")"))
    body = metal_src[brace : _matching(metal_src, brace, "{", "}")]
    block = case_block(_switch_on(body, "op->op") or "", op)
    if block is not None and sub_op is not None:
        getter = "ggml_get_unary_op(op)" if "_UNARY_" in sub_op else "ggml_get_glu_op(op)"
        block = case_block(_switch_on(block, getter) or "", sub_op)
    code = re.sub(r"//[^\n]*", "", block or "")
    if block is None or re.fullmatch(r"\s*return\s+false\s*;\s*", code):
        return None
    return " ".join(code.split())


def check(patches: dict[str, str], sources: dict[str, str]) -> list[OpUse]:
    """Every (call, op) the patches add, with Metal's condition; raises when a call cannot be followed."""
    bodies = tensor_functions(sources[GGML_C])
    uses = []
    for call, names in patch_calls(patches).items():
        if call not in bodies:
            continue  # not a graph builder: ggml_set_output, ggml_nbytes, ggml_backend_* ...
        for op, sub in sorted(ops_of(call, bodies), key=str):
            uses.append(OpUse(call, op, sub, names, metal_condition(sources[METAL_DEVICE], op, sub)))
    return uses


def read_patches(patch_dir: Path | None = None) -> dict[str, str]:
    return {p.name: p.read_text() for p in nb.patch_files(patch_dir)}


def main() -> int:
    uses = check(read_patches(), read_pinned())
    for u in uses:
        op = f"{u.op}/{u.sub_op}" if u.sub_op else u.op
        verdict = "UNSUPPORTED" if u.metal is None else u.metal[:100]
        print(f"{u.call:<20} {op:<34} {','.join(p[:4] for p in u.patches):<10} {verdict}")
    return 1 if any(u.metal is None for u in uses) else 0


if __name__ == "__main__":
    sys.exit(main())
