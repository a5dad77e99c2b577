"""ATLAS data path: synthetic data, HDF5 preprocessing, splits and the tf.data pipeline.

Importing this package does not import TensorFlow (the pipeline imports it
inside its functions).
"""
from clci_keras.data.atlas import (
    AtlasDataError,
    NonBinaryMaskWarning,
    SubjectRecord,
    detect_layout,
    discover_subjects,
    load_subject,
)
from clci_keras.data.constants import (
    ATLAS_SHAPE,
    CROPS,
    DEFAULT_CROP,
    R11_SCALE,
    SLICE_SHAPE,
    SLICES_PER_SUBJECT,
)
from clci_keras.data.intensity import normalize_intensity
from clci_keras.data.pipeline import load_subject_slices, make_dataset, num_batches
from clci_keras.data.preprocess import prepare_h5, read_subjects
from clci_keras.data.slicing import (
    crop_shape,
    crop_slices,
    get_crop,
    slices_to_volume,
    uncrop_slices,
    volume_to_slices,
)
from clci_keras.data.splits import (
    load_split,
    make_holdout_split,
    make_kfold_split,
    make_kfold_splits,
    save_split,
)
from clci_keras.data.synthetic import generate_dataset, generate_subject

__all__ = [
    "ATLAS_SHAPE", "CROPS", "DEFAULT_CROP", "R11_SCALE", "SLICE_SHAPE", "SLICES_PER_SUBJECT",
    "AtlasDataError", "NonBinaryMaskWarning", "SubjectRecord", "detect_layout", "discover_subjects",
    "load_subject", "normalize_intensity", "load_subject_slices", "make_dataset", "num_batches",
    "prepare_h5", "read_subjects", "crop_shape", "crop_slices", "get_crop", "slices_to_volume",
    "uncrop_slices", "volume_to_slices", "load_split", "make_holdout_split", "make_kfold_split", "make_kfold_splits",
    "save_split", "generate_dataset", "generate_subject",
]
