"""Multi-worker training: two local CPU worker processes, on TensorFlow and on JAX.

TensorFlow: MultiWorkerMirroredStrategy, the cluster in ``TF_CONFIG``. JAX
(without TensorFlow: tests/without_tensorflow on ``PYTHONPATH``):
``keras.distribution.initialize`` from the ``KERAS_DISTRIBUTION_*`` variables
and ``DataParallel`` over both processes' CPU devices, gloo collectives.

The run is killed after its first epoch (worker 1 first, then the chief, as a
Slurm or Kubernetes job restart does), relaunched with the same commands, and
must resume after that epoch, finish, and leave both workers with identical
weights. Each worker records what its train step was fed, to check that every
global batch is split between the two workers (TensorFlow; under JAX each
process reads its half of every batch, tests/test_batches.py).

The model is a three-block U-Net registered by the worker script
(``mw_tiny``, 841 parameters): on the 2-core test machine the first training
step of a registered model at 32 x 32 costs 15-100 CPU-seconds of tracing
(fcn8s 15, with 41 M parameters to save at every epoch; baseline 26; pspnet 67;
deeplabv3plus 92; clci_net ~100), and four processes trace one each.
"""
import csv
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from test_training import CROP, write_tiny_h5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANG_GUARD = 900  # seconds; only against a hang, ended as soon as the processes are done
BATCH, STEPS, EPOCHS = 4, 2, 3

#: The worker script's start on TensorFlow: the model class records what each replica trains on.
WORKER_TF = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    import keras
    import numpy as np
    import tensorflow as tf

    FEED = os.environ["MW_FEED"]


    def record(x):
        with open(FEED, "a") as f:
            f.write(" ".join(repr(float(v)) for v in np.asarray(x, np.float64).sum(axis=(1, 2, 3))) + "\\n")
        return np.int64(0)


    class ModelClass(keras.Model):
        # writes the per-slice sums of every batch this replica trains on
        def train_step(self, data):
            done = tf.numpy_function(record, [data[0]], tf.int64, stateful=True)
            with tf.control_dependencies([done]):
                return super().train_step(data)
    """
)

#: On JAX, without TensorFlow: no feed record (the step sees the global batch; each process reads
#: its part of it, tests/test_batches.py checks the parts).
WORKER_JAX = textwrap.dedent(
    """
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    import keras
    import numpy as np

    assert "tensorflow" not in sys.modules and keras.backend.backend() == "jax"
    ModelClass = keras.Model
    """
)

#: The rest of the worker script, the same on both backends.
WORKER_RUN = textwrap.dedent(
    """
    from clci_keras.models import register_model
    from clci_keras.models.clci_net import conv_bias_bn_relu as conv_bn_relu
    from clci_keras.training import train

    DUMP, PAUSE = os.environ["MW_DUMP"], os.environ.get("MW_PAUSE")


    def mw_tiny(input_shape=(32, 32, 1), num_class=1, name="mw_tiny"):
        inputs = keras.Input(input_shape)
        a = conv_bn_relu(inputs, 4, name="a")
        b = conv_bn_relu(keras.layers.MaxPooling2D()(a), 8, name="b")
        c = conv_bn_relu(keras.layers.Concatenate()([a, keras.layers.UpSampling2D()(b)]), 4, name="c")
        outputs = keras.layers.Conv2D(num_class, 1, activation="sigmoid", name="out")(c)
        return ModelClass(inputs, outputs, name=name)


    register_model("mw_tiny", mw_tiny, description="test model", reference="tests/test_multiworker.py")


    class Dump(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            arrays = {{"w/" + v.path: keras.ops.convert_to_numpy(v) for v in self.model.weights}}
            arrays.update({{"opt/" + v.path: keras.ops.convert_to_numpy(v) for v in self.model.optimizer.variables}})
            np.savez(DUMP, **arrays)


    class PauseAfterFirstEpoch(keras.callbacks.Callback):
        # runs after the resume point is written; the test kills the process here
        def on_epoch_end(self, epoch, logs=None):
            if PAUSE and epoch == 0:
                open(PAUSE, "w").close()
                time.sleep(3600)


    res = train("mw_tiny", {h5!r}, {split!r}, {out!r}, strategy="multiworker",
                callbacks=[Dump(), PauseAfterFirstEpoch()], **{opts!r})
    print("RESULT", json.dumps(res, default=str))
    """
)
BLOCKER = os.path.join(ROOT, "tests", "without_tensorflow")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from clci_keras.data.splits import save_split

    d = tmp_path_factory.mktemp("tiny_mw")
    h5 = write_tiny_h5(str(d / "tiny.h5"), n_subjects=3)
    split = str(d / "split.json")
    save_split({"train": [0, 1], "val": [2], "test": [], "subject_ids": ["s0", "s1", "s2"],
                "mode": "holdout"}, split)
    return h5, split


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path, n=3000):
    with open(path, errors="replace") as f:
        return f.read()[-n:]


def _cluster_env(backend, ports, i):
    """The variables that place worker ``i`` in its cluster on ``backend``."""
    if backend == "jax":
        return {"KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join([BLOCKER, ROOT]), "CUDA_VISIBLE_DEVICES": "",
                "KERAS_DISTRIBUTION_JOB_ADDRESSES": ",".join(f"127.0.0.1:{p}" for p in ports),
                "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": str(i)}
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return {"KERAS_BACKEND": "tensorflow",
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}


def _launch(script, ports, folder, attempt, pause_worker=None, backend="tensorflow"):
    """The two workers of one attempt: [(process, stdout path, stderr path)], chief first."""
    procs = []
    for i in range(2):
        # TensorFlow's own thread pools: with TF_NUM_INTEROP_THREADS=2 and TF_NUM_INTRAOP_THREADS=1
        # the workers' collectives stalled until the heartbeat timeout in 2 of 3 runs.
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **_cluster_env(backend, ports, i),
               "MW_FEED": str(folder / f"feed{attempt}_{i}.txt"), "MW_DUMP": str(folder / f"weights{i}.npz")}
        env.pop("MW_PAUSE", None)
        if i == pause_worker:
            env["MW_PAUSE"] = str(folder / "paused")
        out, err = folder / f"out{attempt}_{i}.txt", folder / f"err{attempt}_{i}.txt"
        with open(out, "w") as fo, open(err, "w") as fe:
            procs.append((subprocess.Popen([sys.executable, "-c", script], stdout=fo, stderr=fe, env=env),
                          out, err))
    return procs


def _fail(procs, why):
    for p, _, _ in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    tails = "\n".join(f"--- worker {i} (rc {p.returncode}) stdout:\n{_tail(o, 1500)}\n--- stderr:\n{_tail(e)}"
                      for i, (p, o, e) in enumerate(procs))
    pytest.fail(f"{why}\n{tails}")


def _wait_until(procs, done, exit_fails=True):
    """Poll until ``done()``; fail with the workers' output if a worker exits first (with ``exit_fails``)
    or fails, or after the hang guard."""
    end = time.monotonic() + HANG_GUARD
    while not done():
        codes = [p.poll() for p, _, _ in procs]
        if any(c is not None and (exit_fails or c != 0) for c in codes):
            _fail(procs, "a worker exited early" if exit_fails else "a worker failed")
        if time.monotonic() > end:
            _fail(procs, f"hang guard: not done after {HANG_GUARD} s")
        time.sleep(0.2)


def _epochs_backed_up(run):
    try:
        with open(os.path.join(run, "backup", "latest.json")) as f:
            return json.load(f)["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.parametrize("backend", [
    "tensorflow",
    pytest.param("jax", marks=pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="no JAX"))])
def test_two_workers_resume_after_a_kill_and_end_with_identical_weights(tiny, tmp_path, backend):
    from clci_keras.data import SliceReader, select_slices
    from clci_keras.data.reader import batch_indices

    h5, split = tiny
    run = str(tmp_path / "run")
    opts = dict(crop=CROP, batch_size=BATCH, steps_per_epoch=STEPS, epochs=EPOCHS, val_batch_size=10,
                train_slices="lesion", val_slices="lesion", tensorboard=False, verbose=2, learning_rate=1e-3,
                export="last", early_stopping_patience=50, reduce_lr_patience=1, reduce_lr_min_delta=10.0)
    start = WORKER_JAX if backend == "jax" else WORKER_TF
    script = (start + WORKER_RUN).format(root=ROOT, h5=h5, split=split, out=run, opts=opts)
    ports = _free_ports(2)
    launched = []
    try:
        # Attempt 1: worker 1 stops after epoch 1 (its own callbacks done), then both are killed.
        procs = _launch(script, ports, tmp_path, 1, pause_worker=1, backend=backend)
        launched += procs
        _wait_until(procs, lambda: (tmp_path / "paused").exists() and _epochs_backed_up(run) >= 1)
        for p, _, _ in reversed(procs):  # worker 1, then the chief (blocked in a collective)
            p.send_signal(signal.SIGKILL)
            p.wait()
        assert _epochs_backed_up(run) == 1
        assert [r["epoch"] for r in csv.DictReader(open(os.path.join(run, "log.csv")))] == ["0"]

        # Attempt 2: the same commands.
        procs = _launch(script, ports, tmp_path, 2, backend=backend)
        launched += procs
        _wait_until(procs, lambda: all(p.poll() == 0 for p, _, _ in procs), exit_fails=False)
    finally:
        for p, _, _ in launched:
            if p.poll() is None:
                p.kill()
                p.wait()
    outs = [open(o).read() for _, o, _ in procs]
    results = [json.loads(next(l for l in o.splitlines() if l.startswith("RESULT"))[7:]) for o in outs]
    assert f"resuming {run} after epoch 1" in outs[0]
    assert f"resuming {os.path.join(run, '.workers', 'worker_1')} after epoch 1" in outs[1]

    # The chief wrote the run; worker 1's private folder is gone.
    log = list(csv.DictReader(open(os.path.join(run, "log.csv"))))
    assert [r["epoch"] for r in log] == ["0", "1", "2"]
    # LR x0.2 after epoch 2 (min_delta 10: no improvement), decided by both workers with the
    # ReduceLROnPlateau state of the chief's resume point
    assert [float(r["learning_rate"]) for r in log] == pytest.approx([1e-3, 1e-3, 2e-4])
    saved = json.load(open(os.path.join(run, "result.json")))
    assert saved["epochs_run"] == EPOCHS and saved["replicas"] == 2
    assert saved["optimizer_iterations"] == EPOCHS * STEPS
    assert saved["worker"] == {"task_type": "worker", "task_id": 0, "chief": True}
    assert results[1]["worker"]["chief"] is False and results[1]["epochs_run"] == EPOCHS
    assert results[1]["final"] == pytest.approx(saved["final"])
    assert os.path.exists(os.path.join(run, "mw_tiny_weights.h5"))
    assert not os.path.exists(os.path.join(run, "backup"))
    assert not os.path.exists(os.path.join(run, ".workers"))

    # Identical weights (BatchNorm moving statistics and Adam moments included).
    w0, w1 = np.load(tmp_path / "weights0.npz"), np.load(tmp_path / "weights1.npz")
    assert sorted(w0.files) == sorted(w1.files)
    assert any("moving_variance" in k for k in w0.files) and any(k.startswith("opt/") for k in w0.files)
    for k in w0.files:
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)

    assert saved["backend"] == backend
    if backend != "tensorflow":
        return
    # Each global batch of 4 was split: worker 0 trained on its first 2 slices, worker 1 on the other 2.
    fed = [[[float(v) for v in line.split()] for line in open(tmp_path / f"feed2_{i}.txt")] for i in range(2)]
    assert len(fed[0]) == len(fed[1]) == (EPOCHS - 1) * STEPS
    train_idx = select_slices(h5, [0, 1], "lesion", crop=CROP, seed=0)
    with SliceReader(h5, CROP) as reader:
        for k, batch in enumerate(batch_indices(train_idx, BATCH, seed=0, first_batch=STEPS,
                                                n_batches=(EPOCHS - 1) * STEPS)):
            sums = reader.read(batch)[0].astype(np.float64).sum(axis=(1, 2, 3))
            assert fed[0][k] == sums[:2].tolist() and fed[1][k] == sums[2:].tolist(), k


def test_where_multiworker_finds_its_cluster(monkeypatch):
    """TF_CONFIG first, else a Slurm job step (srun), else an error naming TF_CONFIG; nothing is launched."""
    from clci_keras.training import distribution as trainer, tf_distribute

    worker = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    slurm = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2",
             "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}
    assert trainer.cluster_source({"TF_CONFIG": json.dumps(worker), **slurm}) == "TF_CONFIG"
    assert trainer.cluster_source(slurm) == "slurm"
    with pytest.raises(ValueError, match="TF_CONFIG"):
        trainer.cluster_source({})
    with pytest.raises(ValueError, match="TF_CONFIG.*srun"):
        trainer.cluster_source({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0"})  # the batch script, not a step

    assert trainer.worker_role({"TF_CONFIG": json.dumps(worker)}) == {
        "task_type": "worker", "task_id": 1, "chief": False}
    first = {**worker, "task": {"type": "worker", "index": 0}}
    assert trainer.worker_role({"TF_CONFIG": json.dumps(first)})["chief"] is True
    with_chief = {"cluster": {"chief": ["c:1"], **first["cluster"]}, "task": first["task"]}
    assert trainer.worker_role({"TF_CONFIG": json.dumps(with_chief)})["chief"] is False
    assert trainer.worker_role({"TF_CONFIG": json.dumps({**with_chief, "task": {"type": "chief", "index": 0}})})["chief"]
    assert trainer.worker_role(slurm) == {"task_type": "worker", "task_id": 1, "chief": False}
    with pytest.raises(ValueError, match="'evaluator'"):
        trainer.worker_role({"TF_CONFIG": json.dumps({**worker, "task": {"type": "evaluator", "index": 0}})})
    with pytest.raises(ValueError, match="not a cluster description"):
        trainer.worker_role({"TF_CONFIG": "{oops"})

    # The Slurm resolver, on a node without GPUs: one worker per task, on port 8888 of its node.
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(tf_distribute.shutil, "which", lambda name: None)
    resolver = tf_distribute.slurm_cluster_resolver()
    assert resolver.cluster_spec().as_dict() == {"worker": ["node01:8888", "node02:8888"]}
    assert resolver.get_task_info() == ("worker", 1)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_multiworker_without_a_cluster_is_an_error_naming_tf_config(tiny, tmp_path, monkeypatch, capsys):
    from clci_keras.cli import main

    h5, split = tiny
    for k in ("TF_CONFIG", "SLURM_JOB_ID", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    run = tmp_path / "run"
    assert main(["train", "--model", "baseline", "--h5", h5, "--split", split, "--out", str(run),
                 "--strategy", "multiworker", "--no-register", "--quiet"]) == 2
    assert "TF_CONFIG" in capsys.readouterr().err
    assert not (run / "config.json").exists()
