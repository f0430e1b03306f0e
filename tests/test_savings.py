"""The savings script runs end to end on a tiny model and reports sane numbers (no timing claims)."""

from __future__ import annotations

import json
import math

import pytest

pytestmark = [pytest.mark.native, pytest.mark.slow]


def test_savings_script_reports_consistent_rows(tiny, tmp_path):
    from fastv_edge import savings

    out = tmp_path / "savings.json"
    assert (
        savings.main(
            [
                "--model",
                str(tiny.llama_path),
                "--n-image",
                "64",
                "--reps",
                "1",
                "--drop-ratio",
                "0.5",
                "--drop-ratio",
                "0.9",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    [result] = json.loads(out.read_text())
    assert result["n_layer"] == 4 and result["k"] == 2
    for row, r in zip(result["rows"], (0.5, 0.9), strict=True):
        assert row["n_kept"] == int(64 * (1 - r))
        for key in ("stock_ms", "shallow_ms", "deep_ms", "ratio", "cpu_ratio"):
            assert math.isfinite(row[key]) and row[key] > 0
        assert 0 < row["theory"] < 1
    assert result["rows"][1]["theory"] < result["rows"][0]["theory"]


def test_savings_script_on_an_mrope_model(tiny_dir, tmp_path):
    """qwen2vl rows carry 4 position sections; the script must pass them (as mtmd does)."""
    from fastv_edge import savings
    from fastv_edge.testing.make_tiny_archs import make_tiny_qwen2vl

    out = tmp_path / "savings.json"
    model = make_tiny_qwen2vl(tiny_dir)
    assert (
        savings.main(
            ["--model", str(model.path), "--n-image", "40", "--reps", "1", "--drop-ratio", "0.5", "--out", str(out)]
        )
        == 0
    )
    [result] = json.loads(out.read_text())
    assert result["rows"][0]["n_kept"] == 20


def test_savings_script_on_gemma3_decodes_the_image_non_causally(tiny_dir, tmp_path):
    """gemma3: the pseudo image goes in as one non-causal block, like mtmd decodes Gemma 3 images."""
    from fastv_edge import RuntimeConfig, load, savings
    from fastv_edge.bench.workload import PseudoWorkload
    from fastv_edge.testing.make_tiny_archs import make_tiny_gemma3

    model = make_tiny_gemma3(tiny_dir)
    with load(model.path, runtime=RuntimeConfig(n_threads=1)) as m:
        assert PseudoWorkload(m, 32, seed=0).image.non_causal
    out = tmp_path / "savings.json"
    assert (
        savings.main(
            ["--model", str(model.path), "--n-image", "32", "--reps", "1", "--drop-ratio", "0.75", "--out", str(out)]
        )
        == 0
    )
    [result] = json.loads(out.read_text())
    assert result["rows"][0]["n_kept"] == 8
