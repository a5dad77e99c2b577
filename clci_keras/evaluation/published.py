"""Regenerating published scores of third-party weights (``clci-keras evaluate --preset``).

A preset is a catalogue entry (:mod:`clci_keras.models.catalog`) that fixes
the architecture, crop window, split, part, slices and threshold with which
its publishers scored their weights.  :func:`evaluate_published` predicts
every slice of every patient of that part, scores each patient with the
publishers' own per-patient formulas and writes, in ``out_dir``:

``scores_<part>.csv``       one row per patient (:data:`CSV_COLUMNS`)
``summary_<part>.json``     means, protocol, provenance, timing, missing ids
``comparison_<part>.md``    the published row beside ours (and the small-lesion rows)

Preset ``spin_clcinet`` (Wong et al. 2021, repository
alexklwong/subpixel-embedding-segmentation).  Their published CLCI-Net row
(Table 2) was computed by ``external_src/CLCI-Net/run_val_prediction_CLCI.py``
with the functions ``dice_score``, ``IOU``, ``precision`` and ``recall`` of
``src/eval_utils.py``, on each test patient's 189 predicted slices (crop rows
5:229, columns 11:187), then averaged over the 27 patients.  Their Keras
script ``external_src/CLCI-Net/eval.py`` also prints scores of
``external_src/CLCI-Net/utils.py`` (``get_score_for_one_patient``), which are
not the published ones.  Conventions (A = ground truth, B = prediction):

===================  ==================================  ============================  =========================
item                 SPiN evaluator (published; used)    their utils.py (printed)      ours (metrics.py)
===================  ==================================  ============================  =========================
B                    prob **>=** 0.5                      prob > 0.5                    prob > 0.5
A                    label > 0                            label > 0.5                   label > 0.5
dsc, iou             0 when the denominator is 0          0 when 0                      1 when A, B both empty
precision            0 when B is empty                    0 when B is empty             1 if both empty, else 0
recall               0 when A is empty                    0 when A is empty             1 if both empty, else 0
voe                  (not computed)                       2(|B|-|A|)/(|A|+|B|), 0 if    100(1 - IoU) %
                                                          both empty
rvd                  (not computed)                       |B|/|A| - 1, -1 if A empty    100(|B|-|A|)/|A| %, NaN
                                                                                        if only A is empty
===================  ==================================  ============================  =========================

The preset's ``dsc``, ``iou``, ``precision`` and ``recall`` are the SPiN
evaluator's; ``voe`` and ``rvd`` are ``get_score_for_one_patient``'s
definitions (unscaled, as printed by their ``eval.py``), applied to the same
masks.  The two thresholds differ only for voxels whose probability is
exactly 0.5: column ``at_threshold_voxels`` counts them.

**Small-lesion subset** (their Table 3), exactly as
``setup/setup_dataset_atlas_small_lesion.py`` and the ``sl_*`` scores of
``run_val_prediction_CLCI.py`` define it: a test patient's axial slice
belongs to the subset when, in its **full, uncropped** ground-truth slice,
the 8-connected components (``cv2.connectedComponentsWithStats``,
connectivity 8; the row of largest area, the background, is dropped) all
have at most 100 pixels, and there is at least one (``min_lesion_size=0``,
``max_lesion_size=100``).  The subset's scores are the same four functions
on the patient's cropped prediction and ground truth restricted to those
slices, averaged over patients.  A patient with no such slice has no
small-lesion score (their script would stop with a ``KeyError``; all 27 of
theirs have one); we leave it out of that mean and report how many were
used.
"""
from __future__ import annotations

import math
import os
import time

import h5py
import numpy as np
from scipy import ndimage

from clci_keras.data import read_subjects
from clci_keras.data.reader import SliceReader, dataset_info
from clci_keras.data.slicing import crop_shape
from clci_keras.data.splits import load_split
from clci_keras.evaluation.evaluate import predict_subject, write_scores
from clci_keras.fileio import atomic_text, write_json
from clci_keras.models import build_with_weights
from clci_keras.models.catalog import get_weights_entry
from clci_keras.run_layout import scores_file, summary_file

#: Per-patient scores of the SPiN convention, in CSV order.
SPIN_SCORE_NAMES = ("dsc", "iou", "precision", "recall", "voe", "rvd")
#: Counts stored beside them.
SPIN_COUNT_NAMES = ("gt_voxels", "pred_voxels", "tp_voxels", "fp_voxels", "fn_voxels", "at_threshold_voxels")
#: Small-lesion subset columns.
SMALL_LESION_NAMES = ("sl_slices", "sl_dsc", "sl_iou", "sl_precision", "sl_recall")
#: Columns of ``scores_<part>.csv``.
CSV_COLUMNS = ("subject_index", "subject_id", "site", *SPIN_SCORE_NAMES, *SPIN_COUNT_NAMES,
               *SMALL_LESION_NAMES, "seconds")
#: The scores a published row has.
TABLE_SCORES = ("dsc", "iou", "precision", "recall")

#: Small-lesion rule of setup/setup_dataset_atlas_small_lesion.py (pixels of a 2D component).
SMALL_LESION_MIN = 0
SMALL_LESION_MAX = 100


# ---------------------------------------------------------------------------
# Their formulas
# ---------------------------------------------------------------------------
def spin_scores(gt, prob, threshold=0.5):
    """Per-patient scores of the SPiN evaluation of CLCI-Net (module docstring).

    Args:
        gt: ground truth, any shape (e.g. ``(189, 224, 176)``); lesion where > 0.
        prob: predicted probabilities, same shape; lesion where ``>= threshold``.

    Returns:
        dict with :data:`SPIN_SCORE_NAMES` and :data:`SPIN_COUNT_NAMES`.
    """
    gt = np.asarray(gt)
    prob = np.asarray(prob)
    if gt.shape != prob.shape:
        raise ValueError(f"ground truth and prediction shapes differ: {gt.shape} vs {prob.shape}")
    a = gt > 0
    b = prob >= threshold
    na, nb = int(a.sum()), int(b.sum())
    tp = int(np.logical_and(a, b).sum())
    union = na + nb - tp
    return {
        "dsc": 2.0 * tp / (na + nb) if na + nb else 0.0,
        "iou": tp / union if union else 0.0,
        "precision": tp / nb if nb else 0.0,
        "recall": tp / na if na else 0.0,
        "voe": 2.0 * (nb - na) / (nb + na) if nb + na else 0.0,
        "rvd": nb / na - 1.0 if na else -1.0,
        "gt_voxels": na,
        "pred_voxels": nb,
        "tp_voxels": tp,
        "fp_voxels": nb - tp,
        "fn_voxels": na - tp,
        "at_threshold_voxels": int(np.count_nonzero(prob == threshold)),
    }


def only_small_lesions(slice_2d, min_size=SMALL_LESION_MIN, max_size=SMALL_LESION_MAX):
    """True if every 8-connected lesion component of ``slice_2d`` is small (their rule, module docstring)."""
    fg = np.asarray(slice_2d) != 0
    if not fg.any():
        return False
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    areas = np.bincount(labels.ravel(), minlength=n + 1)  # row 0: the zero pixels, as cv2's stats
    areas = np.sort(areas)[::-1][1:]  # drop the largest row, which cv2's user takes for the background
    areas = areas[areas > min_size]
    return bool(areas.size) and not bool((areas > max_size).any())


def small_lesion_slices(label_slices, min_size=SMALL_LESION_MIN, max_size=SMALL_LESION_MAX):
    """Indices of the axial slices (full 233 x 197, uncropped) that hold only small lesions."""
    lab = np.asarray(label_slices)
    return np.array([z for z in range(lab.shape[0]) if only_small_lesions(lab[z], min_size, max_size)],
                    dtype=np.int64)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------
def _mean(rows, key):
    vals = [float(r[key]) for r in rows if r.get(key) is not None and not math.isnan(float(r[key]))]
    return (float(np.mean(vals)) if vals else None), len(vals)


def summarize_published(rows):
    """Means over patients: ``{"test": {score: mean, "patients": n}, "small_lesion": {...}}``."""
    test = {k: _mean(rows, k)[0] for k in SPIN_SCORE_NAMES}
    test["patients"] = len(rows)
    small = {}
    for k in TABLE_SCORES:
        small[k], n = _mean(rows, f"sl_{k}")
    small["patients"] = n
    return {"test": test, "small_lesion": small}


def write_published_scores(rows, csv_path):
    """Per-patient rows to CSV (NaN as empty), atomically."""
    write_scores(rows, csv_path, CSV_COLUMNS)


def _fmt(v):
    return "n/a" if v is None else f"{v:.3f}"


def _diff(a, b):
    return "" if a is None or b is None else f"{a - b:+.3f}"


def comparison_markdown(entry, means, *, n_expected, missing, synthetic, notes=()):
    """Markdown: for each published row (test, small-lesion subset), theirs, ours and the difference."""
    name = entry["name"]
    tag = " [SYNTHETIC]" if synthetic else ""
    lines = [f"# {name}: published scores beside this run{tag}", ""]
    if synthetic:
        lines += ["**[SYNTHETIC]** The HDF5 file holds synthetic data: these numbers exercise the pipeline "
                  "and say nothing about the published weights.", ""]
    labels = {"test": "test scans (Table 2)", "small_lesion": "small-lesion subset (Table 3)"}
    for part, pub in entry["published_scores"].items():
        ours = means.get(part, {})
        lines += [f"## {labels.get(part, part)}", "",
                  "| row | patients | DSC | IoU | Precision | Recall |", "|---|---|---|---|---|---|",
                  f"| published: {pub['where']} | {pub['patients']} | "
                  + " | ".join(f"{pub[k]:.3f}" for k in TABLE_SCORES) + " |",
                  f"| this run (clci_keras){tag} | {ours.get('patients', 0)} | "
                  + " | ".join(_fmt(ours.get(k)) for k in TABLE_SCORES) + " |",
                  "| difference (this run - published) | | "
                  + " | ".join(_diff(ours.get(k), pub[k]) for k in TABLE_SCORES) + " |", ""]
    ev = entry["evaluation"]
    lines += ["Protocol: model `{}` {}, crop `{}`, split `{}` part `{}`, {} slices per patient, lesion where "
              "{}; per-patient scores averaged over patients (SPiN evaluator's formulas, see "
              "docs/published_weights.md).".format(entry["architecture"], "x".join(map(str, entry["input_shape"])),
                                                   ev["crop"], ev["split"], ev["part"], ev["slices"], ev["binarize"])]
    if missing:
        lines += ["", f"**Incomplete:** {len(missing)} of the {n_expected} {ev['part']} ids are not in the HDF5 file "
                  f"(scored with --allow-missing): {', '.join(missing)}."]
    for n in notes:
        lines += ["", n]
    return "\n".join(lines) + "\n"


def evaluate_published(preset, weights, h5_path, out_dir, *, allow_missing=False, batch_size=8, crop=None,
                       progress=True, model=None):
    """Score published weights with their publishers' protocol (module docstring).

    Args:
        preset: catalogue name (``"spin_clcinet"``).
        weights: the weight file (any format :func:`clci_keras.models.load_weights` reads;
            the catalogue's is a Keras 2 ``save_weights`` HDF5 file).
        h5_path: HDF5 slice file (``clci-keras prep`` of the data, e.g. ATLAS R1.2).
        out_dir: output folder (created).
        allow_missing: score the split's ids present in ``h5_path`` when some are missing
            (default: fail listing them).
        batch_size: prediction batch (does not change the scores).
        crop: override of the preset's crop window (tests; the result then departs
            from the published protocol and says so).
        model: an already built model to use instead of building one and loading ``weights``.

    Returns:
        The summary dict (also written to ``summary_<part>.json``).

    Raises:
        ValueError: unknown ``preset``; ``h5_path`` lacks some of the part's ids (unless
            ``allow_missing``) or holds none; neither ``weights`` nor ``model`` given.
    """
    entry = get_weights_entry(preset)
    ev = entry["evaluation"]
    part = ev["part"]
    used_crop = crop or ev["crop"]
    split = load_split(ev["split"], h5=h5_path, parts=(part,), allow_missing=allow_missing)
    subjects = list(split[part])
    wanted = list(split["ids"][part])
    missing = list((split.get("missing") or {}).get(part, []))
    if not subjects:
        raise ValueError(f"{h5_path}: holds none of the {len(wanted)} {part!r} ids of split {ev['split']!r}.")
    model = _published_model(entry, weights, used_crop, model)
    os.makedirs(out_dir, exist_ok=True)
    meta = {int(s["index"]): s for s in read_subjects(h5_path)}
    rows, wall, cpu = _score_patients(model, h5_path, subjects, meta, used_crop, batch_size, ev,
                                      desc=str(preset) if progress else None)
    write_published_scores(rows, os.path.join(out_dir, scores_file(part)))
    means = summarize_published(rows)
    info = dataset_info(h5_path)
    summary = {
        "preset": preset,
        "weights": os.path.abspath(weights) if weights else None,
        "part": part,
        "split": ev["split"],
        "crop": used_crop,
        "protocol": ev,
        "subjects": [int(s) for s in subjects],
        "subject_ids": [meta[s]["subject_id"] for s in subjects],
        "expected_ids": len(wanted),
        "missing_ids": missing,
        "means": means,
        "published": entry["published_scores"],
        "seconds": {"wall": round(wall, 3), "cpu": round(cpu, 3),
                    "wall_per_scan": round(wall / len(subjects), 3), "cpu_per_scan": round(cpu / len(subjects), 3)},
        "data": info,
    }
    if weights:
        from clci_keras.models.manifest import sha256

        summary["weights_sha256"] = sha256(weights)
    notes = []
    if crop and crop != ev["crop"]:
        notes.append(f"**Departure:** crop `{crop}` instead of the preset's `{ev['crop']}`: "
                     "not the published protocol.")
    _write_summary_and_comparison(out_dir, summary, entry, notes)
    return summary


def _published_model(entry, weights, crop, model):
    """``model`` if given, else the catalogue entry's architecture for ``crop`` with ``weights`` loaded."""
    if model is not None:
        return model
    if weights is None:
        raise ValueError("`weights` is required unless a built `model` is given")

    return build_with_weights(entry["architecture"], weights, input_shape=(*crop_shape(crop), 1))


def _score_patients(model, h5_path, subjects, meta, crop, batch_size, ev, desc=None):
    """Predict and score each of ``subjects`` (indices; ``meta``: :func:`read_subjects` by index).

    Args:
        ev: the preset's ``evaluation`` (``slices``, ``threshold``).
        desc: label of a progress bar over the slices; ``None``: no bar.

    Returns:
        ``(rows, wall seconds, CPU seconds)``: one :data:`CSV_COLUMNS` row per patient,
        its small-lesion scores NaN when it has no small-lesion slice.
    """
    bar = None
    if desc is not None:
        from clci_keras.fileio import progress_bar

        bar = progress_bar(int(sum(meta[s]["count"] for s in subjects)), desc=desc, unit="slice")
    rows = []
    t_all, c_all = time.perf_counter(), time.process_time()
    try:
        with SliceReader(h5_path, crop) as reader, h5py.File(h5_path, "r") as f:
            for s in subjects:
                t0 = time.perf_counter()
                prob, gt = predict_subject(model, h5_path, s, crop, batch_size, ev["slices"], reader, bar)
                row = {"subject_index": int(s), "subject_id": meta[s]["subject_id"], "site": meta[s]["site"]}
                row.update(spin_scores(gt, prob, ev["threshold"]))
                off, count = meta[s]["offset"], meta[s]["count"]
                row.update(_small_lesion_scores(f["label"][off : off + count], gt, prob, ev["threshold"]))
                row["seconds"] = round(time.perf_counter() - t0, 3)
                rows.append(row)
    finally:
        if bar is not None:
            bar.close()
    return rows, time.perf_counter() - t_all, time.process_time() - c_all


def _small_lesion_scores(full_labels, gt, prob, threshold):
    """``sl_slices`` and the ``sl_*`` scores of one patient (NaN without a small-lesion slice).

    ``full_labels``: its uncropped label slices, which select the subset;
    ``gt``, ``prob``: its cropped ground truth and prediction.
    """
    small = small_lesion_slices(full_labels)
    out = {"sl_slices": int(small.size)}
    if small.size:
        sl = spin_scores(gt[small], prob[small], threshold)
        out.update({f"sl_{k}": sl[k] for k in TABLE_SCORES})
    else:
        out.update({f"sl_{k}": math.nan for k in TABLE_SCORES})
    return out


def _write_summary_and_comparison(out_dir, summary, entry, notes):
    """``summary_<part>.json`` (durable) and ``comparison_<part>.md`` of :func:`evaluate_published`."""
    part = summary["part"]
    write_json(os.path.join(out_dir, summary_file(part)), summary, durable=True)
    md = comparison_markdown(entry, summary["means"], n_expected=summary["expected_ids"],
                             missing=summary["missing_ids"], synthetic=bool(summary["data"].get("synthetic")),
                             notes=notes)
    with atomic_text(os.path.join(out_dir, f"comparison_{part}.md")) as fh:
        fh.write(md)
