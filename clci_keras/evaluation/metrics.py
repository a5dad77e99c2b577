"""Per-patient 3D segmentation scores (the paper's Table 1 metrics and more).

Notation: ``A`` = ground-truth lesion voxels, ``B`` = predicted lesion voxels
(probabilities binarised with ``> threshold``, default 0.5, for both), ``|.|``
= voxel count. Scores are computed on a whole patient volume (all slices at
once), as in X-Net's ``utils.get_score_for_one_patient``, which the CLCI-Net
authors used.

=================  ========================================  ==========================
score              formula                                   range / better
=================  ========================================  ==========================
``dsc``            2|A∩B| / (|A| + |B|)                      [0, 1], higher
``iou``            |A∩B| / |A∪B|                             [0, 1], higher
``precision``      |A∩B| / |B|                               [0, 1], higher
``recall``         |A∩B| / |A|                               [0, 1], higher
``voe``            100 · (1 − |A∩B| / |A∪B|)                 [0, 100] %, lower
``rvd``            100 · (|B| − |A|) / |A|   (signed)        [−100, ∞) %, 0 best
``abs_rvd``        |rvd|                                     [0, ∞) %, lower
``avd_voxels``     | |B| − |A| |                             voxels, lower
``avd_ml``         avd_voxels · voxel volume / 1000          ml, lower
``lesion_f1``      2·TP / (2·TP + FP + FN), lesion-wise      [0, 1], higher
=================  ========================================  ==========================

RVD is **signed**: negative = under-segmentation. The paper prints positive
RVDs for every method and does not give its formula; its values are compatible
with either the signed mean or the mean of absolute values, so summaries
report both ``rvd`` and ``abs_rvd``. (X-Net's code computes neither of the
standard VOE/RVD: it returns ``2(|B|−|A|)/(|A|+|B|)`` as "VOE" and
``|B|/|A| − 1`` as RVD, both unscaled; we use the standard definitions.)

Lesion-wise F1 follows ATLAS v2.0 / ISLES'22: lesions are the connected
components (``skimage.measure.label``, full 26-connectivity in 3D) of ``A``
and of ``B``; a ground-truth lesion is a true positive if any of its voxels is
predicted, a false negative otherwise; a predicted component that touches no
ground-truth voxel is a false positive.

Empty-mask edge cases (every ratio whose denominator is 0):

* both ``A`` and ``B`` empty — perfect agreement: dsc = iou = precision =
  recall = lesion_f1 = 1, voe = rvd = abs_rvd = avd = 0;
* any other 0/0 ratio is 0 (scikit-learn's ``zero_division=0``, also X-Net's
  convention): ``B`` empty, ``A`` not -> precision = recall = 0 (rvd = −100);
  ``A`` empty, ``B`` not -> recall = 0 (precision = dsc = iou = 0, voe = 100);
* the one exception is RVD (and abs_rvd) when ``A`` is empty and ``B`` is not:
  a change relative to an empty volume is undefined, so it is NaN and
  :func:`summarize` leaves it out of the mean (reporting how many were left out).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.measure import label

#: Score names in column order of the per-patient CSV.
SCORE_NAMES = (
    "dsc",
    "precision",
    "recall",
    "voe",
    "rvd",
    "abs_rvd",
    "iou",
    "lesion_f1",
    "avd_voxels",
    "avd_ml",
)
#: Raw counts stored beside the scores.
COUNT_NAMES = (
    "gt_voxels",
    "pred_voxels",
    "tp_voxels",
    "fp_voxels",
    "fn_voxels",
    "gt_lesions",
    "pred_lesions",
    "tp_lesions",
    "fp_lesions",
    "fn_lesions",
)


def binarize(x, threshold=0.5):
    """Boolean mask ``x > threshold`` (boolean input is returned as is)."""
    x = np.asarray(x)
    if x.dtype == bool:
        return x
    return x > threshold


def _ratio(num, den, both_empty):
    """``num / den``; 1 if the masks are both empty, 0 for any other 0/0."""
    if both_empty:
        return 1.0
    return float(num) / float(den) if den else 0.0


def lesion_counts(gt, pred, connectivity=None):
    """Lesion-wise detection counts (ATLAS v2.0 / ISLES'22 style).

    Args:
        gt, pred: boolean masks of the same shape (2D or 3D).
        connectivity: ``skimage.measure.label`` connectivity; ``None`` = full
            (26-neighbourhood in 3D, 8 in 2D).

    Returns:
        dict with ``gt_lesions``, ``pred_lesions``, ``tp_lesions`` (GT components
        that overlap the prediction), ``fn_lesions`` and ``fp_lesions``
        (predicted components that overlap no GT voxel).
    """
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    conn = gt.ndim if connectivity is None else connectivity
    gt_lab, n_gt = label(gt, connectivity=conn, return_num=True)
    pred_lab, n_pred = label(pred, connectivity=conn, return_num=True)
    tp = len(np.setdiff1d(np.unique(gt_lab[pred]), [0]))
    hit_pred = len(np.setdiff1d(np.unique(pred_lab[gt]), [0]))
    return {
        "gt_lesions": int(n_gt),
        "pred_lesions": int(n_pred),
        "tp_lesions": int(tp),
        "fn_lesions": int(n_gt - tp),
        "fp_lesions": int(n_pred - hit_pred),
    }


def segmentation_scores(gt, pred, threshold=0.5, voxel_volume_mm3=1.0, connectivity=None):
    """All scores of one patient (see the module docstring for definitions).

    Args:
        gt: ground-truth mask or probabilities, any shape (e.g. ``(189, H, W)``
            or ``(189, H, W, 1)``); binarised with ``> threshold``.
        pred: predicted probabilities or mask, same shape as ``gt``.
        threshold: binarisation threshold (0.5 as X-Net's evaluation).
        voxel_volume_mm3: volume of one voxel for ``avd_ml`` (ATLAS MNI: 1 mm³).
        connectivity: connected-component connectivity for ``lesion_f1``.

    Returns:
        dict with :data:`SCORE_NAMES` and :data:`COUNT_NAMES`.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction shapes differ: {gt.shape} vs {pred.shape}")
    a = binarize(gt, threshold)
    b = binarize(pred, threshold)
    if a.ndim == 4 and a.shape[-1] == 1:  # (slices, H, W, 1): label the 3D volume
        a, b = a[..., 0], b[..., 0]
    na, nb = int(a.sum()), int(b.sum())
    tp = int(np.logical_and(a, b).sum())
    union = na + nb - tp
    both_empty = na == 0 and nb == 0

    iou = _ratio(tp, union, both_empty)
    if na:
        rvd = 100.0 * (nb - na) / na
    else:
        rvd = 0.0 if nb == 0 else math.nan
    lc = lesion_counts(a, b, connectivity)
    les_den = 2 * lc["tp_lesions"] + lc["fp_lesions"] + lc["fn_lesions"]
    avd = abs(nb - na)
    out = {
        "dsc": _ratio(2 * tp, na + nb, both_empty),
        "precision": _ratio(tp, nb, both_empty),
        "recall": _ratio(tp, na, both_empty),
        "voe": 100.0 * (1.0 - iou),
        "rvd": rvd,
        "abs_rvd": abs(rvd),
        "iou": iou,
        "lesion_f1": _ratio(2 * lc["tp_lesions"], les_den, les_den == 0),
        "avd_voxels": float(avd),
        "avd_ml": avd * float(voxel_volume_mm3) / 1000.0,
        "gt_voxels": na,
        "pred_voxels": nb,
        "tp_voxels": tp,
        "fp_voxels": nb - tp,
        "fn_voxels": na - tp,
    }
    out.update(lc)
    return out


def summarize(rows, names=SCORE_NAMES):
    """Mean ± sample std (ddof=1) of each score over patients.

    NaN entries (only RVD with an empty ground truth) are left out; each entry
    reports ``n`` (patients used) and ``n_nan`` (left out). ``std`` is ``None``
    for fewer than two values, ``mean`` for none.
    """
    out = {}
    for name in names:
        vals = np.array([float(r[name]) for r in rows], dtype=float)
        ok = vals[~np.isnan(vals)]
        out[name] = {
            "mean": float(ok.mean()) if ok.size else None,
            "std": float(ok.std(ddof=1)) if ok.size > 1 else None,
            "n": int(ok.size),
            "n_nan": int(vals.size - ok.size),
        }
    return out


#: Score names of :func:`atlas2_scores`, the ATLAS 2.0 challenge's per-subject metrics.
ATLAS2_NAMES = ("atlas2_dice", "atlas2_volume_difference", "atlas2_simple_lesion_count",
                "atlas2_lesion_f1")


def atlas2_scores(gt, pred, threshold=0.5, connectivity=1):
    """The ATLAS 2.0 challenge metrics of one subject (``npnl/atlas2_grand_challenge``).

    Components are labelled with ``scipy.ndimage.label``; ``connectivity=1``
    (its default structure: faces only, 6-neighbourhood in 3D) as the
    organisers' ``simple_lesion_count_difference``. This module's own
    ``lesion_f1`` (:func:`segmentation_scores`) uses full 26-connectivity as
    ISLES'22; pass ``connectivity=3`` here for the same components.

    Returns a dict with:

    * ``dice`` — 2|A∩B| / (|A| + |B|); 1.0 when both masks are empty (the
      organisers' code divides 0 by 0 there);
    * ``volume_difference`` — | |B| − |A| | in voxels (the organisers' single-subject
      path sums the prediction twice, giving 0 always; we use the intended definition);
    * ``simple_lesion_count`` — | #components(B) − #components(A) |;
    * ``lesion_f1`` — a ground-truth component with ≥ 1 predicted voxel is a TP,
      otherwise an FN; a predicted component touching no ground truth is an FP;
      TP / (TP + (FP + FN) / 2); 1.0 when both masks are empty.
    """
    a = binarize(gt, threshold)
    b = binarize(pred, threshold)
    if a.shape != b.shape:
        raise ValueError(f"ground truth {a.shape} and prediction {b.shape} differ in shape")
    if connectivity not in range(1, a.ndim + 1):
        raise ValueError(f"connectivity must be 1..{a.ndim}, got connectivity={connectivity!r}")
    structure = ndimage.generate_binary_structure(a.ndim, connectivity)
    gt_lab, n_gt = ndimage.label(a, structure)
    pred_lab, n_pred = ndimage.label(b, structure)
    inter = int(np.logical_and(a, b).sum())
    na, nb = int(a.sum()), int(b.sum())
    tp = len(np.setdiff1d(np.unique(gt_lab[b]), [0]))
    fp = n_pred - len(np.setdiff1d(np.unique(pred_lab[a]), [0]))
    fn = n_gt - tp
    return {
        "dice": 1.0 if na + nb == 0 else 2.0 * inter / (na + nb),
        "volume_difference": abs(nb - na),
        "simple_lesion_count": abs(int(n_pred) - int(n_gt)),
        "lesion_f1": 1.0 if tp + fp + fn == 0 else tp / (tp + (fp + fn) / 2),
    }
