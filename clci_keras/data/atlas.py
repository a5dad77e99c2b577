"""Discovery and validated reading of ATLAS R1.1, R1.2 and 2.0 source trees.

R1.1 (as the original generator reads it): the table
``ATLAS_Meta-Data_Release_1.1_standard_mni.csv`` at the release root lists
subjects in order; columns 0-2 are the site folder (``Site1``), the subject
id without its leading 0 (``31768``) and the session with a leading space
(`` t01``).  The images live in ``<site>/0<id>/<session>/``: the T1 is the
file whose ``_``-separated name has ``deface`` second to last
(``031768_t1w_deface_stx.nii.gz``), the lesion masks are the files whose
second ``_`` field is ``LesionSmooth`` (``031768_LesionSmooth_stx.nii.gz``,
``031768_LesionSmooth_1_stx.nii.gz``, ...).

R1.2 (the unpacked ``standard_MNI`` release, as the SPiN authors' generator
reads it: ``external_src/generate_h5/generate_h5.py`` of
alexklwong/subpixel-embedding-segmentation, which takes ``glob(root/*/*)``):
``<root>/cSSSS/cSSSSsNNNNtNN/`` holds ``cSSSSsNNNNtNN_t1w_stx.nii.gz`` (the
file whose ``_``-separated name has ``t1w`` second to last) and the masks
``cSSSSsNNNNtNN_LesionSmooth_stx.nii.gz``, ``..._LesionSmooth_1_stx.nii.gz``,
... (second ``_`` field ``LesionSmooth``).  The subject id is the scan folder
name (``c0008s0028t01``), the site the ``cSSSS`` folder, the session the
``tNN`` suffix.  Their generator took the folders in unsorted glob order
(file-system dependent); we take them sorted by (site, scan folder), and
everything downstream (splits, presets) resolves subjects by id, never by
position.

2.0 (BIDS): ``Training/Rxxx/sub-rxxxsyyy/ses-N/anat/`` with
``sub-..._ses-N_space-MNI152NLin2009aSym_T1w.nii.gz`` and
``sub-..._ses-N_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz``;
subjects are taken in sorted (cohort, subject, session) order.

Every problem with the inputs raises :class:`AtlasDataError` (a
``ValueError``) whose message names the file and the problem.  Masks with
values other than 0/1 are binarised as the original generator does
(``int(value) > 0``, i.e. values >= 1 are lesion) and reported as warnings.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import asdict, dataclass, field

import nibabel as nib
import numpy as np

from clci_keras.data.constants import ATLAS_SHAPE, LAYOUT_CHOICES, R11_CSV_NAME
from clci_keras.fileio import walk

_NII = (".nii.gz", ".nii")
_V2_T1 = re.compile(r"^(sub-[A-Za-z0-9]+)_(ses-[A-Za-z0-9]+)_(?:.*_)?T1w\.nii(\.gz)?$")
_V2_MASK_SUFFIX = "_label-L_desc-T1lesion_mask"
_R12_SITE = re.compile(r"^c\d{4}$")
_R12_SCAN = re.compile(r"^(c\d{4})s\d{4}(t\d{2})$")


class AtlasDataError(ValueError):
    """Bad or missing input data; the message names the file and the problem."""


class NonBinaryMaskWarning(UserWarning):
    """A lesion mask had values other than 0 and 1 and was binarised."""


@dataclass
class SubjectRecord:
    """Where one subject's files are, and how it was listed."""

    index: int
    subject_id: str
    site: str
    session: str
    t1_path: str
    mask_paths: list = field(default_factory=list)
    csv_row: int = -1  # 1-based line number in the R1.1 table (-1 for 2.0)

    def to_dict(self):
        return asdict(self)


def _is_nii(name):
    return name.endswith(_NII)


def _strip_nii(name):
    for ext in _NII:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def is_r11_t1(name):
    """R1.1 T1 rule of the original generator: 2nd-to-last '_' field is 'deface'."""
    parts = name.split("_")
    return _is_nii(name) and len(parts) >= 2 and parts[-2] == "deface"


def is_r11_mask(name):
    """R1.1 mask rule of the original generator: 2nd '_' field is 'LesionSmooth'."""
    parts = name.split("_")
    return _is_nii(name) and len(parts) >= 2 and parts[1] == "LesionSmooth"


def is_r12_t1(name):
    """R1.2 T1 rule of the SPiN authors' generator: 2nd-to-last '_' field is 't1w'."""
    parts = name.split("_")
    return _is_nii(name) and len(parts) >= 2 and parts[-2] == "t1w"


def _r12_sites(src):
    """Sorted site folders ``cSSSS`` directly under ``src`` that hold a ``cSSSSsNNNNtNN`` folder."""
    sites = []
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if _R12_SITE.match(name) and os.path.isdir(path):
            if any(_R12_SCAN.match(d) and os.path.isdir(os.path.join(path, d)) for d in os.listdir(path)):
                sites.append(name)
    return sites


def detect_layout(src):
    """Return "r1.1", "r1.2" or "v2" for the tree at ``src``; raise AtlasDataError otherwise."""
    src = os.fspath(src)
    if not os.path.isdir(src):
        raise AtlasDataError(f"{src}: source folder does not exist or is not a folder.")
    if os.path.isfile(os.path.join(src, R11_CSV_NAME)):
        return "r1.1"
    if _r12_sites(src):
        return "r1.2"
    for root, dirs, files in os.walk(src):
        dirs.sort()
        if any(_V2_T1.match(f) for f in files):
            return "v2"
    raise AtlasDataError(
        f"{src}: unknown layout: found neither the R1.1 table {R11_CSV_NAME!r} at its root, "
        "nor R1.2 scan folders 'cSSSS/cSSSSsNNNNtNN/' (the unpacked standard_MNI release), "
        "nor any ATLAS 2.0 BIDS image 'sub-*_ses-*_*T1w.nii.gz' below it."
    )


def _walk_files(folder):
    """Every file below ``folder``, sorted; linked folders are followed (each folder once)."""
    return [os.path.join(root, f) for root, _, files in walk(folder) for f in files]


def _plain_name(value, what, where):
    """``value`` if it names one folder inside the release; AtlasDataError naming ``where`` otherwise."""
    if (not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value
            or os.path.isabs(value)):
        raise AtlasDataError(f"{where}: {what} {value!r} is not a plain folder name (no path separators, "
                             "'..' or absolute paths: it must name a folder inside the release)")
    return value


#: Column names of the R1.1 table's first three columns, as the release spells them.
R11_HEADER_COLUMNS = ("indi site id", "indi subject id", "session")


def _is_r11_header(src, row):
    """Whether the R1.1 table's first non-empty row is a header line, not a subject.

    The original generator skips line 1 blindly, which drops the first subject
    of a table saved without its header.  A row is the header when its first
    three cells are the release's column names; otherwise it is a subject if
    its subject id is a number (R1.1 ids are, e.g. ``31768``) or it points to
    an existing subject folder; anything else is taken as a header of other
    column names.
    """
    cells = [" ".join(c.split()).lower() for c in row[:3]]
    if tuple(cells) == R11_HEADER_COLUMNS:
        return True
    if len(row) < 3:
        return not any(c.strip().isdigit() for c in row)
    site, sid, session = row[0].strip(), row[1].strip(), row[2].strip()
    if sid.isdigit():
        return False
    folders = (os.path.join(src, site, "0" + sid, session), os.path.join(src, site, sid, session))
    return not any(site and sid and session and os.path.isdir(f) for f in folders)


def discover_r11(src):
    """Subjects of an R1.1 release, in the table's order (as the original generator).

    The first line is skipped only if it is a header (:func:`_is_r11_header`);
    a row repeating an earlier row's (site, subject, session) raises
    :class:`AtlasDataError` naming the table and both lines.
    """
    src = os.fspath(src)
    csv_path = os.path.join(src, R11_CSV_NAME)
    if not os.path.isfile(csv_path):
        raise AtlasDataError(f"{csv_path}: R1.1 metadata table not found.")
    rows = None
    for encoding in ("utf-8-sig", "latin-1"):  # latin-1 decodes any byte string
        try:
            with open(csv_path, newline="", encoding=encoding) as f:
                rows = list(csv.reader(f))
            break
        except UnicodeDecodeError:
            continue
        except (OSError, csv.Error) as e:
            raise AtlasDataError(f"{csv_path}: cannot read the table ({e}).") from e
    records = []
    seen = {}  # (site, subject id, session) -> table line
    first = next((i for i, row in enumerate(rows) if row and any(c.strip() for c in row)), len(rows))
    start = first + 1 if first < len(rows) and _is_r11_header(src, rows[first]) else first
    for line_no, row in enumerate(rows[start:], start=start + 1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 3:
            raise AtlasDataError(
                f"{csv_path}, line {line_no}: expected at least 3 columns (site, subject id, session), got {row!r}."
            )
        site, sid, session = (_plain_name(row[k].strip(), what, f"{csv_path}, line {line_no}")
                              for k, what in enumerate(("site", "subject id", "session")))
        key = (site, sid.lstrip("0"), session)
        if key in seen:
            raise AtlasDataError(
                f"{csv_path}, line {line_no}: duplicate row: subject {sid!r} (site {site!r}, session {session!r}) "
                f"is already listed on line {seen[key]}."
            )
        seen[key] = line_no
        # The original joins '0' + id and drops the session's leading space.
        candidates = [os.path.join(src, site, "0" + sid, session), os.path.join(src, site, sid, session)]
        folder = next((c for c in candidates if os.path.isdir(c)), None)
        if folder is None:
            raise AtlasDataError(
                f"{csv_path}, line {line_no}: row (site={site!r}, subject={sid!r}, session={session!r}) "
                f"points to {candidates[0]}, which does not exist."
            )
        files = _walk_files(folder)
        t1s = [p for p in files if is_r11_t1(os.path.basename(p))]
        masks = [p for p in files if is_r11_mask(os.path.basename(p))]
        where = f"(table line {line_no})"
        if not t1s:
            raise AtlasDataError(f"{folder}: missing T1: no '*_t1w_deface_stx.nii.gz' file {where}.")
        if len(t1s) > 1:
            raise AtlasDataError(f"{folder}: several T1 files {[os.path.basename(p) for p in t1s]} {where}.")
        if not masks:
            raise AtlasDataError(f"{folder}: missing lesion mask: no '*_LesionSmooth*_stx.nii.gz' file {where}.")
        sub_id = os.path.basename(os.path.dirname(folder)) if os.path.dirname(folder) else sid
        records.append(
            SubjectRecord(len(records), sub_id, site, session, t1s[0], masks, csv_row=line_no)
        )
    if not records:
        raise AtlasDataError(f"{csv_path}: the table lists no subjects.")
    return records


def discover_r12(src):
    """Scans of an ATLAS R1.2 standard-MNI tree, sorted by (site, scan folder).

    Every ``cSSSS`` folder directly under ``src`` is a site; every folder in
    it must be a scan folder ``cSSSSsNNNNtNN`` of that site holding exactly
    one T1 (``*_t1w_stx.nii.gz``) and at least one ``*_LesionSmooth*``
    mask, directly inside it.  Other entries at the root (the release's
    spreadsheets, archives) are ignored; anything else raises
    :class:`AtlasDataError` naming the folder.
    """
    src = os.fspath(src)
    sites = [n for n in sorted(os.listdir(src)) if _R12_SITE.match(n) and os.path.isdir(os.path.join(src, n))]
    if not sites:
        raise AtlasDataError(
            f"{src}: no R1.2 site folders 'cSSSS/' (e.g. c0001/) found; point prep at the folder "
            "where the standard_MNI archives were unpacked (it holds c0001/, c0002/, ...)."
        )
    records = []
    for site in sites:
        site_dir = os.path.join(src, site)
        for scan in sorted(os.listdir(site_dir)):
            folder = os.path.join(site_dir, scan)
            if scan.startswith(".") or not os.path.isdir(folder):
                continue
            m = _R12_SCAN.match(scan)
            if not m:
                raise AtlasDataError(
                    f"{folder}: not an R1.2 scan folder: expected a name like {site}s0001t01 "
                    "(site, subject and time point, as cSSSSsNNNNtNN)."
                )
            if m.group(1) != site:
                raise AtlasDataError(f"{folder}: scan folder {scan!r} lies in site folder {site!r}, not {m.group(1)!r}.")
            files = sorted(
                os.path.join(folder, f) for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))
            )
            t1s = [p for p in files if is_r12_t1(os.path.basename(p))]
            masks = [p for p in files if is_r11_mask(os.path.basename(p))]
            if not t1s:
                raise AtlasDataError(
                    f"{folder}: missing T1: no '{scan}_t1w_stx.nii.gz' file (R1.2 standard-MNI naming; "
                    "native-space images are not supported)."
                )
            if len(t1s) > 1:
                raise AtlasDataError(f"{folder}: several T1 files {[os.path.basename(p) for p in t1s]}.")
            if not masks:
                raise AtlasDataError(
                    f"{folder}: missing lesion mask: no '{scan}_LesionSmooth*_stx.nii.gz' file."
                )
            records.append(SubjectRecord(len(records), scan, site, m.group(2), t1s[0], masks))
    if not records:
        raise AtlasDataError(f"{src}: the R1.2 site folders {sites} hold no scan folders.")
    return records


def discover_v2(src):
    """Subjects of an ATLAS 2.0 BIDS tree, sorted by (cohort, subject, session).

    If ``src`` has a ``Training`` folder only that folder is read (the 2.0
    release's ``Testing`` images come without masks).
    """
    src = os.fspath(src)
    if os.path.isdir(os.path.join(src, "Training")):
        src = os.path.join(src, "Training")
    found = {}
    masks = {}
    for path in _walk_files(src):
        name = os.path.basename(path)
        if not _is_nii(name):
            continue
        stem = _strip_nii(name)
        m = _V2_T1.match(name)
        if m:
            found[os.path.join(os.path.dirname(path), stem[: -len("_T1w")])] = (path, m.group(1), m.group(2))
        elif stem.endswith(_V2_MASK_SUFFIX):
            masks[os.path.join(os.path.dirname(path), stem[: -len(_V2_MASK_SUFFIX)])] = path
    if not found and not masks:
        raise AtlasDataError(f"{src}: no ATLAS 2.0 images ('sub-*_ses-*_*T1w.nii.gz') found.")
    for key, mpath in sorted(masks.items()):
        if key not in found:
            raise AtlasDataError(f"{mpath}: missing T1: lesion mask has no matching '*_T1w.nii.gz' next to it.")
    items = []
    for key, (t1, sub, ses) in found.items():
        if key not in masks:
            raise AtlasDataError(
                f"{t1}: missing lesion mask: expected {os.path.basename(key) + _V2_MASK_SUFFIX}.nii.gz next to it."
            )
        # Cohort: the folder above sub-*/ (Training/R001/sub-r001s001/ses-1/anat).
        parts = os.path.normpath(t1).split(os.sep)
        cohort = ""
        if sub in parts:
            i = parts.index(sub)
            cohort = parts[i - 1] if i > 0 else ""
        if not re.fullmatch(r"R\d+", cohort or ""):
            m = re.match(r"sub-r(\d+)s", sub)
            cohort = f"R{m.group(1)}" if m else cohort
        items.append((cohort, sub, ses, t1, [masks[key]]))
    items.sort(key=lambda t: (t[0], t[1], t[2]))
    return [SubjectRecord(i, sub, cohort, ses, t1, mk) for i, (cohort, sub, ses, t1, mk) in enumerate(items)]


def discover_subjects(src, layout="auto"):
    """Return ``(layout, records)`` for the tree at ``src``."""
    if layout not in LAYOUT_CHOICES:
        raise AtlasDataError(f"Unknown layout {layout!r}; expected one of {', '.join(LAYOUT_CHOICES)}.")
    if layout == "auto":
        layout = detect_layout(src)
    elif not os.path.isdir(os.fspath(src)):
        raise AtlasDataError(f"{src}: source folder does not exist or is not a folder.")
    discover = {"r1.1": discover_r11, "r1.2": discover_r12, "v2": discover_v2}[layout]
    return layout, discover(src)


def load_nifti(path, what="image"):
    """Load a NIfTI file fully; returns ``(array as stored (scaled), affine)``.

    Raises AtlasDataError naming ``path`` for missing, unreadable or truncated
    files and for NaN/inf voxels.  A trailing axis of size 1 is dropped.
    """
    if not os.path.isfile(path):
        raise AtlasDataError(f"{path}: {what} file not found.")
    try:
        img = nib.load(path)
        arr = np.asanyarray(img.dataobj)  # what the original's get_data() returned
    except Exception as e:  # nibabel/gzip/zlib raise many types for corrupt files
        raise AtlasDataError(
            f"{path}: cannot read {what} ({type(e).__name__}: {e}); the file is truncated, corrupt or not NIfTI."
        ) from e
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        n_bad = int(np.count_nonzero(bad))
        if n_bad:
            raise AtlasDataError(f"{path}: {what} has {n_bad} NaN/inf voxels.")
    return arr, np.asarray(img.affine, dtype=np.float64)


def binarize_mask(arr):
    """Original rule: ``int(value) > 0`` (truncation towards zero) -> 1, else 0.

    Returns ``(uint8 mask, description of non-binary values or None)``.
    """
    arr = np.asanyarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8), None
    nonbinary = (arr != 0) & (arr != 1)
    note = None
    if nonbinary.any():
        vals = np.unique(arr[nonbinary])
        shown = ", ".join(f"{v:g}" for v in vals[:6]) + (", ..." if vals.size > 6 else "")
        note = f"{int(nonbinary.sum())} voxels with values other than 0/1 ({shown}); binarised as int(value) > 0"
    if np.issubdtype(arr.dtype, np.floating):
        out = (np.trunc(arr) > 0).astype(np.uint8)
    else:
        out = (arr > 0).astype(np.uint8)
    return out, note


def load_subject(record, expected_shape=ATLAS_SHAPE, atol=1e-3):
    """Read and validate one subject.

    Returns a dict with ``t1`` (array as stored), ``label`` (uint8 0/1, all
    masks merged), ``affine``, ``warnings`` (list of strings) and
    ``lesion_voxels``.
    """
    if isinstance(record, dict):
        record = SubjectRecord(**record)
    t1, affine = load_nifti(record.t1_path, "T1 image")
    if t1.ndim != 3 or (expected_shape is not None and tuple(t1.shape) != tuple(expected_shape)):
        raise AtlasDataError(
            f"{record.t1_path}: T1 image has shape {tuple(t1.shape)}, expected {tuple(expected_shape)} "
            "(the 1 mm MNI152 grid of ATLAS)."
        )
    if not record.mask_paths:
        raise AtlasDataError(f"{record.t1_path}: missing lesion mask for subject {record.subject_id}.")
    label = np.zeros(t1.shape, dtype=np.uint8, order="F")  # nibabel's order: z-slices are contiguous
    notes = []
    for mp in record.mask_paths:
        m, maff = load_nifti(mp, "lesion mask")
        if tuple(m.shape) != tuple(t1.shape):
            raise AtlasDataError(
                f"{mp}: shape mismatch: lesion mask has shape {tuple(m.shape)} but the T1 "
                f"{os.path.basename(record.t1_path)} has {tuple(t1.shape)}."
            )
        if not np.allclose(maff, affine, atol=atol):
            raise AtlasDataError(
                f"{mp}: affine mismatch with the T1 {os.path.basename(record.t1_path)}: "
                f"mask affine {np.round(maff, 4).tolist()} vs T1 affine {np.round(affine, 4).tolist()}."
            )
        b, note = binarize_mask(m)
        if note:
            notes.append(f"{mp}: {note}")
        label |= b
    return {
        "t1": t1,
        "label": label,
        "affine": affine,
        "warnings": notes,
        "lesion_voxels": int(label.sum(dtype=np.int64)),
    }
