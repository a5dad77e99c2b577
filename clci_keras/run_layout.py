"""The file names of a run folder: what :func:`clci_keras.training.train` writes, and the evaluation beside it.

A leaf module (imports nothing of clci_keras), so that every layer that reads a
run folder (experiments, reports, inference) takes the names from here.
Layout of ``RUN_DIR``:

``config.json``            the values used (:class:`~clci_keras.training.config.TrainConfig`)
``input_plan.json``        the input plan fixed at the first start (memory or stream)
``log.csv``                one row per epoch (Keras' ``CSVLogger``)
``tensorboard/``           scalar logs (:class:`~clci_keras.training.callbacks.ScalarLogs`)
``best.weights.h5``        best-on-``monitor`` checkpoint
``backup/``                the resume point: ``epoch_NNNN/`` (weights with the optimiser
                           state, callback states) and ``latest.json`` naming it (the commit)
``previous_attempt/``      what a start without a resume point found and kept
``.workers/``              private folders of the multi-process workers other than the chief
``<model>_weights.h5``     the exported weights, Keras 2 legacy HDF5 layout
                           (:func:`default_weights_name`; ``TrainConfig.weights_name`` overrides it)
``<model>_weights.h5.card.json``  their model card (:mod:`clci_keras.models.card`)
``result.json``            the summary of a finished run
``scores_<part>.csv``      the evaluation's per-patient scores (:func:`scores_file`)
``summary_<part>.json``    the evaluation's summary (:func:`summary_file`)
"""
from __future__ import annotations

CONFIG_FILE = "config.json"
INPUT_PLAN_FILE = "input_plan.json"
LOG_FILE = "log.csv"
TENSORBOARD_DIR = "tensorboard"
BEST_CKPT = "best.weights.h5"
#: The resume point's folder; inside it ``POINTER`` names the current ``epoch_NNNN/``,
#: which holds ``WEIGHTS_FILE`` and ``STATE_FILE``.
BACKUP_DIR = "backup"
POINTER = "latest.json"
WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "callback_state.json"
PREVIOUS_ATTEMPT_DIR = "previous_attempt"
#: The private run folders of the workers other than the chief.
WORKERS_DIR = ".workers"
RESULT_FILE = "result.json"


def default_weights_name(model):
    """The exported weights' file name for the registered model ``model``: ``<model>_weights.h5``."""
    return f"{model}_weights.h5"


def _suffix(part, tag):
    return f"{part}_{tag}" if tag else part


def scores_file(part, tag=None):
    """The evaluation's per-patient scores of split part ``part``: ``scores_<part>[_<tag>].csv``."""
    return f"scores_{_suffix(part, tag)}.csv"


def summary_file(part, tag=None):
    """The evaluation's summary of split part ``part``: ``summary_<part>[_<tag>].json``."""
    return f"summary_{_suffix(part, tag)}.json"
