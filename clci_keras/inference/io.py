"""NIfTI input/output for inference: validated reading, input discovery, atomic writes.

Every problem with an input raises :class:`InputError` (a ``ValueError``)
whose message starts with the file name, so that batch runs can report each
failure on one line.
"""
from __future__ import annotations

import os
import re

import nibabel as nib
import numpy as np

from clci_keras.fileio import discard, publish, temporary, walk, write_error

#: File name endings recognised as NIfTI.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Suffixes of the files written by :mod:`clci_keras.cli.predict`.
MASK_SUFFIX = "_lesion_mask"
PROB_SUFFIX = "_lesion_prob"

# Names that are labels rather than T1 images (ATLAS R1.1/2.0 masks, outputs of this tool).
_NOT_T1 = re.compile(r"(lesion|mask|label|_seg|_dseg|_prob)", re.IGNORECASE)
# A BIDS file name without its extension: ``sub-LABEL[_key-value...]_SUFFIX``.
_BIDS_NAME = re.compile(r"^sub-[a-zA-Z0-9]+(?:_[a-zA-Z]+-[a-zA-Z0-9]+)*_(?P<suffix>[a-zA-Z0-9]+)$")


class InputError(ValueError):
    """A bad input image; the message names the file and the problem."""


def is_nifti_name(path):
    """True if ``path`` ends with ``.nii`` or ``.nii.gz``."""
    return os.fspath(path).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name):
    """``"a/b.nii.gz"`` -> ``"a/b"`` (``.nii`` likewise); other names unchanged."""
    for ext in NIFTI_SUFFIXES:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def describe(image):
    """A name for error messages: the image's file name or ``'<in-memory image>'``."""
    name = image.get_filename() if hasattr(image, "get_filename") else None
    return name or "<in-memory image>"


def validate_volume(data, name):
    """Check a loaded array is a usable 3D T1 volume; returns it as 3D.

    Trailing axes of size 1 (``(X, Y, Z, 1)``) are dropped. Raises
    :class:`InputError` for 2D or 4D data, non-numeric types, NaN/inf voxels
    and empty (constant) volumes.
    """
    data = np.asanyarray(data)
    shape = tuple(data.shape)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        extra = ""
        if data.ndim == 4:
            extra = f" ({data.shape[3]} volumes; give one 3D T1 image, e.g. split with fslsplit)"
        raise InputError(
            f"{name}: expected a 3D T1 volume, got {data.ndim}D data of shape {shape}{extra}"
        )
    if min(data.shape) < 2:
        raise InputError(f"{name}: expected a 3D T1 volume, got shape {shape} (a 2D image)")
    if data.dtype.kind not in "biuf":
        raise InputError(f"{name}: unsupported voxel type {data.dtype} (expected real numbers)")
    if data.dtype.kind == "f":
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad:
            raise InputError(f"{name}: {n_bad} voxels are NaN or inf")
    lo, hi = data.min(), data.max()
    if lo == hi:
        raise InputError(f"{name}: empty volume (every voxel equals {lo.item() if hasattr(lo, 'item') else lo})")
    return data


def load_image(path):
    """Load and validate a NIfTI T1 image; returns ``(image, data)``.

    ``data`` is the 3D array of (scaled) voxel values. Raises :class:`InputError`
    naming ``path`` when the file is missing, not NIfTI, truncated or corrupt,
    or when :func:`validate_volume` rejects its data.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: file not found")
    if not os.path.isfile(path):
        raise InputError(f"{path}: not a file")
    try:
        image = nib.load(path)
    except Exception as e:  # ImageFileError, gzip/zlib/struct errors, HeaderDataError...
        raise InputError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image derives from Nifti1Image
        raise InputError(
            f"{path}: not a NIfTI file (nibabel read it as {type(image).__name__}); "
            "convert it to .nii.gz first"
        )
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as e:  # EOFError for truncated .nii.gz, zlib.error, OSError, ValueError
        raise InputError(
            f"{path}: cannot read the voxel data ({type(e).__name__}: {e}); "
            "the file is truncated or corrupt"
        ) from e
    return image, validate_volume(data, path)


def skip_reason(name):
    """Why the NIfTI file ``name`` found in a folder is not taken as a T1 image, or ``None``.

    Names that look like labels (``lesion``, ``mask``, ``label``, ``_seg``, ``_dseg``,
    ``_prob``: ATLAS masks, outputs of this tool), and BIDS file names whose suffix is
    not ``T1w`` (``sub-01_FLAIR.nii.gz``, ``sub-01_T2w.nii.gz``).
    """
    stem = strip_nifti_suffix(os.path.basename(os.fspath(name)))
    if _NOT_T1.search(stem):
        return "a label image by its name (lesion, mask, label, _seg, _prob), not a T1 image"
    m = _BIDS_NAME.match(stem)
    if m and m.group("suffix") != "T1w":
        return f"a BIDS {m.group('suffix')} image by its name, not a T1w image"
    return None


def find_inputs(paths, exclude=(), skipped=None):
    """Expand files and folders into a list of ``(path, relative_dir)`` T1 inputs.

    Files are taken as given (``relative_dir`` is ``""``). Folders are walked
    recursively in sorted order, following links to folders (each folder once,
    so a link loop ends); every NIfTI file found is taken, except those
    :func:`skip_reason` names (labels such as ATLAS lesion masks, and BIDS images
    of another kind than ``T1w``), which are listed in ``skipped`` with their
    reason: an ATLAS tree gives its T1 images (R1.1 ``*_t1w_deface_stx.nii.gz``,
    2.0 ``*_T1w.nii.gz``), and a plainly named T1 beside them is taken too.
    ``relative_dir`` is the file's folder relative to the given folder, so
    outputs can mirror the input tree. Paths under a folder in ``exclude``
    (the output folder; compared as resolved paths, links followed) are skipped.

    Args:
        paths: files and folders.
        exclude: folders whose files are never inputs (the output folder).
        skipped: a list to which ``(path, reason)`` is appended for each NIfTI file
            found in a folder and not taken (the caller names them).

    Returns ``(inputs, errors)``; ``errors`` lists ``(path, message)`` for
    inputs that do not exist or folders without NIfTI T1 files.
    """
    inputs, errors = [], []
    excluded = [os.path.realpath(e) for e in exclude]

    def is_excluded(p):
        a = os.path.realpath(p)
        return any(a == e or a.startswith(e.rstrip(os.sep) + os.sep) for e in excluded)

    for given in paths:
        given = os.fspath(given)
        if os.path.isfile(given):
            inputs.append((given, ""))
            continue
        if not os.path.isdir(given):
            errors.append((given, f"{given}: no such file or folder"))
            continue
        found, left = [], []
        for root, _, files in walk(given, skip=is_excluded):  # linked folders too, each once
            for f in files:
                if is_nifti_name(f):
                    reason = skip_reason(f)
                    if reason is None:
                        found.append(os.path.join(root, f))
                    else:
                        left.append((os.path.join(root, f), reason))
        if skipped is not None:
            skipped.extend(left)
        if not found:
            why = f" ({len(left)} NIfTI file(s) skipped: labels or other kinds of image by their names)" if left else ""
            errors.append((given, f"{given}: folder contains no NIfTI T1 image (*.nii, *.nii.gz){why}"))
        for p in found:
            rel = os.path.relpath(os.path.dirname(p), given)
            inputs.append((p, "" if rel == "." else rel))
    return inputs, errors


def output_paths(input_path, out_dir, relative_dir="", prob=False):
    """``(mask_path, prob_path or None)`` in ``out_dir/relative_dir``, ``.nii.gz``."""
    stem = strip_nifti_suffix(os.path.basename(os.fspath(input_path)))
    folder = os.path.join(os.fspath(out_dir), relative_dir)
    mask = os.path.join(folder, stem + MASK_SUFFIX + ".nii.gz")
    return mask, (os.path.join(folder, stem + PROB_SUFFIX + ".nii.gz") if prob else None)


def save_atomic(images_and_paths):
    """Save ``[(image, path), ...]``: each to a temporary file in its folder, then rename.

    An ``image`` is a NIfTI image or ``bytes`` (written as they are: a PNG,
    a JSON text). All temporary files are written before any is renamed, so
    a failure leaves no output (and no temporary file) behind; a full disk is one
    ``OSError`` naming the output that could not be written (``PATH: cannot write it: ...``).
    """
    done = []
    path = None
    try:
        for image, path in images_and_paths:
            path = os.fspath(path)
            tmp = temporary(path)  # keeps the extension: nibabel picks gzip from ``.nii.gz``
            done.append((tmp, path))
            if isinstance(image, (bytes, bytearray)):
                with open(tmp, "wb") as f:
                    f.write(image)
            else:
                nib.save(image, tmp)
        for tmp, path in done:
            publish(tmp, path)
    except BaseException as e:
        for tmp, _ in done:
            discard(tmp)
        err = write_error(e, path) if path is not None else e  # a full disk names the output, not its temporary
        if err is e:
            raise
        raise err from e
