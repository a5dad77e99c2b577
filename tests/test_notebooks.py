"""Execute the five notebooks in QUICK mode with a real Jupyter kernel (papermill).

Each notebook runs top to bottom in a fresh ``python3`` kernel (the current
interpreter: jupyter_client maps the kernelspec's ``python`` to
``sys.executable``, and ipykernel's own spec is used when none is installed),
with its parameters injected after the cell tagged ``parameters``; any cell
error fails the test. Each test then checks the figures and tables the
notebook promises. To stay within the CI budget the notebooks share one
3-subject synthetic HDF5 file, 04 reuses 03's Baseline and CLCI-Net runs
(same split and settings, so ``train`` skips them) and 05 visualises 03's
runs; 01 and 02 generate their own data. Runtimes are printed (``-s``) and
recorded in ``notebooks/README.md``.
"""
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ("01_prepare_data", "02_train_clci_net", "03_five_method_comparison", "04_ablation",
             "05_visualization")
TABLE1 = ("fcn8s", "pspnet", "deeplabv3plus", "denseunet", "baseline", "clci_net")
TABLE2 = ("baseline", "clci_aspp", "clci_aspp_clf", "clci_net")


_OUT_DIRS = []


@pytest.fixture(scope="module", autouse=True)
def _remove_weight_files():
    """Delete the runs' weight files (hundreds of MB per network) when the module is done."""
    yield
    for d in _OUT_DIRS:
        for p in Path(d).rglob("*.h5"):
            if p.stat().st_size > 1_000_000:
                p.unlink()


def execute(name, out_dir, **params):
    """Run notebook ``name`` with QUICK=True and ``params``; returns the executed notebook."""
    import papermill as pm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _OUT_DIRS.append(out_dir)
    params = {"QUICK": True, "OUT_DIR": str(out_dir), **params}
    t = time.time()
    nb = pm.execute_notebook(
        str(NB_DIR / f"{name}.ipynb"), str(out_dir / f"{name}.executed.ipynb"), parameters=params,
        kernel_name="python3", cwd=str(out_dir), progress_bar=False, execution_timeout=900,
    )
    print(f"\n{name}: {time.time() - t:.0f} s (QUICK)")
    return nb


def text_outputs(nb):
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") or "".join(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def assert_png(path):
    path = Path(path)
    assert path.is_file(), f"missing figure {path}"
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert path.stat().st_size > 5000, f"{path} is suspiciously small"


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, f"{path} has no rows"
    return rows


@pytest.fixture(scope="module")
def quick_h5(tmp_path_factory):
    """3-subject synthetic R1.1 file (seed 0), marked synthetic as notebook 01 does."""
    import h5py

    from clci_keras.data import generate_dataset, prepare_h5

    root = tmp_path_factory.mktemp("nbdata")
    generate_dataset(root / "atlas", layout="r1.1", n_subjects=3, seed=0)
    h5 = root / "synthetic.h5"
    prepare_h5(root / "atlas", h5, progress=False)
    with h5py.File(h5, "r+") as f:
        f.attrs["synthetic"] = True
    return str(h5)


@pytest.fixture(scope="module")
def table1_run(quick_h5, tmp_path_factory):
    out = tmp_path_factory.mktemp("nb03")
    nb = execute("03_five_method_comparison", out, DATA=quick_h5)
    return out, nb


# ---------------------------------------------------------------------------
# Static checks (no kernel)
# ---------------------------------------------------------------------------
def test_notebooks_are_generated_and_stored_without_outputs(tmp_path):
    """The stored notebooks equal make_notebooks.py's output, carry no outputs, one parameters cell."""
    rc = subprocess.run([sys.executable, str(NB_DIR / "make_notebooks.py"), str(tmp_path)],
                        capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    for name in NOTEBOOKS:
        stored = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
        fresh = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
        assert [c.source for c in stored.cells] == [c.source for c in fresh.cells], (
            f"{name}.ipynb differs from make_notebooks.py: run `python notebooks/make_notebooks.py`")
        nbformat.validate(stored)
        params = [c for c in stored.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, name
        for var in ("QUICK = False", "OUT_DIR = ", "DATA = "):
            assert var in params[0].source, (name, var)
        for c in stored.cells:
            if c.cell_type == "code":
                assert not c.outputs and c.execution_count is None, f"{name} stored with outputs"
                compile(c.source, name, "exec")


# ---------------------------------------------------------------------------
# Executed in QUICK mode
# ---------------------------------------------------------------------------
def test_01_prepare_data(tmp_path):
    nb = execute("01_prepare_data", tmp_path)
    assert "QUICK SYNTHETIC run" in text_outputs(nb)
    for fig in ("lesion_volumes.png", "example_slices.png"):
        assert_png(tmp_path / "figures" / fig)
    rows = read_csv(tmp_path / "tables" / "subjects.csv")
    assert len(rows) == 3
    for r in rows:
        assert int(r["all_slices"]) == 189 and int(r["brain_slices"]) == 155
        assert 0 < int(r["lesion_slices"]) <= 155 and float(r["lesion_ml"]) > 0
        assert r["size"] in ("small", "medium", "large")
    summary = json.load(open(tmp_path / "tables" / "summary.json"))
    assert summary["synthetic"] is True and summary["quick"] is True and summary["subjects"] == 3
    assert summary["slices"] == 3 * 189
    import h5py

    with h5py.File(tmp_path / "atlas.h5", "r") as f:
        assert f["data"].shape == (3 * 189, 233, 197) and bool(f.attrs["synthetic"])


def test_02_train_clci_net(tmp_path):
    nb = execute("02_train_clci_net", tmp_path)  # DATA="synthetic": makes its own data
    assert_png(tmp_path / "figures" / "training_curves_fold0.png")
    assert_png(tmp_path / "figures" / "test_patient_overlay.png")
    rows = read_csv(tmp_path / "tables" / "clci_net_test_scores.csv")
    assert len(rows) == 1 and 0.0 <= float(rows[0]["dsc"]) <= 1.0
    summary = {r[""]: r for r in read_csv(tmp_path / "tables" / "clci_net_test_summary.csv")}
    assert summary["dsc"]["data"] == "QUICK SYNTHETIC" and int(float(summary["dsc"]["n"])) == 1
    run = tmp_path / "runs" / "clci_net" / "fold0"
    result = json.load(open(run / "result.json"))
    assert result["epochs_run"] == 2 and result["data"]["synthetic"] is True
    assert (run / "clci_net_weights.h5").stat().st_size > 1e6
    log = read_csv(run / "log.csv")
    assert len(log) == 2 and "val_loss" in log[0]
    manifest = json.load(open(tmp_path / "weights" / "manifest.json"))
    assert manifest["weights"][0]["training"]["synthetic"] is True
    assert "clci_net fold 0: 2 epochs" in text_outputs(nb)


def _check_table(tab_dir, which, models):
    rows = read_csv(tab_dir / f"table{which}.csv")
    by_model = {r["model"]: r for r in rows}
    assert float(by_model["clci_net"]["paper_dsc"]) == 0.581  # the paper's values beside ours
    for m in models:
        r = by_model[m]
        assert r["synthetic"] == "True", m
        assert 0.0 <= float(r["measured_dsc"]) <= 1.0, m
        assert "SYNTHETIC" in r["measured_on"] and "1 test patients" in r["measured_on"], m
    md = (tab_dir / f"table{which}.md").read_text()
    assert md.count("| [SYNTHETIC] ") == len(models)  # every measured row is marked
    tex = (tab_dir / f"table{which}.tex").read_text()
    assert tex.startswith("\\begin{table}") and tex.rstrip().endswith("\\end{table}")


def test_03_five_method_comparison(table1_run):
    out, nb = table1_run
    _check_table(out / "tables", 1, TABLE1)
    assert_png(out / "figures" / "table1_dice.png")
    text = text_outputs(nb)
    for m in TABLE1:
        assert f"{m} fold 0: 1 epochs" in text, m
        assert (out / "runs" / m / "fold0" / f"{m}_weights.h5").is_file(), m


def test_04_ablation_reusing_table1_runs(table1_run, quick_h5, tmp_path):
    out3, _ = table1_run
    runs = out3 / "runs"
    before = {m: (runs / m / "fold0" / "result.json").stat().st_mtime for m in ("baseline", "clci_net")}
    nb = execute("04_ablation", tmp_path, DATA=quick_h5, RUNS_DIR=str(runs),
                 SPLIT=str(out3 / "split_kfold3.json"))
    _check_table(tmp_path / "tables", 2, TABLE2)
    assert_png(tmp_path / "figures" / "table2_dice.png")
    # Baseline and CLCI-Net were not retrained: their runs are 03's.
    for m, t in before.items():
        assert (runs / m / "fold0" / "result.json").stat().st_mtime == t, m
    assert "run already complete" in text_outputs(nb)


def test_05_visualization(table1_run, quick_h5, tmp_path):
    out3, _ = table1_run
    original = out3 / "runs" / "clci_net" / "fold0" / "clci_net_weights.h5"  # Keras 2 layout, as the authors'
    execute("05_visualization", tmp_path, DATA=quick_h5, RUNS_DIR=str(out3 / "runs"),
            ORIGINAL_WEIGHTS=str(original))
    figs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert "dice_vs_lesion_volume.png" in figs
    assert any(f.startswith("overlay_subject") for f in figs), figs
    assert any(f.startswith("failure1_subject") for f in figs), figs
    for f in figs:
        assert_png(tmp_path / "figures" / f)
    scores = read_csv(tmp_path / "tables" / "per_patient_scores.csv")
    methods = {r["method"] for r in scores}
    assert methods == set(TABLE1) | {"clci_net (authors)"}
    assert all(r["data"] == "QUICK SYNTHETIC" and 0 <= float(r["dsc"]) <= 1 for r in scores)
    # The same weights loaded through both routes give the same scores.
    dsc = {r["method"]: r["dsc"] for r in scores}
    assert dsc["clci_net"] == dsc["clci_net (authors)"]
    sizes = read_csv(tmp_path / "tables" / "dice_by_lesion_size.csv")
    assert {r["size"] for r in sizes} == {"small", "medium", "large"}
    failures = read_csv(tmp_path / "tables" / "failure_cases.csv")
    assert {r["method"] for r in failures} == methods
    assert all(r["failure"] in ("missed", "over-segmentation", "under-segmentation") for r in failures)
