"""`fastv-edge run` selecting image tokens before the LLM, end to end through a subprocess and the real
library: the statistics line and --json report what ran, and a budget larger than the image's tokens is
a one-line error. Flag parsing is tested in-process in test_cli_inprocess.py."""

import json

import pytest
from api_helpers import run_cli

pytestmark = pytest.mark.native


def run(cli_env, tiny, photos, *flags):
    args = ["-m", tiny.llama_path, "--mmproj", tiny.mmproj_path, "-c", "512", "-t", "1", "-n", "3"]
    return run_cli(cli_env, "run", *args, "--image", photos["chelsea"], "-p", "What is this?", *flags)


@pytest.mark.slow
def test_run_reports_the_selection(cli_env, tiny, photos):
    out = run(cli_env, tiny, photos, "--strategy", "cdpruner", "--keep", "16")
    assert out.returncode == 0, out.stderr
    [line] = [line for line in out.stderr.splitlines() if line.startswith("[kept")]
    assert line.startswith("[kept 16/64 image tokens (cdpruner K=0 keep=16 theta=0.50) | ")
    [cells] = [part for part in line.split(" | ") if part.endswith(" KV cells")]
    n_cells = int(cells.split()[0])
    assert "| select " in line and "| prefill " in line and "+ deep 0)" in line
    report = json.loads(run(cli_env, tiny, photos, "--strategy", "cdpruner", "--keep", "16", "--json").stdout)
    assert (report["strategy"], report["n_kept"], report["n_image_tokens"]) == (
        "cdpruner K=0 keep=16 theta=0.50",
        16,
        64,
    )
    assert report["n_cells"] == n_cells == report["prompt_tokens"] - 64 + 16 and report["select_ms"] > 0
    assert 0 < report["flops_ratio"] < 1 and not report["pruned"] and report["layer"] == 0


def test_a_budget_larger_than_the_image_is_one_line(cli_env, tiny, photos):
    out = run(cli_env, tiny, photos, "--strategy", "divprune", "--keep", "100")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "fastv-edge: error: keep=100 is larger than the 64 image tokens of this prompt; use keep <= 64 or a drop ratio"
    ]
