"""Inference: segment T1 NIfTI volumes into lesion-mask NIfTI volumes.

``predict_volume(model, image)`` is the library entry point; ``clci-keras
predict`` (:mod:`clci_keras.cli.predict`) the command line. Registration of
native-space scans: :mod:`clci_keras.inference.register`; ensembles, flip
TTA and clean-up: :mod:`~clci_keras.inference.ensemble`; QC pictures and the
summary CSV: :mod:`~clci_keras.inference.qc`; the intensity check:
:mod:`~clci_keras.inference.scaling`.
"""
from clci_keras.data.constants import ATLAS_AFFINE
from clci_keras.inference.batch import BatchResult, Job, plan_outputs, segment_files
from clci_keras.inference.ensemble import remove_small_components
from clci_keras.inference.io import InputError, find_inputs, load_image, save_atomic
from clci_keras.inference.optimize import ZeroStateConvLSTM2D, optimize_for_inference
from clci_keras.inference.predict import (
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
from clci_keras.inference.register import (
    Registration,
    RegistrationError,
    RegistrationUnavailable,
    register_to_mni,
)
from clci_keras.inference.scaling import IntensityError, resolve_intensity

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
    "IntensityError",
    "Registration",
    "RegistrationError",
    "RegistrationUnavailable",
    "register_to_mni",
    "remove_small_components",
    "resolve_intensity",
]
