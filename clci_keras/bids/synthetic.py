"""A small synthetic BIDS dataset for the BIDS App (tests, docs/bids.md).

Subjects come from :func:`clci_keras.data.synthetic.generate_subject` (v2 intensity scale) and
are written as a valid raw BIDS dataset, one subject per kind:

* ``"mni"``: on the template grid, named as ATLAS 2.0 does
  (``space-MNI152NLin2009aSym_T1w``, with its ``label-L_desc-T1lesion_mask``);
* ``"native"``: moved off the template by a known affine (rotation, 1.2 mm voxels, PIR axis
  order) and named without ``space-``, as a scan from the scanner;
* ``"sessions"``: two sessions on the template grid, ``ses-2`` stored in LAS axis order;
* ``"broken"``: a truncated ``.nii.gz``.
"""
from __future__ import annotations

import os

import numpy as np
from nibabel import orientations as no

from clci_keras.data.constants import ATLAS_AFFINE, V2_SPACE
from clci_keras.data.synthetic import axis_rotation as _rot, generate_subject, save_nifti
from clci_keras.fileio import (
    atomic_path,
    atomic_text,
    discard,
    exclusive,
    publish,
    remove_leftovers,
    temporary,
    write_json,
)
from clci_keras.inference.register import resample

KINDS = ("mni", "native", "sessions", "broken")


def native_grid(seed=0):
    """``(native_to_mni world matrix, native affine, shape)`` of the ``"native"`` subject."""
    rng = np.random.default_rng([int(seed), 99])
    angles = rng.uniform(-10, 10, 3)
    a = np.eye(4)
    a[:3, :3] = _rot(0, angles[0]) @ _rot(1, angles[1]) @ _rot(2, angles[2]) @ np.diag(rng.uniform(0.95, 1.05, 3))
    a[:3, 3] = rng.uniform(-6, 6, 3)
    zooms = np.array([1.2, 1.2, 1.2])
    perm = np.zeros((3, 3))
    perm[1, 0], perm[2, 1], perm[0, 2] = -1, -1, 1  # PIR
    n = np.eye(4)
    n[:3, :3] = perm * zooms[None, :]
    shape = (190, 160, 140)
    n[:3, 3] = np.array([0.0, -18.0, 10.0]) - n[:3, :3] @ ((np.array(shape) - 1) / 2)
    return a, n, shape


def _save(data, affine, path, dtype=np.int16):
    save_nifti(np.asarray(data, np.float32), affine, path, dtype, xform_code=1)


def write_synthetic_bids(out_dir, kinds=KINDS, seed=0):
    """Write a raw BIDS dataset with one subject per entry of ``kinds`` (:data:`KINDS`); returns
    ``{"sub-01": {"kind", "t1": [paths]}, ...}``. ``out_dir`` must not exist or be empty.

    A new ``out_dir`` is written as a temporary folder beside it and renamed to it when
    complete (an interrupted run leaves nothing); an existing empty one is filled in place.
    One run per folder at a time (:func:`clci_keras.fileio.exclusive`).
    """
    out_dir = os.path.normpath(os.fspath(out_dir))
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"kinds must be among {KINDS}, got {bad}")
    with exclusive(out_dir, what="output folder"):
        remove_leftovers(out_dir)
        if os.path.lexists(out_dir):
            if not os.path.isdir(out_dir) or os.listdir(out_dir):
                raise ValueError(f"{out_dir}: folder is not empty")
            return _write(out_dir, kinds, seed)
        tmp = temporary(out_dir, folder=True)
        try:
            records = _write(tmp, kinds, seed)
            publish(tmp, out_dir)
        except BaseException:
            discard(tmp)
            raise
    return {sub: {**r, "t1": [os.path.join(out_dir, os.path.relpath(p, tmp)) for p in r["t1"]]}
            for sub, r in records.items()}


def _write(out_dir, kinds, seed):
    """:func:`write_synthetic_bids` into the folder ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "dataset_description.json"),
               {"Name": "clci-keras synthetic ATLAS-like T1w scans", "BIDSVersion": "1.10.0",
                "DatasetType": "raw", "Authors": ["clci-keras synthetic generator"]})
    records = {}
    for i, kind in enumerate(kinds):
        sub = f"sub-{i + 1:02d}"
        subj = generate_subject(seed=seed, index=i, layout="v2")
        anat = os.path.join(out_dir, sub, "anat")
        paths = []
        if kind == "mni":
            stem = os.path.join(anat, f"{sub}_space-{V2_SPACE}")
            paths.append(stem + "_T1w.nii.gz")
            _save(subj.t1, ATLAS_AFFINE, paths[-1])
            merged = np.zeros_like(subj.masks[0])
            for m in subj.masks:
                merged |= m
            _save(merged, ATLAS_AFFINE, stem + "_label-L_desc-T1lesion_mask.nii.gz", np.uint8)
        elif kind == "native":
            a, n, shape = native_grid(seed)
            vol = resample(subj.t1, ATLAS_AFFINE, a @ n, shape, order=1)
            paths.append(os.path.join(anat, f"{sub}_T1w.nii.gz"))
            _save(np.clip(vol, 0, None), n, paths[-1])
        elif kind == "sessions":
            for ses, codes in (("1", "RAS"), ("2", "LAS")):
                t1 = subj.t1 if ses == "1" else generate_subject(seed=seed, index=100 + i, layout="v2").t1
                ornt = no.ornt_transform(no.axcodes2ornt("RAS"), no.axcodes2ornt(codes))
                data = no.apply_orientation(t1, ornt)
                affine = ATLAS_AFFINE @ no.inv_ornt_aff(ornt, t1.shape)
                paths.append(os.path.join(out_dir, sub, f"ses-{ses}", "anat", f"{sub}_ses-{ses}_T1w.nii.gz"))
                _save(data, affine, paths[-1])
        else:  # broken: a truncated .nii.gz
            paths.append(os.path.join(anat, f"{sub}_T1w.nii.gz"))
            _save(subj.t1, ATLAS_AFFINE, paths[-1])
            with open(paths[-1], "rb") as f:
                head = f.read(4000)
            with atomic_path(paths[-1]) as tmp, open(tmp, "wb") as g:
                g.write(head)
        records[sub] = {"kind": kind, "t1": paths}
    with atomic_text(os.path.join(out_dir, "participants.tsv")) as f:
        f.write("participant_id\tkind\n" + "".join(f"{s}\t{r['kind']}\n" for s, r in records.items()))
    return records

