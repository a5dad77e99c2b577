"""benchmarks/RESULTS.md opens with the table that benchmarks/results_table.py generates from
benchmarks/goals.json and the JSON records of benchmarks/results/ (pure Python, no Keras)."""
from __future__ import annotations

import json
import os

import pytest
from conftest import benchmark_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def results_table():
    return benchmark_script("results_table")


def test_results_md_opens_with_the_generated_table(results_table):
    goals = results_table.load_goals()
    expected = results_table.render(goals, results_table.load_records(goals=goals))
    with open(results_table.RESULTS, encoding="utf-8") as f:
        text = f.read()
    assert results_table.current_table(text) == expected, \
        "benchmarks/RESULTS.md's goals table is not current: run python benchmarks/results_table.py"
    assert text.index(results_table.BEGIN) < text.index("\n## Runs"), "the table comes before the runs"
    assert all(f"| {g['what']} |" in expected for g in goals)  # a row per goal, measured or not


def test_ratio_above_one_means_not_met(results_table):
    at_most = {"id": "a", "what": "a", "bound": "max", "target": 10, "unit": "min"}
    at_least = {"id": "b", "what": "b", "bound": "min", "target": 3000, "unit": "slices/s"}
    tracked = {"id": "c", "what": "c", "bound": None, "target": None, "unit": "s"}
    assert results_table.ratio(at_most, 11.1) == pytest.approx(1.11)
    assert results_table.ratio(at_least, 2729) == pytest.approx(3000 / 2729)
    assert results_table.ratio(at_least, 6000) == 0.5 and results_table.ratio(tracked, 5) is None
    record = dict(machine="m", command="c", unit="min", goal="a")
    table = results_table.render([at_most, at_least, tracked], [
        dict(record, value=12, date="2026-01-01"), dict(record, value=11.1, date="2026-02-01", note="later"),
        dict(record, value=20, date="2026-01-15")])
    assert "| a | 11.1 min [1] | ≤ 10 min | **1.11** |" in table  # the latest date wins, unmet in bold
    assert "| b | not measured | ≥ 3,000 slices/s | — |" in table and "[1] later" in table


def test_records_are_checked_against_the_goals(results_table, tmp_path):
    goals = [{"id": "a", "what": "a", "bound": "max", "target": 10, "unit": "min"}]
    good = dict(goal="a", value=1, unit="min", machine="m", date="2026-01-01", command="c")
    (tmp_path / "raw.json").write_text(json.dumps({"rows": []}))  # a benchmark's raw output: skipped
    for bad, match in [(dict(good, unit="s"), "unit 's', but goal 'a' is in 'min'"),
                       (dict(good, goal="b"), "unknown goal 'b'"),
                       ({k: v for k, v in good.items() if k != "machine"}, "lacks machine"),
                       (dict(good, date="7 Dec"), "date must be YYYY-MM-DD")]:
        (tmp_path / "r.json").write_text(json.dumps({"records": [good, bad]}))
        with pytest.raises(ValueError, match=match):
            results_table.load_records(str(tmp_path), goals)
    (tmp_path / "r.json").write_text(json.dumps({"records": [good]}))
    assert results_table.load_records(str(tmp_path), goals) == [good]


def test_the_startup_record_is_its_raw_runs_ratio(results_table):
    """The one record whose benchmark also kept its raw rows agrees with them."""
    records = [r for r in results_table.load_records() if r["goal"] == "startup_jax_vs_tf"]
    for r in records:
        with open(os.path.join(ROOT, r["source"]), encoding="utf-8") as f:
            rows = json.load(f)["rows"]
        best = {b: min(x["total_s"] for x in rows if (x["backend"], x["what"], x["variant"]) == (b, "build", "after"))
                for b in ("jax", "tensorflow")}
        assert r["value"] == round(best["jax"] / best["tensorflow"], 2)
