"""The lesion mask that fMRIPrep and sMRIPrep mask out of spatial normalization.

Where the pipelines look (verified in their sources, mirrors of 2026-08/2026-03):

* ``nipreps/niworkflows`` ``niworkflows/utils/bids.py`` (commit d991644f, 1.14.4-124-g),
  ``DEFAULT_BIDS_QUERIES['roi'] = {'datatype': 'anat', 'suffix': 'roi'}``, and ``collect_data``
  adds ``subject``, ``session`` (``Query.OPTIONAL`` when no session is asked for) and
  ``extension: ['.nii', '.nii.gz']``. In words: every ``*_roi.nii[.gz]`` file in the ``anat``
  folder of the participant (and session) of the raw BIDS dataset is the lesion mask; the
  ``label-`` entity and any ``acq-``/``run-`` are not part of the query.
* sMRIPrep (``nipreps/smriprep`` commit ca6f9310, 0.19.2-138-g) and fMRIPrep (``nipreps/fmriprep``
  commit 18f39175, 25.2.5-88-g) call that ``collect_data``; sMRIPrep's ``workflows/base.py``
  passes the ``roi`` output of its BIDS grabber to ``inputnode.roi`` and
  ``workflows/anatomical.py`` on to the template registration's ``lesion_mask`` (a single
  file: niworkflows' ``SpatialNormalization.lesion_mask = File(exists=True)``), which subtracts
  it from the cost-function mask. fMRIPrep's ``workflows/base.py`` warns (``FutureWarning``)
  ``Lesion mask ... found`` when it sees one.
* fMRIPrep's ``docs/workflows.rst`` ("Cost function masking during spatial normalization"):
  binary (lesion 1, else 0), in the same space and resolution as the T1w, suffix ``_roi``, e.g.
  ``sub-001_label-lesion_roi.nii.gz`` in ``sub-*/anat``, and a ``.bidsignore`` line
  ``*lesion_roi.nii.gz``, because the file is not BIDS and fMRIPrep stops on a dataset the
  validator rejects (``fmriprep/utils/bids.py`` ``validate_input_dir``: ``check_call`` of the
  validator, unless ``--skip-bids-validation``).

So the file is ``sub-<label>[_ses-<label>]_label-lesion_roi.nii.gz`` beside the T1w, one per
participant (and session): several ``*_roi`` files in one query become a list where one file
is expected. For a participant with several sessions, fMRIPrep's default query (all sessions)
finds every session's ROI: run it with ``--session-label`` or
``--subject-anatomical-reference sessionwise`` (one anatomical workflow per session).

The validator (``bids-validator-deno`` 3.0.2; schema version 1.2.7 in its JSON summary) reports such a file as
``NOT_INCLUDED`` (an error: the ``roi`` suffix is in no raw-data rule, and ``label-`` is a
derivatives entity); :func:`write_lesion_roi` therefore adds fMRIPrep's documented line
:data:`BIDSIGNORE_LINE` to the dataset's ``.bidsignore`` when it writes a mask and no line there
covers it already.

An existing ROI is never replaced (a hand-corrected mask must survive): :func:`write_lesion_roi`
returns ``written=False`` and a one-line message naming it.
"""
from __future__ import annotations

import fnmatch
import os

import nibabel as nib
import numpy as np

from clci_keras.bids.layout import SOURCE_ENTITIES, strip_label
from clci_keras.inference.io import save_atomic

#: The ``label-`` value, suffix and extension of fMRIPrep's documented example name.
ROI_LABEL = "lesion"
ROI_SUFFIX = "roi"
ROI_EXTENSION = ".nii.gz"
#: The ``.bidsignore`` line fMRIPrep's documentation asks for.
BIDSIGNORE_LINE = "*lesion_roi.nii.gz"
#: Entities a lesion-ROI name may carry besides ``sub``/``ses``, in BIDS order (all precede ``label``).
OPTIONAL_ENTITIES = tuple(k for k in SOURCE_ENTITIES if k not in ("sub", "ses"))
#: Largest difference (mm) between the mask's affine and the T1w's still taken as the same grid.
AFFINE_ATOL = 1e-4


def lesion_roi_name(subject, session=None, **entities):
    """``sub-<label>[_ses-<label>][_<key>-<value>...]_label-lesion_roi.nii.gz``.

    ``subject`` and ``session`` are taken with or without ``sub-`` / ``ses-``. Other entities
    (``acq``, ``run``, ... of :data:`OPTIONAL_ENTITIES`; ``None`` values skipped) go in BIDS order
    before ``label``; fMRIPrep's query ignores them, so :func:`lesion_roi_path` uses none.
    ``ValueError`` for an unknown entity or a label that is not letters and digits.
    """
    unknown = sorted(k for k in entities if k not in OPTIONAL_ENTITIES)
    if unknown:
        raise ValueError(f"lesion ROI name: unknown entit{'ies' if len(unknown) > 1 else 'y'} "
                         f"{', '.join(unknown)} (allowed: sub, ses, {', '.join(OPTIONAL_ENTITIES)})")
    parts = [f"sub-{strip_label(subject, 'sub')}"]
    if session is not None:
        parts.append(f"ses-{strip_label(session, 'ses')}")
    for key in OPTIONAL_ENTITIES:
        if entities.get(key) is not None:
            parts.append(f"{key}-{strip_label(entities[key], key)}")
    parts.append(f"label-{ROI_LABEL}")
    return "_".join(parts) + f"_{ROI_SUFFIX}{ROI_EXTENSION}"


def _scan_folder(scan):
    """The T1w's folder relative to its dataset (``sub-01/ses-1/anat``); ``ValueError`` if it leaves it."""
    folder = os.path.dirname(os.path.normpath(os.fspath(scan.relpath)))
    if os.path.isabs(folder) or folder == ".." or folder.startswith(".." + os.sep):
        raise ValueError(f"{scan.path}: its relative path {scan.relpath!r} leaves the dataset")
    return folder


def lesion_roi_path(dataset_root, scan):
    """The lesion ROI of ``scan`` (a :class:`clci_keras.bids.layout.Scan`) in ``dataset_root``.

    The T1w's own folder relative to its dataset, under ``dataset_root`` (the raw dataset
    itself, or a copy of it elsewhere), named :func:`lesion_roi_name` of its subject and session.
    """
    return os.path.join(os.path.abspath(os.fspath(dataset_root)), _scan_folder(scan),
                        lesion_roi_name(scan.subject, scan.session))


def _existing_roi(path):
    """The ROI file already in ``path``'s folder for the same participant/session, or ``None``.

    fMRIPrep takes every ``*_roi.nii[.gz]`` of the folder for that participant (and session),
    so any of them (the same name in either extension, or another ``label-``) counts.
    """
    folder, name = os.path.split(path)
    if os.path.lexists(path):
        return path
    if not os.path.isdir(folder):
        return None
    prefix = name.split("_label-")[0] + "_"
    for other in sorted(os.listdir(folder)):
        if other.startswith(prefix) and other.endswith((f"_{ROI_SUFFIX}.nii", f"_{ROI_SUFFIX}.nii.gz")):
            return os.path.join(folder, other)
    return None


def _binary(mask, name):
    """The mask's voxels as a 3D ``uint8`` 0/1 array; ``ValueError`` naming it if not binary."""
    data = np.asanyarray(mask.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{name}: a lesion mask must be 3D, got shape {tuple(data.shape)}")
    if data.dtype != bool:
        values = np.unique(data)
        if not np.all(np.isin(values, (0, 1))):
            shown = ", ".join(str(v) for v in values[:5]) + (", ..." if values.size > 5 else "")
            raise ValueError(f"{name}: a lesion mask must hold only 0 and 1, it holds {shown}")
    return (data != 0).astype(np.uint8)


def _covered(line, name, relpath):
    pattern = line.strip()
    if not pattern or pattern.startswith("#"):
        return False
    pattern = pattern.lstrip("/")
    if pattern.startswith("**/"):
        pattern = pattern[3:]
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(relpath, pattern)


def ensure_bidsignore(dataset_root, roi_path):
    """Add :data:`BIDSIGNORE_LINE` to ``dataset_root/.bidsignore`` unless a line covers ``roi_path``.

    Returns the line added, or ``None``. The file's other lines are kept as they are.
    """
    ignore = os.path.join(os.fspath(dataset_root), ".bidsignore")
    text = ""
    if os.path.exists(ignore):
        with open(ignore, encoding="utf-8") as f:
            text = f.read()
    relpath = os.path.relpath(roi_path, dataset_root).replace(os.sep, "/")
    if any(_covered(line, os.path.basename(roi_path), relpath) for line in text.splitlines()):
        return None
    if text and not text.endswith("\n"):
        text += "\n"
    save_atomic([((text + BIDSIGNORE_LINE + "\n").encode("utf-8"), ignore)])
    return BIDSIGNORE_LINE


def write_lesion_roi(mask_image, scan, dataset_root, bidsignore=True):
    """Write a binary lesion mask where fMRIPrep/sMRIPrep read it; never over an existing one.

    Args:
        mask_image: nibabel image (or its path) of the lesion mask on the T1w's own grid, its
            header made from the T1w's (kept: the mask is saved with it, as ``uint8`` 0/1).
        scan: the :class:`clci_keras.bids.layout.Scan` of the T1w.
        dataset_root: the raw dataset, or a copy of it (:func:`copy_dataset_skeleton`).
        bidsignore: when writing, add :data:`BIDSIGNORE_LINE` to ``dataset_root/.bidsignore``
            if no line there covers the ROI (:func:`ensure_bidsignore`).

    Returns:
        ``(path, written, message)``: ``written`` is ``False`` when a ROI of this participant
        (and session) is already in the folder (the same name with ``.nii`` or ``.nii.gz``,
        or another ``*_roi`` file, which fMRIPrep would take too); nothing is written then,
        and ``message`` names that file.

    Raises:
        ValueError: the mask is not 3D binary, or its shape or affine is not the T1w's (naming
            both files).
    """
    path = lesion_roi_path(dataset_root, scan)
    there = _existing_roi(path)
    if there is not None:
        what = "this lesion ROI" if there == path else "a lesion ROI (*_roi) of this scan's participant/session"
        return path, False, f"{there}: {what} is already there; kept, nothing written"
    mask = nib.load(os.fspath(mask_image)) if isinstance(mask_image, (str, os.PathLike)) else mask_image
    name = (mask.get_filename() if hasattr(mask, "get_filename") else None) or "<in-memory mask>"
    t1 = nib.load(scan.path)
    data = _binary(mask, name)
    t1_shape = tuple(int(s) for s in t1.shape[:3])
    if data.shape != t1_shape:
        raise ValueError(f"{name}: shape {data.shape} is not that of its T1w {scan.path} {t1_shape}; "
                         f"a lesion ROI must be on the T1w's own grid")
    if not np.allclose(mask.affine, t1.affine, rtol=0, atol=AFFINE_ATOL):
        worst = float(np.max(np.abs(np.asarray(mask.affine) - t1.affine)))
        raise ValueError(f"{name}: affine differs from that of its T1w {scan.path} (by up to {worst:.4g} mm); "
                         f"a lesion ROI must be on the T1w's own grid")
    header = mask.header if isinstance(mask.header, nib.Nifti1Header) else None
    out = nib.Nifti1Image(data, mask.affine, header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1, 0)
    out.header["cal_min"], out.header["cal_max"] = 0, 1
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_atomic([(out, path)])
    n = int(data.sum())
    message = f"{path}: lesion ROI written ({n} voxel{'s' if n != 1 else ''}{', empty' if n == 0 else ''})"
    if bidsignore:
        added = ensure_bidsignore(dataset_root, path)
        if added:
            message += f"; '{added}' added to {os.path.join(os.fspath(dataset_root), '.bidsignore')}"
    return path, True, message


def copy_dataset_skeleton(bids_dir, dest):
    """Make ``dest`` a minimal BIDS dataset to receive lesion ROIs: ``dataset_description.json`` only.

    The raw dataset's ``dataset_description.json`` is copied unless ``dest`` has one (then both
    are left as they are); no image is copied or linked. fMRIPrep needs the whole raw dataset, so
    such a copy is not run as it is: merge its ``sub-*/.../anat/*_roi.nii.gz`` files and its
    ``.bidsignore`` line into the raw dataset (or a full copy of it) and point fMRIPrep there.
    Returns ``dest`` (absolute).
    """
    src = os.path.join(os.fspath(bids_dir), "dataset_description.json")
    if not os.path.isfile(src):
        raise ValueError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    dest = os.path.abspath(os.fspath(dest))
    if os.path.abspath(os.fspath(bids_dir)) == dest:
        return dest
    target = os.path.join(dest, "dataset_description.json")
    if not os.path.lexists(target):
        os.makedirs(dest, exist_ok=True)
        with open(src, "rb") as f:
            save_atomic([(f.read(), target)])
    return dest
