"""TensorFlow backend only: ``tf.distribute`` strategies and the model that trains under them.

Imported by :mod:`clci_keras.training.distribution` when ``KERAS_BACKEND`` is
``tensorflow``; nothing else imports it, so the other backends never need
TensorFlow.
"""
from __future__ import annotations

import contextlib
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from clci_keras.models.keras_private import FirstBatchForSymbolicBuild

#: Port of every worker under Slurm (TensorFlow's default; use TF_CONFIG for others).
SLURM_PORT = 8888


def make_strategy(name="default", devices=None, cluster="TF_CONFIG"):
    """A ``tf.distribute`` strategy: ``default``, ``mirrored`` or ``multiworker``.

    ``mirrored`` replicates over ``devices`` (default: all local GPUs, else the
    CPU); ``multiworker`` reads the cluster from ``TF_CONFIG`` or, with
    ``cluster="slurm"``, from the Slurm job step (:func:`slurm_cluster_resolver`).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":  # before any other TensorFlow op of the process
        if cluster == "slurm":
            return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=slurm_cluster_resolver())
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; choose default, mirrored or multiworker")


def slurm_cluster_resolver(port=SLURM_PORT):
    """``tf.distribute.cluster_resolver.SlurmClusterResolver`` of this Slurm job step.

    One worker per Slurm task (run one task per node: it uses all of the node's
    GPUs), task ``SLURM_PROCID`` listening on ``port`` of its node. On a node
    without ``CUDA_VISIBLE_DEVICES`` and ``nvidia-smi`` (CPU only) the resolver,
    which would ask ``nvidia-smi`` for the GPU count, gets one placeholder per
    task and leaves ``CUDA_VISIBLE_DEVICES`` alone.
    """
    options = {}
    if "CUDA_VISIBLE_DEVICES" not in os.environ and shutil.which("nvidia-smi") is None:
        options = dict(gpus_per_node=int(os.environ["SLURM_STEP_NUM_TASKS"]), gpus_per_task=1,
                       auto_set_gpu=False)
    return tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=int(port), **options)


def all_replicas(strategy, value):
    """``value`` (an int) of every replica of the cluster, in replica order.

    A collective: every worker calls it at the same point, or they all wait.
    """
    local = strategy.run(lambda: tf.constant([int(value)], tf.int64))
    return [int(v) for v in np.asarray(strategy.gather(local, axis=0))]


def _vector(logs):
    return tf.nest.map_structure(lambda v: tf.reshape(v, [1]) if v.shape.rank == 0 else v, logs)


class ReplicaSteps(FirstBatchForSymbolicBuild):
    """Training and test steps of a functional model that ``fit`` runs under a ``tf.distribute`` strategy.

    A mixin placed before the model's own class by :func:`replica_model`
    (Keras 3.15). It changes three things:

    * Building: under a strategy, ``fit`` and ``evaluate`` first build the
      model on one batch of their iterator. From the 2nd epoch on,
      ``evaluate`` asks its cached validation iterator, exhausted by then,
      again (``StopIteration``); and it merges the replicas' parts of that
      batch with ``strategy.reduce("MEAN", (x, y), axis=None)``, which
      MultiWorkerMirroredStrategy cannot do for a tuple. Only shapes matter:
      the first local replica's part is used, and an exhausted iterator is
      skipped (the model is built by then).
    * With ``sync_statistics`` (multi-worker): BatchNormalization's moving
      mean and variance are mirrored variables without aggregation, so each
      worker's copy would follow its own part of the batch. After every
      training step the floating-point non-trainable variables are set to
      their mean over all replicas (as ``tf.keras``' ``ON_READ`` / ``MEAN``
      moving statistics), so every worker holds the same weights.
    * With ``sync_statistics``: every step's logs are returned with shape
      ``(1,)``; Keras reduces them with ``strategy.reduce("MEAN", value,
      axis=0)``, which fails for scalars. The epoch logs that the callbacks see
      are equal on every worker, so every worker makes the same learning-rate,
      early-stopping and checkpoint decisions.
    """

    sync_statistics = False

    def symbolic_build_batch(self, iterator, data_batch):
        """One replica's share of the first batch (see :class:`~clci_keras.models.keras_private.FirstBatchForSymbolicBuild`)."""
        strategy = self.distribute_strategy
        for _, _, batches in iterator:
            with contextlib.suppress(StopIteration):
                data_batch = tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0],
                                                   next(batches))
            break
        return data_batch

    def train_step(self, data):
        logs = super().train_step(data)
        if not self.sync_statistics:
            return logs
        synced = [v for v in self.non_trainable_variables if "float" in str(v.dtype)]
        if synced:
            means = tf.distribute.get_replica_context().all_reduce("MEAN", [tf.identity(v.value) for v in synced])
            for v, m in zip(synced, means):
                v.assign(m)
        return _vector(logs)

    def test_step(self, data):
        logs = super().test_step(data)
        return _vector(logs) if self.sync_statistics else logs


def replica_model(model, sync_statistics=False):
    """``model``'s layers as a model of a subclass of its class with :class:`ReplicaSteps` first.

    Same layers, weights and name; a model class's own ``train_step`` (a
    ``keras.Model`` subclass) still runs, inside the replica's. Build and
    compile it inside the strategy's scope.
    """
    cls = type(model)
    replica_cls = type(f"Replica{cls.__name__}", (ReplicaSteps, cls), {"__module__": __name__})
    replica = replica_cls(inputs=model.inputs, outputs=model.outputs, name=model.name)
    replica.sync_statistics = bool(sync_statistics)
    return replica
