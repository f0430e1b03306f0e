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
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

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
        ValueError: neither a known template name nor an existing file.
    """
    path = Path(name_or_path)
    if path.suffix == ".jinja" and path.is_file():
        return path.read_text(encoding="utf-8")
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
        list_parts: keep content as a list of {'type': 'text'} parts (for templates that
            iterate parts) instead of joining it into one string.

    Returns:
        New message dicts; the input is not modified.
    """
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            texts = [_part_text(p, marker) for p in content]
            content = [{"type": "text", "text": t} for t in texts] if list_parts else "".join(texts)
        out.append({**message, "content": "" if content is None else content})
    return out


def _raise(message: str):
    raise ValueError(f"chat template error: {message}")


def render(
    template: str,
    messages: list[dict],
    *,
    marker: str,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    strip_bos: bool = False,
    **extra,
) -> str:
    """Render a chat template in a sandbox (the same environment llama-cpp-python uses).

    Args:
        template: jinja source.
        messages: OpenAI-style messages; image parts become `marker`.
        marker: mtmd's media marker.
        bos_token, eos_token: token texts the template may print.
        add_generation_prompt: end with the assistant header.
        strip_bos: remove a leading BOS text (when the tokenizer adds BOS itself).
        **extra: further template variables (tools, ...).

    Returns:
        The prompt text.
    """
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    # templates that inspect part types need lists; plain ChatML templates print strings
    list_parts = "type" in template
    try:
        text = env.from_string(template).render(
            messages=template_messages(messages, marker, list_parts),
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
            raise_exception=_raise,
            **extra,
        )
    except jinja2.TemplateError as e:
        raise ValueError(f"chat template failed to render: {e}") from e
    if strip_bos and bos_token and text.startswith(bos_token):
        text = text[len(bos_token) :]
    return text
