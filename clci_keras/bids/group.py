"""Group level of the BIDS App: the table of every finished scan and the lesion-overlap map.

Reads the derivative dataset the participant level wrote (``OUTPUT_DIR/clci_keras``):

* ``group/lesions.tsv`` (+ ``lesions.json``, its column dictionary): one row per finished scan,
  BIDS-style (``participant_id``, ``session_id``, ``n/a`` for missing values);
* ``anat/space-MNI152NLin2009aAsym_label-L_desc-overlap_probseg.nii.gz`` (+ sidecar): per voxel of
  the template grid, the fraction of scans whose mask covers it. A scan's template-space mask is
  its ``space-MNI152NLin2009aAsym`` mask when it was registered, else its mask on its own grid,
  which is already on the template grid (ATLAS's ``MNI152NLin2009aSym`` label names the same
  grid) or in an MNI152 space, brought onto the template grid with nearest neighbour;
* ``group/lesion_load.tsv`` (+ ``.json``): every scan's lesion load (its
  ``*_desc-lesion_load.tsv``), one row per scan and region or corticospinal tract;
* ``group/space-MNI152NLin2009aAsym_desc-overlap.png`` and ``group.html`` (self-contained).

Scans whose outputs are incomplete (a run that stopped midway) are left out and named.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import os

import nibabel as nib
import numpy as np

from clci_keras.bids import derivatives as dv
from clci_keras.bids.layout import Scan, parse_entities
from clci_keras.data.constants import ATLAS_AFFINE, ATLAS_SHAPE
from clci_keras.fileio import json_text, read_json
from clci_keras.inference.io import save_atomic
from clci_keras.inference.lesions import LOAD_COLUMNS, sidecar_bytes, tsv_bytes
from clci_keras.inference.register import resample, template
from clci_keras.reports import html as rh

#: Columns of ``group/lesions.tsv`` and their descriptions (``lesions.json``).
COLUMNS = {
    "participant_id": "participant label with its sub- prefix",
    "session_id": "session label with its ses- prefix (n/a: no session)",
    "scan": "the T1w image in the source dataset",
    "grid": "how the scan met the template grid: atlas (as is), reoriented, resampled, registered",
    "registration_similarity": "correlation with the template after registration (n/a: not registered)",
    "lesion_volume_ml": "lesion volume in mL on the scan's own grid",
    "components": "26-connected lesion components",
    "hemisphere": "left, right, bilateral (smaller side >= 10 % of the volume) or none (template x < 0: left)",
    "left_ml": "lesion volume left of the midline (mL)",
    "right_ml": "lesion volume right of the midline (mL)",
    "intensity_p99_5": "99.5th percentile of the non-zero voxels after the intensity scaling",
    "mask": "the lesion mask on the scan's grid (in this dataset)",
}
TABLE = os.path.join("group", "lesions.tsv")
#: The group's lesion-load table: the per-scan load tables, one after the other.
LOAD_TABLE = os.path.join("group", "lesion_load.tsv")
#: Rows of the lesion-load table shown in ``group.html`` (the file has all).
MAX_LOAD_ROWS = 200


@dataclasses.dataclass
class GroupResult:
    """What :func:`run_group` wrote: the table, the overlap map, its figure, the page; the scans
    used (``rows``) and those left out as unfinished (``incomplete``: ``(mask path, missing files)``)."""

    table: str
    overlap: str
    figure: str
    page: str
    rows: list
    incomplete: list


def overlap_path(root):
    """The group overlap map's path in the derivative dataset ``root``."""
    ents = {"space": dv.TEMPLATE_SPACE, "label": dv.LESION_LABEL, "desc": dv.OVERLAP_DESC}
    return os.path.join(root, "anat", dv.entity_name(ents, "probseg", ".nii.gz"))


def finished_scans(root):
    """``(finished, incomplete)``: ``[(Scan, ScanOutputs, sidecar dict)]`` and ``[(mask path, missing)]``."""
    finished, incomplete = [], []
    pattern = os.path.join(root, "sub-*", "**", "anat", f"*_label-{dv.LESION_LABEL}_desc-{dv.LESION_DESC}_mask.json")
    for side in sorted(glob.glob(pattern, recursive=True)):
        try:
            meta = read_json(side)
            raw = next(s for s in meta.get("Sources", []) if s.startswith("bids:raw:"))[len("bids:raw:"):]
        except (OSError, ValueError, StopIteration, AttributeError):
            continue
        ents = parse_entities(raw)
        if parse_entities(side).get("space") != ents.get("space"):
            continue  # the template-space copy of a registered scan
        scan = Scan(raw, raw, ents)
        outs = dv.ScanOutputs(root, scan, registered=meta.get("Registration") is not None)
        missing = outs.missing()
        if missing:
            incomplete.append((outs.mask, [os.path.relpath(p, root) for p in missing]))
        else:
            finished.append((scan, outs, meta))
    return finished, incomplete


def template_space_mask(outs):
    """The scan's lesion mask on the template grid (bool array, 197 x 233 x 189)."""
    if outs.template_mask:
        img = nib.load(outs.template_mask)
    else:
        img = nib.load(outs.mask)
    data = np.asarray(np.asanyarray(img.dataobj), np.float32)
    return resample(data, img.affine, ATLAS_AFFINE, ATLAS_SHAPE, order=0) > 0.5


def _na(v):
    return "n/a" if v is None or v == "" else v


def run_group(output_dir, on_event=None):
    """Write the group outputs for the derivative dataset ``output_dir/clci_keras``.

    Raises:
        ValueError: no derivative dataset there, or no finished scan (run the participant level first).
    Returns:
        :class:`GroupResult`.
    """
    root = os.path.join(os.path.abspath(os.fspath(output_dir)), dv.PIPELINE_NAME)
    if not os.path.isfile(os.path.join(root, "dataset_description.json")):
        raise ValueError(f"{root}: no clci-keras derivative dataset here (run the participant level first)")
    event = on_event or (lambda *a: None)
    finished, incomplete = finished_scans(root)
    for mask, missing in incomplete:
        event("incomplete", mask, f"{mask}: unfinished (missing {', '.join(missing)}); left out")
    if not finished:
        raise ValueError(f"{root}: no finished scan (run the participant level first)")
    total = np.zeros(ATLAS_SHAPE, np.float32)
    rows, load_rows = [], []
    for scan, outs, meta in finished:
        load_rows += _load_rows(scan, outs)
        total += template_space_mask(outs)
        lesion = meta.get("Lesion") or {}
        reg = meta.get("Registration") or {}
        rows.append({"participant_id": f"sub-{scan.subject}",
                     "session_id": f"ses-{scan.session}" if scan.session else "n/a",
                     "scan": scan.relpath, "grid": _na(meta.get("Grid")),
                     "registration_similarity": _na(reg.get("similarity")),
                     "lesion_volume_ml": _na(lesion.get("volume_ml")), "components": _na(lesion.get("components")),
                     "hemisphere": _na(lesion.get("hemisphere")), "left_ml": _na(lesion.get("left_ml")),
                     "right_ml": _na(lesion.get("right_ml")),
                     "intensity_p99_5": _na((meta.get("IntensityCheck") or {}).get("p99_5_after_scaling")),
                     "mask": os.path.relpath(outs.mask, root).replace(os.sep, "/")})
    overlap = total / np.float32(len(finished))
    ov_path = overlap_path(root)
    img = nib.Nifti1Image(overlap.astype(np.float32), ATLAS_AFFINE)
    img.set_qform(ATLAS_AFFINE, code=4)
    img.set_sform(ATLAS_AFFINE, code=4)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"clci-keras lesion overlap (fraction of scans)"
    sources = ["bids::" + os.path.relpath(o.template_mask or o.mask, root).replace(os.sep, "/") for _, o, _ in finished]
    side = {"Description": f"lesion overlap: fraction of the {len(finished)} scan(s) whose lesion mask covers each "
                           "voxel of the template grid", "Sources": sources,
            "SpatialReference": dv.TEMPLATE_DESCRIPTION, "NumberOfScans": len(finished),
            "SoftwareUsed": dv.software_versions(), "Created": dv.now()}
    tsv = "\t".join(COLUMNS) + "\n" + "".join("\t".join(str(r[c]) for c in COLUMNS) + "\n" for r in rows)
    tpl, _ = template()
    fig = rh.overlap_figure_png(tpl, overlap, len(finished))
    figure = os.path.join(root, "group", f"space-{dv.TEMPLATE_SPACE}_desc-{dv.OVERLAP_DESC}.png")
    table = os.path.join(root, TABLE)
    save_atomic([(img, ov_path), (json_text(side).encode("utf8"), ov_path[:-7] + ".json"),
                 (tsv.encode("utf8"), table),
                 (json_text({k: {"Description": v} for k, v in COLUMNS.items()}).encode("utf8"), table[:-4] + ".json"),
                 (fig, figure)] + _load_files(root, load_rows))
    summary = {"scans": len(finished), "left out (unfinished)": len(incomplete),
               "largest overlap": f"{float(overlap.max()):.3f}", "overlap map": os.path.relpath(ov_path, root),
               "table": TABLE, "lesion load": LOAD_TABLE, "created": side["Created"]}
    page = os.path.join(root, "group.html")
    rh.write_html(page, rh.group_report(title="clci-keras: lesions of all scans", summary=summary, rows=rows,
                                        columns=list(COLUMNS), overlap_png=fig, load=load_rows[:MAX_LOAD_ROWS],
                                        load_total=len(load_rows)))
    return GroupResult(table, ov_path, figure, page, rows, incomplete)


def _load_rows(scan, outs):
    """The rows of a scan's lesion-load table, with ``participant_id``, ``session_id`` and ``scan`` first."""
    ids = {"participant_id": f"sub-{scan.subject}", "session_id": f"ses-{scan.session}" if scan.session else "n/a",
           "scan": scan.relpath}
    with open(outs.load, newline="", encoding="utf-8") as f:
        return [{**ids, **row} for row in csv.DictReader(f, delimiter="\t")]


def _load_files(root, load_rows):
    """``(bytes, path)`` of ``group/lesion_load.tsv`` and its sidecar (the per-scan tables' columns)."""
    columns = {"participant_id": ("Participant", "the scan's subject", None),
               "session_id": ("Session", "the scan's session; n/a without sessions", None),
               "scan": ("Scan", "the T1w image, relative to the input dataset", None), **LOAD_COLUMNS}
    path = os.path.join(root, LOAD_TABLE)
    return [(tsv_bytes(load_rows, columns), path), (sidecar_bytes(columns), path[:-4] + ".json")]
