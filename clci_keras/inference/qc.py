"""Quality control of predicted masks: an axial montage per scan and a summary row per scan.

:func:`qc_png` renders the input in its own (native) space with the mask's
outline (matplotlib, Agg backend, into PNG bytes so the caller can write them
atomically with the other outputs). :func:`summary_row` gives lesion volume
(mL, from the input's voxel size), number of connected components (26-
connectivity) and, for registered scans, the registration's similarity
metric. :func:`write_summary_csv` writes the batch's rows; :func:`record_summary` is
called after each input, so the summary always holds every finished input.
"""
from __future__ import annotations

import csv
import os

import nibabel as nib
import numpy as np
from nibabel import orientations as no
from scipy import ndimage

from clci_keras.fileio import atomic_text
from clci_keras.plotting import agg_figure, png_bytes, spread_slices

#: Columns of the batch summary CSV, in order.
SUMMARY_COLUMNS = (
    "input", "status", "mask", "grid", "lesion_ml", "components", "registration_similarity",
    "similarity_before", "registration_seconds", "prediction_seconds", "intensity", "message",
)
SUMMARY_NAME = "predict_summary.csv"
QC_SUFFIX = "_qc.png"


def _ras(data, affine):
    """Data reoriented to the closest RAS axes (display only) and its voxel sizes."""
    ornt = no.io_orientation(affine)
    out = no.apply_orientation(data, no.ornt_transform(ornt, no.axcodes2ornt("RAS")))
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    zooms = zooms[[int(np.flatnonzero(ornt[:, 0] == k)[0]) for k in range(3)]]  # RAS axis k <- input axis
    return out, zooms


def qc_png(image, data, mask, title="", n_slices=12, columns=6, dpi=80, lesions=None):
    """PNG bytes of an axial montage of ``data`` (the input, native grid) with ``mask``'s outline in red.

    Slices are spread over the axial extent of the mask (or of the head when
    the mask is empty). The display is reoriented to the closest RAS axes
    (neurological convention: the subject's right is on the picture's right).
    With ``lesions`` (a :class:`clci_keras.inference.lesions.LesionReport` of ``mask``) each
    component is numbered as in its table, where it crosses a drawn slice (flagged ones in orange
    with a ``*``).
    """
    vol, zooms = _ras(np.asarray(data, dtype=np.float32), image.affine)
    m, _ = _ras(np.asarray(mask) > 0, image.affine)
    numbered = _ras(_numbered_components(mask), image.affine)[0] if lesions is not None else None
    flagged = {r["lesion_id"] for r in lesions.lesions if r.get("flags")} if lesions is not None else set()
    extent = m.any(axis=(0, 1))
    if not extent.any():  # no mask: the head
        extent = (vol > np.percentile(vol, 50)).any(axis=(0, 1))
    picks = spread_slices(extent, n_slices)
    lo, hi = np.percentile(vol, [1, 99.5])
    rows = int(np.ceil(len(picks) / columns))
    fig = agg_figure((2.0 * columns, 2.2 * rows + 0.4), dpi)
    aspect = zooms[1] / zooms[0]
    for k, z in enumerate(picks):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.imshow(vol[:, :, z].T, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1,
                  aspect=aspect, interpolation="nearest")
        if m[:, :, z].any():
            ax.contour(m[:, :, z].T.astype(np.float32), levels=[0.5], colors="red", linewidths=0.8)
        if numbered is not None:
            _number_components(ax, numbered[:, :, z], flagged)
        ax.set_title(f"z={z}", fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    return png_bytes(fig)


#: Components numbered in the QC picture (the largest; the tables list every one).
MAX_NUMBERED = 25


def _numbered_components(mask):
    """26-connected components of ``mask`` numbered 1 = largest, as the per-lesion table numbers them."""
    labels, n = ndimage.label(np.asarray(mask) > 0, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    order = sorted(range(1, n + 1), key=lambda c: -sizes[c])  # stable: ties keep label order
    renumber = np.zeros(n + 1, np.int32)
    renumber[order] = np.arange(1, n + 1)
    return renumber[labels]


def _number_components(ax, plane, flagged):
    """Write each component's number at its centre in one drawn slice."""
    for k in np.unique(plane[(plane > 0) & (plane <= MAX_NUMBERED)]):
        i, j = np.argwhere(plane == k).mean(axis=0)
        bad = int(k) in flagged
        ax.text(i, j, f"{k}{'*' if bad else ''}", color="orange" if bad else "yellow", fontsize=6,
                ha="center", va="center")


def lesion_stats(mask, affine):
    """``(volume in mL, connected components)`` of a native-grid mask."""
    from clci_keras.inference.ensemble import count_components

    mask = np.asarray(mask) > 0
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    return float(mask.sum()) * voxel_ml, count_components(mask)


def summary_row(input_path, mask_path=None, seg=None, status="ok", message="", intensity=""):
    """A dict with :data:`SUMMARY_COLUMNS` for one input (``seg`` a Segmentation, or None for a failure)."""
    row = dict.fromkeys(SUMMARY_COLUMNS, "")
    row.update(input=os.fspath(input_path), status=status, message=message, intensity=intensity)
    if seg is not None:
        ml, n = lesion_stats(np.asanyarray(seg.mask.dataobj), seg.mask.affine)
        row.update(mask=os.fspath(mask_path or ""), grid=seg.grid, lesion_ml=f"{ml:.3f}", components=n,
                   prediction_seconds=f"{seg.seconds:.2f}")
        reg = getattr(seg, "registration", None)
        if reg is not None:
            row.update(registration_similarity=f"{reg.similarity:.4f}",
                       similarity_before=f"{reg.similarity_before:.4f}",
                       registration_seconds=f"{reg.seconds:.2f}")
    return row


def finished_row(input_path, mask_path, message="finished by an earlier run"):
    """A summary row for an input whose mask an earlier run wrote but whose row it did not
    record (killed in between): the lesion volume and components are read from the mask."""
    mask = nib.load(os.fspath(mask_path))
    ml, n = lesion_stats(np.asanyarray(mask.dataobj), mask.affine)
    row = summary_row(input_path, message=message)
    row.update(mask=os.fspath(mask_path), lesion_ml=f"{ml:.3f}", components=n)
    return row


def record_summary(previous, rows, path):
    """Write ``path`` now: the ``previous`` rows merged with this run's ``rows`` so far
    (:func:`merge_summary_rows`), through the one writer; a batch calls it after each input,
    so a run that is killed keeps the rows of the inputs it finished."""
    return write_summary_csv(merge_summary_rows(previous, rows), path)


def read_summary_csv(path):
    """The rows of an existing summary CSV (``[]`` if there is none); ValueError naming a broken one."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    if "input" not in header or any(None in r or None in r.values() for r in rows):
        raise ValueError(f"{path}: not a readable {SUMMARY_NAME} (a row cut short or another header); "
                         "move it away to start a new one")
    return rows


def merge_summary_rows(old, new):
    """``old`` rows with each input's row replaced by its row in ``new``; new inputs appended (in order)."""
    latest = {r["input"]: r for r in new}
    merged = [latest.pop(r["input"], r) for r in old]
    return merged + [r for r in new if r["input"] in latest and latest.pop(r["input"]) is r]


def write_summary_csv(rows, path):
    """Write the rows (dicts of :data:`SUMMARY_COLUMNS`) to ``path`` atomically."""
    path = os.fspath(path)
    with atomic_text(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in SUMMARY_COLUMNS})
    return path
