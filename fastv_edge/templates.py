"""Model presets and chat templates: package data, read with importlib.resources.

fastv_edge/data/presets/<name>.toml     one preset per model: hf repo, file names, template name.
fastv_edge/data/templates/<name>.jinja  chat templates for GGUFs that carry none.

The template of a model is, in order: an explicit override, the GGUF's
`tokenizer.chat_template`, the template of the preset whose file pattern matches the model's
file name. Images appear in rendered prompts as mtmd's media marker.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from .jinja_sandbox import TemplateLimitError, compile_template, render_limited

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


def _data(kind: str, suffix: str) -> dict[str, Traversable]:
    """name -> file of fastv_edge/data/<kind>/*<suffix> (works from a wheel, a zip or a checkout)."""
    folder = resources.files("fastv_edge") / "data" / kind
    return {f.name.removesuffix(suffix): f for f in folder.iterdir() if f.name.endswith(suffix)}


@dataclass(frozen=True)
class Preset:
    """One model preset (a fastv_edge/data/presets/*.toml file)."""

    name: str
    description: str
    architecture: str
    repo: str
    model_file: str
    mmproj_file: str
    template: str
    image_tokens: int = 0
    match: tuple[str, ...] = ()

    def matches(self, filename: str) -> bool:
        """True if `filename` (a base name) is this preset's model file or matches a pattern."""
        name = filename.lower()
        return name == self.model_file.lower() or any(fnmatch.fnmatch(name, p.lower()) for p in self.match)


def _read_preset(file: Traversable) -> Preset:
    data = tomllib.loads(file.read_text(encoding="utf-8"))
    data["match"] = tuple(data.get("match", ()))
    return Preset(**data)


def list_presets() -> list[Preset]:
    """All presets, sorted by name."""
    return sorted((_read_preset(f) for f in _data("presets", ".toml").values()), key=lambda p: p.name)


def get_preset(name: str) -> Preset:
    """The preset called `name`.

    Raises:
        ValueError: no such preset (the message lists the known ones).
    """
    presets = {p.name: p for p in list_presets()}
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(presets))}")
    return presets[name]


def find_preset(model_path: str | os.PathLike) -> Preset | None:
    """The preset whose file name or pattern matches `model_path`'s base name, if any."""
    base = Path(model_path).name
    for preset in list_presets():
        if preset.matches(base):
            return preset
    return None


def template_names() -> list[str]:
    """Names of the chat templates shipped with the package."""
    return sorted(_data("templates", ".jinja"))


def load_template(name_or_path: str) -> str:
    """Template source from a shipped template name or a path to a .jinja file.

    Raises:
        ValueError: neither a known template name nor an existing file, or a file that is not UTF-8.
    """
    path = Path(name_or_path)
    if path.suffix == ".jinja" and path.is_dir():
        raise ValueError(f"chat template {path} is a directory, not a .jinja file")
    if path.suffix == ".jinja" and path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"chat template {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    named = _data("templates", ".jinja").get(name_or_path)
    if named is not None:
        return named.read_text(encoding="utf-8")
    raise ValueError(f"unknown chat template {name_or_path!r}; use a .jinja file or one of {template_names()}")


def resolve_template(
    gguf_template: str | None, model_path: str | os.PathLike, override: str | None = None
) -> tuple[str, str]:
    """Pick the chat template of a model.

    Args:
        gguf_template: the GGUF's tokenizer.chat_template, or None.
        model_path: the text model's path (for preset lookup by file name).
        override: a template name or .jinja path that wins over everything.

    Returns:
        (template source, where it came from: 'override', 'gguf' or 'preset:<name>').

    Raises:
        ValueError: no template anywhere; the message says how to give one.
    """
    if override:
        return load_template(override), "override"
    if gguf_template:
        return gguf_template, "gguf"
    preset = find_preset(model_path)
    if preset is not None:
        return load_template(preset.template), f"preset:{preset.name}"
    raise ValueError(
        f"{Path(model_path).name} has no chat template in its metadata and matches no preset; "
        "pass one (--chat-template NAME|FILE.jinja, or template= in Python)"
    )


def user_message(text: str, image_names: list[str]) -> dict:
    """An OpenAI-style user message: one image part per image, then the text part."""
    parts = [{"type": "image_url", "image_url": {"url": name}} for name in image_names]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def _part_text(part, marker: str) -> str:
    if isinstance(part, str):
        return part
    kind = part.get("type")
    if kind in ("image_url", "image", "input_image"):
        return marker
    if kind == "text":
        return part.get("text", "")
    raise ValueError(f"unsupported message content part type {kind!r}")


def template_messages(messages: list[dict], marker: str, list_parts: bool) -> list[dict]:
    """OpenAI-style messages with images replaced by mtmd's media marker.

    Args:
        messages: [{'role', 'content'}] with content a string or a list of parts.
        marker: mtmd's media marker.
        list_parts: give every message's content as a list of {'type': 'text'} parts (for
            templates that iterate parts; a string becomes one part) instead of one string.

    Returns:
        New message dicts; the input is not modified.
    """
    out = []
    for message in messages:
        content = message.get("content")
        texts = [_part_text(p, marker) for p in content] if isinstance(content, list) else [content or ""]
        content = [{"type": "text", "text": t} for t in texts] if list_parts else "".join(texts)
        out.append({**message, "content": content})
    return out


class ChatTemplateError(ValueError):
    """A chat template that does not parse, raises while rendering, or runs past its bounds."""


def _raise(message: str):
    raise _TemplateRaised(str(message))


class _TemplateRaised(Exception):
    """raise_exception() called by the template itself (e.g. 'roles must alternate')."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _compile(template: str, name: str) -> jinja2.Template:
    try:
        return compile_template(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"{name} does not parse: line {e.lineno}: {_one_line(e.message)}") from None
    except Exception as e:  # noqa: BLE001 - anything the compiler raises is the template's fault
        raise ChatTemplateError(f"{name} does not parse: {type(e).__name__}: {_one_line(e)}") from None


def _run(template: str, name: str, variables: dict) -> str:
    """Compile (cached) and render within the sandbox's bounds; every failure a ChatTemplateError."""
    compiled = _compile(template, name)
    try:
        return render_limited(compiled, variables)
    except TemplateLimitError as e:
        raise ChatTemplateError(f"{name} was stopped: {e}") from None
    except _TemplateRaised as e:
        raise ChatTemplateError(f"{name} refused the conversation: {_one_line(e)}") from None
    except RecursionError:
        raise ChatTemplateError(f"{name} failed while rendering: it recursed too deeply") from None
    except Exception as e:  # noqa: BLE001 - sandbox errors, TypeError, ZeroDivisionError, MemoryError, ...
        raise ChatTemplateError(f"{name} failed while rendering: {type(e).__name__}: {_one_line(e)}") from None


# The probe conversation: does a template print message content given as a string, or only
# when it is a list of {'type': 'text'} parts (templates that iterate the parts)?
_PROBE = ("fastv-probe-question", "fastv-probe-answer", "fastv-probe-follow-up")


def _probe_score(template: str, marker: str, list_parts: bool) -> tuple[int, bool]:
    """(how many of the probe texts and the marker are printed exactly once, no Python repr of a part printed).

    Raises:
        TemplateLimitError: the template ran past its bounds (it would with any content).
    """
    first, answer, second = _PROBE
    messages = [
        {"role": "user", "content": [{"type": "text", "text": first}]},
        {"role": "assistant", "content": answer},
        user_message(second, ["probe image"]),
    ]
    variables = dict(bos_token="", eos_token="", add_generation_prompt=True, raise_exception=_raise)
    variables["messages"] = template_messages(messages, marker, list_parts)
    try:
        text = render_limited(compile_template(template), variables)
    except TemplateLimitError:
        raise
    except Exception:  # noqa: BLE001 - this form fails; the real render reports the error
        return -1, False
    printed = sum(text.count(t) == 1 for t in (*_PROBE, marker))
    return printed, "{'type'" not in text and "'text':" not in text


@lru_cache(maxsize=64)
def wants_list_content(template: str, marker: str) -> bool:
    """True when `template` needs message content as a list of text parts, False for a string.

    Decided by rendering a probe conversation both ways (cached per template): the form that
    prints every message's text exactly once and no Python repr of a part wins; the string
    form on a tie. Searching the source for "type" got ChatML templates that mention a tool's
    type wrong: their user turns came out as printed Python lists.
    """
    as_string = _probe_score(template, marker, False)
    as_list = _probe_score(template, marker, True)
    return as_list > as_string


def render(
    template: str,
    messages: list[dict],
    *,
    marker: str,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    strip_bos: bool = False,
    name: str = "the chat template",
    **extra,
) -> str:
    """Render a chat template in Jinja's sandbox, bounded in time and output (jinja_sandbox).

    Args:
        template: jinja source.
        messages: OpenAI-style messages; image parts become `marker`.
        marker: mtmd's media marker.
        bos_token, eos_token: token texts the template may print.
        add_generation_prompt: end with the assistant header.
        strip_bos: remove a leading BOS text (when the tokenizer adds BOS itself).
        name: what error messages call the template (template_label()).
        **extra: further template variables (tools, ...).

    Returns:
        The prompt text.

    Raises:
        ChatTemplateError (a ValueError): it does not parse, raises, or runs past its bounds;
            one line naming the template.
    """
    _compile(template, name)  # a parse error named, before the probe
    try:
        list_parts = wants_list_content(template, marker)
    except TemplateLimitError as e:
        raise ChatTemplateError(f"{name} was stopped: {e}") from None
    variables = dict(
        messages=template_messages(messages, marker, list_parts),
        bos_token=bos_token,
        eos_token=eos_token,
        add_generation_prompt=add_generation_prompt,
        raise_exception=_raise,
        **extra,
    )
    text = _run(template, name, variables)
    if strip_bos and bos_token and text.startswith(bos_token):
        text = text[len(bos_token) :]
    return text


def template_label(origin: str, model_path: str | os.PathLike) -> str:
    """How errors name a template from its origin ('gguf', 'preset:NAME', 'override:NAME|PATH')."""
    if origin == "gguf":
        return f"the chat template of {Path(model_path).name} (tokenizer.chat_template)"
    kind, _, what = origin.partition(":")
    if kind == "preset":
        return f"chat template {get_preset(what).template!r} (preset {what})"
    if kind == "override" and what:
        return f"chat template {what!r}"
    return "the chat template"


def check_template(template: str, name: str) -> None:
    """Raise ChatTemplateError unless `template` parses (what load() checks of a given template)."""
    _compile(template, name)
