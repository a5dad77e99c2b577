"""Workflows: the study's steps as library functions (what the notebooks and ``clci-keras demo`` call).

=========================  ==================================================================
:func:`prepare_data`       ATLAS release / synthetic data / HDF5 file -> the HDF5 slice file
:func:`make_split`         subject-level split file (5-fold CV, hold-out, or a given JSON)
:func:`train_and_evaluate` train one model on one fold -> per-patient 3D scores -> manifest
:func:`compare_models`     several models x folds, then Table 1 (five-method comparison)
:func:`ablation`           Table 2 (Baseline, + ASPP, + ASPP + CLF, CLCI-Net)
:func:`run_demo`           the synthetic end-to-end demo (``clci-keras demo``)
:func:`resolve_settings`   a notebook's settings: ``None`` -> QUICK value or protocol default
=========================  ==================================================================

Notebook helpers: :mod:`~clci_keras.experiments.analysis` (data summary,
pooled scores, several methods on the same patients, failure cases) and
:mod:`~clci_keras.experiments.plots` (the notebooks' figures).

Importing this package does not import TensorFlow.
"""
from clci_keras.experiments.analysis import (
    SIZE_BINS_ML,
    Methods,
    data_label,
    describe_data,
    dice_by_size,
    failure_cases,
    find_runs,
    is_synthetic,
    pooled_scores,
    score_summary,
    size_classes,
    split_subjects,
)
from clci_keras.experiments.demo import DEMO_DEFAULTS, run_demo
from clci_keras.experiments.settings import (
    QUICK_CROP,
    QUICK_DATA,
    QUICK_EVAL_SLICES,
    QUICK_TABLES,
    QUICK_TRAINING,
    QUICK_VISUALIZATION,
    WORKFLOW_DEFAULTS,
    protocol_defaults,
    resolve_settings,
    train_options,
)
from clci_keras.experiments.workflows import (
    TABLE1_MODELS,
    TABLE2_MODELS,
    ablation,
    compare_models,
    make_split,
    mark_synthetic,
    prepare_data,
    run_dir_for,
    train_and_evaluate,
)

__all__ = [
    "prepare_data", "make_split", "train_and_evaluate", "compare_models", "ablation", "run_demo",
    "resolve_settings", "protocol_defaults", "train_options", "run_dir_for", "mark_synthetic",
    "DEMO_DEFAULTS", "QUICK_CROP", "QUICK_DATA", "QUICK_EVAL_SLICES", "QUICK_TRAINING", "QUICK_TABLES",
    "QUICK_VISUALIZATION",
    "WORKFLOW_DEFAULTS", "TABLE1_MODELS", "TABLE2_MODELS",
    "SIZE_BINS_ML", "Methods", "data_label", "describe_data", "dice_by_size", "failure_cases", "find_runs",
    "is_synthetic", "pooled_scores", "score_summary", "size_classes", "split_subjects",
]
