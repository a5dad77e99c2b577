"""Tables 1 and 2: published values beside measured ones, data provenance, synthetic mark."""
import csv
import json
import os

import pytest

from clci_keras.evaluation.evaluate import write_scores
from clci_keras.reports.tables import TABLE1, build_table, collect_runs, to_latex, write_tables


def _fake_run(root, name, model, dscs, synthetic, fold=None, slices="all"):
    run = os.path.join(root, name)
    os.makedirs(run)
    rows = [{"subject_index": i, "subject_id": f"s{i}", "site": "x", "dsc": d, "precision": 0.5,
             "recall": 0.25, "voe": 40.0, "rvd": -10.0 * (i + 1)} for i, d in enumerate(dscs)]
    write_scores(rows, os.path.join(run, "scores_test.csv"))
    summary = {"model": model, "fold": fold, "part": "test", "slices": slices,
               "data": {"h5": f"/data/{'demo' if synthetic else 'ATLAS'}.h5", "layout": "r1.1",
                        "synthetic": synthetic},
               "scores": {}}
    json.dump(summary, open(os.path.join(run, "summary_test.json"), "w"))
    json.dump({"model": model, "fold": fold}, open(os.path.join(run, "config.json"), "w"))


def test_published_values_are_the_papers():
    paper = {m: v for _, m, v in TABLE1}
    assert paper["clci_net"] == (0.581, 0.649, 0.581, 54.6, 25.4)
    assert paper["fcn8s"] == (0.337, 0.485, 0.334, 76.5, 19.6)
    assert paper["deeplabv3plus"][3] == 62.1 and paper["denseunet"][0] == 0.543
    assert paper["pspnet"][4] == 13.6 and paper["baseline"][1] == 0.632


def test_tables_pool_folds_and_mark_synthetic(tmp_path):
    root = str(tmp_path / "runs")
    _fake_run(root, "clci_f0", "clci_net", [0.2, 0.4], synthetic=False, fold=0)
    _fake_run(root, "clci_f1", "clci_net", [0.9], synthetic=False, fold=1)
    _fake_run(root, "base", "baseline", [0.3], synthetic=True)
    runs = collect_runs(root)
    assert sorted(runs) == ["baseline", "clci_net"] and len(runs["clci_net"]["rows"]) == 3

    t1 = {r["model"]: r for r in build_table(1, runs)}
    assert t1["clci_net"]["measured_dsc"] == pytest.approx(0.5)  # pooled over 3 patients
    assert t1["clci_net"]["measured_rvd"] == pytest.approx(-40 / 3)
    assert t1["clci_net"]["paper_dsc"] == 0.581 and t1["clci_net"]["synthetic"] is False
    assert "ATLAS.h5" in t1["clci_net"]["measured_on"] and "3 test patients" in t1["clci_net"]["measured_on"]
    assert "folds [0, 1]" in t1["clci_net"]["measured_on"]
    assert t1["baseline"]["synthetic"] is True and t1["baseline"]["measured_on"].startswith("SYNTHETIC")
    assert t1["fcn8s"]["measured_dsc"] is None and t1["fcn8s"]["measured_on"] == "not run"

    out = str(tmp_path / "tables")
    written = write_tables(root, out)
    assert set(written) == {f"table{i}.{e}" for i in (1, 2) for e in ("csv", "md", "tex")}
    md = open(written["table1.md"]).read()
    assert "| [SYNTHETIC] Baseline |" in md and "| CLCI-Net | 0.581 | 0.500 |" in md
    rows = list(csv.DictReader(open(written["table2.csv"])))
    assert [r["model"] for r in rows] == ["baseline", "clci_aspp", "clci_aspp_clf", "clci_net"]
    assert rows[0]["synthetic"] == "True" and rows[1]["measured_on"] == "not run"
    tex = open(written["table1.tex"]).read()
    assert r"Baseline$^\dagger$" in tex and r"\begin{tabular}" in tex and "ATLAS.h5" in tex


def test_latex_escapes_specials():
    rows = [{"method": "A_B & 50%", "model": "m", "synthetic": False, "measured_on": "x_y",
             **{f"{p}_{k}": None for p in ("paper", "measured") for k in ("dsc", "precision", "recall", "voe", "rvd")}}]
    tex = to_latex(rows, 1)
    assert r"A\_B \& 50\%" in tex and r"x\_y" in tex and "--" in tex


def test_a_slab_evaluation_is_said_in_measured_on(tmp_path):
    root = str(tmp_path / "runs")
    _fake_run(root, "clci", "clci_net", [0.5], synthetic=True, slices="64:112")
    _fake_run(root, "base", "baseline", [0.3], synthetic=True, slices="brain")
    t1 = {r["model"]: r for r in build_table(1, collect_runs(root))}
    assert t1["clci_net"]["measured_on"].endswith("; only slices 64:112 predicted)")
    assert "only slices" not in t1["baseline"]["measured_on"]  # brain: scores unchanged unless outside the brain
