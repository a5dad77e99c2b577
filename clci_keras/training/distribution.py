"""Data-parallel training on each Keras backend: ``default``, ``mirrored``, ``multiworker``.

================  =====================================  ==========================================
strategy          TensorFlow                             JAX
================  =====================================  ==========================================
``default``       one device                             one device
``mirrored``      ``tf.distribute.MirroredStrategy``     ``keras.distribution.DataParallel`` over
                  over ``devices`` (default: all GPUs)   the local devices (or ``devices``)
``multiworker``   ``MultiWorkerMirroredStrategy``,       ``keras.distribution.initialize`` (one
                  cluster from ``TF_CONFIG`` or a        process per node), then ``DataParallel``
                  Slurm job step                         over every process's devices; cluster
                                                         from ``KERAS_DISTRIBUTION_*`` or a Slurm
                                                         job step
================  =====================================  ==========================================

PyTorch: ``default`` only. Keras 3 has no distribution for its PyTorch backend
(``keras.distribution`` is JAX-only; ``torch.nn.parallel.DistributedDataParallel``
would need a training loop of our own); ``mirrored`` and ``multiworker`` are a
``ValueError`` there.

The batch sizes are global. TensorFlow splits each global batch over the
replicas. Under JAX ``multiworker`` every process reads only its part of each
global batch (:class:`clci_keras.data.batches.TrainBatches` ``shard``), so the
batch sizes must be multiples of the process count, and of the device count
under ``mirrored``; the validation set is then cut to whole batches (the rest
of its slices is not validated on: printed, and ``validation_slices`` in
``result.json``). Under JAX the replicas run one global program, so the loss,
the metrics and BatchNormalization's statistics are those of the whole global
batch; TensorFlow averages the replicas' statistics after each step
(:class:`clci_keras.training.tf_distribute.ReplicaSteps`).
"""
from __future__ import annotations

import contextlib
import json
import os

import keras
import numpy as np

from clci_keras.training.config import STRATEGIES

#: The variables of a process started by ``srun`` that a Slurm cluster is read from.
SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST",
                   "SLURM_STEP_TASKS_PER_NODE")
#: Keras' own variables for ``keras.distribution.initialize`` (JAX).
KERAS_CLUSTER_VARS = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                      "KERAS_DISTRIBUTION_PROCESS_ID")


def backend():
    """The Keras backend of this process: ``tensorflow``, ``jax``, ``torch`` or ``numpy``."""
    return keras.backend.backend()


def check_strategy(name, backend_name=None):
    """Raise a ``ValueError`` naming the backend where ``name`` cannot run."""
    backend_name = backend_name or backend()
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")
    if backend_name == "numpy":
        raise ValueError("the numpy backend cannot train; set KERAS_BACKEND to tensorflow, jax or torch")
    if backend_name == "torch" and name != "default":
        raise ValueError(f"strategy {name!r} is not available on the torch backend (Keras 3 has no distribution "
                         "for PyTorch); use --strategy default, or KERAS_BACKEND=jax or tensorflow")


def cluster_source(environ=None, backend_name="tensorflow"):
    """Where ``strategy="multiworker"`` finds its cluster.

    TensorFlow: ``"TF_CONFIG"`` (one per process: the whole cluster and this
    task), else ``"slurm"`` for a process that ``srun`` started. JAX:
    ``"keras"`` (the ``KERAS_DISTRIBUTION_*`` variables), else ``"slurm"``.
    Anything else is a ``ValueError`` that names the variables.
    """
    env = os.environ if environ is None else environ
    if backend_name == "jax":
        if all(env.get(k) for k in KERAS_CLUSTER_VARS):
            return "keras"
        if all(env.get(k) for k in SLURM_STEP_VARS):
            return "slurm"
        need = ("KERAS_DISTRIBUTION_JOB_ADDRESSES=host0:12345,host1:12345 KERAS_DISTRIBUTION_NUM_PROCESSES=2 "
                "KERAS_DISTRIBUTION_PROCESS_ID=<0 or 1>")
    else:
        if env.get("TF_CONFIG"):
            return "TF_CONFIG"
        if all(env.get(k) for k in SLURM_STEP_VARS):
            return "slurm"
        need = ('TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", '
                '"index": 0}}\'')
    hint = (" (this Slurm job's process was not started by srun: run one srun task per node)"
            if env.get("SLURM_JOB_ID") else "")
    variable = "the KERAS_DISTRIBUTION_* variables" if backend_name == "jax" else "the TF_CONFIG environment variable"
    raise ValueError(f"strategy 'multiworker' on the {backend_name} backend needs {variable} in every worker "
                     f"process, e.g. {need}, or a Slurm job step{hint}; see docs/training.md, Multi-worker training")


def worker_role(environ=None, backend_name="tensorflow"):
    """``{"task_type", "task_id", "chief"}`` of this process in its multi-worker cluster.

    TensorFlow: the chief is the ``chief`` task when the cluster has one, else
    worker 0, as ``tf.distribute`` decides it. JAX and Slurm: process 0.
    """
    env = os.environ if environ is None else environ
    source = cluster_source(env, backend_name)
    if source == "slurm":
        task_id = int(env["SLURM_PROCID"])
        return {"task_type": "worker", "task_id": task_id, "chief": task_id == 0}
    if source == "keras":
        try:
            task_id, size = int(env["KERAS_DISTRIBUTION_PROCESS_ID"]), int(env["KERAS_DISTRIBUTION_NUM_PROCESSES"])
        except ValueError:
            raise ValueError("KERAS_DISTRIBUTION_PROCESS_ID and KERAS_DISTRIBUTION_NUM_PROCESSES must be integers, "
                             f"got {env['KERAS_DISTRIBUTION_PROCESS_ID']!r} and "
                             f"{env['KERAS_DISTRIBUTION_NUM_PROCESSES']!r}") from None
        if not 0 <= task_id < size:
            raise ValueError(f"KERAS_DISTRIBUTION_PROCESS_ID={task_id} is not in 0..{size - 1}")
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


class Replicas:
    """How this process takes part in training; made by :func:`setup`.

    Attributes:
        name: the strategy (``default``, ``mirrored``, ``multiworker``).
        role: :func:`worker_role` under ``multiworker``, else None.
        num_replicas: devices that train together (all processes).
        shard: ``(i, n)``: this process reads part ``i`` of ``n`` of every
            global batch (JAX ``multiworker``); None: it reads whole batches.
        batch_multiple: the batch sizes must be multiples of this.
    """

    def __init__(self, name, role=None, num_replicas=1, shard=None, batch_multiple=1, strategy=None):
        self.name, self.role, self.num_replicas = name, role, int(num_replicas)
        self.shard, self.batch_multiple, self.strategy = shard, int(batch_multiple), strategy

    @property
    def chief(self):
        return self.role is None or bool(self.role["chief"])

    @property
    def worker_name(self):
        return None if self.role is None else f"{self.role['task_type']}_{self.role['task_id']}"

    def scope(self):
        """The context in which the model is built and compiled."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def all_values(self, value):
        """``value`` (an int) of every process, in process order; a collective under ``multiworker``."""
        if self.role is None:
            return [int(value)]
        if backend() == "tensorflow":
            from clci_keras.training import tf_distribute

            return tf_distribute.all_replicas(self.strategy, value)
        from jax.experimental import multihost_utils

        return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.asarray([int(value)]))).ravel()]

    def prepare(self, model):
        """The model to compile and fit (TensorFlow strategies: :func:`~clci_keras.training.tf_distribute.replica_model`)."""
        if self.strategy is None or self.name == "default":
            return model
        from clci_keras.training import tf_distribute

        return tf_distribute.replica_model(model, sync_statistics=self.role is not None)

    def check_batches(self, **sizes):
        """Raise a ``ValueError`` naming each batch size that the replicas cannot split."""
        for name, size in sizes.items():
            if size % self.batch_multiple:
                raise ValueError(f"`{name}`={size} must be a multiple of {self.batch_multiple} (the "
                                 f"{'processes' if self.shard else 'devices'} of strategy {self.name!r} on the "
                                 f"{backend()} backend)")

    def close(self):
        """Undo a JAX distribution set by :func:`setup` (the process may train again)."""
        if backend() == "jax" and self.name != "default":
            keras.distribution.set_distribution(None)


def setup(name="default", devices=None, role=None):
    """Set this process up for strategy ``name`` on the current backend; a :class:`Replicas`.

    Call it first: ``MultiWorkerMirroredStrategy`` must be created before any
    other TensorFlow op, and ``keras.distribution.initialize`` before JAX's
    first computation. ``role``: this process's :func:`worker_role`
    (``multiworker`` only).
    """
    b = backend()
    check_strategy(name, b)
    if b == "tensorflow":
        from clci_keras.training import tf_distribute

        cluster = cluster_source(backend_name=b) if name == "multiworker" else None
        strategy = tf_distribute.make_strategy(name, devices, cluster)
        replicas = Replicas(name, role, strategy.num_replicas_in_sync, strategy=strategy)
        if role is not None and bool(strategy.extended.should_checkpoint) != role["chief"]:
            raise ValueError(f"tf.distribute and TF_CONFIG disagree on which task is the chief ({role})")
        return replicas
    if b == "jax" and name != "default":
        import jax

        if name == "multiworker":
            # Cross-process collectives on CPU hosts (GPUs use NCCL); before JAX's backends start.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            keras.distribution.initialize()  # KERAS_DISTRIBUTION_* or, without them, Slurm
        chosen = list(devices) if devices and name == "mirrored" else keras.distribution.list_devices()
        dist = keras.distribution.DataParallel(devices=chosen)
        dist.auto_shard_dataset = False  # each process feeds its own part (shard)
        keras.distribution.set_distribution(dist)
        processes = jax.process_count()
        if name == "multiworker":
            return Replicas(name, role, len(chosen), shard=(jax.process_index(), processes),
                            batch_multiple=len(chosen))
        return Replicas(name, None, len(chosen), batch_multiple=len(chosen))
    return Replicas(name)
