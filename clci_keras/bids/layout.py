"""The T1w scans of a BIDS dataset, and whether each needs registration to the template.

Scans are found with pybids (``pip install -e ".[bids]"``, docs/bids.md): every
``anat/*_T1w.nii[.gz]`` of the dataset, optionally restricted to participant and session
labels (given with or without ``sub-`` / ``ses-``, as BIDS Apps take them). The entities of a scan are read from its file name, so that they keep
their exact spelling (``run-01`` stays ``01``).
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
from nibabel import orientations as no

from clci_keras.data.constants import ATLAS_AFFINE, ATLAS_SHAPE

#: ``--register`` choices: decide per scan, register every scan, register none.
REGISTER_CHOICES = ("auto", "always", "never")
#: Entities a derivative of a T1w scan keeps from it, in the specification's order.
SOURCE_ENTITIES = ("sub", "ses", "task", "acq", "ce", "rec", "run", "echo", "part", "chunk")
#: Largest difference (mm) between an image's affine and the ATLAS grid's still taken as that grid
#: (the value of :data:`clci_keras.inference.predict.GRID_ATOL`).
GRID_ATOL = 1e-2

_INSTALL_HINT = 'pip install -e ".[bids]"  (or: pip install pybids)'
_ENTITY = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9]+)$")


class BidsUnavailable(ImportError):
    """pybids, the optional dependency of the BIDS App, is not installed."""


@dataclasses.dataclass
class Scan:
    """One T1w image of the input dataset.

    Attributes:
        path: absolute path of the image.
        relpath: its path relative to the dataset (``sub-01/anat/sub-01_T1w.nii.gz``).
        entities: ``{key: value}`` of its file name in order (``{"sub": "01", "ses": "1", ...}``).
    """

    path: str
    relpath: str
    entities: dict

    @property
    def subject(self):
        return self.entities["sub"]

    @property
    def session(self):
        return self.entities.get("ses")

    @property
    def space(self):
        """The ``space-`` label of the input, or ``None`` (the scanner's / T1w space)."""
        return self.entities.get("space")

    @property
    def key(self):
        """The source entities joined (``sub-01_ses-1_run-2``): names the scan's report and outputs."""
        return "_".join(f"{k}-{self.entities[k]}" for k in SOURCE_ENTITIES if k in self.entities)


def parse_entities(filename):
    """``{key: value}`` of a BIDS file name's entities, in order; ``ValueError`` naming it if malformed."""
    base = os.path.basename(os.fspath(filename))
    stem = base.split(".", 1)[0]
    parts = stem.split("_")
    out = {}
    for part in parts[:-1]:  # the last part is the suffix (T1w)
        m = _ENTITY.match(part)
        if not m:
            raise ValueError(f"{filename}: not a BIDS file name (entity {part!r} is not key-value)")
        out[m.group(1)] = m.group(2)
    if "sub" not in out:
        raise ValueError(f"{filename}: not a BIDS file name (no sub- entity)")
    return out


def strip_label(label, prefix):
    """``"sub-01"`` or ``"01"`` -> ``"01"``; ``ValueError`` echoing a label that is not alphanumeric."""
    text = str(label)
    if text.startswith(prefix + "-"):
        text = text[len(prefix) + 1:]
    if not re.fullmatch(r"[a-zA-Z0-9]+", text):
        raise ValueError(f"{prefix} label must be letters and digits (with or without '{prefix}-'), got {label!r}")
    return text


def require_pybids():
    """Import pybids' ``BIDSLayout`` or raise :class:`BidsUnavailable` saying how to install it."""
    try:
        from bids import BIDSLayout
    except ImportError as e:
        raise BidsUnavailable(f"the BIDS App needs the optional dependency pybids, which is not installed ({e}); "
                              f"install it with: {_INSTALL_HINT}") from e
    return BIDSLayout


def misfiled(relpath, entities):
    """Why a scan's file name disagrees with the folders it lies in, or ``None``.

    BIDS files lie in ``sub-LABEL/[ses-LABEL/]anat/``, and their name repeats those labels:
    ``sub-03/anat/sub-04_T1w.nii.gz`` (filed in another subject's folder) is named so that its
    outputs would go under the wrong participant.
    """
    folders = os.path.normpath(os.fspath(relpath)).split(os.sep)[:-1]
    sub = next((f for f in folders if f.startswith("sub-")), None)
    ses = next((f for f in folders if f.startswith("ses-")), None)
    if sub is None or sub != f"sub-{entities.get('sub')}":
        return (f"its name says sub-{entities.get('sub')} but it lies in "
                + (f"the folder {sub}" if sub else "no sub- folder"))
    if ses is not None and ses != f"ses-{entities.get('ses')}":
        said = f"ses-{entities['ses']}" if "ses" in entities else "no session"
        return f"its name says {said} but it lies in the folder {ses}"
    if ses is None and "ses" in entities:
        return f"its name says ses-{entities['ses']} but it lies in no ses- folder"
    return None


def find_scans(bids_dir, participant_labels=None, session_labels=None, refused=None):
    """The T1w scans of a BIDS dataset, sorted by path.

    Args:
        bids_dir: root of the dataset (holds ``dataset_description.json``).
        participant_labels: labels to keep (``"01"`` or ``"sub-01"``); ``None``: all.
        session_labels: session labels to keep; ``None``: all (and scans without sessions).
        refused: a list to which ``(path, message)`` is appended for each scan whose name
            disagrees with its folders (:func:`misfiled`), which is then left out; ``None``:
            such a scan is a ``ValueError`` naming it.

    Returns:
        list of :class:`Scan`.

    Raises:
        BidsUnavailable: pybids is not installed.
        ValueError: ``bids_dir`` is not a BIDS dataset (no ``dataset_description.json``), a label
            is malformed, a participant or session label matches no T1w scan, no T1w scan
            was found, or (without ``refused``) a scan's name disagrees with its folders; the
            message names the folder, the label or the file.
    """
    bids_dir = os.path.abspath(os.fspath(bids_dir))
    if not os.path.isdir(bids_dir):
        raise ValueError(f"{bids_dir}: BIDS dataset folder not found")
    if not os.path.isfile(os.path.join(bids_dir, "dataset_description.json")):
        raise ValueError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    subjects = None if not participant_labels else [strip_label(p, "sub") for p in participant_labels]
    sessions = None if not session_labels else [strip_label(s, "ses") for s in session_labels]
    BIDSLayout = require_pybids()
    try:
        layout = BIDSLayout(bids_dir, validate=False, derivatives=False)
    except Exception as e:  # pybids' own errors (BIDSValidationError, ...) all mean a bad dataset
        raise ValueError(f"{bids_dir}: pybids cannot index this dataset ({type(e).__name__}: {e})") from e
    query = {"suffix": "T1w", "extension": [".nii", ".nii.gz"], "datatype": "anat", "return_type": "filename"}
    if subjects:
        known = set(layout.get_subjects())
        missing = [s for s in subjects if s not in known]
        if missing:
            raise ValueError(f"{bids_dir}: no participant {', '.join('sub-' + m for m in missing)} "
                             f"(participants: {', '.join('sub-' + k for k in sorted(known)) or 'none'})")
        query["subject"] = subjects
    if sessions:
        query["session"] = sessions
    paths = sorted(layout.get(**query))
    scans = []
    for p in paths:
        scan = Scan(p, os.path.relpath(p, bids_dir), parse_entities(p))
        why = misfiled(scan.relpath, scan.entities)
        if why is None:
            scans.append(scan)
            continue
        message = f"{p}: {why}; refused (move or rename it so that they agree)"
        if refused is None:
            raise ValueError(message)
        refused.append((p, message))
    if sessions:
        found = {s.session for s in scans}
        missing = [s for s in sessions if s not in found]
        if missing:
            raise ValueError(f"{bids_dir}: no T1w scan in session {', '.join('ses-' + m for m in missing)}"
                             + (f" of participant {', '.join('sub-' + s for s in subjects)}" if subjects else ""))
    if not scans:
        raise ValueError(f"{bids_dir}: no T1w image (anat/*_T1w.nii[.gz]) found"
                         + (f" for participant {', '.join('sub-' + s for s in subjects)}" if subjects else ""))
    return scans


def on_template_grid(shape, affine):
    """Whether an image lies on the ATLAS / template grid (MNI152 1 mm, 197 x 233 x 189), in any axis order."""
    shape = tuple(int(s) for s in shape[:3])
    affine = np.asarray(affine, dtype=np.float64)
    ornt = no.io_orientation(affine)
    to_ras = no.ornt_transform(ornt, no.axcodes2ornt("RAS"))
    ras_affine = affine @ no.inv_ornt_aff(to_ras, shape)
    ras_shape = tuple(int(shape[int(a)]) for a in np.argsort(to_ras[:, 0]))
    return ras_shape == ATLAS_SHAPE and bool(np.allclose(ras_affine, ATLAS_AFFINE, atol=GRID_ATOL))


def needs_registration(mode, space, shape, affine):
    """``(register?, reason)`` for one scan under ``--register mode``.

    ``auto``: no registration for a scan on the template grid (any axis order) or whose ``space-``
    label names an MNI152 template (``MNI152NLin2009aSym`` as ATLAS 2.0 uses; another grid of such
    a space is resampled, not registered); every other scan (no ``space-``, or a native space such
    as ``T1w``) is registered.
    """
    if mode not in REGISTER_CHOICES:
        raise ValueError(f"register must be one of {REGISTER_CHOICES}, got {mode!r}")
    if mode == "always":
        return True, "--register always"
    if mode == "never":
        return False, "--register never"
    if on_template_grid(shape, affine) and (space is None or space.startswith("MNI152")):
        return False, "on the MNI152 1 mm template grid" + (f" (space-{space})" if space else "")
    if space is not None and space.startswith("MNI152"):
        return False, f"space-{space} is an MNI152 template: resampled to the template grid, not registered"
    return True, (f"space-{space} is not an MNI152 template" if space else "no space- entity and not on the "
                  "MNI152 template grid (a native-space scan)")
