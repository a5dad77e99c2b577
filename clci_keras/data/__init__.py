"""ATLAS data path: synthetic data, HDF5 preprocessing, splits and the one HDF5 reader.

Importing this package does not import TensorFlow (the reader's ``tf.data``
functions import it when called).
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
    eval_dataset,
    iter_batches,
    load_subject_slices,
    parse_slice_spec,
    select_slices,
    subject_table,
    train_dataset,
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
