"""The training loop: the CLCI-Net / X-Net protocol with Keras callbacks.

:func:`train` builds a registered model inside a ``tf.distribute`` strategy,
compiles it with Adam and the chosen loss, and fits it on slices of the
HDF5 file. It writes into ``RUN_DIR``:

``config.json``            the values used (:class:`TrainConfig`)
``log.csv``                per-epoch loss / dice / val_loss / val_dice / lr (CSVLogger)
``tensorboard/``           TensorBoard logs
``best.weights.h5``        best-on-``monitor`` checkpoint (ModelCheckpoint)
``backup/``                the resume point (weights, optimiser state, epoch,
                           callback states); removed when the run completes
``<model>_weights.h5``     the exported weights, Keras 2 legacy HDF5 layout
``result.json``            epochs run, best epoch and value, exported file, timing

Restarting the same command after an interruption continues from the last
completed epoch: weights, Adam moments and iteration count, learning rate,
the ReduceLROnPlateau / EarlyStopping / checkpoint states and the data order.
A completed run is not retrained (``overwrite=True`` starts afresh).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time

from clci_keras.training.config import TrainConfig

BACKUP_DIR = "backup"
BEST_CKPT = "best.weights.h5"
STATE_FILE = "callback_state.json"


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------
def set_seed(seed, deterministic=True):
    """Seed Python, NumPy and TensorFlow; enable TF op determinism if asked."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def make_strategy(name="default", devices=None):
    """A ``tf.distribute`` strategy: ``default``, ``mirrored`` or ``multiworker``.

    ``mirrored`` replicates over ``devices`` (default: all local GPUs, else the
    CPU); ``multiworker`` reads the cluster from the ``TF_CONFIG`` environment
    variable. The batch size given to :func:`train` is the global batch.
    """
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("strategy 'multiworker' needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; choose default, mirrored or multiworker")


@contextlib.contextmanager
def precision_policy(mixed_precision="off"):
    """Temporarily set Keras' global dtype policy (``off``, ``bf16`` or ``fp16``)."""
    import keras

    policy = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
    if mixed_precision not in policy:
        raise ValueError(f"unknown mixed_precision {mixed_precision!r}; choose off, bf16 or fp16")
    old = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_global_policy(policy[mixed_precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(old)


def _float32(fn):
    """Wrap a loss/metric so it sees float32 predictions (mixed precision)."""
    from keras import ops

    def wrapped(y_true, y_pred):
        return fn(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"))

    wrapped.__name__ = fn.__name__
    return wrapped


def compile_model(model, loss="dice", learning_rate=1e-4, jit=False, mixed_precision=False,
                  bn_momentum=None):
    """Compile ``model`` as the original code: Adam, the Dice/BCE+Dice loss, Dice metric.

    Under mixed precision the loss and metric are computed in float32.
    ``bn_momentum`` (if given) replaces every BatchNormalization's momentum.
    """
    import keras

    from clci_keras.models.losses import dice_coef, get_loss

    if bn_momentum is not None:
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    loss_fn, metric = get_loss(loss), dice_coef
    if mixed_precision:
        loss_fn, metric = _float32(loss_fn), _float32(metric)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=loss_fn,
        metrics=[metric],
        jit_compile=bool(jit),
    )
    return model


def load_split(split_path, fold=None):
    """The split dict (``train``/``val``/``test`` subject indices) for ``fold``."""
    from clci_keras.data import splits

    split = splits.load_split(split_path)
    if fold is not None:
        if "folds" in split:
            folds = split["folds"]
            if not 0 <= int(fold) < len(folds):
                raise ValueError(f"{split_path}: fold={fold!r} out of range (0..{len(folds) - 1})")
            split = {**split, **folds[int(fold)]}
        elif split.get("fold") is not None and int(split["fold"]) != int(fold):
            raise ValueError(f"{split_path} holds fold {split['fold']}, not fold={fold!r}")
    for key in ("train",):
        if not split.get(key):
            raise ValueError(f"{split_path}: split has no {key!r} subjects")
    return split


def dataset_info(h5_path):
    """Provenance of the HDF5 file: its attributes, subject count and a ``synthetic`` flag."""
    import h5py
    import numpy as np

    info = {"h5": os.path.abspath(h5_path)}
    with h5py.File(h5_path, "r") as f:
        for k, v in f.attrs.items():
            if isinstance(v, bytes):
                v = v.decode("utf8", "replace")
            elif isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, np.generic):
                v = v.item()
            info[k] = v
        if "data" in f:
            info["slices"] = int(f["data"].shape[0])
    synthetic = info.get("synthetic")
    if synthetic is None:
        text = " ".join(str(info.get(k, "")) for k in ("source", "dataset", "layout", "description"))
        synthetic = "synthetic" in text.lower()
    info["synthetic"] = bool(synthetic)
    return info


class _ResumeState:
    """Saves and restores what ``BackupAndRestore`` does not: callback states and the LR."""

    FIELDS = {
        "ReduceLROnPlateau": ("wait", "best", "cooldown_counter"),
        "EarlyStopping": ("wait", "best", "best_epoch", "stopped_epoch"),
        "ModelCheckpoint": ("best",),
    }


def _make_resume_callback(run_dir, tracked):
    import keras
    import numpy as np

    path = os.path.join(run_dir, BACKUP_DIR, STATE_FILE)

    class ResumeState(keras.callbacks.Callback):
        """Persists callback states and the learning rate each epoch; restores them on resume."""

        def on_train_begin(self, logs=None):
            if not os.path.exists(path):
                return
            with open(path) as f:
                state = json.load(f)
            for cb in tracked:
                for field, value in state.get(type(cb).__name__, {}).items():
                    if value is not None:  # None: +-inf, as the callback initialised it
                        setattr(cb, field, value)
            if "learning_rate" in state:
                self.model.optimizer.learning_rate = state["learning_rate"]
            gens = _seed_generators(self.model)
            for key, value in state.get("seed_generators", {}).items():
                if key in gens:
                    gens[key].state.assign(np.asarray(value, dtype=gens[key].state.dtype))

        def on_epoch_end(self, epoch, logs=None):
            state = {"epoch": epoch + 1}
            for cb in tracked:
                fields = _ResumeState.FIELDS.get(type(cb).__name__, ())
                state[type(cb).__name__] = {
                    f: (None if not np.isfinite(float(getattr(cb, f))) else float(getattr(cb, f)))
                    for f in fields
                    if getattr(cb, f, None) is not None
                }
            state["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
            # Dropout RNG states are not part of the weights file.
            state["seed_generators"] = {
                k: np.asarray(g.state.value).tolist() for k, g in _seed_generators(self.model).items()
            }
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, path)

    return ResumeState()


def _seed_generators(model):
    """``{layer path/attribute: SeedGenerator}`` of every layer (e.g. Dropout's RNG)."""
    import keras

    out = {}
    for layer in model._flatten_layers(include_self=False):
        for attr, value in vars(layer).items():
            if isinstance(value, keras.random.SeedGenerator):
                out[f"{layer.name}/{attr}"] = value
    return out


def _resume_epoch(run_dir):
    """Epochs completed according to the ``BackupAndRestore`` metadata (0 if none)."""
    meta = os.path.join(run_dir, BACKUP_DIR, "training_metadata.json")
    if not os.path.exists(meta):
        return 0
    with open(meta) as f:
        return int(json.load(f).get("epoch", 0))


def _truncate_csv(path, epochs_done):
    """Drop CSV rows of epochs >= ``epochs_done`` (written after the last backup)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines:
        return
    keep = [lines[0]] + [l for l in lines[1:] if l and int(float(l.split(",")[0])) < epochs_done]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(keep) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# train()
# ---------------------------------------------------------------------------
def train(model_name="clci_net", h5_path=None, split_path=None, out_dir=None, fold=None,
          config=None, callbacks=(), overwrite=False, **overrides):
    """Train ``model_name`` on the HDF5 file with the split; see the module docstring.

    Args:
        model_name: a name from :func:`clci_keras.models.list_models`.
        h5_path: HDF5 slice file (``clci-keras prep``).
        split_path: split JSON (``clci-keras split``).
        out_dir: the run folder (created).
        fold: fold number for k-fold split files.
        config: a :class:`TrainConfig` (the other arguments override it).
        callbacks: extra Keras callbacks (run after the built-in ones).
        overwrite: delete an existing run in ``out_dir`` and start afresh.
        **overrides: any :class:`TrainConfig` field, e.g. ``epochs=5``.

    Returns:
        The ``result.json`` dict.
    """
    base = config.to_dict() if config is not None else TrainConfig().to_dict()
    given = dict(model=model_name, h5=h5_path, split=split_path, out_dir=out_dir, fold=fold)
    base.update({k: v for k, v in given.items() if v is not None})
    base.update(overrides)
    cfg = TrainConfig.from_dict(base)
    cfg.h5, cfg.split, cfg.out_dir = (os.fspath(p) if p else p for p in (cfg.h5, cfg.split, cfg.out_dir))
    cfg.validate()
    if not os.path.isfile(cfg.h5):
        raise FileNotFoundError(f"HDF5 data file not found: {cfg.h5}")
    if cfg.split and not os.path.isfile(cfg.split):
        raise FileNotFoundError(f"split file not found: {cfg.split}")

    run_dir = cfg.out_dir
    cfg_path = os.path.join(run_dir, "config.json")
    result_path = os.path.join(run_dir, "result.json")
    if overwrite and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            old = TrainConfig.from_dict(json.load(f))
        diff = cfg.differences(old)
        if diff:
            raise ValueError(
                f"{run_dir} holds a run with different settings "
                + ", ".join(f"{k}: {getattr(old, k)!r} -> {getattr(cfg, k)!r}" for k in diff)
                + "; use another output folder or overwrite=True (--overwrite)"
            )
        if os.path.exists(result_path):
            with open(result_path) as f:
                result = json.load(f)
            if result.get("epochs_run", 0) >= cfg.epochs or result.get("stopped_early"):
                print(f"{run_dir}: run already complete; nothing to do (--overwrite to retrain)")
                return result
            os.remove(result_path)  # more epochs asked for: continue
    cfg.save(cfg_path)
    with precision_policy(cfg.mixed_precision):
        return _fit(cfg, run_dir, list(callbacks))


def _fit(cfg, run_dir, extra_callbacks):
    import keras
    import numpy as np

    from clci_keras.models import build_model, load_weights, save_weights_legacy
    from clci_keras.training import sampling

    t_start = time.time()
    set_seed(cfg.seed, cfg.deterministic)
    split = load_split(cfg.split, cfg.fold) if cfg.split else None
    if split is None:
        raise ValueError("a split file is required (clci-keras split)")
    reader = sampling.SliceReader(cfg.h5, cfg.crop)
    train_idx = sampling.select_slices(cfg.h5, split["train"], cfg.train_slices, cfg.crop, cfg.seed)
    val_subjects = list(split.get("val") or [])
    val_idx = (
        sampling.select_slices(cfg.h5, val_subjects, cfg.val_slices, cfg.crop, cfg.seed)
        if val_subjects else np.zeros(0, np.int64)
    )
    monitor = cfg.monitor
    if not val_idx.size and monitor.startswith("val_"):
        monitor = monitor[4:]
        print(f"no validation subjects: monitoring {monitor!r} instead of {cfg.monitor!r}")

    first_epoch = _resume_epoch(run_dir)
    if first_epoch == 0:  # fresh start: clear logs of an earlier failed attempt
        for p in ("log.csv", BEST_CKPT):
            if os.path.exists(os.path.join(run_dir, p)):
                os.remove(os.path.join(run_dir, p))
    else:
        print(f"resuming {run_dir} after epoch {first_epoch}")
    _truncate_csv(os.path.join(run_dir, "log.csv"), first_epoch)

    steps = cfg.steps_per_epoch or sampling.steps_for(train_idx.size, cfg.batch_size)
    per_epoch = sampling.steps_for(train_idx.size, cfg.batch_size)
    # epochs of data needed: `steps` batches per training epoch
    data_epochs = math.ceil(cfg.epochs * steps / per_epoch) + 1
    first_data_epoch = (first_epoch * steps) // per_epoch
    train_ds = sampling.train_dataset(
        reader, train_idx, cfg.batch_size, cfg.seed, first_data_epoch, data_epochs
    ).skip((first_epoch * steps) % per_epoch)
    val_ds = sampling.eval_dataset(reader, val_idx, cfg.val_batch_size) if val_idx.size else None

    strategy = make_strategy(cfg.strategy, cfg.devices)
    input_shape = reader.shape
    with strategy.scope():
        model = build_model(cfg.model, input_shape=input_shape)
        if cfg.init_weights:
            load_weights(model, cfg.init_weights)
        compile_model(model, cfg.loss, cfg.learning_rate, cfg.jit, cfg.mixed_precision != "off",
                      cfg.bn_momentum)

    cbs = [
        keras.callbacks.ModelCheckpoint(
            os.path.join(run_dir, BEST_CKPT), monitor=monitor, save_best_only=True,
            save_weights_only=True, verbose=1,
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=cfg.reduce_lr_factor, patience=cfg.reduce_lr_patience,
            min_delta=cfg.reduce_lr_min_delta, min_lr=cfg.reduce_lr_min_lr, verbose=1,
        ),
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=cfg.early_stopping_patience,
            min_delta=cfg.early_stopping_min_delta, verbose=1,
        ),
        keras.callbacks.CSVLogger(os.path.join(run_dir, "log.csv"), append=True),
    ]
    if cfg.tensorboard:
        cbs.append(keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, "tensorboard")))
    tracked = [cb for cb in cbs if type(cb).__name__ in _ResumeState.FIELDS]
    # Last, so that they save the state after the other callbacks updated it.
    cbs.append(keras.callbacks.BackupAndRestore(os.path.join(run_dir, BACKUP_DIR),
                                                delete_checkpoint=False))
    cbs.append(_make_resume_callback(run_dir, tracked))
    cbs.extend(extra_callbacks)

    print(
        f"training {cfg.model} on {len(split['train'])} subjects ({train_idx.size} slices, "
        f"{cfg.train_slices}), validating on {len(val_subjects)} ({val_idx.size} slices); "
        f"{steps} steps of batch {cfg.batch_size} per epoch, up to {cfg.epochs} epochs"
    )
    history = model.fit(
        train_ds,
        epochs=cfg.epochs,
        steps_per_epoch=steps,
        validation_data=val_ds,
        validation_steps=math.ceil(val_idx.size / cfg.val_batch_size) if val_ds is not None else None,
        callbacks=cbs,
        shuffle=False,  # the dataset is already in its per-epoch order
        verbose=cfg.verbose,
    )
    reader.close()
    iterations = int(np.asarray(model.optimizer.iterations))

    # Export: best-on-monitor checkpoint (default) or the last epoch's weights.
    best_path = os.path.join(run_dir, BEST_CKPT)
    exported_from = "last"
    if cfg.export == "best" and os.path.exists(best_path):
        model.load_weights(best_path)
        exported_from = "best"
    weights_name = cfg.weights_name or f"{cfg.model}_weights.h5"
    weights_path = os.path.join(run_dir, weights_name)
    save_weights_legacy(model, weights_path)

    log = _read_log(os.path.join(run_dir, "log.csv"))
    epochs_run = len(log)
    best_epoch, best_value = None, None
    vals = [np.nan if r.get(monitor) is None else r[monitor] for r in log]
    if vals and not np.all(np.isnan(vals)):  # no validation data: no best epoch
        best_epoch = int(np.nanargmin(vals)) if "loss" in monitor else int(np.nanargmax(vals))
        best_value = vals[best_epoch]
    stopped_early = epochs_run < cfg.epochs
    result = {
        "model": cfg.model,
        "run_dir": os.path.abspath(run_dir),
        "weights": weights_name,
        "exported_from": exported_from,
        "epochs_run": epochs_run,
        "stopped_early": stopped_early,
        "monitor": monitor,
        "best_epoch": best_epoch,
        "best_value": best_value,
        "final": log[-1] if log else {},
        "train_subjects": len(split["train"]),
        "val_subjects": len(val_subjects),
        "train_slices": int(train_idx.size),
        "val_slices": int(val_idx.size),
        "optimizer_iterations": iterations,
        "replicas": int(strategy.num_replicas_in_sync),
        "seconds_this_session": round(time.time() - t_start, 1),
        "data": dataset_info(cfg.h5),
        "params": int(model.count_params()),
    }
    if cfg.manifest:
        result["manifest_entry"] = _register(cfg, model, weights_path, result)
    with open(os.path.join(run_dir, "result.json.tmp"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    os.replace(os.path.join(run_dir, "result.json.tmp"), os.path.join(run_dir, "result.json"))
    # The run is complete: the resume point is no longer needed.
    shutil.rmtree(os.path.join(run_dir, BACKUP_DIR), ignore_errors=True)
    return result


def _read_log(path):
    import csv

    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [{k: _log_number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _log_number(v):
    """A CSVLogger cell as float; None for empty cells and ``NA`` (no validation data)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _register(cfg, model, weights_path, result):
    import datetime

    from clci_keras.models import get_model_spec
    from clci_keras.training.manifest import register_weights
    from clci_keras.version import __version__

    spec = get_model_spec(cfg.model)
    name = f"{cfg.model}-{os.path.basename(os.path.abspath(cfg.out_dir))}"
    entry = register_weights(
        cfg.manifest,
        weights_path,
        name,
        format="keras2_legacy_h5",
        architecture=cfg.model,
        builder_options=spec.options,
        input_shape=list(model.input_shape[1:]),
        num_class=int(model.output_shape[-1]),
        training={
            "data": result["data"],
            "synthetic": result["data"]["synthetic"],
            "split": os.path.abspath(cfg.split) if cfg.split else None,
            "fold": cfg.fold,
            "train_subjects": result["train_subjects"],
            "val_subjects": result["val_subjects"],
            "train_slices": cfg.train_slices,
            "epochs_run": result["epochs_run"],
            "config": cfg.to_dict(),
        },
        metrics={"validation": {"monitor": result["monitor"], "best": result["best_value"],
                                "best_epoch": result["best_epoch"]}},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        clci_keras_version=__version__,
    )
    return entry["name"]
