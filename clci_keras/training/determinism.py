"""One seed, one training: the settings that make a run repeat bit for bit on one machine.

:func:`clci_keras.training.set_seed` seeds Python, NumPy and the backend and, with
``deterministic=True`` (``TrainConfig.deterministic``, the default), asks the backend
for deterministic kernels. On a CPU that is not enough for TensorFlow: its oneDNN
kernels (convolutions and their gradients) sum over threads in an order that may
change from run to run, and ops that run side by side (inter-op parallelism) share
the intra-op threads, which changes how Eigen's kernels split their sums. The weights
then differ in their last bits after one step, and Adam, which divides each gradient
by its own running size, turns such differences into weight differences of up to the
learning rate within a few steps. What makes each backend repeat bit for bit:

* TensorFlow: op determinism, oneDNN off (``TF_ENABLE_ONEDNN_OPTS=0``, Eigen's kernels
  instead) and one inter-op thread (``TF_NUM_INTEROP_THREADS=1``). TensorFlow reads
  both variables once, when it starts, so :func:`prepare_determinism` must run before
  TensorFlow is imported: ``clci-keras train --deterministic`` and ``clci-keras demo
  --deterministic`` call it first; in a script or notebook call it (or set the
  variables) before importing TensorFlow or Keras. It costs about twice the CPU time
  per training step (benchmarks/RESULTS.md, "One seed, one curve"), so it is not the
  default. :func:`onednn_enabled` tells whether the process still runs oneDNN.
* PyTorch: ``torch.use_deterministic_algorithms(True, warn_only=True)`` and
  ``torch.backends.mkldnn.deterministic = True`` (oneDNN's deterministic mode), set by
  :func:`~clci_keras.training.set_seed`.
* JAX: XLA's CPU kernels repeat bit for bit as they are; on a GPU set
  ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` before the process starts.

What still differs between machines, thread counts and backends: docs/reproducibility.md.
"""
from __future__ import annotations

import os
import sys

#: TensorFlow's switch for its oneDNN kernels, read once when TensorFlow is imported.
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
#: TensorFlow's number of ops run side by side, read once when its runtime starts.
INTEROP_VARIABLE = "TF_NUM_INTEROP_THREADS"
#: The values TensorFlow reads as "off" (its boolean parsing, case-insensitive).
_OFF = ("0", "false")


def prepare_determinism(deterministic=True):
    """Before TensorFlow is imported: the settings for run-to-run identical TensorFlow training.

    With ``deterministic`` sets ``TF_ENABLE_ONEDNN_OPTS=0`` (oneDNN off) and
    ``TF_NUM_INTEROP_THREADS=1``, each unless already set (a user's choice is kept);
    without, leaves the environment alone. Returns whether TensorFlow will run without
    oneDNN: False where ``deterministic`` is false, where the user set the variable on,
    or where TensorFlow was already imported with oneDNN on (too late to change;
    :func:`onednn_enabled` then says so).
    """
    if not deterministic:
        return False
    if "tensorflow" in sys.modules:
        return onednn_enabled() is False
    os.environ.setdefault(ONEDNN_VARIABLE, "0")
    os.environ.setdefault(INTEROP_VARIABLE, "1")
    return os.environ[ONEDNN_VARIABLE].strip().lower() in _OFF


def onednn_enabled():
    """Whether this process's TensorFlow runs oneDNN kernels; None if TensorFlow is not imported.

    Read as TensorFlow reads it at import: on unless ``TF_ENABLE_ONEDNN_OPTS`` is off
    (TensorFlow's x86-64 builds; a change of the variable after the import is not seen
    by TensorFlow, nor here). Never imports TensorFlow.
    """
    if "tensorflow" not in sys.modules:
        return None
    return os.environ.get(ONEDNN_VARIABLE, "1").strip().lower() not in _OFF
