"""Presets and chat templates are package data; each preset names a template that renders."""

import pytest

from fastv_edge.templates import (
    find_preset,
    get_preset,
    list_presets,
    load_template,
    render,
    resolve_template,
    template_names,
    user_message,
)

MARKER = "<__media__>"


def test_every_preset_names_a_shipped_template():
    presets = list_presets()
    assert {"llava-1.5-7b", "smolvlm-256m", "qwen2-vl-2b", "gemma-3-4b"} <= {p.name for p in presets}
    for preset in presets:
        assert preset.template in template_names(), preset.name
        assert preset.matches(preset.model_file)


@pytest.mark.parametrize("name", template_names())
def test_every_template_renders_an_image_turn(name):
    messages = [user_message("What is this?", ["photo.jpg"])]
    text = render(load_template(name), messages, marker=MARKER, bos_token="<s>", eos_token="</s>")
    assert text.count(MARKER) == 1 and "What is this?" in text
    assert text.index(MARKER) < text.index("What is this?")  # image first, as the presets' models expect


@pytest.mark.parametrize(
    "filename, preset",
    [
        ("llava-v1.5-7b-Q4_K_M.gguf", "llava-1.5-7b"),  # the preset's own file
        ("SmolVLM-500M-Instruct-Q8_0.gguf", "smolvlm-256m"),  # a pattern match, case-insensitive
        ("my-model.gguf", None),  # nothing matches
    ],
)
def test_find_preset(filename, preset):
    found = find_preset(f"/models/{filename}")
    assert (found.name if found else None) == preset


def test_resolution_order(tmp_path):
    own = tmp_path / "own.jinja"
    own.write_text("{{ messages[0]['content'] }}")
    assert resolve_template("GGUF", "llava-v1.5-7b-Q4_K_M.gguf", str(own)) == (own.read_text(), "override")
    assert resolve_template("GGUF", "llava-v1.5-7b-Q4_K_M.gguf") == ("GGUF", "gguf")
    assert resolve_template(None, "llava-v1.5-7b-Q4_K_M.gguf")[1] == "preset:llava-1.5-7b"
    with pytest.raises(ValueError, match="--chat-template"):
        resolve_template(None, "my-model.gguf")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown chat template 'nope'.*'chatml'"):
        load_template("nope")
    with pytest.raises(ValueError, match=r"unknown preset 'nope'; known presets: .*llava-1.5-7b"):
        get_preset("nope")
