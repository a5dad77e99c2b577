"""benchmarks/gpu_check.sh: its --dry run on the CPU, the plumbing of the GPU check.

One ``bash benchmarks/gpu_check.sh --dry`` run (module fixture): synth -> prep ->
split of 3 synthetic subjects, training of the stand-in model at a 32x32 crop
for 3 steps of batch 2 on PyTorch and JAX in fp32 and bf16 (TensorFlow blocked
as on the GPU image), evaluate and predict after each backend's first
configuration. The rows of the JSONL file are checked for their configurations
and fields and for plausible values; a backend that is not importable here is
skipped (its rows must say so). No wall-time assertions: the timeout only
guards against a hang.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from conftest import JAX_CACHE_ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
BACKENDS = ("torch", "jax")
PRECISIONS = ("fp32", "bf16")
DRY_BATCH = 2
DRY_STEPS = 3
HANG_GUARD_S = 1800

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _importable(name):
    return importlib.util.find_spec(name) is not None


def _tail(text, n=60):
    return "\n".join(text.splitlines()[-n:])


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    if not any(_importable(b) for b in BACKENDS):
        pytest.skip("neither torch nor jax is importable")
    tmp = tmp_path_factory.mktemp("gpu_check")
    out, work = tmp / "out", tmp / "work"
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)  # the script sets it per step
    env.update(JAX_CACHE_ENV)  # the tests' JAX cache instead of one in WORK: the script keeps a given one
    proc = subprocess.run(["bash", SCRIPT, "--dry", "--out", str(out), "--work", str(work), "--python", sys.executable],
                          capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, f"stdout:\n{_tail(proc.stdout)}\nstderr:\n{_tail(proc.stderr)}"
    files = glob.glob(str(out / "gpu_check_*.jsonl"))
    assert len(files) == 1, files
    with open(files[0]) as f:
        rows = [json.loads(line) for line in f]
    return dict(proc=proc, rows=rows, out=out, work=work, jsonl=files[0])


def _train_rows(dry):
    return [r for r in dry["rows"] if r["kind"] == "train"]


def test_machine_row_and_data_steps(dry):
    head = dry["rows"][0]
    assert head["kind"] == "machine" and head["dry"] is True
    assert head["machine"]["gpus"] == [] or isinstance(head["machine"]["gpus"], list)
    steps = head["pipeline"]
    for name in ("synth_s", "prep_s", "split_s"):
        assert steps[name] > 0
    assert steps["subjects"] == {"train": 1, "val": 1, "test": 1}
    assert os.path.exists(steps["test_t1"])
    # the run id ties the rows of one run together
    assert {r["run_id"] for r in dry["rows"]} == {head["run_id"]}


def test_configurations(dry):
    rows = _train_rows(dry)
    got = sorted((r["backend"], r["precision"], r["batch"]) for r in rows)
    want = sorted((b, p, DRY_BATCH) for b in BACKENDS for p in PRECISIONS)
    assert got == want
    for r in rows:
        if _importable(r["backend"]):
            assert "skipped" not in r and "error" not in r, r
        else:
            assert "not importable" in r["skipped"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_rows(dry, backend):
    if not _importable(backend):
        pytest.skip(f"{backend} is not importable")
    rows = [r for r in _train_rows(dry) if r["backend"] == backend]
    assert len(rows) == len(PRECISIONS)
    for r in rows:
        assert r["backend"] == backend and r["device"] == "cpu" and r["dry"] is True
        assert r["model"] == "gpu_check_tiny" and r["input_shape"] == [32, 32]
        assert r["precision_run"] in (r["precision"], "fp32")  # bf16 falls back on CPUs without native BF16
        assert r["steps"] == r["steps_run"] == DRY_STEPS
        assert r["result"]["optimizer_iterations"] == DRY_STEPS and r["result"]["dry_run"] is True
        for key in ("slices_per_s", "step_ms_median", "time_to_first_step_s", "fwd_gflop_per_slice"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
        assert r["first_step_s"] >= 0 and r["time_to_first_step_s"] >= r["first_step_s"]
        assert math.isfinite(r["train_tflops"]) and r["train_tflops"] >= 0
        assert math.isfinite(r["mfu"]) and 0 <= r["mfu"] < 1
        assert r["peak_tflops_bf16"] == pytest.approx(989.4)
        assert r["peak_gpu_bytes"] is None  # no GPU here
        assert r["peak_rss_bytes"] > 0
        assert r["loss_finite"] is True and math.isfinite(r["loss_last"]) and 0 <= r["loss_last"] <= 1
        assert r["val_loss"] is not None and math.isfinite(r["val_loss"])
        assert os.path.exists(r["weights"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_and_predict_after_first_configuration(dry, backend):
    if not _importable(backend):
        pytest.skip(f"{backend} is not importable")
    rows = [r for r in _train_rows(dry) if r["backend"] == backend]
    first, rest = rows[0], rows[1:]
    assert first["evaluate_rc"] == 0 and first["predict_rc"] == 0
    assert first["evaluate_s"] > 0 and first["predict_s"] > 0
    assert 0 <= first["test_dice"] <= 1
    assert os.path.exists(first["evaluate_summary"])
    assert os.path.exists(first["predict_mask"])
    assert first["predict_mask_shape"] == [197, 233, 189]  # the input scan's grid
    assert first["predict_lesion_voxels"] >= 0
    assert all("predict_mask" not in r for r in rest)  # --eval first


def test_summary_printed_and_written(dry):
    stdout = dry["proc"].stdout
    assert "| backend | precision (run) | batch |" in stdout
    md = glob.glob(str(dry["out"] / "gpu_check_*.md"))
    assert len(md) == 1
    with open(md[0]) as f:
        assert "| backend | precision (run) | batch |" in f.read()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine would run the full check")
def test_full_run_refuses_a_machine_without_gpu(tmp_path):
    proc = subprocess.run(["bash", SCRIPT, "--wheels", str(tmp_path / "none"), "--out", str(tmp_path / "out"),
                           "--python", sys.executable], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "no NVIDIA GPU found" in proc.stderr or "not importable" in proc.stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_help():
    proc = subprocess.run(["bash", SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "--download-wheels" in proc.stdout and "--dry" in proc.stdout
