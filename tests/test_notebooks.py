"""The five notebooks: structure (any saved state), settings, and QUICK runs with a real kernel.

The ``.ipynb`` files are the source of truth and may be saved from Jupyter
with outputs, execution counts and metadata: the structural checks ignore
them (a test dirties a copy to prove it) and papermill, which executes each
notebook top to bottom in a fresh ``python3`` kernel (the current interpreter;
jupyter_client maps the kernelspec's ``python`` to ``sys.executable``) with
its parameters injected after the cell tagged ``parameters``, replaces them.
Any cell error fails a test; each test then checks the figures and tables
the notebook promises.

The QUICK runs follow the study's own workflow, so nothing is computed
twice: 01 makes the one synthetic HDF5 file (3 subjects) that 02-05 use; 02
trains CLCI-Net; 03 trains the other five Table 1 models into 02's runs
folder with 02's split (CLCI-Net's run is reused, as the notebooks reuse
finished runs); 04 trains the two ablation variants there (Baseline and
CLCI-Net reused); 05 visualises two of those runs (:data:`VIS_MODELS`,
loading their exported Keras 2 ``.h5``) plus CLCI-Net's ``.h5`` again as the
authors' weights. The work is bounded (settings of QUICK mode); the execution
timeout is only a guard against a hung kernel.
"""
import ast
import csv
import json
import os
import time
from pathlib import Path

import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ("01_prepare_data", "02_train_clci_net", "03_five_method_comparison", "04_ablation",
             "05_visualization")
TABLE1 = ("fcn8s", "pspnet", "deeplabv3plus", "denseunet", "baseline", "clci_net")
TABLE2 = ("baseline", "clci_aspp", "clci_aspp_clf", "clci_net")
#: Runs visualised by 05: two models (a network per model, one after the other) and the
#: authors' weights of one of them (its network reused). Every Table 1 run's exported
#: ``.h5`` is already loaded into a fresh network and predicted on the same patient by 03
#: (``train_and_evaluate``: the same ``build_model`` + ``load_weights`` + ``evaluate_model``
#: as 05's ``Methods``); here each method's scores must equal those of its run.
VIS_MODELS = ("baseline", "clci_net")
#: Guard against a hung kernel only: far above a QUICK cell on the slowest machine.
CELL_TIMEOUT_S = 3600

_OUT_DIRS = []


@pytest.fixture(scope="module", autouse=True)
def _remove_weight_files():
    """Delete the runs' weight files (hundreds of MB per network) when the module is done."""
    yield
    for d in _OUT_DIRS:
        for p in Path(d).rglob("*.h5"):
            if p.stat().st_size > 1_000_000:
                p.unlink()


def execute(name, out_dir, source=None, keep=False, **params):
    """Run notebook ``name`` (or the file ``source``) with QUICK=True and ``params``; the big
    weight files it writes are deleted after this module's tests unless ``keep``."""
    import papermill as pm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not keep:
        _OUT_DIRS.append(out_dir)
    params = {"QUICK": True, "OUT_DIR": str(out_dir), **params}
    t = time.time()
    nb = pm.execute_notebook(
        str(source or NB_DIR / f"{name}.ipynb"), str(out_dir / f"{name}.executed.ipynb"), parameters=params,
        kernel_name="python3", cwd=str(out_dir), progress_bar=False, execution_timeout=CELL_TIMEOUT_S,
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


# ---------------------------------------------------------------------------
# Structure: what CI needs from a notebook, whatever Jupyter saved with it
# ---------------------------------------------------------------------------
def check_structure(nb, name):
    """The structural checks: valid nbformat 4, one ``parameters`` cell with the QUICK switch, python3 kernel."""
    nbformat.validate(nb)
    assert nb.nbformat == 4, name
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{name}: kernelspec is not python3"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{name}: {len(params)} cells tagged 'parameters'"
    assert params[0].cell_type == "code", name
    names = _assigned(params[0].source)
    for var in ("QUICK", "OUT_DIR", "DATA"):
        assert var in names, f"{name}: the parameters cell does not set {var}"
    assert names["QUICK"] is False, f"{name}: QUICK must default to False"
    for c in nb.cells:
        if c.cell_type == "code":
            compile(c.source, name, "exec")
    return params[0]


def _assigned(source):
    """``{name: literal value}`` of the simple assignments of a cell (papermill parameters)."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def dirty_copy(name, path):
    """``name`` as Jupyter might save it after a run: outputs, execution counts, changed metadata."""
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    for i, cell in enumerate(nb.cells):
        cell.metadata["collapsed"] = False
        cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00.000000Z"}
        if cell.cell_type == "code":
            cell.execution_count = i + 7
            cell.outputs = [
                nbformat.v4.new_output("stream", name="stdout", text="STALE OUTPUT FROM AN EARLIER RUN\n"),
                nbformat.v4.new_output("execute_result", data={"text/plain": "'stale'"}, execution_count=i + 7),
            ]
    nb.metadata["kernelspec"]["display_name"] = "Python 3 (ipykernel)"
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.7", "mimetype": "text/x-python",
                                    "file_extension": ".py"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nbformat.write(nb, path)
    return Path(path)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_structure(name):
    check_structure(nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4), name)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_structure_survives_saved_outputs(name, tmp_path):
    """A notebook saved from Jupyter with outputs, execution counts and new metadata still passes."""
    path = dirty_copy(name, tmp_path / f"{name}.ipynb")
    nb = nbformat.read(path, as_version=4)
    assert any(c.get("outputs") for c in nb.cells) and nb.metadata["widgets"]  # the copy is dirty
    check_structure(nb, name)


def test_no_generator_left():
    """The .ipynb files are the source: no generator script to keep in sync."""
    assert not (NB_DIR / "make_notebooks.py").exists()


def _setup_namespace(name, quick, **params):
    """Execute the parameters cell, the overrides and the settings cell after it (no TensorFlow)."""
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    i = next(k for k, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    ns = {}
    exec(cells[i].source, ns)
    ns.update(QUICK=quick, **params)
    exec(cells[i + 1].source, ns)
    return ns


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_settings_cells_resolve_at_run_time(name, tmp_path, monkeypatch):
    """QUICK fills the settings left None, keeps what the user set; protocol values come from the library."""
    from clci_keras import experiments as ex
    from clci_keras.training import TrainConfig

    monkeypatch.chdir(tmp_path)
    quick_values = {"01_prepare_data": ex.QUICK_DATA, "02_train_clci_net": ex.QUICK_TRAINING,
                    "03_five_method_comparison": ex.QUICK_TABLES, "04_ablation": ex.QUICK_TABLES,
                    "05_visualization": ex.QUICK_VISUALIZATION}[name]
    user = {"N_SYNTHETIC": 5} if name == "01_prepare_data" else {"EVAL_SLICES": "all"}
    quick = _setup_namespace(name, True, **user)
    for key, value in user.items():
        assert quick[key] == value, (name, key)  # set by the user: kept in QUICK mode
    resolved = quick["settings"]
    for key in resolved:
        if key.lower() in quick_values and key not in user:
            assert resolved[key] == quick_values[key.lower()], (name, key)
    full = _setup_namespace(name, False)["settings"]
    defaults = ex.protocol_defaults()
    for key, value in full.items():
        assert value == defaults[key.lower()], (name, key)
    if "EPOCHS" in full:
        assert full["EPOCHS"] == TrainConfig().epochs and full["LEARNING_RATE"] == TrainConfig().learning_rate


# ---------------------------------------------------------------------------
# Executed in QUICK mode, sharing data and runs as the study does
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_h5(notebook_01):
    """Notebook 01's shared 3-subject synthetic file (tests/conftest.py: once per process)."""
    return str(notebook_01[0] / "atlas.h5")


@pytest.fixture(scope="module")
def nb02(quick_h5, tmp_path_factory):
    out = tmp_path_factory.mktemp("nb02")
    nb = execute("02_train_clci_net", out, DATA=quick_h5)
    return out, nb


@pytest.fixture(scope="module")
def shared_runs(nb02):
    """02's runs folder and split file: 03-05 train into / read from them."""
    out = nb02[0]
    return out / "runs", out / "split_kfold3.json"


@pytest.fixture(scope="module")
def table1_run(quick_h5, shared_runs, nb02, tmp_path_factory):
    runs, split = shared_runs
    before = (runs / "clci_net" / "fold0" / "result.json").stat().st_mtime
    out = tmp_path_factory.mktemp("nb03")
    nb = execute("03_five_method_comparison", out, DATA=quick_h5, RUNS_DIR=str(runs), SPLIT=str(split))
    return out, nb, before


def test_01_prepare_data(notebook_01):
    out, nb = notebook_01
    text = text_outputs(nb)
    assert "QUICK SYNTHETIC run" in text
    assert "STALE OUTPUT" not in text  # saved outputs are replaced, not kept
    for fig in ("lesion_volumes.png", "example_slices.png"):
        assert_png(out / "figures" / fig)
    rows = read_csv(out / "tables" / "subjects.csv")
    assert len(rows) == 3
    for r in rows:
        assert int(r["all_slices"]) == 189 and int(r["brain_slices"]) == 155
        assert 0 < int(r["lesion_slices"]) <= 155 and float(r["lesion_ml"]) > 0
        assert r["size"] in ("small", "medium", "large")
    summary = json.load(open(out / "tables" / "summary.json"))
    assert summary["synthetic"] is True and summary["quick"] is True and summary["subjects"] == 3
    assert summary["slices"] == 3 * 189
    import h5py

    with h5py.File(out / "atlas.h5", "r") as f:
        assert f["data"].shape == (3 * 189, 233, 197) and bool(f.attrs["synthetic"])


def test_02_train_clci_net(nb02, quick_h5):
    out, nb = nb02
    assert_png(out / "figures" / "training_curves_fold0.png")
    assert_png(out / "figures" / "test_patient_overlay.png")
    rows = read_csv(out / "tables" / "clci_net_test_scores.csv")
    assert len(rows) == 1 and 0.0 <= float(rows[0]["dsc"]) <= 1.0
    summary = {r[""]: r for r in read_csv(out / "tables" / "clci_net_test_summary.csv")}
    assert summary["dsc"]["data"] == "QUICK SYNTHETIC" and int(float(summary["dsc"]["n"])) == 1
    run = out / "runs" / "clci_net" / "fold0"
    result = json.load(open(run / "result.json"))
    assert result["epochs_run"] == 2 and result["data"]["synthetic"] is True
    assert result["data"]["h5"] == os.path.abspath(quick_h5)  # 01's file, not a copy
    assert (run / "clci_net_weights.h5").stat().st_size > 1e6
    log = read_csv(run / "log.csv")
    assert len(log) == 2 and "val_loss" in log[0]
    manifest = json.load(open(out / "weights" / "manifest.json"))
    entry = manifest["weights"][0]
    assert entry["training"]["synthetic"] is True
    assert entry["metrics"]["test"]["dsc"] == pytest.approx(float(rows[0]["dsc"]))  # scores registered
    assert "clci_net fold 0: 2 epochs" in text_outputs(nb)
    assert "(QUICK)" in text_outputs(nb) and "(protocol default)" in text_outputs(nb)  # settings printed


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


def test_03_five_method_comparison(table1_run, shared_runs):
    out, nb, clci_before = table1_run
    runs, _ = shared_runs
    _check_table(out / "tables", 1, TABLE1)
    assert_png(out / "figures" / "table1_dice.png")
    text = text_outputs(nb)
    for m in TABLE1[:-1]:  # trained here, one epoch each
        assert f"{m} fold 0: 1 epochs" in text, m
        assert (runs / m / "fold0" / f"{m}_weights.h5").is_file(), m
    # CLCI-Net: 02's run (same data, split and settings) reused, not retrained.
    assert "clci_net fold 0: 2 epochs" in text and "run already complete" in text
    assert (runs / "clci_net" / "fold0" / "result.json").stat().st_mtime == clci_before


def test_04_ablation_reusing_table1_runs(table1_run, quick_h5, shared_runs, tmp_path):
    runs, split = shared_runs
    before = {m: (runs / m / "fold0" / "result.json").stat().st_mtime for m in ("baseline", "clci_net")}
    nb = execute("04_ablation", tmp_path, DATA=quick_h5, RUNS_DIR=str(runs), SPLIT=str(split))
    _check_table(tmp_path / "tables", 2, TABLE2)
    assert_png(tmp_path / "figures" / "table2_dice.png")
    # Baseline and CLCI-Net were not retrained: their runs are 03's and 02's.
    for m, t in before.items():
        assert (runs / m / "fold0" / "result.json").stat().st_mtime == t, m
    text = text_outputs(nb)
    assert "run already complete" in text
    for m in ("clci_aspp", "clci_aspp_clf"):
        assert f"{m} fold 0: 1 epochs" in text, m


def test_05_visualization(table1_run, quick_h5, shared_runs, tmp_path):
    runs, _ = shared_runs
    original = runs / "clci_net" / "fold0" / "clci_net_weights.h5"  # Keras 2 layout, as the authors'
    execute("05_visualization", tmp_path, DATA=quick_h5, RUNS_DIR=str(runs), MODELS=list(VIS_MODELS),
            ORIGINAL_WEIGHTS=str(original))
    figs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert "dice_vs_lesion_volume.png" in figs
    assert any(f.startswith("overlay_subject") for f in figs), figs
    assert any(f.startswith("failure1_subject") for f in figs), figs
    for f in figs:
        assert_png(tmp_path / "figures" / f)
    scores = read_csv(tmp_path / "tables" / "per_patient_scores.csv")
    methods = {r["method"] for r in scores}
    assert methods == set(VIS_MODELS) | {"clci_net (authors)"}
    assert all(r["data"] == "QUICK SYNTHETIC" and 0 <= float(r["dsc"]) <= 1 for r in scores)
    # The same weights loaded through both routes give the same scores.
    dsc = {r["method"]: r["dsc"] for r in scores}
    assert dsc["clci_net"] == dsc["clci_net (authors)"]
    # ... and the scores of each run's own evaluation (a fresh network, then).
    for m in VIS_MODELS:
        run_scores = read_csv(runs / m / "fold0" / "scores_test.csv")
        assert float(dsc[m]) == pytest.approx(float(run_scores[0]["dsc"]), abs=1e-6), m
    sizes = read_csv(tmp_path / "tables" / "dice_by_lesion_size.csv")
    assert {r["size"] for r in sizes} == {"small", "medium", "large"}
    failures = read_csv(tmp_path / "tables" / "failure_cases.csv")
    assert {r["method"] for r in failures} == methods
    assert all(r["failure"] in ("missed", "over-segmentation", "under-segmentation") for r in failures)
