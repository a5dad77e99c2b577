"""The backend test set: JAX and PyTorch, each in processes where TensorFlow cannot be imported.

Each test runs its work in a child process with ``KERAS_BACKEND`` set and
``tests/without_tensorflow`` first on ``PYTHONPATH`` (its ``sitecustomize``
hides TensorFlow and tf_keras from every import, as on a machine without
them; the child's own children inherit it). What needs TensorFlow (the
Keras-2 reference network) runs here, in the TensorFlow test process, and
hands files to the child. A backend that is not installed is skipped; CI
installs both (``.[jax,torch]``).

* parity: the original Keras-2 weights give the Keras-2 reference's outputs (<= 1e-5);
* ``fit`` trains on batches 0, 1, 2, ... of the input, as on TensorFlow;
* one seed, one start: the initial weights drawn from a seed and the dropout masks are
  TensorFlow's exactly, and CLCI-Net's training-mode outputs TensorFlow's (<= 1e-4);
* the Keras 2.2 BatchNormalization update (tests/test_batchnorm.py's traced-step
  and CLCI-Net checks, run on the backend) (<= 1e-5 relative);

  (these four run in one child per backend, :data:`CHECKS`; each test reads its part)
* ``clci-keras train`` on a streamed input, killed after its first epoch and
  started again (it resumes), then ``evaluate`` and ``predict`` of a NIfTI scan,
  all through the command line, on a 32 x 32 window;
* ``clci-keras bids`` participant and group levels: the masks and probability maps of
  TensorFlow (<= 1e-5);

  (the commands after the killed ``train`` run in one child per backend, :func:`command_line`)
* notebook 02 in QUICK mode, its kernel on the backend;
* the multi-process JAX distribution: tests/test_multiworker.py (JAX case).
"""
import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import JAX_CACHE_ENV
from test_training import CROP, MODEL, tiny  # noqa: F401  (the module-scoped tiny HDF5 file and split)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
BLOCKER = os.path.join(TESTS, "without_tensorflow")
BACKENDS = ("jax", "torch")
HANG_GUARD = 1800  # seconds; only against a hung child, never reached by a working one


def installed(backend):
    return importlib.util.find_spec(backend) is not None


def backend_env(backend, **extra):
    """The environment of a child process on ``backend`` without TensorFlow."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(KERAS_BACKEND=backend, PYTHONPATH=os.pathsep.join([BLOCKER, TESTS, ROOT]),
               CUDA_VISIBLE_DEVICES="", **extra)
    if backend == "jax":
        env.update(JAX_CACHE_ENV)
    if backend == "torch":  # one thread per process: the suite runs two workers on two cores, and
        env.setdefault("OMP_NUM_THREADS", "1")  # PyTorch's threads spin at barriers on a shared CPU
    return env


def run_child(backend, args, env=None, **kw):
    """Run ``[python, *args]`` on ``backend`` (``env``: more variables); fail with its output unless it exits 0."""
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=HANG_GUARD,
                         env=backend_env(backend, **(env or {})), **kw)
    assert res.returncode == 0, f"exit {res.returncode}\n--- stdout:\n{res.stdout[-3000:]}\n--- stderr:\n" \
                                f"{res.stderr[-5000:]}"
    return res.stdout


per_backend = pytest.mark.parametrize("backend", [
    pytest.param(b, marks=pytest.mark.skipif(not installed(b), reason=f"{b} is not installed")) for b in BACKENDS])


#: tests/test_batchnorm.py's checks run on each backend: the traced training step on both; the
#: 50 BatchNormalizations of CLCI-Net (3 steps run eagerly) on PyTorch, whose steps are eager
#: anyway (on JAX an eager CLCI-Net step compiles each operation apart: minutes of CPU); and on
#: PyTorch, that a BatchNormalization keeps one full-size tensor for the backward pass.
BATCHNORM_CHECKS = {"jax": ["test_a_compiled_training_step_updates_as_keras_224"],
                    "torch": ["test_a_compiled_training_step_updates_as_keras_224",
                              "test_clci_net_trained_a_few_steps_ends_with_the_keras_224_statistics",
                              "pytorch_keeps_one_full_size_tensor",
                              "test_one_value_per_channel_trains_to_beta"]}

#: The in-process checks of one backend, in one child (a process start with Keras and the
#: backend imported costs 5-9 s): each writes its result into ``results``; a check that raises
#: records its traceback, and the test that reads it fails with it.
CHECKS = textwrap.dedent("""
    import importlib.util, json, sys, traceback
    import numpy as np
    import keras

    refs, out, batchnorm_checks = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    results = {"backend": keras.backend.backend(),
               "tensorflow_hidden": importlib.util.find_spec("tensorflow") is None
               and importlib.util.find_spec("tf_keras") is None and "tensorflow" not in sys.modules}

    def check(name, fn):
        try:
            results[name] = fn()
        except BaseException:
            results[name] = {"error": traceback.format_exc()}

    def seeded():
        import test_seeding
        test_seeding.training_mode_outputs(out + "/seeded.npz")
        return "written"

    def parity():
        from clci_keras.models import CLCI_Net, load_weights
        from clci_keras.models.seeding import deferred_initializers
        x, expected = np.load(refs + "/x.npy"), np.load(refs + "/expected.npy")
        with deferred_initializers():  # as build_with_weights (predict, evaluate) builds it
            model = CLCI_Net(input_shape=x.shape[1:])
        kind = load_weights(model, refs + "/keras2_weights.h5")
        got = model.predict(x, batch_size=len(x), verbose=0)  # one compiled forward pass (JAX: jitted)
        return {"loaded_as": kind, "max_diff": float(np.abs(got - expected).max())}

    def batchnorm():
        import test_batchnorm
        for name in batchnorm_checks:
            getattr(test_batchnorm, name)()
        return batchnorm_checks

    def fit_order():
        import test_batches
        return test_batches.fit_order()

    check("seeded", seeded)  # first: nothing built before it
    check("parity", parity)
    check("batchnorm", batchnorm)
    check("fit_order", fit_order)
    results["tensorflow_still_absent"] = "tensorflow" not in sys.modules
    try:
        import tensorflow
        results["import_tensorflow"] = "imported"
    except ModuleNotFoundError:
        results["import_tensorflow"] = "ModuleNotFoundError"
    with open(out + "/results.json", "w") as f:
        json.dump(results, f)
    """)


@pytest.fixture(scope="module")
def tensorflow_references(tmp_path_factory):
    """What the children compare with, made here on TensorFlow: the Keras-2 reference network's
    weights, inputs and outputs (parity) and the seeded start's training-mode outputs."""
    from keras2_reference import randomize_keras2, reference_clci_net
    from test_seeding import training_mode_outputs

    refs = tmp_path_factory.mktemp("tensorflow_references")
    shape = (48, 32, 1)
    ref = reference_clci_net(shape)
    randomize_keras2(ref, seed=48)
    ref.save_weights(str(refs / "keras2_weights.h5"))
    x = np.random.default_rng(2).uniform(0, 1, (3, *shape)).astype("float32")
    expected = ref(x, training=False).numpy()
    assert expected.std() > 1e-4
    np.save(refs / "x.npy", x)
    np.save(refs / "expected.npy", expected)
    training_mode_outputs(str(refs / "seeded.npz"))
    return refs


@pytest.fixture(scope="module")
def checks(tensorflow_references, tmp_path_factory):
    """``checks(backend)``: the results of :data:`CHECKS` on ``backend`` (its child runs once)."""
    done = {}

    def run(backend):
        if backend not in done:
            out = tmp_path_factory.mktemp(f"checks_{backend}")
            run_child(backend, ["-c", CHECKS, str(tensorflow_references), str(out),
                                ",".join(BATCHNORM_CHECKS[backend])])
            with open(out / "results.json") as f:
                done[backend] = dict(json.load(f), out=out)
        return done[backend]

    return run


def result(checks, backend, name):
    """The result of check ``name`` on ``backend``; fails with the child's traceback if it raised."""
    got = checks(backend)[name]
    assert not (isinstance(got, dict) and "error" in got), got["error"] if isinstance(got, dict) else got
    return got


def test_the_blocker_hides_tensorflow(checks):
    results = checks("jax" if installed("jax") else "torch")
    assert results["tensorflow_hidden"] and results["tensorflow_still_absent"]
    assert results["import_tensorflow"] == "ModuleNotFoundError"


@per_backend
def test_original_keras2_weights_give_the_reference_outputs(backend, checks):
    got = result(checks, backend, "parity")
    assert checks(backend)["backend"] == backend
    assert got["loaded_as"] == "legacy_weights" and got["max_diff"] <= 1e-5


@per_backend
def test_fit_trains_on_the_batches_in_order(backend, checks):
    assert result(checks, backend, "fit_order") == [0, 1, 2, 3, 4, 5]


@per_backend
def test_seeded_start_and_dropout_equal_tensorflows(backend, checks, tensorflow_references):
    result(checks, backend, "seeded")
    ref, got = np.load(tensorflow_references / "seeded.npz"), np.load(checks(backend)["out"] / "seeded.npz")
    assert sorted(ref.files) == sorted(got.files)
    for key in ref.files:
        if key.startswith("arr_") or key.startswith("mask"):  # weights and masks: bit for bit
            np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    assert not np.array_equal(ref["mask0"], ref["mask1"])
    for key in ("out0", "out1"):  # dropout on, BatchNorm on batch statistics of 2 images: 3e-5 measured
        np.testing.assert_allclose(got[key], ref[key], atol=1e-4, err_msg=key)
    assert np.abs(ref["out0"] - ref["out1"]).max() > 1e-3  # the two calls' masks differ


@per_backend
def test_batchnorm_updates_as_keras_224(backend, checks):
    assert result(checks, backend, "batchnorm") == BATCHNORM_CHECKS[backend]


#: Test-only: the child pauses after its first epoch's resume point (then the test kills it).
PAUSE_WRAPPER = textwrap.dedent("""
    import os, sys, time
    import test_training  # registers the tiny model
    from clci_keras.cli import main
    from clci_keras.training import callbacks

    pause = os.environ.get("PAUSE_FILE")
    if pause:
        class PauseAfterFirstEpoch(callbacks.ResumePoint):
            def on_epoch_end(self, epoch, logs=None):
                super().on_epoch_end(epoch, logs)
                if epoch == 0:
                    open(pause, "w").close()
                    time.sleep(3600)

        callbacks.ResumePoint = PauseAfterFirstEpoch
    sys.exit(main(sys.argv[1:]))
    """)


#: Test-only: ``clci-keras`` commands run one after the other in one process (a process start
#: costs 5-9 s). argv[1]: a JSON list of argvs; argv[2]: where each command's exit status (or the
#: traceback it raised) is written, as a JSON list. A failed command does not stop the others.
COMMANDS = textwrap.dedent("""
    import json, sys, traceback
    import test_bids  # registers the BIDS App's stand-in model
    import test_training  # registers the tiny model
    from clci_keras.cli import main

    done = []
    for argv in json.loads(sys.argv[1]):
        try:
            done.append(main(argv))
        except BaseException:
            done.append(traceback.format_exc())
        print(f"=== exit {done[-1]!r:.2000}", flush=True)
        with open(sys.argv[2], "w") as f:
            json.dump(done, f)
    """)


@pytest.fixture(scope="module")
def bids_reference(tmp_path_factory):
    """The BIDS App's inputs and TensorFlow's participant-level outputs, made once for both backends."""
    pytest.importorskip("bids", reason="pybids (the [bids] extra) is not installed")
    import test_bids

    from clci_keras.bids.synthetic import write_synthetic_bids
    from clci_keras.cli import main
    from clci_keras.models import save_weights_legacy

    tmp = tmp_path_factory.mktemp("bids_reference")
    ds, weights = tmp / "ds", tmp / "band.h5"
    write_synthetic_bids(ds, seed=0, kinds=("mni", "sessions"))  # on the template grid, and reoriented
    save_weights_legacy(test_bids._band_model(), str(weights))
    participant = ["participant", "--weights", str(weights), "--model", test_bids.MODEL, *test_bids.FAST]
    assert main(["bids", str(ds), str(tmp / "tf"), *participant]) == 0
    return dict(ds=ds, participant=participant, root=tmp / "tf" / "clci_keras")


@pytest.fixture(scope="module")
def command_line(tiny, synthetic_r11_dir, bids_reference, tmp_path_factory):
    """``command_line(backend)``: the command-line runs of one backend, made once.

    ``clci-keras train`` on a streamed input, paused after its first epoch's resume point and
    killed; then one child (:data:`COMMANDS`) runs the same ``train`` again (it resumes),
    ``evaluate`` and ``predict`` of a NIfTI scan, and ``bids`` participant and group levels.
    """
    done = {}

    def run(backend):
        if backend not in done:
            done[backend] = _command_line(backend, tiny, synthetic_r11_dir, bids_reference,
                                          tmp_path_factory.mktemp(f"cli_{backend}"))
        return done[backend]

    return run


def _command_line(backend, tiny, synthetic_r11_dir, bids_reference, tmp):
    h5, split = tiny
    run = str(tmp / "run")
    train = ["train", "--model", MODEL, "--h5", h5, "--split", split, "--crop", CROP, "--out", run,
             "--batch-size", "2", "--val-batch-size", "8", "--epochs", "3", "--steps-per-epoch", "2",
             "--train-slices", "lesion+2", "--val-slices", "lesion", "--lr", "1e-3", "--input-mode", "stream",
             "--stream-buffer", "1", "--export", "last", "--quiet"]
    pause = tmp / "paused"
    child = subprocess.Popen([sys.executable, "-c", PAUSE_WRAPPER, *train], env=backend_env(backend, PAUSE_FILE=str(pause)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + HANG_GUARD
        while not pause.exists() and child.poll() is None and time.monotonic() < end:
            time.sleep(0.2)
        assert pause.exists(), child.communicate(timeout=60)[0][-5000:] if child.poll() is not None else "hung"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    killed_at = json.load(open(os.path.join(run, "backup", "latest.json")))["epoch"]

    weights = os.path.join(run, f"{MODEL}_weights.h5")
    scan = next(p for p in sorted(synthetic_r11_dir.rglob("*.nii.gz")) if "t1w" in p.name.lower())
    ds, bids_out = str(bids_reference["ds"]), str(tmp / "bids")
    commands = {
        "train": train,  # the same command again
        "evaluate": ["evaluate", "--model", MODEL, "--weights", weights, "--h5", h5, "--split", split, "--crop",
                     CROP, "--out", run, "--quiet"],
        "predict": ["predict", str(scan), "-o", str(tmp / "mask.nii.gz"), "--model", MODEL, "--weights", weights,
                    "--no-qc", "--quiet"],
        "bids participant": ["bids", ds, bids_out, *bids_reference["participant"]],
        "bids group": ["bids", ds, bids_out, "group"],
    }
    statuses = tmp / "statuses.json"
    res = subprocess.run([sys.executable, "-c", COMMANDS, json.dumps(list(commands.values())), str(statuses)],
                         capture_output=True, text=True, timeout=HANG_GUARD, cwd=str(tmp), env=backend_env(backend))
    got = json.load(open(statuses)) if statuses.exists() else []
    return dict(killed_at=killed_at, run=run, scan=scan, mask=tmp / "mask.nii.gz", bids=tmp / "bids" / "clci_keras",
                status=dict(zip(commands, got)), log=res.stdout + res.stderr,
                output=f"exit {res.returncode}\n--- stdout:\n{res.stdout[-3000:]}\n--- stderr:\n{res.stderr[-5000:]}")


def ran(runs, *names):
    """Fail with the child's output unless the commands ``names`` exited 0."""
    for name in names:
        assert runs["status"].get(name) == 0, f"{name}: {runs['status'].get(name, 'not run')}\n{runs['output']}"


@per_backend
def test_cli_train_killed_resumes_then_evaluate_and_predict(backend, command_line):
    import nibabel as nib

    runs = command_line(backend)
    run = runs["run"]
    assert runs["killed_at"] == 1
    ran(runs, "train")
    assert f"resuming {run} after epoch 1" in runs["log"], runs["output"]
    result = json.load(open(os.path.join(run, "result.json")))
    assert result["backend"] == backend and result["epochs_run"] == 3 and result["optimizer_iterations"] == 6
    assert result["input_plan"]["mode"] == "stream" and np.isfinite(result["final"]["loss"])
    assert [r["epoch"] for r in csv.DictReader(open(os.path.join(run, "log.csv")))] == ["0", "1", "2"]
    assert os.path.isdir(os.path.join(run, "tensorboard", "train")) and not os.path.exists(os.path.join(run, "backup"))

    ran(runs, "evaluate", "predict")
    rows = list(csv.DictReader(open(os.path.join(run, "scores_test.csv"))))
    assert [r["subject_id"] for r in rows] == ["s3"] and 0.0 <= float(rows[0]["dsc"]) <= 1.0
    img, seg = nib.load(str(runs["scan"])), nib.load(str(runs["mask"]))
    assert seg.shape == img.shape and np.allclose(seg.affine, img.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}


@per_backend
def test_notebook_02_quick(backend, notebook_01, tmp_path, monkeypatch):
    """Notebook 02 in QUICK mode with its kernel on ``backend`` (TensorFlow hidden from the kernel),
    on the file of notebook 01 run here; tests/test_notebooks.py's checks."""
    import test_notebooks

    for name in [k for k in os.environ if k.startswith("PYTEST_")]:
        monkeypatch.delenv(name)
    for name, value in backend_env(backend).items():  # the kernel inherits this environment
        monkeypatch.setenv(name, value)
    quick_h5 = str(notebook_01[0] / "atlas.h5")
    out = tmp_path / "nb02"
    nb = test_notebooks.execute("02_train_clci_net", out, DATA=quick_h5)
    test_notebooks.test_02_train_clci_net((out, nb), quick_h5)
    assert json.load(open(out / "runs" / "clci_net" / "fold0" / "result.json"))["backend"] == backend


@per_backend
def test_bids_app_participant_and_group_match_tensorflow(backend, command_line, bids_reference):
    """`clci-keras bids` (participant, then group) on the backend: the same masks and maps as on TensorFlow."""
    import nibabel as nib

    runs = command_line(backend)
    ran(runs, "bids participant", "bids group")
    ref_root, root = bids_reference["root"], runs["bids"]
    maps = sorted(p.relative_to(ref_root) for p in ref_root.rglob("*_probseg.nii.gz"))
    assert len(maps) == 3  # sub-01, sub-02 ses-1 and ses-2
    for rel in maps:
        ref, got = nib.load(ref_root / rel), nib.load(root / rel)
        np.testing.assert_array_equal(got.affine, ref.affine)
        assert np.abs(got.get_fdata() - ref.get_fdata()).max() <= 1e-5, rel
        mask = str(rel).replace("_probseg", "_mask")
        np.testing.assert_array_equal(np.asanyarray(nib.load(root / mask).dataobj),
                                      np.asanyarray(nib.load(ref_root / mask).dataobj))
    assert (root / "group" / "lesions.tsv").exists() and (root / "group.html").exists()
    assert len(list((root / "anat").glob("space-*_label-L_desc-overlap_probseg.nii.gz"))) == 1
    sidecar = json.loads(next(root.rglob("sub-01*_mask.json")).read_text())
    assert backend in json.dumps(sidecar["SoftwareUsed"])
