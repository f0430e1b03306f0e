"""The yardstick sweep: which settings it enumerates (from the strategy list at run time), the merge's
statistics on synthetic answers, and (native) the script end to end on a handful of questions, in two
shards, resumed, merged into table, JSON and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.yardstick.settings import BUDGETS, fastv_layers, settings
from models.yardstick.sweep_report import bootstrap, merge, summarize, tables

ROOT = Path(__file__).resolve().parent.parent
YARDSTICK = ROOT / "models" / "yardstick"


def test_settings_follow_the_strategy_list():
    names = [s.name for s in settings(8, ("fastv", "random", "none"))]
    assert names[0] == "stock" and len(names) == len(set(names))
    assert fastv_layers(8) == [2, 4] and fastv_layers(16) == [2, 4, 8] and fastv_layers(12) == [2, 3, 6]
    for n in BUDGETS:
        assert {f"fastv K=2 keep={n}", f"fastv K=4 keep={n}", f"random K=0 keep={n}", f"random K=2 keep={n}"} <= set(
            names
        )
    assert len(names) == 1 + 4 * len(BUDGETS)  # no two-stage line without a strategy of TWO_STAGE_PRE
    extra = [s.name for s in settings(8, ("fastv", "none"), extra_fastv=(6, 2))]
    assert extra[1:] == [f"fastv K={k} keep={n}" for k in (2, 4, 6) for n in BUDGETS]  # K=2 once, table order
    with pytest.raises(ValueError, match="1 <= K < 8"):
        settings(8, ("fastv",), extra_fastv=(8,))
    chance = [s.name for s in settings(8, ("random", "none"), extra_random=(6, 0))]
    assert chance[1:] == [f"random K={k} keep={n}" for k in (0, 2, 6) for n in BUDGETS]  # K=0 once, table order
    with pytest.raises(ValueError, match="0 <= K < 8"):
        settings(8, ("random",), extra_random=(8,))
    later = [s for s in settings(8, ("fastv", "random", "none", "divprune", "cdpruner")) if s.name not in names]
    assert {s.family for s in later} == {"divprune", "cdpruner", "divprune+FastV K=2"}
    assert sorted(s.keep for s in later if s.family == "divprune") == sorted(BUDGETS)
    assert {s.name for s in later if "+" in s.family} == {
        f"divprune keep={min(2 * n, 256)} + fastv K=2 keep={n}" for n in BUDGETS
    }


def test_settings_cover_every_strategy_of_the_package_and_build_valid_configs():
    """Each setting builds its PruneConfig lazily (the package validates it); random ones are seeded by the question."""
    pytest.importorskip("fastv_edge")
    from fastv_edge import PruneConfig
    from fastv_edge.config import STRATEGIES, PreSelect

    every = settings(8)
    families = {s.family.split()[0].split("+")[0] for s in every}
    assert {"FastV" if s == "fastv" else ("stock" if s == "none" else s) for s in STRATEGIES} == families
    by_name = {s.name: s for s in every}
    assert by_name["stock"].make(0) == PruneConfig(strategy="none")
    assert by_name["fastv K=4 keep=28"].make(3) == PruneConfig(layer=4, keep=28)
    assert by_name["random K=2 keep=14"].make(7).seed == 7
    before = by_name["random K=0 keep=14"].make(5)
    assert before.pre_stage == PreSelect("random", keep=14, seed=5) and not before.in_llm
    two = by_name["divprune keep=56 + fastv K=2 keep=28"].make(0)
    assert two.pre == PreSelect("divprune", keep=56) and (two.layer, two.keep, two.strategy) == (2, 28, "fastv")
    assert by_name["cdpruner K=0 keep=57"].make(0).pre_stage.strategy == "cdpruner"
    for s in every:
        s.make(1).check_layer(8)


def _rows(n: int, acc: dict[str, float], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    kinds = ("count", "glyph")
    return [
        {
            "q": i,
            "kind": kinds[i % 2],
            "label": "yes",
            "answers": {name: "yes" if rng.random() < p else "no" for name, p in acc.items()},
        }
        for i in range(n)
    ]


def test_summary_statistics_on_synthetic_answers():
    meta = [
        {"name": "stock", "family": "stock", "keep": 256},
        {"name": "fastv K=2 keep=14", "family": "FastV K=2", "keep": 14},
        {"name": "random K=2 keep=14", "family": "random K=2", "keep": 14},
        {"name": "late", "family": "x", "keep": 14},
    ]
    rows = _rows(2000, {"stock": 0.95, "fastv K=2 keep=14": 0.6, "random K=2 keep=14": 0.8})
    rows[0]["answers"]["late"] = "yes"  # answered on one question only
    rows[1]["label"] = "no"  # so 'no' is an answer of its kind (glyph) and not of count
    result = summarize(rows, meta, {"skipped one": "ValueError: no"})
    st = result["settings"]
    assert result["n"] == 2000 and result["questions_per_kind"] == {"count": 1000, "glyph": 1000}
    assert result["incomplete"] == {"late": 1} and "late" not in st
    for name, p in (("stock", 0.95), ("fastv K=2 keep=14", 0.6), ("random K=2 keep=14", 0.8)):
        lo, hi = st[name]["ci95"]
        assert lo < st[name]["accuracy"] < hi and hi - lo < 0.06 and abs(st[name]["accuracy"] - p) < 0.04
    d, lo, hi = st["fastv K=2 keep=14"]["minus_random_k2"]
    assert lo < d < hi < 0 and abs(d + 0.2) < 0.05
    assert abs(st["fastv K=2 keep=14"]["share_of_stock"] - 0.6 / 0.95) < 0.05
    lead = result["leaders"]["14"]
    assert lead["ranking"][:2] == ["random K=2", "FastV K=2"] and "late" not in str(lead)
    d, lo, hi = lead["best_minus_second"]
    assert 0 < lo < d < hi and abs(d - 0.2) < 0.05
    assert "minus_random_k0" not in st["fastv K=2 keep=14"]  # no random K=0 setting in this sweep
    assert st["fastv K=2 keep=14"]["minus_random_same_k"] == st["fastv K=2 keep=14"]["minus_random_k2"]
    assert "minus_random_same_k" not in st["random K=2 keep=14"]
    assert "FastV minus random at the same K" in tables(result)
    off = np.mean([r["kind"] == "count" and r["answers"]["fastv K=2 keep=14"] == "no" for r in rows])
    assert st["fastv K=2 keep=14"]["off_kind"] == pytest.approx(off) and 0.15 < off < 0.25  # count's 'no' only
    assert bootstrap(np.ones((1, 10), dtype=bool)).min() == 1.0


@pytest.mark.native
@pytest.mark.slow
def test_sweep_runs_shards_resumes_and_merges(tmp_path):
    """1 question per kind in 2 shards: every setting of every strategy answered; a rerun adds nothing."""
    for name in ("yardstick-lm-q8_0.gguf", "yardstick-mmproj-f32.gguf"):
        if not (YARDSTICK / name).exists():
            pytest.skip(f"{name} missing: python -m models.yardstick.export --weights DIR")
    from models.yardstick import sweep

    shards = tmp_path / "shards"
    for shard in (0, 1):
        sweep.run_shard(1, shard, 2, shards, threads=1)
    before = {p.name: json.loads(p.read_text())["rows"] for p in shards.glob("shard-*.json")}
    sweep.run_shard(1, 0, 2, shards, threads=1)  # resumed: nothing left to answer
    assert json.loads((shards / "shard-0-of-2.json").read_text())["rows"] == before["shard-0-of-2.json"]

    table = merge(shards, tmp_path / "img")
    result = json.loads((shards / "results.json").read_text())
    assert result["n"] == 6 and set(result["questions_per_kind"].values()) == {1}
    all_settings = {m["name"] for p in shards.glob("shard-*.json") for m in json.loads(p.read_text())["settings"]}
    assert not result["skipped"], f"settings the package failed to run: {result['skipped']}"
    assert all_settings == set(result["settings"]) and not result["incomplete"]
    assert {s.name for s in settings(8)} == all_settings  # every strategy of the package, at every budget
    assert result["settings"]["stock"]["accuracy"] >= 4 / 6
    assert "| FastV K=2 |" in table and "keep 14" in table
    for png in ("yardstick-accuracy.png", "yardstick-accuracy-kinds.png"):
        assert (tmp_path / "img" / png).stat().st_size > 10_000
    assert (shards / "table.md").read_text().startswith("Accuracy on 6 test questions")
