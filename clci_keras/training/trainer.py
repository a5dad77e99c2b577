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
    variable or, without it, from a Slurm job step (:func:`cluster_source`).
    The batch size given to :func:`train` is the global batch.
    """
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":  # before any other TensorFlow op of the process
        if cluster_source() == "slurm":
            return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=slurm_cluster_resolver())
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
                  bn_momentum=None, bn_update=None):
    """Compile ``model`` as the original code: Adam, the Dice/BCE+Dice loss, Dice metric.

    Under mixed precision the loss and metric are computed in float32.
    ``bn_momentum`` (if given) replaces every BatchNormalization's momentum;
    ``bn_update`` (if given: ``"keras2"`` or ``"keras3"``) sets how every
    :class:`clci_keras.models.layers.BatchNormalization` updates its
    moving statistics.
    """
    import keras

    from clci_keras.models.layers import BatchNormalization as Keras2BN
    from clci_keras.models.losses import dice_coef, get_loss

    for layer in model._flatten_layers(include_self=False):
        if bn_momentum is not None and isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(bn_momentum)
        if bn_update is not None and isinstance(layer, Keras2BN):
            if bn_update not in ("keras2", "keras3"):
                raise ValueError(f"`bn_update` must be 'keras2' or 'keras3', got {bn_update!r}")
            layer.moving_update = bn_update
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


def load_split(split_path, fold=None, h5=None):
    """The split of ``fold`` (:func:`clci_keras.data.splits.load_split`); it must have training subjects.

    With ``h5`` a preset name or an id split is resolved against that file, and
    an index split is checked against it (ids and range): training never runs
    on subjects other than the split's.
    """
    from clci_keras.data.splits import load_split as _load

    split = _load(split_path, fold=fold, h5=h5, parts=("train", "val"))
    if not split.get("train"):
        raise ValueError(f"{split_path}: split has no 'train' subjects")
    return split


#: Callback attributes saved with the resume point (``BackupAndRestore`` keeps none).
RESUME_FIELDS = {
    "ReduceLROnPlateau": ("wait", "best", "cooldown_counter"),
    "EarlyStopping": ("wait", "best", "best_epoch", "stopped_epoch"),
    "ModelCheckpoint": ("best",),
    "AtomicModelCheckpoint": ("best",),
}
POINTER = "latest.json"


class ResumeError(ValueError):
    """The run folder's resume point cannot be read; the message names the file."""


def _resume_point(run_dir):
    """``(epochs done, folder of that resume point)``; ``(0, None)`` when there is none."""
    pointer = os.path.join(run_dir, BACKUP_DIR, POINTER)
    if not os.path.exists(pointer):
        return 0, None
    try:
        with open(pointer) as f:
            meta = json.load(f)
        epoch, folder = int(meta["epoch"]), os.path.join(run_dir, BACKUP_DIR, meta["dir"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ResumeError(f"{pointer}: unreadable resume point ({e}); delete {os.path.dirname(pointer)} "
                          "to restart the run from scratch, or pass --overwrite") from e
    for name in ("model.weights.h5", STATE_FILE):
        if not os.path.isfile(os.path.join(folder, name)):
            raise ResumeError(f"{pointer} names {os.path.join(folder, name)}, which is missing")
    return epoch, folder


def _make_resume_callback(run_dir, tracked):
    """The resume point, written atomically at each epoch end and restored at the start.

    Each epoch's point is a complete folder ``backup/epoch_NNNN`` (weights with
    the optimiser state, callback states, learning rate, dropout RNG states),
    written under a temporary name and renamed; ``backup/latest.json``,
    replaced atomically afterwards, is the commit. A process killed at any
    moment leaves the previous point intact. (``keras.callbacks.BackupAndRestore``
    overwrites its one weights file in place, so a kill during that write
    loses the run.)
    """
    import keras
    import numpy as np

    from clci_keras.models.layers import debias_steps, set_debias_steps

    backup = os.path.join(run_dir, BACKUP_DIR)

    class ResumePoint(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            epoch, folder = _resume_point(run_dir)
            if folder is None:
                return
            model = self.model
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            weights = os.path.join(folder, "model.weights.h5")
            try:
                model.load_weights(weights)
                with open(os.path.join(folder, STATE_FILE)) as f:
                    state = json.load(f)
            except Exception as e:  # h5py/OSError/JSON errors: name the file
                raise ResumeError(f"{folder}: cannot restore the resume point ({type(e).__name__}: {e})") from e
            for cb in tracked:
                for field, value in state.get(type(cb).__name__, {}).items():
                    if value is not None:  # None: +-inf, as the callback initialised it
                        setattr(cb, field, value)
            if "learning_rate" in state:
                model.optimizer.learning_rate = state["learning_rate"]
            gens = _seed_generators(model)
            for key, value in state.get("seed_generators", {}).items():
                if key in gens:
                    gens[key].state.assign(np.asarray(value, dtype=gens[key].state.dtype))
            set_debias_steps(model, state.get("bn_debias_steps", {}))
            model._initial_epoch = epoch  # as BackupAndRestore: fit() starts at this epoch

        def on_epoch_end(self, epoch, logs=None):
            state = {"epoch": epoch + 1}
            for cb in tracked:
                fields = RESUME_FIELDS.get(type(cb).__name__, ())
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
            # Keras-2 BatchNorm debiasing steps are not weights either.
            state["bn_debias_steps"] = debias_steps(self.model)
            name = f"epoch_{epoch + 1:04d}"
            final, tmp = os.path.join(backup, name), os.path.join(backup, name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            self.model.save_weights(os.path.join(tmp, "model.weights.h5"))
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump(state, f)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _write_json_atomic(os.path.join(backup, POINTER), {"epoch": epoch + 1, "dir": name})
            for old in os.listdir(backup):  # earlier points and stale temporaries
                if old.startswith("epoch_") and old != name:
                    shutil.rmtree(os.path.join(backup, old), ignore_errors=True)

    return ResumePoint()


def _make_checkpoint(path, monitor):
    """``ModelCheckpoint`` (best on ``monitor``, weights only) that writes, then renames."""
    import keras

    class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
        def _save_model(self, epoch, batch, logs):
            final = self.filepath
            self.filepath = final[: -len(".weights.h5")] + ".partial.weights.h5"
            try:
                super()._save_model(epoch, batch, logs)
                if os.path.exists(self.filepath):
                    os.replace(self.filepath, final)
            finally:
                self.filepath = final

    return AtomicModelCheckpoint(path, monitor=monitor, save_best_only=True,
                                 save_weights_only=True, verbose=1)


def _write_json_atomic(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _seed_generators(model):
    """``{layer path/attribute: SeedGenerator}`` of every layer (e.g. Dropout's RNG)."""
    import keras

    out = {}
    for layer in model._flatten_layers(include_self=False):
        for attr, value in vars(layer).items():
            if isinstance(value, keras.random.SeedGenerator):
                out[f"{layer.name}/{attr}"] = value
    return out


def _csv_epoch(line):
    """The epoch number of a CSVLogger row; None for an empty or partly written line."""
    try:
        return int(float(line.split(",")[0]))
    except ValueError:
        return None


def _truncate_csv(path, epochs_done):
    """Drop CSV rows of epochs >= ``epochs_done`` (written after the last backup)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines:
        return
    keep = [lines[0]] + [l for l in lines[1:] if _csv_epoch(l) is not None and _csv_epoch(l) < epochs_done]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(keep) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Multi-worker training (MultiWorkerMirroredStrategy)
# ---------------------------------------------------------------------------
#: The private run folders of the workers other than the chief, inside RUN_DIR.
WORKERS_DIR = ".workers"
#: The variables of a process started by ``srun`` that :func:`slurm_cluster_resolver` reads.
SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST",
                   "SLURM_STEP_TASKS_PER_NODE")
#: Port of every worker under Slurm (TensorFlow's default; use TF_CONFIG for others).
SLURM_PORT = 8888


def cluster_source(environ=None):
    """Where ``strategy="multiworker"`` finds its cluster: ``"TF_CONFIG"`` or ``"slurm"``.

    ``TF_CONFIG`` (one per process: the whole cluster and this task) comes
    first; without it, a process that ``srun`` started inside a Slurm job is
    placed by :func:`slurm_cluster_resolver`. Anything else is a ``ValueError``
    that names ``TF_CONFIG``.
    """
    env = os.environ if environ is None else environ
    if env.get("TF_CONFIG"):
        return "TF_CONFIG"
    if all(env.get(k) for k in SLURM_STEP_VARS):
        return "slurm"
    hint = (" (this Slurm job's process was not started by srun: run one srun task per node)"
            if env.get("SLURM_JOB_ID") else "")
    raise ValueError(
        "strategy 'multiworker' needs the TF_CONFIG environment variable in every worker process, e.g. "
        'TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", '
        '"index": 0}}\', or a Slurm job step' + hint + "; see docs/training.md, Multi-worker training")


def worker_role(environ=None):
    """``{"task_type", "task_id", "chief"}`` of this process in its multi-worker cluster.

    The chief is the ``chief`` task when the cluster has one, else worker 0
    (under Slurm: ``SLURM_PROCID`` 0), as ``tf.distribute`` decides it.
    """
    env = os.environ if environ is None else environ
    if cluster_source(env) == "slurm":
        task_id = int(env["SLURM_PROCID"])
        return {"task_type": "worker", "task_id": task_id, "chief": task_id == 0}
    try:
        conf = json.loads(env["TF_CONFIG"])
        cluster, task = conf["cluster"], conf["task"]
        task_type, task_id = str(task["type"]), int(task.get("index", 0))
        size = len(cluster.get(task_type) or ())
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"TF_CONFIG is not a cluster description ({type(e).__name__}: {e}): "
                         f"{env['TF_CONFIG']!r}") from None
    if task_type not in ("chief", "worker") or not 0 <= task_id < size:
        raise ValueError(f"TF_CONFIG: task {task_type!r} {task_id} is not a 'chief' or 'worker' task of its "
                         f"cluster {sorted(cluster)}; multi-worker training runs those only")
    return {"task_type": task_type, "task_id": task_id,
            "chief": task_type == "chief" or ("chief" not in cluster and task_id == 0)}


def slurm_cluster_resolver(port=SLURM_PORT):
    """``tf.distribute.cluster_resolver.SlurmClusterResolver`` of this Slurm job step.

    One worker per Slurm task (run one task per node: it uses all of the node's
    GPUs), task ``SLURM_PROCID`` listening on ``port`` of its node. On a node
    without ``CUDA_VISIBLE_DEVICES`` and ``nvidia-smi`` (CPU only) the resolver,
    which would ask ``nvidia-smi`` for the GPU count, gets one placeholder per
    task and leaves ``CUDA_VISIBLE_DEVICES`` alone.
    """
    import tensorflow as tf

    options = {}
    if "CUDA_VISIBLE_DEVICES" not in os.environ and shutil.which("nvidia-smi") is None:
        options = dict(gpus_per_node=int(os.environ["SLURM_STEP_NUM_TASKS"]), gpus_per_task=1,
                       auto_set_gpu=False)
    return tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=int(port), **options)


def _all_replicas(strategy, value):
    """``value`` (an int) of every replica of the cluster, in replica order.

    A collective: every worker calls it at the same point, or they all wait.
    """
    import numpy as np
    import tensorflow as tf

    local = strategy.run(lambda: tf.constant([int(value)], tf.int64))
    return [int(v) for v in np.asarray(strategy.gather(local, axis=0))]


def _join_cluster(strategy, run_dir, role):
    """This worker's run folder: ``run_dir`` for the chief, a private one for the others.

    Every worker runs every callback, so every worker writes a log, checkpoints
    and resume points; only the chief writes into ``run_dir``. Another worker
    works in ``run_dir/.workers/<task type>_<index>``, emptied at each start
    and seeded with a copy of the chief's resume point (and log, best
    checkpoint), so that all resume after the same epoch with the same weights
    and states. This needs ``run_dir`` on a file system that every worker
    reads; the workers check that they agree on the epoch (a ``ResumeError``
    otherwise, on every worker).
    """
    if bool(strategy.extended.should_checkpoint) != role["chief"]:
        raise ValueError(f"tf.distribute and TF_CONFIG disagree on which task is the chief ({role})")
    _all_replicas(strategy, 0)  # barrier: the chief has prepared run_dir (train())
    folder = run_dir
    if not role["chief"]:
        folder = os.path.join(run_dir, WORKERS_DIR, f"{role['task_type']}_{role['task_id']}")
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(os.path.join(folder, BACKUP_DIR))
        epoch, point = _resume_point(run_dir)
        if point is not None:  # the chief writes nothing before the next epoch ends, which needs us
            name = os.path.basename(point)
            shutil.copytree(point, os.path.join(folder, BACKUP_DIR, name))
            for f in ("log.csv", BEST_CKPT):
                if os.path.exists(os.path.join(run_dir, f)):
                    shutil.copy2(os.path.join(run_dir, f), os.path.join(folder, f))
            _write_json_atomic(os.path.join(folder, BACKUP_DIR, POINTER), {"epoch": epoch, "dir": name})
    epochs = _all_replicas(strategy, _resume_point(folder)[0])
    if len(set(epochs)) > 1:
        raise ResumeError(f"the workers would resume after different epochs ({epochs}, one per replica): "
                          f"{run_dir} must be one folder that every worker reads (a shared file system)")
    return folder


def _build_on_a_local_batch(model, strategy):
    """Let ``fit`` build ``model`` under a ``tf.distribute`` strategy (Keras 3.15 fails twice).

    Under a strategy, ``fit`` and ``evaluate`` first build the model on one
    batch from their iterator (``_maybe_symbolic_build``), and

    * from the 2nd epoch on, ``evaluate`` asks its cached validation iterator,
      exhausted by then, again: ``StopIteration`` (``mirrored`` runs of more
      than one epoch with validation data failed so); the model is built by
      then and needs no batch;
    * it merges the replicas' parts of that batch with
      ``strategy.reduce("MEAN", (x, y), axis=None)``, which
      MultiWorkerMirroredStrategy cannot do for a tuple (``Attempt to convert
      a value (PerReplica...)``); only shapes matter, so the first local
      replica's part is used.
    """
    import tensorflow as tf

    build = model._maybe_symbolic_build

    def local_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                with contextlib.suppress(StopIteration):
                    data_batch = tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0],
                                                       next(batches))
                break
        return build(iterator=None, data_batch=data_batch)

    model._maybe_symbolic_build = local_build
    return model


def _adapt_to_multiworker(model, strategy):
    """Make ``model.fit`` run under ``MultiWorkerMirroredStrategy`` and keep the workers' weights equal.

    Measured with two local CPU workers (Keras 3.15, TensorFlow 2.21;
    tests/test_multiworker.py checks the first and last points):

    * Data: Keras passes the dataset through
      ``strategy.experimental_distribute_dataset``, which splits every global
      batch of ``batch_size`` slices (:func:`clci_keras.data.batches.train_dataset`,
      auto-shard policy DATA) into per-replica batches of
      ``batch_size / replicas``: worker 0 trains on the first half of each
      batch, worker 1 on the second. Each worker still reads every global
      batch whole (the shard is taken after the read) and drops the rest.
    * The model is built on a local batch (:func:`_build_on_a_local_batch`).
    * Every step's logs are reduced with ``strategy.reduce("MEAN", value,
      axis=0)``, which fails for scalar logs (``Invalid reduction dimension 0
      for input with 0 dimensions``). The steps here return them with shape
      ``(1,)``, so that the same call gives their mean over all replicas. The
      epoch logs that the callbacks see are the metrics' totals over all
      replicas: equal on every worker, so that every worker makes the same
      learning-rate, early-stopping and checkpoint decisions.
    * BatchNormalization's moving mean and variance are mirrored variables
      without aggregation: each worker's copy followed its own half-batches
      (measured: after one epoch of 2 steps 1.056 on one worker, 1.076 on the
      other, while kernels and Adam moments were equal). After every training step the
      floating-point non-trainable variables are set to their mean over all
      replicas (as ``tf.keras``' ``ON_READ`` / ``MEAN`` moving statistics), so
      every worker holds the same weights.
    """
    import tensorflow as tf

    _build_on_a_local_batch(model, strategy)
    train_step, test_step = model.train_step, model.test_step
    synced = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]

    def vector(logs):
        return tf.nest.map_structure(lambda v: tf.reshape(v, [1]) if v.shape.rank == 0 else v, logs)

    def synced_train_step(data):
        logs = train_step(data)
        if synced:
            means = tf.distribute.get_replica_context().all_reduce(
                "MEAN", [tf.identity(v.value) for v in synced])
            for v, m in zip(synced, means):
                v.assign(m)
        return vector(logs)

    model.train_step = synced_train_step
    model.test_step = lambda data: vector(test_step(data))
    return model


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

    With ``strategy="multiworker"`` every worker process calls this with the
    same arguments; only the chief writes ``out_dir`` (:func:`_join_cluster`).
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
    from clci_keras.data.reader import keep_freed_memory

    keep_freed_memory()  # steps and batches reuse freed memory instead of page-faulting it in
    if cfg.split and not os.path.isfile(cfg.split):
        from clci_keras.data.splits import is_split_preset

        if not is_split_preset(cfg.split):
            raise FileNotFoundError(f"split file not found: {cfg.split}")

    if cfg.split:  # refuse a split made for another file before anything is written
        load_split(cfg.split, cfg.fold, h5=cfg.h5)
    # Multi-worker: the other workers only read what the chief writes (nothing, with overwrite).
    role = worker_role() if cfg.strategy == "multiworker" else None
    chief = role is None or role["chief"]
    run_dir = cfg.out_dir
    cfg_path = os.path.join(run_dir, "config.json")
    result_path = os.path.join(run_dir, "result.json")
    if chief and overwrite and os.path.isdir(run_dir):
        _remove_folder(run_dir, retries=2 if role else 0)
    if chief:
        os.makedirs(run_dir, exist_ok=True)
    if (chief or not overwrite) and os.path.exists(cfg_path):
        with open(cfg_path) as f:
            old = TrainConfig.from_dict(json.load(f))
        diff = cfg.differences(old)
        if diff:
            raise ValueError(
                f"{run_dir} holds a run with different settings "
                + ", ".join(f"{k}: {getattr(old, k)!r} -> {getattr(cfg, k)!r}" for k in diff)
                + "; use another output folder or overwrite=True (--overwrite)"
            )
        result = _read_result(result_path)
        if result is not None:
            if result.get("epochs_run", 0) >= cfg.epochs or result.get("stopped_early"):
                print(f"{run_dir}: run already complete; nothing to do (--overwrite to retrain)")
                return result
            if chief:
                os.remove(result_path)  # more epochs asked for: continue
    if chief:
        cfg.save(cfg_path)
    with precision_policy(cfg.mixed_precision):
        return _fit(cfg, run_dir, list(callbacks), role)


def _remove_folder(path, retries=0):
    """``shutil.rmtree``, retried ``retries`` times (another worker's write probe may come and go)."""
    for attempt in range(retries + 1):
        if not os.path.lexists(path):
            return
        try:
            shutil.rmtree(path)
            return
        except OSError:
            if attempt == retries:
                raise
            time.sleep(0.5)


def _read_result(path):
    """``result.json`` as a dict; None when there is none (or the chief has just removed it)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _fit(cfg, run_dir, extra_callbacks, role=None):
    """Build, fit and export; returns the ``result.json`` dict.

    ``role``: this process's :func:`worker_role` under ``multiworker`` (else
    None); a worker other than the chief works in its private folder.
    """
    import numpy as np

    t_start = time.time()
    # First: MultiWorkerMirroredStrategy must be created before any other TensorFlow op.
    strategy = make_strategy(cfg.strategy, cfg.devices)
    set_seed(cfg.seed, cfg.deterministic)
    if not cfg.split:
        raise ValueError("a split file is required (clci-keras split)")
    split = load_split(cfg.split, cfg.fold, h5=cfg.h5)
    chief = role is None or role["chief"]
    if role is not None:
        run_dir = _join_cluster(strategy, run_dir, role)
    data = _make_data(cfg, run_dir, split)
    with strategy.scope():
        model = _build_compiled(cfg, data["reader"].shape)
    if role is not None:
        _adapt_to_multiworker(model, strategy)
    elif cfg.strategy != "default":
        _build_on_a_local_batch(model, strategy)
    cbs = _callbacks(cfg, run_dir, data["monitor"]) + list(extra_callbacks)
    epochs, steps = cfg.epochs, data["steps"]
    val_steps = math.ceil(data["val_idx"].size / cfg.val_batch_size) if data["val_ds"] is not None else None
    if cfg.max_steps is not None:  # dry run: one epoch of <= max_steps steps and validation batches
        epochs, steps = 1, min(steps, cfg.max_steps)
        val_steps = None if val_steps is None else min(val_steps, cfg.max_steps)
    print(
        f"training {cfg.model} on {len(split['train'])} subjects ({data['train_idx'].size} slices, "
        f"{cfg.train_slices}), validating on {len(data['val_subjects'])} ({data['val_idx'].size} "
        f"slices); {steps} steps of batch {cfg.batch_size} per epoch, up to {epochs} epochs"
        + ("" if cfg.max_steps is None else f" (DRY RUN, max_steps={cfg.max_steps}: not the protocol)")
    )
    try:
        model.fit(
            data["train_ds"],
            epochs=epochs,
            steps_per_epoch=steps,
            validation_data=data["val_ds"],
            validation_steps=val_steps,
            callbacks=cbs,
            shuffle=False,  # the dataset is already in its per-epoch order
            verbose=cfg.verbose,
        )
    finally:
        data["reader"].close()
    iterations = int(np.asarray(model.optimizer.iterations))
    result = _finish(cfg, run_dir, model, split, data, strategy)
    result["optimizer_iterations"] = iterations
    result["max_steps"], result["dry_run"] = cfg.max_steps, cfg.max_steps is not None
    result["validation_batches_per_epoch"] = val_steps
    result["seconds_this_session"] = round(time.time() - t_start, 1)
    if role is not None:
        result["worker"] = dict(role)
    if not chief:  # the chief's RUN_DIR holds the run; this worker's folder goes
        result["run_dir"] = os.path.abspath(cfg.out_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # if the other workers are done too
            os.rmdir(os.path.dirname(run_dir))
        return result
    if cfg.manifest:
        result["manifest_entry"] = _register(cfg, model, os.path.join(run_dir, result["weights"]), result)
    tmp = os.path.join(run_dir, "result.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2, default=str)
    os.replace(tmp, os.path.join(run_dir, "result.json"))
    # The run is complete: the resume point is no longer needed.
    shutil.rmtree(os.path.join(run_dir, BACKUP_DIR), ignore_errors=True)
    return result


def _make_data(cfg, run_dir, split):
    """Slice selection and the training / validation datasets, from the resume point."""
    import numpy as np

    from clci_keras.data import batches
    from clci_keras.data import reader as R

    train_idx = R.select_slices(cfg.h5, split["train"], cfg.train_slices, cfg.crop, cfg.seed)
    val_subjects = list(split.get("val") or [])
    val_idx = (R.select_slices(cfg.h5, val_subjects, cfg.val_slices, cfg.crop, cfg.seed)
               if val_subjects else np.zeros(0, np.int64))
    monitor = cfg.monitor
    if not val_idx.size and monitor.startswith("val_"):
        monitor = monitor[4:]
        print(f"no validation subjects: monitoring {monitor!r} instead of {cfg.monitor!r}")

    first_epoch, _ = _resume_point(run_dir)
    if first_epoch == 0:  # fresh start: keep, not delete, what an earlier attempt left
        kept = [p for p in ("log.csv", BEST_CKPT) if os.path.exists(os.path.join(run_dir, p))]
        if kept:
            attic = os.path.join(run_dir, "previous_attempt")
            os.makedirs(attic, exist_ok=True)
            for p in kept:
                os.replace(os.path.join(run_dir, p), os.path.join(attic, p))
            print(f"no resume point in {run_dir}: starting afresh; an earlier attempt's "
                  f"{', '.join(kept)} moved to {attic}")
    else:
        print(f"resuming {run_dir} after epoch {first_epoch}")
    _truncate_csv(os.path.join(run_dir, "log.csv"), first_epoch)

    # In memory when the subjects fit the budget, else streamed; the plan of the first start is
    # kept, so that a resumed run (even on another machine) replays the same batches.
    subjects = list(split["train"]) + val_subjects
    plan_path = os.path.join(run_dir, "input_plan.json")
    if first_epoch and os.path.exists(plan_path):
        with open(plan_path) as f:
            plan = json.load(f)
    else:
        plan = R.plan_input(cfg.h5, subjects, cfg.crop, cfg.input_mode, cfg.max_memory_gb,
                            cfg.stream_buffer_subjects)
        _write_json_atomic(plan_path, plan)
    print(f"input: {plan['mode']} ({plan['bytes'] / 1024**3:.1f} GiB of slices, budget "
          f"{plan['budget_bytes'] / 1024**3:.1f} GiB" + (f", windows of {plan['buffer_subjects']} subjects"
                                                         if plan["mode"] == "stream" else "") + ")")
    reader = R.open_reader(cfg.h5, cfg.crop, subjects, plan)
    steps = cfg.steps_per_epoch or R.steps_for(train_idx.size, cfg.batch_size)
    # X-Net's wrap-around walk over the shuffled slices; epoch e = batches e*steps ..
    # (one epoch spare, so that the iterator never runs dry at the last step)
    train_ds = batches.train_dataset(reader, train_idx, cfg.batch_size, cfg.seed, first_batch=first_epoch * steps,
                                     n_batches=(cfg.epochs - first_epoch + 1) * steps)
    val_ds = batches.eval_dataset(reader, val_idx, cfg.val_batch_size) if val_idx.size else None
    return dict(reader=reader, train_idx=train_idx, val_idx=val_idx, val_subjects=val_subjects,
                monitor=monitor, steps=steps, train_ds=train_ds, val_ds=val_ds, input_plan=plan)


def _build_compiled(cfg, input_shape):
    from clci_keras.models import build_model, load_weights

    model = build_model(cfg.model, input_shape=input_shape)
    if cfg.init_weights:
        load_weights(model, cfg.init_weights)
    compile_model(model, cfg.loss, cfg.learning_rate, cfg.jit, cfg.mixed_precision != "off",
                  cfg.bn_momentum, cfg.bn_update)
    return model


def _callbacks(cfg, run_dir, monitor):
    """Checkpoint, LR schedule, early stopping, CSV/TensorBoard logs and the resume point."""
    import keras

    cbs = [
        _make_checkpoint(os.path.join(run_dir, BEST_CKPT), monitor),
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
    tracked = [cb for cb in cbs if type(cb).__name__ in RESUME_FIELDS]
    # Last, so that it saves the states after the other callbacks updated them.
    cbs.append(_make_resume_callback(run_dir, tracked))
    return cbs


def _finish(cfg, run_dir, model, split, data, strategy):
    """Export the chosen weights (Keras 2 legacy HDF5) and summarise the run."""
    import numpy as np

    from clci_keras.data.reader import dataset_info
    from clci_keras.models import save_weights_legacy

    monitor = data["monitor"]
    # Export: best-on-monitor checkpoint (default) or the last epoch's weights.
    best_path = os.path.join(run_dir, BEST_CKPT)
    exported_from = "last"
    if cfg.export == "best" and os.path.exists(best_path):
        model.load_weights(best_path)
        exported_from = "best"
    weights_name = cfg.weights_name or f"{cfg.model}_weights.h5"
    save_weights_legacy(model, os.path.join(run_dir, weights_name))

    log = _read_log(os.path.join(run_dir, "log.csv"))
    best_epoch, best_value = None, None
    vals = [np.nan if r.get(monitor) is None else r[monitor] for r in log]
    if vals and not np.all(np.isnan(vals)):  # no validation data: no best epoch
        best_epoch = int(np.nanargmin(vals)) if "loss" in monitor else int(np.nanargmax(vals))
        best_value = vals[best_epoch]
    return {
        "model": cfg.model,
        "run_dir": os.path.abspath(run_dir),
        "weights": weights_name,
        "exported_from": exported_from,
        "epochs_run": len(log),
        "stopped_early": len(log) < cfg.epochs,
        "monitor": monitor,
        "best_epoch": best_epoch,
        "best_value": best_value,
        "final": log[-1] if log else {},
        "train_subjects": len(split["train"]),
        "val_subjects": len(data["val_subjects"]),
        "train_slices": int(data["train_idx"].size),
        "val_slices": int(data["val_idx"].size),
        "replicas": int(strategy.num_replicas_in_sync),
        "input_plan": data.get("input_plan"),
        "data": dataset_info(cfg.h5),
        "params": int(model.count_params()),
    }


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
    from clci_keras.models.manifest import register_weights
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
