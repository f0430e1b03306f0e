"""Errors that say what is wrong: directories, missing files that look like presets, text that is not
UTF-8, images named by where they came from, and benchmark rows that were dropped.

Before: a directory was "not found", a missing model.bin an "unknown preset", invalid UTF-8 came
out as Python's "surrogates not allowed" (or ended a chat), every chat-handler image was called
"<bytes>", and `bench -k 99` measured only stock without saying why.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
from api_helpers import run_cli

import fastv_edge as fe
from fastv_edge.bench.grid import BenchSettings, expand_grid
from fastv_edge.model import read_mmproj_info
from fastv_edge.templates import load_template


def test_directories_are_called_directories(tmp_path, tiny):
    with pytest.raises(fe.ModelLoadError, match=r"^model .* is a directory, not a GGUF file$"):
        fe.load(tmp_path)
    with pytest.raises(fe.ModelLoadError, match=r"^mmproj .* is a directory, not a GGUF file$"):
        read_mmproj_info(tmp_path)
    (tmp_path / "t.jinja").mkdir()
    with pytest.raises(ValueError, match=r"chat template .*t.jinja is a directory"):
        load_template(str(tmp_path / "t.jinja"))


def test_a_missing_file_is_not_an_unknown_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(fe.ModelLoadError, match=r"^model not found: model.bin \(no such file, and no preset .*llava"):
        fe.load("model.bin")


def test_a_template_file_that_is_not_utf8(tmp_path):
    bad = tmp_path / "latin1.jinja"
    bad.write_bytes("{{ 'caf\xe9' }}".encode("latin-1"))
    with pytest.raises(ValueError, match=r"chat template .*latin1.jinja is not UTF-8 text \(byte 7"):
        load_template(str(bad))


def test_dropped_bench_rows_are_noted():
    notes = []
    settings = BenchSettings(layers=(2, 99), drop_ratios=(0.5,), keeps=(16,), strategies=("fastv", "random"))
    points = expand_grid(settings, 4, notes)
    assert [p.label for p in points] == [
        "stock",
        "fastv K=2 R=0.50",
        "fastv K=2 keep=16",
        "random K=2 R=0.50",
        "random K=2 keep=16",
    ]
    assert notes == [
        f"skipped {s} K=99 {b}: a 4-layer model takes K in [1, 3]"
        for s in ("fastv", "random")
        for b in ("R=0.50", "keep=16")
    ]


@pytest.mark.native
def test_bench_with_only_impossible_layers_says_so(cli_env, tiny, tmp_path):
    out = run_cli(
        cli_env, "bench", "-m", tiny.llama_path, "--mmproj", tiny.mmproj_path, "-k", "99", "-r", "0.5",
        "--strategy", "fastv", "--reps", "1", "-n", "1", "--no-fidelity", "--no-plots", "-t", "1",
        "--out", tmp_path, "--quiet", timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "note: skipped fastv K=99 R=0.50: a 4-layer model takes K in [1, 3]" in out.stdout, out.stdout


@pytest.mark.native
def test_invalid_utf8_is_named_where_it_comes_from(cli_env, tiny):
    args = [sys.executable, "-m", "fastv_edge", "run", "-m", str(tiny.llama_path), "-n", "1", "-t", "1", "--raw"]
    bad_arg = subprocess.run([*args, "-p", os.fsdecode(b"caf\xe9")], capture_output=True, env=cli_env, timeout=120)
    err = bad_arg.stderr.decode()
    assert bad_arg.returncode == 1 and "the prompt is not valid UTF-8 text: byte 0xe9 at character 3" in err, err
    bad_stdin = subprocess.run([*args, "-p", "-"], input=b"caf\xe9", capture_output=True, env=cli_env, timeout=120)
    err = bad_stdin.stderr.decode()
    assert bad_stdin.returncode == 1 and "the prompt read from stdin is not valid UTF-8 text: byte 0xe9" in err, err
    chat = [sys.executable, "-m", "fastv_edge", "chat", "-m", str(tiny.llama_path), "-n", "2", "-t", "1"]
    out = subprocess.run(chat, input=b"caf\xe9\nhello\n", capture_output=True, env=cli_env, timeout=120)
    err = out.stderr.decode()
    assert out.returncode == 0 and "the message is not valid UTF-8 text: byte 0xe9" in err and out.stdout.strip(), err


@pytest.mark.native
def test_the_handler_names_images_and_bad_text(tiny):
    import llama_cpp

    from fastv_edge.handler import FastVChatHandler

    handler = FastVChatHandler(clip_model_path=str(tiny.mmproj_path), verbose=False)
    llm = llama_cpp.Llama(str(tiny.llama_path), n_ctx=512, n_threads=1, chat_handler=handler, verbose=False)
    not_png = "data:image/png;base64," + base64.b64encode(b"GIF89a but not really").decode()
    image = {"type": "image_url", "image_url": {"url": not_png}}
    try:
        with pytest.raises(ValueError, match=r"^image 1 \(<data URI>\): not an image"):
            llm.create_chat_completion(messages=[{"role": "user", "content": [image]}], max_tokens=1)
        with pytest.raises(ValueError, match="the conversation is not valid UTF-8 text: a lone surrogate U.D800"):
            llm.create_chat_completion(messages=[{"role": "user", "content": "hi \ud800"}], max_tokens=1)
    finally:
        llm.close()


@pytest.mark.native
def test_a_system_message_in_another_encoding_is_named(tiny_model):
    with pytest.raises(ValueError, match="the system message is not valid UTF-8 text: byte 0xe9 at character 3"):
        fe.ChatSession(tiny_model, system=os.fsdecode(b"caf\xe9"))
