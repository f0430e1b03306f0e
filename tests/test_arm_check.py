"""The C driver (tests/native/fastv_driver.c) on x86 and on aarch64 under qemu.

On x86 the driver runs on the installed patched library and is checked against the float64
reference, so it is known to decode what the Python tests decode. The aarch64 outputs come from
`make arm-check` (tools/arm_check.py: cross build + qemu, cached by content hash); without them
these tests skip, unless FASTV_EDGE_REQUIRE_ARM=1 (set by `make arm-check`) makes that a failure.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fastv_helpers import cut_gap, run_ref

from tools import arm_check

pytestmark = pytest.mark.native


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return arm_check.make_inputs(tmp_path_factory.mktemp("arm-inputs"))


@pytest.fixture(scope="module")
def x86(inputs, tmp_path_factory):
    return arm_check.host_run(*inputs, tmp_path_factory.mktemp("x86-out"))


@pytest.fixture(scope="module")
def arm(inputs):
    out = arm_check.cached_arm_outputs()
    if out is None:
        msg = "no aarch64 outputs for this tree: run `make arm-check`"
        if os.environ.get("FASTV_EDGE_REQUIRE_ARM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    run = json.loads((out / "run.json").read_text())
    # the cached run decoded exactly the files this test generates
    assert run["model_sha256"] == arm_check.nb.file_sha256(inputs[0])
    assert run["image_sha256"] == arm_check.nb.file_sha256(inputs[1])
    return arm_check.load_outputs(out)


def _segments(res, image):
    img = np.fromfile(image, dtype="<f4").reshape(res["n_img"], res["n_embd"])  # (n_img, n_embd)
    return [("tokens", res["pre"]), ("embd", img), ("tokens", res["post"])]


def test_x86_driver_runs_what_it_says(x86):
    assert x86["n_img"] == arm_check.N_IMG and x86["k"] == arm_check.K
    assert x86["runs"]["fastv-0"]["kept"] == list(range(arm_check.N_IMG))  # R = 0 keeps every image token
    assert x86["runs"]["fastv-0"]["n_hidden"] == 0
    n_keep = arm_check.N_IMG // 2  # floor(40 * (1 - 0.5))
    assert len(x86["runs"]["fastv-1"]["kept"]) == n_keep
    assert x86["runs"]["fastv-1"]["n_hidden"] == arm_check.N_IMG - n_keep


def test_x86_driver_matches_reference(x86, inputs):
    from reference import Ref, topk_keep

    ref = Ref(inputs[0])
    segments, steps = _segments(x86, inputs[1]), x86["steps"]
    stock, _ = run_ref(ref, segments, steps)
    kept = x86["runs"]["fastv-1"]["kept"]
    pruned, ref_scores = run_ref(ref, segments, steps, k=arm_check.K, keep=kept)

    assert np.abs(x86["logits"]["stock"] - stock).max() < 1e-4
    assert cut_gap(ref_scores, len(kept)) >= 1e-4  # the selection is not decided by rounding
    assert kept == topk_keep(ref_scores, 0.5).tolist()
    np.testing.assert_allclose(x86["runs"]["fastv-1"]["scores"], ref_scores, rtol=1e-5, atol=1e-9)
    assert np.abs(x86["logits"]["fastv-1"] - pruned).max() < 1e-4
    assert np.abs(x86["logits"]["fastv-1"] - x86["logits"]["stock"]).max() > 1e-2  # pruning changed something


def test_arm_r0_is_stock(arm):
    assert arm["runs"]["fastv-0"]["kept"] == list(range(arm_check.N_IMG))
    assert np.abs(arm["logits"]["fastv-0"] - arm["logits"]["stock"]).max() <= 1e-6


@pytest.mark.parametrize("run", arm_check.RUNS)
def test_arm_matches_x86(arm, x86, run):
    assert arm["pre"] == x86["pre"] and arm["post"] == x86["post"] and arm["steps"] == x86["steps"]
    assert arm["runs"][run]["kept"] == x86["runs"][run]["kept"]
    np.testing.assert_allclose(arm["runs"][run]["scores"], x86["runs"][run]["scores"], rtol=1e-4, atol=1e-7)
    assert np.abs(arm["logits"][run] - x86["logits"][run]).max() <= 1e-4


def test_arm_numbers(arm, x86, capsys):
    """The numbers `make arm-check` reports (pytest -rA shows them)."""
    numbers = arm_check.compare(arm, x86)
    with capsys.disabled():
        print("\narm-check:", json.dumps(numbers))
    assert numbers["kept_equal"] and numbers["arm_r0_vs_stock"] <= 1e-6
