"""Training loop: config, slice selection, resume after interruption, mixed
precision, the weights manifest, and a mirrored step on two logical CPUs.

A tiny registered model (:func:`train_tiny`) is trained on a tiny window
('r0:r1,c0:c1' crop) of a small hand-made HDF5 file so that each fit takes
seconds, its steps traced as in real runs; the kill-point tests, which check
the files of the epoch-end sequence (eight runs), step eagerly (``eager=True``).
"""
import csv
import json
import os
import subprocess
import sys
import textwrap
import warnings

import h5py
import numpy as np
import pytest

from clci_keras.data import parse_slice_spec, select_slices
from clci_keras.training import TrainConfig
from clci_keras.models.manifest import read_manifest, sha256

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROP = "96:128,80:112"  # 32 x 32 window around the lesions below
MODEL = "train_tiny"  # registered below: what the trainer does does not depend on the network's size


def train_tiny(input_shape=(32, 32, 1), num_class=1, name="train_tiny"):
    """A two-level U-Net of the models' own blocks (Conv2D + Keras 2.2 BatchNormalization + ReLU), 841 weights.

    The trainer (resume points, BatchNorm debiasing, exports, mixed precision, replicas)
    treats every registered model alike; the real networks' ~30-50M weights only made each
    step, checkpoint and trace cost seconds to minutes of CPU. They are trained by the
    trainer in tests/test_demo.py (Baseline, traced) and tests/test_notebooks.py (every model).
    """
    import keras

    from clci_keras.models.clci_net import conv_bias_bn_relu as conv_bn_relu

    inputs = keras.Input(input_shape)
    a = conv_bn_relu(inputs, 4, name="a")
    b = conv_bn_relu(keras.layers.MaxPooling2D(name="pool")(a), 8, name="b")
    up = keras.layers.UpSampling2D(name="up")(b)
    c = conv_bn_relu(keras.layers.Concatenate(name="skip")([a, up]), 4, name="c")
    act = "sigmoid" if num_class == 1 else "softmax"
    outputs = keras.layers.Conv2D(num_class, 1, activation=act, name="out")(c)
    return keras.Model(inputs, outputs, name=name)


def _register():
    from clci_keras.models import list_models, register_model

    if MODEL not in list_models():
        register_model(MODEL, train_tiny, description="test model (tests/test_training.py)",
                       reference="tests/test_training.py")


_register()


def write_tiny_h5(path, n_subjects=4, seed=0):
    """ATLAS-layout HDF5 (n*189 slices of 233x197): a noisy 'brain' with a dark disc lesion."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:233, :197]
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", (n_subjects * 189, 233, 197), "f4", chunks=(1, 233, 197),
                             compression="gzip", compression_opts=1)
        lab = f.create_dataset("label", (n_subjects * 189, 233, 197), "u1", chunks=(1, 233, 197),
                               compression="gzip", compression_opts=1)
        for s in range(n_subjects):
            cy, cx = 112 + rng.integers(-3, 4), 96 + rng.integers(-3, 4)
            for z in range(80, 100):  # lesion on 20 slices
                m = (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
                img = 0.8 + 0.05 * rng.standard_normal((233, 197)).astype("f4")
                img[m] = 0.2
                d[s * 189 + z] = img
                lab[s * 189 + z] = m
            for z in list(range(40, 80)) + list(range(100, 140)):
                d[s * 189 + z] = 0.8 + 0.05 * rng.standard_normal((233, 197)).astype("f4")
        g = f.create_group("subjects")
        g.create_dataset("subject_id", data=[f"s{i}" for i in range(n_subjects)], dtype=h5py.string_dtype())
        g.create_dataset("site", data=["t"] * n_subjects, dtype=h5py.string_dtype())
        g.create_dataset("session", data=[""] * n_subjects, dtype=h5py.string_dtype())
        g.create_dataset("offset", data=np.arange(n_subjects) * 189)
        g.create_dataset("count", data=np.full(n_subjects, 189))
        f.attrs["layout"] = "r1.1"
        f.attrs["synthetic"] = True
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from clci_keras.data.splits import save_split

    d = tmp_path_factory.mktemp("tiny")
    h5 = write_tiny_h5(str(d / "tiny.h5"))
    split = str(d / "split.json")
    save_split({"train": [0, 1], "val": [2], "test": [3], "subject_ids": ["s0", "s1", "s2", "s3"],
                "mode": "holdout"}, split)
    return h5, split


def fast(**kw):
    """Options of a seconds-long run."""
    opts = dict(crop=CROP, batch_size=2, val_batch_size=8, steps_per_epoch=2, train_slices="lesion+2",
                val_slices="lesion", tensorboard=False, verbose=0, learning_rate=1e-3)
    opts.update(kw)
    return opts


def _log(run):
    with open(os.path.join(run, "log.csv")) as f:
        return list(csv.DictReader(f))


def test_config_defaults_follow_the_original_protocol():
    c = TrainConfig()
    assert (c.learning_rate, c.loss, c.batch_size, c.epochs) == (1e-4, "dice", 8, 100)
    assert (c.reduce_lr_factor, c.reduce_lr_patience, c.reduce_lr_min_delta) == (0.2, 3, 1e-3)
    assert c.early_stopping_patience == 5 and c.monitor == "val_loss" and c.val_batch_size == 9
    with pytest.raises(ValueError, match="batch_size=0"):
        TrainConfig(h5="x", split="s", out_dir="y", batch_size=0).validate()
    with pytest.raises(ValueError, match="'lesion\\+x'"):
        parse_slice_spec("lesion+x")
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})
    assert parse_slice_spec("lesion+12") == ("lesion", 12)
    # the whole batch per pass, as the original; micro-batches only as divisors, without a strategy
    assert c.micro_batch is None and c.micro_steps == 1 and TrainConfig(micro_batch=2).micro_steps == 4
    for bad in (3, 0, True):
        with pytest.raises(ValueError, match="micro_batch"):
            TrainConfig(h5="x", split="s", out_dir="y", micro_batch=bad).validate()
    with pytest.raises(ValueError, match="strategy='mirrored'"):
        TrainConfig(h5="x", split="s", out_dir="y", micro_batch=2, strategy="mirrored").validate()


def test_configure_batch_norm_sets_every_batch_norm_and_compile_model_compiles_only():
    import keras

    from clci_keras.models.layers import BatchNormalization
    from clci_keras.training import compile_model, configure_batch_norm

    model = train_tiny()
    bns = [layer for layer in model.layers if isinstance(layer, BatchNormalization)]
    assert len(bns) == 3 and {bn.moving_update for bn in bns} == {"keras2"}
    compile_model(model, learning_rate=1e-3)
    assert {(bn.momentum, bn.moving_update) for bn in bns} == {(0.99, "keras2")}
    assert configure_batch_norm(model, momentum=0.5, update="keras3") is model
    assert {(bn.momentum, bn.moving_update) for bn in bns} == {(0.5, "keras3")}
    with pytest.raises(ValueError, match="'keras4'"):
        configure_batch_norm(model, update="keras4")
    assert isinstance(model.optimizer, keras.optimizers.Adam)


def test_select_slices(tiny):
    h5, _ = tiny
    lesion = select_slices(h5, [1], "lesion", crop=CROP)
    assert lesion.tolist() == list(range(189 + 80, 189 + 100))
    more = select_slices(h5, [1], "lesion+5", crop=CROP, seed=3)
    assert more.size == 25 and set(lesion) <= set(more)
    assert select_slices(h5, [1], "lesion+5", crop=CROP, seed=3).tolist() == more.tolist()
    brain = select_slices(h5, [0, 1], "brain")
    assert brain.size == 2 * 155 and select_slices(h5, [0], "all").size == 189
    with pytest.raises(ValueError, match="no subject with index 9"):
        select_slices(h5, [9], "all")


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("micro_batch", [None, 1])
def test_resume_continues_exactly_where_it_stopped(tiny, tmp_path, micro_batch):
    """A run killed after epoch 2 of 3 and restarted equals an uninterrupted run; with micro-batches
    too (Adam's accumulated gradients and its update count are resumed)."""
    import keras

    from clci_keras.training import train

    h5, split = tiny
    # min_delta 10: val_loss never "improves" after epoch 1 -> LR x0.2 after epochs 2 and 3.
    opts = fast(epochs=3, reduce_lr_patience=1, reduce_lr_min_delta=10.0, early_stopping_patience=50,
                micro_batch=micro_batch)

    ref = train(MODEL, h5, split, str(tmp_path / "ref"), **opts)

    class KillAfterSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Interrupt()

    run = str(tmp_path / "run")
    with pytest.raises(Interrupt):
        train(MODEL, h5, split, run, callbacks=[KillAfterSecondEpoch()], **opts)
    assert len(_log(run)) == 2 and not os.path.exists(os.path.join(run, "result.json"))
    assert json.load(open(os.path.join(run, "backup", "latest.json")))["epoch"] == 2

    res = train(MODEL, h5, split, run, **opts)  # the same command again
    log, ref_log = _log(run), _log(str(tmp_path / "ref"))
    assert [r["epoch"] for r in log] == ["0", "1", "2"]
    lrs = [float(r["learning_rate"]) for r in log]
    assert lrs == pytest.approx([1e-3, 1e-3, 2e-4])  # logged LR = LR during the epoch
    assert lrs == pytest.approx([float(r["learning_rate"]) for r in ref_log])
    assert res["optimizer_iterations"] == ref["optimizer_iterations"] == 6  # updates, one per batch of 2
    for a, b in zip(log, ref_log):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4, abs=1e-5)
        assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), rel=1e-4, abs=1e-5)
    with h5py.File(os.path.join(run, f"{MODEL}_weights.h5")) as f1, \
            h5py.File(os.path.join(str(tmp_path / "ref"), f"{MODEL}_weights.h5")) as f2:
        # every weight, BatchNorm moving statistics included (their debiasing step is resumed too)
        names = [n.decode() for n in f1.attrs["layer_names"]]
        moving = 0
        for name in names:
            for w in f1[name].attrs["weight_names"]:
                np.testing.assert_allclose(np.asarray(f1[name][w]), np.asarray(f2[name][w]),
                                           rtol=1e-4, atol=1e-6, err_msg=f"{name}/{w.decode()}")
                moving += b"moving_variance" in w
        assert moving > 0
    assert not os.path.exists(os.path.join(run, "backup"))  # removed once complete
    # A finished run is not retrained; other settings in the same folder are refused.
    assert train(MODEL, h5, split, run, **opts)["optimizer_iterations"] == 6
    with pytest.raises(ValueError, match="learning_rate: 0.001 -> 0.01"):
        train(MODEL, h5, split, run, **{**opts, "learning_rate": 1e-2})


def test_cli_train_evaluate_manifest_and_legacy_weights(tiny, tmp_path):
    """`clci-keras train` (bf16) then `clci-keras evaluate`: outputs, manifest, legacy .h5."""
    import keras

    from clci_keras.cli import main
    from clci_keras.models import build_model, load_weights

    h5, split = tiny
    manifest = str(tmp_path / "weights" / "manifest.json")
    run = str(tmp_path / "run")
    common = ["--h5", h5, "--split", split, "--crop", CROP]
    assert main(["train", "--model", MODEL, *common, "--out", run, "--manifest", manifest,
                 "--precision", "bf16", "--force-bf16", "--batch-size", "2", "--val-batch-size", "8", "--epochs", "1",
                 "--steps-per-epoch", "1", "--train-slices", "lesion+2", "--val-slices", "lesion",
                 "--lr", "1e-3", "--no-tensorboard", "--quiet", "--set", "reduce_lr_min_lr=1e-7"]) == 0
    assert keras.mixed_precision.dtype_policy().name == "float32"  # policy restored
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert cfg["precision"] == "bf16" and cfg["batch_size"] == 2 and cfg["model"] == MODEL
    assert cfg["reduce_lr_min_lr"] == 1e-7 and cfg["learning_rate"] == 1e-3 and cfg["epochs"] == 1
    res = json.load(open(os.path.join(run, "result.json")))
    assert np.isfinite(res["final"]["loss"]) and res["data"]["synthetic"] is True
    for name in ("log.csv", "best.weights.h5", f"{MODEL}_weights.h5"):
        assert os.path.exists(os.path.join(run, name)), name
    entry = read_manifest(manifest)["weights"][0]
    path = os.path.join(os.path.dirname(manifest), entry["file"])
    assert entry["sha256"] == sha256(path) and entry["architecture"] == MODEL
    assert entry["input_shape"] == [32, 32, 1] and entry["training"]["synthetic"] is True
    assert entry["format"] == "keras2_legacy_h5"
    with h5py.File(path) as f:
        assert "layer_names" in f.attrs  # Keras 2 legacy layout
    model = build_model(MODEL, input_shape=(32, 32, 1))
    assert load_weights(model, path) == "legacy_weights"

    assert main(["evaluate", "--model", MODEL, "--weights", path, *common, "--out", run,
                 "--manifest", manifest, "--name", entry["name"], "--quiet"]) == 0
    rows = list(csv.DictReader(open(os.path.join(run, "scores_test.csv"))))
    assert [r["subject_id"] for r in rows] == ["s3"] and int(rows[0]["gt_voxels"]) > 0
    summary = json.load(open(os.path.join(run, "summary_test.json")))
    assert summary["scores"]["dsc"]["mean"] == pytest.approx(float(rows[0]["dsc"]))
    assert summary["weights_sha256"] == entry["sha256"] and summary["slices"] == "all"
    assert read_manifest(manifest)["weights"][0]["metrics"]["test"]["dsc"] == pytest.approx(
        float(rows[0]["dsc"]))
    assert main(["train", "--model", MODEL, *common, "--out", run, "--batch-size", "0"]) == 2


MIRRORED = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    from test_training import fast, MODEL
    from clci_keras.training import train
    devices = ["/cpu:0", "/cpu:1"]
    res = train(MODEL, {h5!r}, {split!r}, {out!r}, strategy="mirrored", devices=devices,
                **fast(epochs=1, steps_per_epoch=1, batch_size=4))
    print("RESULT", json.dumps(res["replicas"]), res["optimizer_iterations"], res["final"]["loss"])
    """
)


def test_mirrored_step_on_two_logical_cpus(tiny, tmp_path):
    h5, split = tiny
    code = MIRRORED.format(root=ROOT, tests=os.path.join(ROOT, "tests"), h5=h5, split=split,
                           out=str(tmp_path / "mirrored"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600,  # hang guard only
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    line = [l for l in res.stdout.splitlines() if l.startswith("RESULT")]
    assert res.returncode == 0 and line, res.stderr[-3000:]
    _, replicas, iters, loss = line[0].split()
    assert int(replicas) == 2 and int(iters) == 1 and np.isfinite(float(loss))


def test_training_without_validation_subjects(tiny, tmp_path):
    """A split with an empty 'val' part (k-fold default) trains, monitoring the training loss,
    instead of failing on the logger's 'NA' cells."""
    from clci_keras.data.splits import save_split
    from clci_keras.reports.figures import training_curves
    from clci_keras.training import train

    h5, _ = tiny
    split = str(tmp_path / "noval.json")
    save_split({"train": [0, 1], "val": [], "test": [3], "subject_ids": ["s0", "s1", "s2", "s3"],
                "mode": "holdout"}, split)
    run = str(tmp_path / "run")
    result = train(MODEL, h5, split, run, **fast(epochs=1, steps_per_epoch=1))
    assert result["monitor"] == "loss" and result["best_epoch"] == 0 and result["val_subjects"] == 0
    assert os.path.exists(os.path.join(run, f"{MODEL}_weights.h5"))
    training_curves(os.path.join(run, "log.csv"), str(tmp_path / "curves.png"))
    assert os.path.getsize(tmp_path / "curves.png") > 0


@pytest.mark.parametrize("point", ["best_checkpoint", "resume_weights", "before_commit", "after_commit"])
def test_a_kill_anywhere_in_the_epoch_end_sequence_loses_nothing(tiny, tmp_path, monkeypatch, point):
    """Killed at each step of epoch 2's end (of 3: the last epoch writes no resume point; a
    half-written file left behind where the kill hits a write), the same command resumes or
    restarts and completes; nothing is deleted."""
    import keras

    from clci_keras import fileio
    from clci_keras.training import train

    h5, split = tiny
    opts = fast(epochs=3, early_stopping_patience=50, eager=True)
    run = str(tmp_path / "run")
    real_save, real_write = keras.Model.save_weights, fileio.write_json

    def save_weights(self, path, *a, **k):
        target = {"best_checkpoint": "best.partial.weights.h5", "resume_weights": "epoch_0002.tmp"}
        if point in target and target[point] in str(path) and os.path.exists(
                os.path.join(run, "backup", "latest.json")):
            with open(path, "wb") as f:
                f.write(b"\x89HDF half written")
            raise Interrupt()
        return real_save(self, path, *a, **k)

    def commit(path, obj, **kw):  # the resume point's commit: backup/latest.json
        epoch2 = os.path.basename(path) == "latest.json" and obj.get("epoch") == 2
        if epoch2 and point == "before_commit":
            raise Interrupt()
        real_write(path, obj, **kw)
        if epoch2 and point == "after_commit":
            raise Interrupt()

    with monkeypatch.context() as m:
        m.setattr(keras.Model, "save_weights", save_weights)
        m.setattr(fileio, "write_json", commit)
        if point == "best_checkpoint":  # make epoch 2 an improvement, so that it is written
            m.setattr(keras.callbacks.ModelCheckpoint, "_should_save_model", lambda *a: True)
        with pytest.raises(Interrupt):
            train(MODEL, h5, split, run, **opts)
    best = os.path.join(run, "best.weights.h5")
    assert os.path.exists(best)  # epoch 1's, intact
    with h5py.File(best):
        pass
    res = train(MODEL, h5, split, run, **opts)  # the same command again
    assert res["epochs_run"] == 3 and [r["epoch"] for r in _log(run)] == ["0", "1", "2"]
    assert res["optimizer_iterations"] == 6 and not os.path.exists(os.path.join(run, "backup"))
    with h5py.File(best):
        pass


def test_the_last_epoch_writes_no_resume_point(tiny, tmp_path, monkeypatch):
    """The run exports and deletes its backup right after its last epoch: no point is written for it."""
    from clci_keras.training import run_folder as rf
    from clci_keras.training import train

    h5, split = tiny
    committed, real = [], rf.commit_resume_point
    monkeypatch.setattr(rf, "commit_resume_point", lambda run_dir, epoch, write: (committed.append(epoch),
                                                                                 real(run_dir, epoch, write)))
    train(MODEL, h5, split, str(tmp_path / "run"), **fast(epochs=3, early_stopping_patience=50))
    assert committed == [1, 2]


def test_an_unreadable_resume_point_is_an_error_naming_the_file(tiny, tmp_path):
    from clci_keras.training import train
    from clci_keras.training.trainer import ResumeError

    h5, split = tiny
    run = tmp_path / "run"
    (run / "backup").mkdir(parents=True)
    (run / "backup" / "latest.json").write_text("{not json")
    with pytest.raises(ResumeError, match="latest.json"):
        train(MODEL, h5, split, str(run), **fast(epochs=1))
    (run / "backup" / "latest.json").write_text('{"epoch": 1, "dir": "epoch_0001"}')
    with pytest.raises(ResumeError, match="epoch_0001"):
        train(MODEL, h5, split, str(run), **fast(epochs=1))


def test_train_refuses_a_split_made_for_another_file(tiny, tmp_path):
    from clci_keras.data.splits import save_split
    from clci_keras.training import train

    h5, _ = tiny
    other = str(tmp_path / "other.json")
    save_split({"train": [0, 1], "val": [2], "test": [3], "subject_ids": ["a0", "s1", "s2", "s3"],
                "h5": "/elsewhere/other.h5", "mode": "holdout"}, other)
    with pytest.raises(ValueError, match=r"another file \(/elsewhere/other.h5\).*index 0: split 'a0' / file 's0'"):
        train(MODEL, h5, other, str(tmp_path / "run"), **fast(epochs=1))
    beyond = str(tmp_path / "beyond.json")
    save_split({"train": [0, 7], "val": [], "test": [3], "mode": "holdout"}, beyond)
    with pytest.raises(ValueError, match=r"subject indices \[7\] are not in"):
        train(MODEL, h5, beyond, str(tmp_path / "run"), **fast(epochs=1))
    assert not os.path.exists(tmp_path / "run" / "log.csv")  # refused before training


@pytest.fixture
def ran_precision(monkeypatch):
    """The precision train() would run, recorded where it starts on the run folder (nothing trains)."""
    from clci_keras.training import trainer

    seen = []

    def fake_train_in(cfg, run_dir, *args, **kwargs):
        seen.append(cfg.precision)
        return {"epochs_run": 0, "monitor": "val_loss", "best_value": None, "best_epoch": None,
                "run_dir": run_dir, "weights": "w"}

    monkeypatch.setattr(trainer, "_train_in", fake_train_in)
    return seen


@pytest.mark.parametrize("native", [False, True])
def test_bf16_falls_back_alike_from_python_and_the_cli(tiny, tmp_path, monkeypatch, ran_precision, native):
    """bf16 on a CPU without AVX-512 BF16 / AMX (mocked, no GPU) runs fp32 with a warning: in
    train() itself, so `clci-keras train --precision bf16` (and its deprecated spelling) and
    train(precision="bf16") from Python run the same; force_bf16 / --force-bf16 keep bf16."""
    from clci_keras import precision
    from clci_keras.cli import main
    from clci_keras.training import train

    monkeypatch.setattr(precision, "has_native_bf16", lambda flags=None: native)
    monkeypatch.setattr(precision, "gpu_info", lambda *a, **k: [])
    h5, split = tiny
    cli = ["train", "--model", MODEL, "--h5", h5, "--split", split, "--out", str(tmp_path / "r"), "--quiet"]
    want = "bf16" if native else "fp32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(MODEL, h5, split, str(tmp_path / "r"), precision="bf16")
        assert main([*cli, "--precision", "bf16"]) == 0
        assert main([*cli, "--mixed-precision", "bf16"]) == 0
        assert main([*cli, "--mixed-precision"]) == 0
    assert ran_precision == [want] * 4
    emulated = [w for w in caught if issubclass(w.category, UserWarning) and "emulated" in str(w.message)]
    assert len(emulated) == (0 if native else 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train(MODEL, h5, split, str(tmp_path / "r"), precision="bf16", force_bf16=True)
        assert main([*cli, "--precision", "bf16", "--force-bf16"]) == 0
        train(MODEL, h5, split, str(tmp_path / "r"), precision="fp16")
        assert main([*cli, "--mixed-precision", "off"]) == 0
    assert ran_precision[4:] == ["bf16", "bf16", "fp16", "fp32"]


def test_train_takes_precision_only(tiny, tmp_path, ran_precision):
    """``mixed_precision=`` (the unreleased 0.1.0's keyword) is an unknown option; config.json files
    that name it are still read (:func:`test_a_run_folder_with_the_old_precision_spelling_resumes`)."""
    from clci_keras.training import train

    h5, split = tiny
    with pytest.raises(ValueError, match=r"unknown training option\(s\) \['mixed_precision'\]"):
        train(MODEL, h5, split, str(tmp_path / "r"), mixed_precision="off")
    assert not ran_precision and not os.path.exists(tmp_path / "r")


def test_a_missing_or_bad_split_is_refused_before_anything_is_written(tiny, tmp_path, capsys):
    """No split, a missing file or a split without training subjects: a one-line error, and the
    run folder is not created (no config.json left to refuse the corrected command)."""
    from clci_keras.cli import main
    from clci_keras.data.splits import save_split
    from clci_keras.training import train

    h5, _ = tiny
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="`split` .* is required"):
        train(MODEL, h5, None, str(run), **fast(epochs=1))
    with pytest.raises(FileNotFoundError, match="split file not found: .*missing.json"):
        train(MODEL, h5, str(tmp_path / "missing.json"), str(run), **fast(epochs=1))
    empty = str(tmp_path / "empty.json")
    save_split({"train": [], "val": [2], "test": [3], "mode": "holdout"}, empty)
    capsys.readouterr()
    assert main(["train", "--model", MODEL, "--h5", h5, "--split", empty, "--out", str(run), "--quiet",
                 "--crop", CROP, "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "empty.json" in err and "no 'train' subjects" in err, err
    assert not os.path.exists(run)


def test_a_run_folder_with_the_old_precision_spelling_resumes(tiny, tmp_path):
    """A config.json written before `precision` (``"mixed_precision": "off"``) is the same run:
    more epochs continue it instead of refusing the folder."""
    from clci_keras.training import train

    h5, split = tiny
    run = str(tmp_path / "run")
    train(MODEL, h5, split, run, **fast(epochs=1))
    path = os.path.join(run, "config.json")
    cfg = json.load(open(path))
    cfg["mixed_precision"] = {"fp32": "off"}[cfg.pop("precision")]
    json.dump(cfg, open(path, "w"))
    res = train(MODEL, h5, split, run, **fast(epochs=2))
    assert res["epochs_run"] == 2 and [r["epoch"] for r in _log(run)] == ["0", "1"]
    assert json.load(open(path))["precision"] == "fp32" and "mixed_precision" not in json.load(open(path))


def test_a_folder_without_a_finished_epoch_restarts_with_new_settings(tiny, tmp_path, capsys):
    """Issue 24: an attempt that ended before its first epoch leaves nothing to keep."""
    from clci_keras.training import train

    h5, split = tiny
    run = tmp_path / "run"
    run.mkdir()
    TrainConfig(model=MODEL, h5=h5, split=split, out_dir=str(run), **fast(epochs=3, learning_rate=0.5)).save(
        str(run / "config.json"))
    (run / "log.csv").write_text("")  # what the aborted attempt left
    result = train(MODEL, h5, split, str(run), **fast(epochs=1))
    assert result["epochs_run"] == 1 and "starting again with the new settings" in capsys.readouterr().out
    assert json.load(open(run / "config.json"))["learning_rate"] == 1e-3
    with pytest.raises(ValueError, match="different settings"):  # a finished epoch is kept: refused
        train(MODEL, h5, split, str(run), **fast(epochs=1, learning_rate=0.5))


def test_a_second_train_into_a_run_folder_in_use_fails_at_once(tiny, tmp_path):
    from clci_keras.fileio import OutputInUseError, exclusive
    from clci_keras.training import train

    h5, split = tiny
    run = tmp_path / "run"
    with exclusive(run, what="run folder"):  # as a first run holds it
        with pytest.raises(OutputInUseError, match=rf"run folder is in use by another run \(process {os.getpid()}"):
            train(MODEL, h5, split, str(run), **fast(epochs=1))
    assert not run.exists()  # nothing written
