"""Inference: segment T1 NIfTI volumes into lesion-mask NIfTI volumes.

``predict_volume(model, image)`` is the library entry point; ``clci-keras
predict`` (:mod:`clci_keras.cli.predict`) the command line.
"""
from clci_keras.inference.batch import BatchResult, Job, plan_outputs, segment_files
from clci_keras.inference.io import InputError, find_inputs, load_image, save_atomic
from clci_keras.inference.optimize import ZeroStateConvLSTM2D, optimize_for_inference
from clci_keras.inference.predict import (
    ATLAS_AFFINE,
    DEFAULT_BATCH_SIZE,
    PRECISIONS,
    GridWarning,
    Segmentation,
    WeightsError,
    brain_slice_indices,
    build_inference_model,
    configure_threads,
    predict_atlas_volume,
    predict_slices,
    predict_volume,
    segment_image,
)

__all__ = [
    "BatchResult",
    "Job",
    "plan_outputs",
    "segment_files",
    "ATLAS_AFFINE",
    "DEFAULT_BATCH_SIZE",
    "PRECISIONS",
    "GridWarning",
    "InputError",
    "Segmentation",
    "WeightsError",
    "ZeroStateConvLSTM2D",
    "brain_slice_indices",
    "build_inference_model",
    "configure_threads",
    "find_inputs",
    "load_image",
    "optimize_for_inference",
    "predict_atlas_volume",
    "predict_slices",
    "predict_volume",
    "save_atomic",
    "segment_image",
]
