"""ATLAS data path: synthetic data, HDF5 preprocessing, splits and the one HDF5 reader.

Importing this package imports neither Keras nor TensorFlow; the ``fit``
input (:mod:`clci_keras.data.batches`: ``train_dataset``, ``eval_dataset``)
imports Keras when first used.
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
from clci_keras.data.preprocess import prepare_h5, read_subjects
from clci_keras.data.reader import (
    SliceReader,
    brain_slice_indices,
    brain_z_range,
    dataset_info,
    iter_batches,
    load_subject_slices,
    parse_slice_spec,
    select_slices,
    subject_table,
)
from clci_keras.data.slicing import (
    crop_shape,
    crop_slices,
    get_crop,
    slices_to_volume,
    uncrop_slices,
    volume_to_slices,
)
from clci_keras.data.splits import (
    check_split_matches_h5,
    list_split_presets,
    load_split,
    make_holdout_split,
    make_kfold_split,
    make_kfold_splits,
    preset_split,
    read_id_list,
    resolve_split,
    save_split,
    split_from_lists,
)
from clci_keras.data.synthetic import generate_dataset, generate_subject

__all__ = [
    "ATLAS_SHAPE", "CROPS", "DEFAULT_CROP", "R11_SCALE", "SLICE_SHAPE", "SLICES_PER_SUBJECT",
    "AtlasDataError", "NonBinaryMaskWarning", "SubjectRecord", "detect_layout", "discover_subjects",
    "load_subject", "normalize_intensity", "load_subject_slices", "SliceReader", "brain_slice_indices",
    "brain_z_range", "dataset_info", "eval_dataset", "parse_slice_spec", "select_slices", "subject_table",
    "train_dataset",
    "iter_batches",
    "prepare_h5", "read_subjects", "crop_shape", "crop_slices", "get_crop", "slices_to_volume",
    "uncrop_slices", "volume_to_slices", "load_split", "make_holdout_split", "make_kfold_split", "make_kfold_splits",
    "save_split", "generate_dataset", "generate_subject", "check_split_matches_h5", "list_split_presets",
    "preset_split", "read_id_list", "resolve_split", "split_from_lists",
]


def __getattr__(name):
    if name in ("train_dataset", "eval_dataset"):
        from clci_keras.data import batches

        return getattr(batches, name)
    raise AttributeError(f"module 'clci_keras.data' has no attribute {name!r}")
