"""The training loop: the CLCI-Net / X-Net protocol with Keras callbacks, on every Keras backend.

:func:`train` builds a registered model, compiles it with Adam and the chosen
loss, and fits it on slices of the HDF5 file, with ``KERAS_BACKEND`` set to
``tensorflow``, ``jax`` or ``torch`` (TensorFlow need not be installed for the
other two). What it writes into ``RUN_DIR`` is listed in
:mod:`clci_keras.training.run_folder`; the callbacks are in
:mod:`clci_keras.training.callbacks`; data parallelism in
:mod:`clci_keras.training.distribution`.

Restarting the same command after an interruption continues from the last
completed epoch: weights, Adam moments and iteration count, learning rate,
the ReduceLROnPlateau / EarlyStopping / checkpoint states and the data order.
A completed run is not retrained (``overwrite=True`` starts afresh).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import shutil
import sys
import time

import numpy as np

from clci_keras import run_layout
from clci_keras.data import reader as R
from clci_keras.data.reader import dataset_info
from clci_keras.data.splits import is_split_preset, load_split
from clci_keras.fileio import exclusive, read_json, write_json
from clci_keras.models import build_model, get_model_spec, load_weights, save_weights_legacy
from clci_keras.models.card import LAYOUT_SPACES, card_path, make_card, software_versions, write_card
from clci_keras.models.manifest import add_to_manifest, sha256
from clci_keras.models.choices import BN_UPDATES
from clci_keras.precision import check_precision, is_mixed, precision_policy, resolve_precision
from clci_keras.process import keep_freed_memory
from clci_keras.training import run_folder as rf
from clci_keras.training.config import EAGER_MAX_STEPS, TrainConfig
from clci_keras.training.run_folder import ResumeError
from clci_keras.version import __version__


def set_seed(seed, deterministic=True):
    """Seed Python, NumPy and the backend; ask the backend for deterministic kernels if ``deterministic``.

    TensorFlow: ``enable_op_determinism``; its oneDNN CPU kernels are switched off
    only before TensorFlow is imported
    (:func:`clci_keras.training.determinism.prepare_determinism`). PyTorch:
    ``use_deterministic_algorithms(True, warn_only=True)`` (a kernel without a
    deterministic version warns instead of failing) and oneDNN's deterministic
    mode. JAX on CPU is deterministic; on GPU set
    ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` before the process starts (XLA
    reads it once). See :mod:`clci_keras.training.determinism`.
    """
    import keras

    keras.utils.set_random_seed(int(seed))
    if not deterministic:
        return
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.mkldnn.deterministic = True  # its convolutions' thread-parallel sums


def _float32(fn):
    """Wrap a loss/metric so it sees float32 predictions (mixed precision)."""
    from keras import ops

    def wrapped(y_true, y_pred):
        return fn(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"))

    wrapped.__name__ = fn.__name__
    return wrapped


def configure_batch_norm(model, momentum=None, update=None):
    """Set every BatchNormalization of ``model`` (nested models and recurrent cells included).

    ``momentum`` (if given) replaces every ``keras.layers.BatchNormalization``'s momentum;
    ``update`` (if given: :data:`clci_keras.models.choices.BN_UPDATES`) sets how every
    :class:`clci_keras.models.layers.BatchNormalization` updates its moving statistics.
    Returns ``model``.
    """
    import keras

    from clci_keras.models.layers import BatchNormalization as Keras2BN, all_layers

    if update is not None and update not in BN_UPDATES:
        raise ValueError(f"`update` must be one of {BN_UPDATES}, got {update!r}")
    for layer in all_layers(model):
        if momentum is not None and isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)
        if update is not None and isinstance(layer, Keras2BN):
            layer.moving_update = update
    return model


def _loss_and_metric(loss, precision):
    """The loss function named ``loss`` and the Dice metric, both computed in float32 under ``bf16`` / ``fp16``."""
    from clci_keras.models.losses import dice_coef, get_loss

    loss_fn, metric = get_loss(loss), dice_coef
    if is_mixed(precision):
        loss_fn, metric = _float32(loss_fn), _float32(metric)
    return loss_fn, metric


def compile_model(model, loss="dice", learning_rate=1e-4, jit=False, precision="fp32", micro_steps=1):
    """Compile ``model`` as the original code: Adam, the Dice/BCE+Dice loss, the Dice metric.

    ``loss``: :data:`clci_keras.models.choices.LOSSES`. ``precision``
    (:data:`clci_keras.precision.PRECISIONS`): under ``bf16`` and ``fp16`` the loss
    and metric are computed in float32 (the dtype policy itself is set around the
    model's construction: :func:`clci_keras.precision.precision_policy`). ``jit``:
    XLA compilation on TensorFlow; JAX always compiles, and PyTorch runs eagerly
    either way (Keras' ``torch.compile`` path is not used: ``jit_compile=False``
    there). ``micro_steps`` > 1: Adam averages the gradients of that many training steps
    into one update (``gradient_accumulation_steps``; its ``iterations`` counts updates).
    The BatchNormalization settings are :func:`configure_batch_norm`'s.
    """
    import keras

    check_precision(precision)
    loss_fn, metric = _loss_and_metric(loss, precision)
    backend = keras.backend.backend()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate,
                                        gradient_accumulation_steps=micro_steps if micro_steps > 1 else None),
        loss=loss_fn,
        metrics=[metric],
        # JAX: always traced and compiled by XLA; torch: eager (torch.compile is not used)
        jit_compile=True if backend == "jax" else (bool(jit) and backend == "tensorflow"),
    )
    return model


def load_training_split(split_path, fold=None, h5=None):
    """The split of ``fold`` (:func:`clci_keras.data.splits.load_split`); it must have training subjects.

    With ``h5`` a preset name or an id split is resolved against that file, and
    an index split is checked against it (ids and range): training never runs
    on subjects other than the split's.
    """
    split = load_split(split_path, fold=fold, h5=h5, parts=("train", "val"))
    if not split.get("train"):
        raise ValueError(f"{split_path}: split has no 'train' subjects")
    return split


# ---------------------------------------------------------------------------
# train()
# ---------------------------------------------------------------------------
def train(model_name="clci_net", h5_path=None, split_path=None, out_dir=None, fold=None,
          config=None, callbacks=(), overwrite=False, force_bf16=False, **overrides):
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
        force_bf16: run ``precision="bf16"`` even on a CPU that only emulates bf16; without it
            such a CPU trains fp32, with a warning (:func:`clci_keras.precision.resolve_precision`;
            ``clci-keras train --precision bf16`` is this call).
        **overrides: any :class:`TrainConfig` field, e.g. ``epochs=5``.

    Returns:
        The ``result.json`` dict.

    Raises:
        ValueError: a bad option, a strategy the backend cannot run, a split
            made for another file, or a run folder holding other settings.
        FileNotFoundError: the HDF5 or split file is missing.
        ResumeError: the run folder's resume point cannot be read.

    Options, the HDF5 file and the split are checked before anything is written.

    With ``strategy="multiworker"`` every worker process calls this with the
    same arguments; only the chief writes ``out_dir`` (:func:`_join_cluster`).
    """
    from clci_keras.training import distribution

    base = config.to_dict() if config is not None else TrainConfig().to_dict()
    given = dict(model=model_name, h5=h5_path, split=split_path, out_dir=out_dir, fold=fold)
    base.update({k: v for k, v in given.items() if v is not None})
    base.update(overrides)
    cfg = TrainConfig.from_dict(base)
    cfg.h5, cfg.split, cfg.out_dir = (os.fspath(p) if p else p for p in (cfg.h5, cfg.split, cfg.out_dir))
    cfg.validate()
    cfg.precision = resolve_precision(cfg.precision, force=force_bf16)  # fp32 where the CPU emulates bf16
    distribution.check_strategy(cfg.strategy)
    if not os.path.isfile(cfg.h5):
        raise FileNotFoundError(f"HDF5 data file not found: {cfg.h5}")

    if not os.path.isfile(cfg.split) and not is_split_preset(cfg.split):
        raise FileNotFoundError(f"split file not found: {cfg.split}")
    split = load_training_split(cfg.split, cfg.fold, h5=cfg.h5)  # e.g. one made for another file

    keep_freed_memory()  # steps and batches reuse freed memory instead of page-faulting it in
    # Multi-worker: the other workers only read what the chief writes (nothing, with overwrite).
    role = distribution.worker_role(backend_name=distribution.backend()) if cfg.strategy == "multiworker" else None
    chief = role is None or role["chief"]
    # One run per folder: a second one fails at once, naming the first's process.
    with exclusive(cfg.out_dir, what="run folder") if chief else contextlib.nullcontext():
        return _train_in(cfg, cfg.out_dir, split, chief, role, overwrite, list(callbacks))


def _train_in(cfg, run_dir, split, chief, role, overwrite, callbacks):
    """:func:`train` once its arguments are checked (and the chief holds the run folder)."""
    cfg_path = os.path.join(run_dir, run_layout.CONFIG_FILE)
    if chief and overwrite and os.path.isdir(run_dir):
        rf.remove_folder(run_dir, retries=2 if role else 0)
    if chief:
        os.makedirs(run_dir, exist_ok=True)
    if (chief or not overwrite) and os.path.exists(cfg_path):
        result = _existing_run(cfg, run_dir, chief)
        if result is not None:
            return result
    if chief:
        cfg.save(cfg_path)
    with precision_policy(cfg.precision):
        return _fit(cfg, run_dir, split, callbacks, role)


def _existing_run(cfg, run_dir, chief):
    """The result of the complete run in ``run_dir``, or None to (re)start; ValueError for other settings.

    A folder in which no epoch finished (no resume point, no result) holds nothing
    to keep: it is restarted with the new settings, without ``overwrite``.
    """
    old = TrainConfig.from_dict(read_json(os.path.join(run_dir, run_layout.CONFIG_FILE)))
    diff = cfg.differences(old)
    finished = read_json(os.path.join(run_dir, run_layout.RESULT_FILE), missing=None)
    if diff and rf.resume_point(run_dir)[0] == 0 and finished is None:
        print(f"{run_dir}: no epoch finished in the earlier attempt; starting again with the new settings")
        return None
    if diff:
        raise ValueError(
            f"{run_dir} holds a run with different settings "
            + ", ".join(f"{k}: {getattr(old, k)!r} -> {getattr(cfg, k)!r}" for k in diff)
            + "; use another output folder or overwrite=True (--overwrite)"
        )
    result_path = os.path.join(run_dir, run_layout.RESULT_FILE)
    result = read_json(result_path, missing=None)
    if result is not None:
        if result.get("epochs_run", 0) >= cfg.epochs or result.get("stopped_early"):
            print(f"{run_dir}: run already complete; nothing to do (--overwrite to retrain)")
            return result
        if chief:
            os.remove(result_path)  # more epochs asked for: continue
    return None


def _join_cluster(replicas, run_dir):
    """This worker's run folder: ``run_dir`` for the chief, a private one for the others.

    Every worker runs every callback, so every worker writes a log, checkpoints
    and resume points; only the chief writes into ``run_dir``. Another worker
    works in ``run_dir/.workers/<task type>_<index>``
    (:func:`clci_keras.training.run_folder.worker_folder`), so that all resume
    after the same epoch with the same weights and states. This needs
    ``run_dir`` on a file system that every worker reads; the workers check
    that they agree on the epoch (a ``ResumeError`` otherwise, on every worker).
    """
    replicas.all_values(0)  # barrier: the chief has prepared run_dir (train())
    folder = run_dir if replicas.chief else rf.worker_folder(run_dir, replicas.worker_name)
    epochs = replicas.all_values(rf.resume_point(folder)[0])
    if len(set(epochs)) > 1:
        raise ResumeError(f"the workers would resume after different epochs ({epochs}, one per replica): "
                          f"{run_dir} must be one folder that every worker reads (a shared file system)")
    return folder


def _fit(cfg, run_dir, split, extra_callbacks, role=None):
    """Build, fit and export; returns the ``result.json`` dict.

    ``split``: the fold's :func:`load_training_split`. ``role``: this process's
    :func:`~clci_keras.training.distribution.worker_role` under ``multiworker``
    (else None); a worker other than the chief works in its private folder.
    """
    import keras

    from clci_keras.training import distribution

    t_start = time.time()
    # First: MultiWorkerMirroredStrategy / keras.distribution.initialize precede any other op.
    replicas = distribution.setup(cfg.strategy, cfg.devices, role)
    try:
        set_seed(cfg.seed, cfg.deterministic)
        replicas.check_batches(batch_size=cfg.batch_size, val_batch_size=cfg.val_batch_size)
        if role is not None:
            run_dir = _join_cluster(replicas, run_dir)
        inputs = _make_data(cfg, run_dir, split, shard=replicas.shard)
        with replicas.scope():
            model = _build_compiled(cfg, inputs.reader.shape, replicas)
        try:
            _run_fit(cfg, run_dir, model, inputs, extra_callbacks)
        finally:
            inputs.close()
        iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        result = _finish(cfg, run_dir, model, inputs, replicas)
    finally:
        replicas.close()
    result["optimizer_iterations"] = iterations
    result["seconds_this_session"] = round(time.time() - t_start, 1)
    if role is not None:
        result["worker"] = dict(role)
    if not replicas.chief:  # the chief's RUN_DIR holds the run; this worker's folder goes
        result["run_dir"] = os.path.abspath(cfg.out_dir)
        rf.remove_worker_folder(run_dir)
        return result
    weights_path = os.path.join(run_dir, result["weights"])
    result["card"] = os.path.basename(_write_card(cfg, model, weights_path, result))
    if cfg.manifest:
        result["manifest_entry"] = _add_to_manifest(cfg, model, weights_path, result)
    write_json(os.path.join(run_dir, run_layout.RESULT_FILE), result, durable=True)
    # The run is complete: the resume point is no longer needed.
    shutil.rmtree(os.path.join(run_dir, run_layout.BACKUP_DIR), ignore_errors=True)
    return result


def _run_fit(cfg, run_dir, model, inputs, extra_callbacks):
    """``model.fit`` over the run's epochs (or the dry run's steps) with the trainer's callbacks."""
    import keras

    cbs = _callbacks(cfg, run_dir, inputs.monitor) + list(extra_callbacks) + _step_callbacks(cfg)
    print(
        f"training {cfg.model} on the {keras.backend.backend()} backend: {len(inputs.train_subjects)} subjects "
        f"({inputs.train_idx.size} slices, {cfg.train_slices}), validating on {len(inputs.val_subjects)} "
        f"({inputs.val_idx.size} slices); {inputs.steps} steps of batch {cfg.batch_size} per epoch"
        + (f" (each {cfg.micro_steps} micro-batches of {cfg.micro_batch}, gradients averaged)"
           if cfg.micro_steps > 1 else "") + ", up to "
        f"{inputs.epochs} epochs"
        + ("" if cfg.max_steps is None else f" (DRY RUN, max_steps={cfg.max_steps}: not the protocol)")
    )
    model.fit(
        inputs.train_ds,
        epochs=inputs.epochs,
        steps_per_epoch=inputs.steps * cfg.micro_steps,  # fit's steps are micro-batches
        validation_data=inputs.val_ds,
        validation_steps=inputs.val_steps,
        initial_epoch=inputs.first_epoch,  # the resume point's epochs done (callbacks.ResumePoint restores it)
        callbacks=cbs,
        shuffle=False,  # the batches are already in their per-epoch order
        verbose=fit_verbosity(cfg.verbose),
    )


def _runs_eagerly(cfg, backend):
    """Whether the run of ``cfg`` steps eagerly on ``backend``: ``cfg.eager``, or for ``"auto"``
    a run of at most :data:`~clci_keras.training.config.EAGER_MAX_STEPS` training steps
    (``epochs * steps_per_epoch``, ``steps_per_epoch`` given) without a strategy, off JAX
    (which runs an eager step operation by operation, compiling each one apart)."""
    if cfg.eager != "auto":
        return bool(cfg.eager)
    if backend == "jax" or cfg.strategy != "default" or cfg.steps_per_epoch is None:
        return False
    return cfg.epochs * cfg.steps_per_epoch <= EAGER_MAX_STEPS


def _step_callbacks(cfg):
    """How the steps run: eagerly (:func:`_runs_eagerly`), else traced, with the optimizer and
    metric variables built before the first step where Keras would build them while tracing
    (no strategy)."""
    import keras

    from clci_keras.training import callbacks as C

    if _runs_eagerly(cfg, keras.backend.backend()):
        return [C.TrainEagerly()]
    return [C.BuildBeforeFirstStep()] if cfg.strategy == "default" else []


def fit_verbosity(verbose, stream=None):
    """Keras ``fit`` verbosity for ``verbose``, plain off a terminal.

    ``"auto"`` and ``1`` (Keras's progress bar, redrawn with carriage returns and ANSI colours)
    stay ``1`` where ``stream`` (default ``sys.stdout``, where Keras prints) is a terminal or a
    Jupyter kernel's, and become ``2`` anywhere else (a log file, a pipe, CI): one plain line
    per epoch (``6/6 - 52s - 9s/step - loss: ...``). ``0`` and ``2`` are kept.
    """
    if verbose not in ("auto", 1):
        return verbose
    stream = sys.stdout if stream is None else stream
    if type(stream).__module__.split(".")[0] == "ipykernel":
        return 1
    isatty = getattr(stream, "isatty", None)
    try:
        return 1 if isatty and isatty() else 2
    except (OSError, ValueError):  # a closed stream
        return 2


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What :func:`_make_data` prepares for ``fit``: the slices, their readers and the schedule."""

    reader: object  # clci_keras.data.reader.open_reader's
    train_ds: object
    val_ds: object  # None without validation slices
    train_subjects: list
    val_subjects: list
    train_idx: np.ndarray
    val_idx: np.ndarray
    input_plan: dict
    monitor: str  # cfg.monitor, or its training twin when there are no validation slices
    first_epoch: int  # the resume point's epochs done
    epochs: int  # fit's last epoch: cfg.epochs, 1 in a dry run
    steps: int  # training steps per epoch (at most max_steps in a dry run)
    val_steps: int | None  # validation batches per epoch (at most max_steps in a dry run)

    def close(self):
        from clci_keras.data.batches import close_input

        close_input(self.train_ds)
        close_input(self.val_ds)
        self.reader.close()


def _make_data(cfg, run_dir, split, shard=None):
    """Slice selection and the training / validation inputs, from the resume point (:class:`_Inputs`).

    ``shard=(i, n)``: this process feeds part ``i`` of ``n`` of every global
    batch (JAX multi-process); the validation slices are then cut to whole
    global batches.
    """
    from clci_keras.data import batches

    train_idx = R.select_slices(cfg.h5, split["train"], cfg.train_slices, cfg.crop, cfg.seed)
    val_subjects = list(split.get("val") or [])
    val_idx = (R.select_slices(cfg.h5, val_subjects, cfg.val_slices, cfg.crop, cfg.seed)
               if val_subjects else np.zeros(0, np.int64))
    if shard is not None and val_idx.size % cfg.val_batch_size:
        whole = val_idx.size - val_idx.size % cfg.val_batch_size
        print(f"validating on the first {whole} of {val_idx.size} validation slices (whole batches of "
              f"{cfg.val_batch_size}, split over {shard[1]} processes)")
        val_idx = val_idx[:whole]
    monitor = cfg.monitor
    if not val_idx.size and monitor.startswith("val_"):
        monitor = monitor[4:]
        print(f"no validation subjects: monitoring {monitor!r} instead of {cfg.monitor!r}")

    first_epoch, _ = rf.resume_point(run_dir)
    if first_epoch == 0:  # fresh start: keep, not delete, what an earlier attempt left
        kept = rf.keep_previous_attempt(run_dir)
        if kept:
            print(f"no resume point in {run_dir}: starting afresh; an earlier attempt's "
                  f"{', '.join(kept)} moved to {os.path.join(run_dir, run_layout.PREVIOUS_ATTEMPT_DIR)}")
    else:
        print(f"resuming {run_dir} after epoch {first_epoch}")
    rf.truncate_log(run_dir, first_epoch)

    # In memory when the subjects fit the budget, else streamed; the plan of the first start is
    # kept, so that a resumed run (even on another machine) replays the same batches.
    subjects = list(split["train"]) + val_subjects
    plan_path = os.path.join(run_dir, run_layout.INPUT_PLAN_FILE)
    plan = read_json(plan_path, missing=None) if first_epoch else None
    if plan is None:
        plan = R.plan_input(cfg.h5, subjects, cfg.crop, cfg.input_mode, cfg.max_memory_gb,
                            cfg.stream_buffer_subjects)
        write_json(plan_path, plan, indent=None, durable=True)
    print(f"input: {plan['mode']} ({plan['bytes'] / 1024**3:.1f} GiB of slices, budget "
          f"{plan['budget_bytes'] / 1024**3:.1f} GiB" + (f", windows of {plan['buffer_subjects']} subjects"
                                                         if plan["mode"] == "stream" else "") + ")")
    reader = R.open_reader(cfg.h5, cfg.crop, subjects, plan)
    steps = cfg.steps_per_epoch or R.steps_for(train_idx.size, cfg.batch_size)
    # X-Net's wrap-around walk over the shuffled slices; epoch e = batches e*steps ..
    # (one epoch spare, so that the iterator never runs dry at the last step)
    train_ds = batches.train_dataset(reader, train_idx, cfg.batch_size, cfg.seed, first_batch=first_epoch * steps,
                                     n_batches=(cfg.epochs - first_epoch + 1) * steps, shard=shard,
                                     micro_batch=cfg.micro_batch)
    val_ds = batches.eval_dataset(reader, val_idx, cfg.val_batch_size, shard=shard) if val_idx.size else None
    val_steps = math.ceil(val_idx.size / cfg.val_batch_size) if val_ds is not None else None
    epochs = cfg.epochs
    if cfg.max_steps is not None:  # dry run: one epoch of <= max_steps steps and validation batches
        epochs, steps = 1, min(steps, cfg.max_steps)
        val_steps = None if val_steps is None else min(val_steps, cfg.max_steps)
    return _Inputs(reader=reader, train_ds=train_ds, val_ds=val_ds, train_subjects=list(split["train"]),
                   val_subjects=val_subjects, train_idx=train_idx, val_idx=val_idx, input_plan=plan,
                   monitor=monitor, first_epoch=first_epoch, epochs=epochs, steps=steps, val_steps=val_steps)


def _build_compiled(cfg, input_shape, replicas=None):
    """The registered model, its initial state set, prepared for ``replicas`` and compiled.

    The initial weights are ``cfg.init_weights`` or else drawn from ``cfg.seed``,
    and the dropout generators start from ``cfg.seed``, the same on every
    backend (:func:`clci_keras.models.seeding.draw_initial_state`).
    """
    from clci_keras.models.seeding import deferred_initializers, draw_initial_state

    with deferred_initializers() as deferred:  # every weight is drawn or loaded below: skip Keras's draws
        model = build_model(cfg.model, input_shape=input_shape)
    draw_initial_state(model, cfg.seed, weights=not cfg.init_weights)
    if cfg.init_weights:
        load_weights(model, cfg.init_weights)
    unset = deferred.unset(model)
    if unset:  # never train from placeholder zeros
        raise RuntimeError(f"{len(unset)} weight(s) of {cfg.model!r} were neither drawn nor loaded "
                           f"(e.g. {unset[0]}): the seeded draw missed them")
    if replicas is not None:
        model = replicas.prepare(model)
    configure_batch_norm(model, cfg.bn_momentum, cfg.bn_update)
    return compile_model(model, cfg.loss, cfg.learning_rate, cfg.jit, cfg.precision, cfg.micro_steps)


def _callbacks(cfg, run_dir, monitor):
    """Checkpoint, LR schedule, early stopping, CSV/TensorBoard logs and the resume point."""
    import keras

    from clci_keras.training import callbacks as C

    cbs = [
        C.AtomicModelCheckpoint(os.path.join(run_dir, run_layout.BEST_CKPT), monitor=monitor, save_best_only=True,
                                save_weights_only=True, verbose=1),
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=cfg.reduce_lr_factor, patience=cfg.reduce_lr_patience,
            min_delta=cfg.reduce_lr_min_delta, min_lr=cfg.reduce_lr_min_lr, verbose=1,
        ),
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=cfg.early_stopping_patience,
            min_delta=cfg.early_stopping_min_delta, verbose=1,
        ),
        keras.callbacks.CSVLogger(os.path.join(run_dir, run_layout.LOG_FILE), append=True),
    ]
    if cfg.tensorboard:
        cbs.append(C.ScalarLogs(os.path.join(run_dir, run_layout.TENSORBOARD_DIR)))
    tracked = [cb for cb in cbs if type(cb).__name__ in C.RESUME_FIELDS]
    # Last, so that it saves the states after the other callbacks updated them.
    cbs.append(C.ResumePoint(run_dir, tracked))
    return cbs


def _finish(cfg, run_dir, model, inputs, replicas):
    """Export the chosen weights (Keras 2 legacy HDF5) and summarise the run."""
    import keras

    monitor = inputs.monitor
    # Export: best-on-monitor checkpoint (default) or the last epoch's weights.
    best_path = os.path.join(run_dir, run_layout.BEST_CKPT)
    exported_from = "last"
    if cfg.export == "best" and os.path.exists(best_path):
        model.load_weights(best_path)
        exported_from = "best"
    weights_name = cfg.weights_name or run_layout.default_weights_name(cfg.model)
    save_weights_legacy(model, os.path.join(run_dir, weights_name))

    log = rf.read_log(run_dir)
    best_epoch, best_value = None, None
    vals = [np.nan if r.get(monitor) is None else r[monitor] for r in log]
    if vals and not np.all(np.isnan(vals)):  # no validation data: no best epoch
        best_epoch = int(np.nanargmin(vals)) if "loss" in monitor else int(np.nanargmax(vals))
        best_value = vals[best_epoch]
    return {
        "model": cfg.model,
        "backend": keras.backend.backend(),
        "run_dir": os.path.abspath(run_dir),
        "weights": weights_name,
        "exported_from": exported_from,
        "epochs_run": len(log),
        "stopped_early": len(log) < cfg.epochs,
        "monitor": monitor,
        "best_epoch": best_epoch,
        "best_value": best_value,
        "final": log[-1] if log else {},
        "train_subjects": len(inputs.train_subjects),
        "val_subjects": len(inputs.val_subjects),
        "train_slices": int(inputs.train_idx.size),
        "val_slices": int(inputs.val_idx.size),
        "replicas": replicas.num_replicas,
        "input_plan": inputs.input_plan,
        "data": dataset_info(cfg.h5),
        "params": int(model.count_params()),
        "max_steps": cfg.max_steps,
        "dry_run": cfg.max_steps is not None,
        "validation_batches_per_epoch": inputs.val_steps,
    }


def _provenance(cfg, model, result):
    """What the manifest entry and the model card say about the exported weights."""
    return dict(
        architecture=cfg.model,
        builder_options=get_model_spec(cfg.model).options,
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
            "exported_from": result["exported_from"],
            "dry_run": result["dry_run"],
            "config": cfg.to_dict(),
        },
        metrics={"validation": {"monitor": result["monitor"], "best": result["best_value"],
                                "best_epoch": result["best_epoch"], "final": result["final"]}},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        clci_keras_version=__version__,
    )


def _write_card(cfg, model, weights_path, result):
    """Write the model card beside the exported weights (:mod:`clci_keras.models.card`); returns its path."""
    p = _provenance(cfg, model, result)
    data = result["data"]
    card = make_card(
        name=f"{cfg.model}-{os.path.basename(os.path.abspath(cfg.out_dir))}",
        description=f"{cfg.model} trained by clci-keras train" + (" on SYNTHETIC data" if data["synthetic"] else "")
        + (" (DRY RUN)" if result["dry_run"] else ""),
        architecture=p["architecture"], builder_options=p["builder_options"], input_shape=p["input_shape"],
        num_class=p["num_class"], params=result["params"], crop=cfg.crop,
        intensity=data.get("intensity_scheme", "r1.1"), space=LAYOUT_SPACES.get(data.get("layout")),
        weights={"file": os.path.basename(weights_path), "format": "keras2_legacy_h5",
                 "sha256": sha256(weights_path), "bytes": os.path.getsize(weights_path)},
        training=p["training"], metrics=p["metrics"], software=software_versions(result["backend"]),
        created=p["created"],
    )
    return write_card(weights_path, card)


def _add_to_manifest(cfg, model, weights_path, result):
    """Add the exported weights to the manifest ``cfg.manifest``; returns the entry's name."""
    name = f"{cfg.model}-{os.path.basename(os.path.abspath(cfg.out_dir))}"
    entry = add_to_manifest(cfg.manifest, weights_path, name, format="keras2_legacy_h5",
                            card=os.path.basename(card_path(weights_path)), **_provenance(cfg, model, result))
    return entry["name"]
