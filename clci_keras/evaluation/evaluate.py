"""Whole-patient prediction and per-patient 3D evaluation.

As X-Net's evaluation (which CLCI-Net's authors used): every one of a
patient's 189 axial slices is predicted in the crop window, the probabilities
are thresholded at 0.5 and the scores of :mod:`clci_keras.evaluation.metrics`
are computed on the stacked 3D volume (189 x 224 x 176 for the "clci" crop),
one row per patient. Lesion voxels outside the crop window (rare: the window
keeps 224 of 233 rows and 176 of 197 columns) are not scored, as in the original.

Option ``slices="brain"`` predicts only the axial slices inside the MNI152
brain mask's z-range (155 of 189) and sets the others to "no lesion"; it is a
speed option for CPUs (the demo uses it) and changes scores only if a model
predicts lesions outside the brain. Option ``slices="A:B"`` predicts only a
slab, the subject's slices ``A`` to ``B - 1`` in the file's order (the same
local indices as "brain"), and sets the others to "no lesion": for quick
checks (the notebooks' QUICK runs), not for scores to report; tables say so.

Outputs of :func:`evaluate_run` in ``out_dir``:

``scores_<part>.csv``    one row per patient: subject index/id/site, every score and count,
                         and the ATLAS 2.0 challenge scores (``atlas2_*``, :func:`atlas2_scores`)
``summary_<part>.json``  mean ± std of every score, plus the model, weights and data provenance

``max_subjects=N`` scores only the first N subjects of the part (a dry run's check that the
evaluation works, not a result): the summary then says ``"partial": true`` and records
``max_subjects`` and ``part_subjects`` (how many the part has); tables mark such rows.
"""
from __future__ import annotations

import csv
import math
import os

import numpy as np

from clci_keras.data import read_subjects
from clci_keras.data.constants import DEFAULT_CROP
from clci_keras.data.reader import SliceReader, brain_slice_indices, dataset_info, subject_table
from clci_keras.data.slicing import crop_shape
from clci_keras.data.splits import load_split
from clci_keras.evaluation.metrics import (
    ATLAS2_NAMES,
    COUNT_NAMES,
    SCORE_NAMES,
    atlas2_scores,
    segmentation_scores,
    summarize,
)
from clci_keras.fileio import atomic_text, exclusive, write_json
from clci_keras.models import build_with_weights
from clci_keras.models.manifest import update_entry
from clci_keras.run_layout import scores_file, summary_file

EVAL_SLICES = ("all", "brain")  # and slabs "A:B"


def _subject_meta(h5_path):
    return {int(s["index"]): s for s in read_subjects(h5_path)}


def check_eval_slices(slices):
    """``slices`` if it is ``all``, ``brain`` or a slab ``"A:B"`` (0 <= A < B), else ``ValueError``."""
    if slices in EVAL_SLICES:
        return slices
    if slab_bounds(slices) is None:
        raise ValueError(f"unknown evaluation slices {slices!r}; choose 'all', 'brain' or a slab 'A:B' "
                         "(slices A to B-1 of each subject, 0 <= A < B)")
    return slices


def slab_bounds(slices):
    """``(A, B)`` of a slab ``"A:B"`` (0 <= A < B), ``None`` for anything else."""
    if not isinstance(slices, str) or slices.count(":") != 1:
        return None
    a, b = slices.split(":")
    if not (a.strip().isdigit() and b.strip().isdigit()):
        return None
    a, b = int(a), int(b)
    return (a, b) if a < b else None


def _eval_slices(count, slices):
    """Local indices of a subject's slices that are predicted (``all``, ``brain`` or ``A:B``)."""
    check_eval_slices(slices)
    if slices == "all":
        return np.arange(count)
    if slices == "brain":
        return np.asarray(brain_slice_indices(count), dtype=np.int64)
    a, b = slab_bounds(slices)
    if b > count:
        raise ValueError(f"evaluation slab {slices!r} ends past the subject's {count} slices")
    return np.arange(a, b)


def predict_subject(model, h5_path, index, crop=DEFAULT_CROP, batch_size=8, slices="all", reader=None,
                    progress=None):
    """Predict one patient; returns ``(prob, gt)`` of shape ``(count, H, W)``.

    ``prob`` is the lesion probability (float32 in [0, 1]; the lesion channel
    of a multi-class model), 0 for slices skipped by ``slices="brain"`` or a slab;
    ``gt`` uint8 {0, 1}; both in the crop window.
    """
    from clci_keras.models.predictor import predict_slices

    own = reader is None
    reader = reader or SliceReader(h5_path, crop)
    try:
        x, gt = reader.read_subject(index)
    finally:
        if own:
            reader.close()
    local = _eval_slices(len(x), slices)
    prob = np.zeros(gt.shape[:3], np.float32)
    prob[local] = predict_slices(model, x[local], batch_size=batch_size, progress=progress)
    return prob, gt[..., 0].astype(np.uint8)


def evaluate_model(model, h5_path, subjects, crop=DEFAULT_CROP, batch_size=8, threshold=0.5,
                   slices="all", progress=True, keep_predictions=False):
    """Per-patient score rows of ``model`` on ``subjects`` (subject indices).

    With ``keep_predictions`` each row also carries ``_prob`` and ``_gt`` arrays
    (used for figures); they are not written to CSV.
    """
    meta = _subject_meta(h5_path)
    table = subject_table(h5_path)
    missing = [s for s in subjects if int(s) not in table]
    if missing:
        raise ValueError(f"{h5_path}: no subjects with indices {missing} (the file has {len(table)})")
    bar = None
    if progress:
        from clci_keras.fileio import progress_bar

        total = sum(_eval_slices(table[int(s)][1], slices).size for s in subjects)
        bar = progress_bar(int(total), desc="predicting", unit="slice")
    rows = []
    try:
        with SliceReader(h5_path, crop) as reader:
            for s in subjects:
                prob, gt = predict_subject(model, h5_path, s, crop, batch_size, slices, reader, bar)
                scores = segmentation_scores(gt, prob, threshold=threshold)
                scores.update({f"atlas2_{k}": v for k, v in atlas2_scores(gt, prob, threshold).items()})
                m = meta.get(int(s), {})
                row = {"subject_index": int(s), "subject_id": m.get("subject_id", ""),
                       "site": m.get("site", ""), **scores}
                if keep_predictions:
                    row["_prob"], row["_gt"] = prob, gt
                rows.append(row)
    finally:
        if bar is not None:
            bar.close()
    return rows


#: Columns of ``scores_<part>.csv``.
SCORE_COLUMNS = ("subject_index", "subject_id", "site", *SCORE_NAMES, *ATLAS2_NAMES, *COUNT_NAMES)


def write_scores(rows, csv_path, columns=SCORE_COLUMNS):
    """Write per-patient rows (``columns`` only; NaN as empty) to CSV, atomically."""
    cols = list(columns)
    with atomic_text(csv_path, newline="", durable=True) as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(r.get(k), float) and math.isnan(r[k]) else r.get(k))
                        for k in cols})


def format_summary(summary, names=("dsc", "precision", "recall", "voe", "rvd", "lesion_f1")):
    """One line ``DSC 0.581 ± 0.21 | ...`` of a :func:`summarize` dict."""
    parts = []
    for n in names:
        s = summary[n]
        if s["mean"] is None:
            parts.append(f"{n} n/a")
        else:
            std = f" ± {s['std']:.3f}" if s["std"] is not None else ""
            parts.append(f"{n} {s['mean']:.3f}{std}")
    return " | ".join(parts)


def evaluate_run(weights, model_name, h5_path, split_path, part="test", out_dir=None, fold=None,
                 crop=DEFAULT_CROP, batch_size=8, threshold=0.5, slices="all", progress=True,
                 manifest=None, manifest_name=None, model=None, tag=None, allow_missing=False,
                 max_subjects=None):
    """Evaluate weights on a split part; write ``scores_<part>.csv`` and ``summary_<part>.json``.

    Args:
        weights: weights file in any format :func:`clci_keras.models.load_weights`
            reads (``None`` with ``model=`` given: use that model as is).
        model_name: registered model name (architecture of ``weights``).
        h5_path, split_path, fold: the data and the split (``part`` = ``test``,
            ``val`` or ``train``).
        out_dir: output folder (default: the folder of ``weights``).
        slices: ``all`` (original protocol), ``brain`` (faster) or a slab ``"A:B"``
            (quick checks), see the module doc.
        manifest, manifest_name: if given, the summary is stored in that
            manifest entry's ``metrics[part]``.
        tag: suffix of the output names (``scores_<part>_<tag>.csv``).
        allow_missing: an id split (e.g. the preset ``spin_traintest``) naming
            subjects the HDF5 file lacks: score those present instead of failing.
        max_subjects: score only the first ``max_subjects`` subjects of the part
            (dry runs); the summary records it (``partial``, ``part_subjects``).

    Returns:
        The summary dict (also written to JSON).

    Raises:
        ValueError: bad ``slices``, ``part`` or ``max_subjects``; a part without subjects;
            neither ``weights`` nor ``model`` given.
    """
    check_eval_slices(slices)
    subjects, part_subjects = _part_subjects(split_path, fold, h5_path, part, allow_missing, max_subjects)
    model = _scoring_model(model, model_name, weights, crop)
    if out_dir is None:
        out_dir = os.path.dirname(os.path.abspath(weights)) if weights else "."
    os.makedirs(out_dir, exist_ok=True)
    with exclusive(os.path.join(out_dir, scores_file(part, tag)), what="evaluation output"):  # one run at a time
        summary = _score_and_write(model, model_name, weights, h5_path, subjects, part_subjects, out_dir, tag,
                                   part, fold, crop, batch_size, threshold, slices, progress, max_subjects)
    if manifest and manifest_name:
        _record_in_manifest(manifest, manifest_name, summary)
    return summary


def _score_and_write(model, model_name, weights, h5_path, subjects, part_subjects, out_dir, tag, part, fold,
                     crop, batch_size, threshold, slices, progress, max_subjects):
    """Score ``subjects``; write ``scores_<part>[_<tag>].csv`` and ``summary_<part>[_<tag>].json``; the summary."""
    rows = evaluate_model(model, h5_path, subjects, crop, batch_size, threshold, slices, progress)
    write_scores(rows, os.path.join(out_dir, scores_file(part, tag)))
    summary = {
        "model": model_name,
        "weights": os.path.abspath(weights) if weights else None,
        "part": part,
        "fold": fold,
        "subjects": [int(s) for s in subjects],
        "part_subjects": part_subjects,
        "max_subjects": max_subjects,
        "partial": len(subjects) < part_subjects,
        "threshold": threshold,
        "slices": slices,
        "crop": crop,
        "data": dataset_info(h5_path),
        "scores": summarize(rows, SCORE_NAMES + ATLAS2_NAMES),
    }
    if weights:
        from clci_keras.models.manifest import sha256

        summary["weights_sha256"] = sha256(weights)
    write_json(os.path.join(out_dir, summary_file(part, tag)), summary, durable=True)
    return summary


def _part_subjects(split_path, fold, h5_path, part, allow_missing, max_subjects):
    """``(subjects to score, how many the part has)``: the first ``max_subjects`` of ``part``'s
    subject indices (all with ``None``); ``ValueError`` for a bad ``part``, an empty part or
    a bad ``max_subjects``."""
    split = load_split(split_path, fold=fold, h5=h5_path, parts=(part,), allow_missing=allow_missing)
    if part not in ("train", "val", "test"):
        raise ValueError(f"`part` must be train, val or test, got {part!r}")
    subjects = list(split.get(part) or [])
    if not subjects:
        raise ValueError(f"{split_path}: split has no {part!r} subjects")
    part_subjects = len(subjects)
    if max_subjects is not None:
        if isinstance(max_subjects, bool) or not isinstance(max_subjects, int) or max_subjects < 1:
            raise ValueError(f"`max_subjects` must be a positive integer or None, got {max_subjects!r}")
        subjects = subjects[:max_subjects]
    return subjects, part_subjects


def _scoring_model(model, model_name, weights, crop):
    """``model`` if given, else a ``model_name`` network for ``crop`` with ``weights`` loaded."""
    if model is not None:
        return model

    if weights is None:
        raise ValueError("`weights` is required unless a built `model` is given")
    return build_with_weights(model_name, weights, input_shape=(*crop_shape(crop), 1))


def _record_in_manifest(manifest, name, summary):
    """Store the mean scores of ``summary`` in the ``metrics[part]`` of manifest entry ``name``."""
    update_entry(manifest, name, metrics={
        summary["part"]: {k: v["mean"] for k, v in summary["scores"].items()} | {"subjects": len(summary["subjects"])}
        | ({"partial": True, "part_subjects": summary["part_subjects"]} if summary["partial"] else {})
    })
