"""A reduced `clci-keras demo` (3 subjects, small window, one step): every output is produced.

The command parses its options and prints; the work is
:func:`clci_keras.experiments.run_demo` (its guards and defaults are tested
in tests/test_experiments.py). The full demo (CLCI-Net at 224x176, ~7
minutes) is not run by the tests; its timing and learning are recorded in
docs/training.md.
"""
import json
import os

from clci_keras.cli import main


def test_reduced_demo_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "demo")
    rc = main(["demo", "--out", out, "--subjects", "3", "--model", "baseline", "--epochs", "1",
               "--steps-per-epoch", "1", "--batch-size", "2", "--crop", "84:148,66:130"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "untrained" in text and "DEMO DONE" in text and "synthetic" in text.lower()
    s = json.load(open(os.path.join(out, "demo_summary.json")))
    assert 0.0 <= s["test_dsc_untrained"] <= 1.0 and 0.0 <= s["test_dsc_trained"] <= 1.0
    assert s["epochs_run"] == 1 and len(s["split"]["test"]) == 1 and s["seconds"]["total"] > 0
    assert set(s["seconds"]) == {"synthetic_data", "hdf5", "untrained_eval", "training", "trained_eval",
                                 "reports", "total"}
    assert s["settings"]["crop"] == "84:148,66:130" and s["model"] == "baseline"
    # The evaluation reuses the untrained network: loading the exported weights must change its predictions.
    assert s["test_dsc_untrained"] != s["test_dsc_trained"] or s["untrained"] != s["trained"]
    for f in ("overlays.png", "training_curves.png", "tables/table1.md", "tables/table2.tex",
              "runs/baseline/scores_test.csv", "untrained/scores_test_untrained.csv",
              "runs/baseline/baseline_weights.h5"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    md = open(os.path.join(out, "tables", "table1.md")).read()
    assert "[SYNTHETIC] Baseline" in md and "| CLCI-Net |" in md  # CLCI-Net row: paper only
    entry = json.load(open(os.path.join(out, "weights", "manifest.json")))["weights"][0]
    assert entry["training"]["synthetic"] is True and entry["metrics"]["test"]["subjects"] == 1
    assert entry["metrics"]["test"]["dsc"] == s["test_dsc_trained"]
    # A second run into the same folder is refused unless --overwrite.
    assert main(["demo", "--out", out, "--subjects", "3"]) == 2
