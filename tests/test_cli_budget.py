"""--ttft-budget and `fastv-edge calibrate`: flags in-process on the fake backend, then end to end on a
tiny qwen2vl + qwen2vl_merger pair through the real library."""

from __future__ import annotations

import json

import pytest
from api_helpers import run_cli

from fastv_edge.config import PruneConfig

RUN = ("run", "-m", "model.gguf", "-p", "What is this?", "--quiet")


def _calls(backend, name):
    return [kw for what, kw in backend.calls if what == name]


@pytest.mark.parametrize(
    "flags, family",
    [
        ((), None),  # no strategy named: the planner chooses among all
        (("--strategy", "divprune"), PruneConfig(strategy="divprune")),
        (("--strategy", "fastv", "-k", "3"), PruneConfig(strategy="fastv", layer=3)),
        (("--pre", "dart:64"), PruneConfig(strategy="fastv", pre="dart:64")),
        (("--strategy", "none"), PruneConfig(strategy="none")),  # caps only
    ],
)
def test_budget_flags_reach_the_request(cli, fake_backend, flags, family):
    code, _, err = cli(*RUN, "--ttft-budget", "2.5", *flags)
    assert code == 0, err
    [call] = _calls(fake_backend, "generate")
    assert call["ttft_budget"] == 2.5
    assert _calls(fake_backend, "calibration")  # calibrated (or found) before the request
    assert fake_backend.models[0].prune.enabled == (family is not None and family.enabled)
    if family is None:
        assert fake_backend.generate_prunes[-1] is None
    else:
        assert fake_backend.generate_prunes[-1] == family


def test_without_a_budget_nothing_is_planned(cli, fake_backend):
    code, _, _ = cli(*RUN)
    assert code == 0
    assert _calls(fake_backend, "generate")[0]["ttft_budget"] is None and not _calls(fake_backend, "calibration")
    assert fake_backend.generate_prunes[-1] == PruneConfig()  # the default FastV K=2 R=0.5, as before


@pytest.mark.parametrize("flags", [("-r", "0.5"), ("--keep", "32")])
def test_a_keep_count_and_a_budget_are_refused(cli, fake_backend, flags):
    code, _, err = cli(*RUN, "--ttft-budget", "3", *flags)
    assert code == 1 and "the planner chooses how many image tokens to keep" in err
    assert not _calls(fake_backend, "generate")


def test_a_missed_budget_names_the_recalibration(cli, fake_backend):
    fake_backend.ttft_ms = 4000.0  # 1.6x the 2.5 s budget: more than the planner's noise
    code, _, err = cli(
        "run", "-m", "model.gguf", "--mmproj", "my proj.gguf", "-p", "hi", "-t", "1", "--ttft-budget", "2.5"
    )
    assert code == 0, err
    assert "the first token took 4.0 s against a budget of 2.5 s (predicted 2.2 s)" in err
    assert "`fastv-edge calibrate -m model.gguf --mmproj 'my proj.gguf' -t 1 --force` measures it again" in err


@pytest.mark.parametrize("ttft_ms, budget", [(3000.0, ("--ttft-budget", "2.5")), (4000.0, ())])
def test_no_recalibration_note_within_noise_or_without_a_budget(cli, fake_backend, ttft_ms, budget):
    fake_backend.ttft_ms = ttft_ms  # 1.2x the budget is within OVER_BUDGET; no budget, nothing to miss
    code, _, err = cli("run", "-m", "model.gguf", "-p", "hi", *budget)
    assert code == 0, err
    assert "calibrate" not in err


def test_chat_takes_the_budget(cli, fake_backend):
    code, _, _ = cli("chat", "-m", "model.gguf", "--ttft-budget", "4", "--quiet", stdin="hello\n")
    assert code == 0
    [session] = _calls(fake_backend, "chat_session")
    assert session["ttft_budget"] == 4.0 and session["prune"] is None


@pytest.fixture(scope="module")
def qwen_args(tiny_dir):
    from fastv_edge.testing.make_tiny_archs import make_tiny_qwen2vl
    from fastv_edge.testing.mmproj_archs import make_tiny_vision_mmproj

    lm = make_tiny_qwen2vl(tiny_dir)
    mmproj, _ = make_tiny_vision_mmproj(tiny_dir, "qwen2vl_merger", lm.hparams.n_embd, out_std=0.5)
    return ["-m", str(lm.path), "--mmproj", str(mmproj), "-c", "1024", "-t", "1"]


@pytest.mark.native
def test_calibrate_then_run_with_a_budget(cli_env, qwen_args, photos, tmp_path):
    env = {**cli_env, "FASTV_EDGE_CALIBRATION_DIR": str(tmp_path / "cal")}
    out = run_cli(env, "calibrate", *qwen_args)
    assert out.returncode == 0, out.stderr
    assert "calibrate: vision encoder" in out.stderr and "done in" in out.stderr  # progress lines
    assert "vision encoder (dynamic resolution)" in out.stdout and "stored in:" in out.stdout
    again = run_cli(env, "calibrate", *qwen_args, "--json")
    stored = json.loads(again.stdout)
    assert stored["reused"] and stored["cost_model"]["n_layer"] == 4
    run = ["run", *qwen_args, "--image", photos["chelsea"], "-p", "What is it?", "-n", "2", "--raw"]
    out = run_cli(env, *run, "--ttft-budget", "1000")
    assert out.returncode == 0, out.stderr
    plan_line = next(line for line in out.stderr.splitlines() if line.startswith("plan (budget 1000.0 s)"))
    assert "no cap" in plan_line and "all kept" in plan_line
    assert "predicted ttft" in out.stderr.splitlines()[-1]  # the statistics line: the measurement next to it
    record = json.loads(run_cli(env, *run, "--ttft-budget", "1000", "--json").stdout)
    assert record["plan"]["budget_ms"] == 1e6 and record["ttft_ms"] > 0
    assert record["plan"]["n_kept"] == record["n_kept"] == record["n_image_tokens"]


@pytest.mark.native
def test_run_calibrates_first_and_refuses_an_impossible_budget(cli_env, qwen_args, photos, tmp_path):
    env = {**cli_env, "FASTV_EDGE_CALIBRATION_DIR": str(tmp_path / "cal")}
    run = ["run", *qwen_args, "--image", photos["coffee"], "-p", "What is it?", "-n", "2", "--raw"]
    out = run_cli(env, *run, "--ttft-budget", "0.000001")
    assert out.returncode == 1
    assert "no calibration of this model" in out.stderr and "measuring it first" in out.stderr
    [error] = [line for line in out.stderr.splitlines() if line.startswith("fastv-edge: error:")]
    assert "below what this machine can do" in error and "give a budget of at least" in error
    assert list((tmp_path / "cal").glob("*.json"))  # the calibration was stored, so the next run reuses it
    out = run_cli(env, *run, "--ttft-budget", "0.000001")
    assert "no calibration" not in out.stderr


@pytest.mark.native
def test_bench_with_budgets(cli_env, qwen_args, photos, tmp_path):
    env = {**cli_env, "FASTV_EDGE_CALIBRATION_DIR": str(tmp_path / "cal")}
    bench = ["bench", *qwen_args, "--image", photos["chelsea"], "--reps", "1", "--out", tmp_path / "out"]
    out = run_cli(env, *bench, "--ttft-budget", "0.000001", "--ttft-budget", "1000", timeout=300)
    assert out.returncode == 0, out.stderr
    table = out.stdout
    assert (
        "| stock | no cap, no pruning |" in table
        and "refused: needs" in table
        and "| 1000 s | no cap, all kept |" in table
    )
    rows = json.loads((tmp_path / "out" / "budgets.json").read_text())["rows"]
    stock, refused, full = rows
    assert stock["plan"] is None and refused["refused_min_s"] > 0 and not refused["runs"]
    assert full["plan"]["predicted_ms"] > 0 and full["measured_ms"] > 0 and full["error"] is not None
