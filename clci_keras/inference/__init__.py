"""Inference: segment T1 NIfTI volumes into lesion-mask NIfTI volumes.

:class:`~clci_keras.inference.engine.SegmentationEngine` is the one segmentation engine that
``predict_volume(model, image)``, ``clci-keras predict`` (:mod:`clci_keras.cli.predict`) and the
BIDS App share. Registration of
native-space scans: :mod:`clci_keras.inference.register`; ensembles, flip
TTA and clean-up: :mod:`~clci_keras.inference.ensemble`; QC pictures and the
summary CSV: :mod:`~clci_keras.inference.qc`; the intensity check:
:mod:`~clci_keras.inference.scaling`.
"""
import importlib

#: Public name -> the module that defines it. Imported when first used (PEP 562), so that
#: importing a module of this package (``clci_keras.inference.export``, ``.io``, ``.batch``)
#: does not start Keras and its backend: a command takes its output's lock first.
_HOMES = {
    "ATLAS_AFFINE": "clci_keras.data.constants",
    **dict.fromkeys(("BatchResult", "Job", "plan_outputs", "segment_files"), "clci_keras.inference.batch"),
    "remove_small_components": "clci_keras.inference.ensemble",
    **dict.fromkeys(("InputError", "find_inputs", "load_image", "save_atomic"), "clci_keras.inference.io"),
    **dict.fromkeys(("ZeroStateConvLSTM2D", "optimize_for_inference"), "clci_keras.inference.optimize"),
    **dict.fromkeys(("DEFAULT_BATCH_SIZE", "GridWarning", "Segmentation",
                     "brain_slice_indices", "build_inference_model", "configure_threads", "predict_atlas_volume",
                     "predict_slices", "segment_image"), "clci_keras.inference.predict"),
    **dict.fromkeys(("SegmentationEngine", "predict_volume"), "clci_keras.inference.engine"),
    **dict.fromkeys(("Registration", "RegistrationError", "RegistrationUnavailable", "register_to_mni"),
                    "clci_keras.inference.register"),
    **dict.fromkeys(("IntensityError", "resolve_intensity"), "clci_keras.inference.scaling"),
    **dict.fromkeys(("LesionReport", "lesion_files", "lesion_load", "lesion_report", "report_masks"),
                    "clci_keras.inference.lesions"),
}


def __getattr__(name):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'clci_keras.inference' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_HOMES))


__all__ = [
    "BatchResult",
    "Job",
    "plan_outputs",
    "segment_files",
    "ATLAS_AFFINE",
    "DEFAULT_BATCH_SIZE",
    "GridWarning",
    "InputError",
    "Segmentation",
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
    "SegmentationEngine",
    "IntensityError",
    "Registration",
    "RegistrationError",
    "RegistrationUnavailable",
    "register_to_mni",
    "remove_small_components",
    "resolve_intensity",
    "LesionReport",
    "lesion_files",
    "lesion_load",
    "lesion_report",
    "report_masks",
]
