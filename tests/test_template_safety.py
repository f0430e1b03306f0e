"""Chat templates are untrusted code: every failure is one line naming the template, nothing runs for ever,
and the decision to give a template message content as a string or as a list of parts is right.

Before: a template that failed to parse or raised while rendering printed a traceback from the CLI
and ended a chat session (only jinja2.TemplateError was caught); nested loops over big ranges ran
for ever; and `"type" in template` decided the content form, so a ChatML template that merely
mentions a tool's type printed the user's turn as a Python list.
"""

from __future__ import annotations

import pytest
from api_helpers import bounded, run_cli

from fastv_edge import jinja_sandbox
from fastv_edge.templates import ChatTemplateError, load_template, render, template_names, user_message

MARKER = "<__media__>"
NAME = "chat template 'probe.jinja'"
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(jinja_sandbox, "MAX_SECONDS", 0.3)


@pytest.mark.parametrize(
    "source, message",
    [
        ("{% for m in messages %}{{ m.content }", "does not parse: line 1:"),
        ("{% if %}", "does not parse: line 1:"),
        ("{{ raise_exception('Conversation roles must alternate') }}", "refused the conversation: Conversation roles"),
        ("{{ 1 / 0 }}", "failed while rendering: ZeroDivisionError"),
        ("{{ messages[0]['content'] + 1 }}", "failed while rendering: TypeError"),
        ("{{ messages.nope() }}", "failed while rendering: UndefinedError"),
        ("{{ range(10**9) | list }}", "failed while rendering: OverflowError"),
        ("{{ ''.__class__.__mro__ }}", "failed while rendering: SecurityError"),
        ("{% include 'other.jinja' %}", "failed while rendering: TypeError"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "it recursed too deeply"),
        (LOOP, "was stopped: it ran for more than 0.3 s"),
        ("{{ 'x' * 10**10 }}", "was stopped: it repeats a sequence of 1 items 10000000000 times"),
        ("{{ 2 ** (10**9) }}", "was stopped: it raises 2 to the power 1000000000"),
        ("{% for i in range(1000) %}{{ 'y' * 100000 }}{% endfor %}", "was stopped: its output passed 4000000"),
    ],
)
def test_every_failure_is_one_line_naming_the_template(quick, source, message):
    err, seconds = bounded(render, source, [user_message("hi", [])], marker=MARKER, name=NAME, limit=20.0)
    assert isinstance(err, ChatTemplateError) and isinstance(err, ValueError), repr(err)
    assert str(err).startswith(NAME) and message in str(err) and "\n" not in str(err), str(err)
    assert seconds < 10


TRICKY = CHATML + "{# tools: each has a 'type' and a 'function' #}"
TRICKY_TOOLS = CHATML + "{% for tool in tools or [] %}{{ tool['type'] }}{% endfor %}"
PARTS_ONLY = (  # iterates parts, as SmolVLM's and many multimodal templates do
    "{% for m in messages %}{{ m['role'] }}:{% for p in m['content'] %}{% if p['type'] == 'text' %}"
    "{{ p['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
)
BOTH = (
    "{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for p in m['content'] %}{{ p['text'] }}{% endfor %}{% endif %}\n{% endfor %}"
)


@pytest.mark.parametrize("source", [TRICKY, TRICKY_TOOLS, PARTS_ONLY, BOTH, CHATML])
def test_content_reaches_the_prompt_as_text(source):
    messages = [user_message("What is in it?", ["photo.png"]), {"role": "assistant", "content": "A cat."}]
    messages.append(user_message("And its colour?", []))
    text = render(source, messages, marker=MARKER)
    assert "{'type'" not in text and "'text':" not in text, text  # before: a printed Python list
    for part in ("What is in it?", "A cat.", "And its colour?", MARKER):
        assert text.count(part) == 1, (part, text)


@pytest.mark.parametrize("name", template_names())
def test_the_shipped_templates_get_strings_and_print_every_turn(name):
    from fastv_edge.templates import wants_list_content

    source = load_template(name)
    assert wants_list_content(source, MARKER) is False  # they print message.content
    messages = [user_message("What is in it?", ["photo.png"]), {"role": "assistant", "content": "A cat."}]
    text = render(source, [*messages, user_message("Colour?", [])], marker=MARKER, bos_token="<s>", eos_token="</s>")
    assert all(text.count(p) == 1 for p in ("What is in it?", "A cat.", "Colour?", MARKER)), text


@pytest.mark.native
def test_the_cli_and_a_chat_session_survive_template_failures(cli_env, tiny, tmp_path):
    boom = tmp_path / "boom.jinja"  # fails on some turns only: the session must go on
    boom.write_text(
        "{% if messages[-1]['content'] == 'divide' %}{{ 1 / 0 }}{% endif %}"
        "{% if messages[-1]['content'] == 'loop' %}" + LOOP + "{% endif %}" + CHATML
    )
    args = ("-m", tiny.llama_path, "--mmproj", tiny.mmproj_path, "-t", "1", "-n", "2", "--strategy", "none")
    out = run_cli(cli_env, "chat", *args, "--chat-template", boom, stdin="divide\nloop\nhello\n", timeout=60)
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert out.returncode == 0 and len(errors) == 2, out.stderr[-2000:]
    assert "ZeroDivisionError" in errors[0] and "ran for more than 2 s" in errors[1]
    assert all(line.startswith("fastv-edge: error: chat template ") and "boom.jinja" in line for line in errors)
    assert "Traceback" not in out.stderr and out.stdout.strip(), out.stdout  # 'hello' was answered
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    out = run_cli(cli_env, "run", *args, "--chat-template", bad, "-p", "hi", timeout=60)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "bad.jinja" in out.stderr and "does not parse" in out.stderr


@pytest.mark.native
def test_a_tricky_template_in_a_model(tiny, tmp_path):
    from fastv_edge import PruneConfig, RuntimeConfig, load
    from fastv_edge.generate import render_chat

    tricky = tmp_path / "tricky.jinja"
    tricky.write_text(TRICKY)
    runtime = RuntimeConfig(n_ctx=512, n_threads=1)
    with load(
        tiny.llama_path, tiny.mmproj_path, runtime=runtime, prune=PruneConfig(strategy="none"), template=str(tricky)
    ) as m:
        text = render_chat(m, [user_message("What is in it?", ["photo.png"])])
    assert "<|im_start|>user\n" + m.marker + "What is in it?<|im_end|>" in text, text
