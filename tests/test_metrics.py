"""Per-patient metrics on hand-computed cases, including every empty-mask case."""
import math

import numpy as np
import pytest

from clci_keras.evaluation.metrics import lesion_counts, segmentation_scores, summarize


def _vol(*boxes, shape=(6, 8, 8)):
    v = np.zeros(shape, dtype=np.float32)
    for z, y, x in boxes:
        v[z, y, x] = 1.0
    return v


def test_hand_computed_overlap():
    # A: 8 voxels, B: 6 voxels, 4 shared -> union 10.
    a = _vol((slice(0, 2), slice(0, 2), slice(0, 2)))
    b = np.zeros_like(a)
    b[0:2, 0:2, 0:1] = 0.9  # 4 voxels inside A
    b[5, 5, 5:7] = 0.7  # 2 voxels outside A (separate component)
    s = segmentation_scores(a, b)
    assert (s["gt_voxels"], s["pred_voxels"], s["tp_voxels"]) == (8, 6, 4)
    assert (s["fp_voxels"], s["fn_voxels"]) == (2, 4)
    assert s["dsc"] == pytest.approx(2 * 4 / 14)
    assert s["iou"] == pytest.approx(4 / 10)
    assert s["voe"] == pytest.approx(60.0)
    assert s["precision"] == pytest.approx(4 / 6)
    assert s["recall"] == pytest.approx(4 / 8)
    assert s["rvd"] == pytest.approx(100 * (6 - 8) / 8)  # signed: -25 %
    assert s["abs_rvd"] == pytest.approx(25.0)
    assert s["avd_voxels"] == 2 and s["avd_ml"] == pytest.approx(0.002)
    # 1 GT lesion, hit; 2 predicted components, one touches no GT -> F1 = 2/(2+1+0)
    assert (s["gt_lesions"], s["pred_lesions"], s["tp_lesions"], s["fp_lesions"], s["fn_lesions"]) == (
        1, 2, 1, 1, 0)
    assert s["lesion_f1"] == pytest.approx(2 / 3)


def test_threshold_is_strict_and_probabilities_binarised():
    a = _vol((0, 0, slice(0, 4)))
    b = np.zeros_like(a)
    b[0, 0, 0:4] = [0.5, 0.51, 0.99, 0.2]  # only 2 above 0.5
    s = segmentation_scores(a, b)
    assert s["pred_voxels"] == 2 and s["dsc"] == pytest.approx(4 / 6)


def test_over_segmentation_positive_rvd_and_voxel_volume():
    a = _vol((0, 0, slice(0, 2)))
    b = _vol((0, 0, slice(0, 5)))
    s = segmentation_scores(a, b, voxel_volume_mm3=2.0)
    assert s["rvd"] == pytest.approx(150.0)
    assert s["avd_ml"] == pytest.approx(3 * 2.0 / 1000)
    assert s["recall"] == 1.0 and s["precision"] == pytest.approx(0.4)


def test_both_empty_is_perfect():
    z = np.zeros((3, 4, 4))
    s = segmentation_scores(z, z)
    for k in ("dsc", "iou", "precision", "recall", "lesion_f1"):
        assert s[k] == 1.0, k
    for k in ("voe", "rvd", "abs_rvd", "avd_voxels", "avd_ml"):
        assert s[k] == 0.0, k


def test_empty_prediction_with_lesion():
    a = _vol((1, 1, slice(1, 3)))
    s = segmentation_scores(a, np.zeros_like(a))
    assert s["dsc"] == 0 and s["iou"] == 0 and s["voe"] == 100
    assert s["precision"] == 0 and s["recall"] == 0  # 0/0 precision -> 0
    assert s["rvd"] == -100 and s["lesion_f1"] == 0 and s["fn_lesions"] == 1


def test_prediction_without_lesion_rvd_undefined():
    b = _vol((1, 1, slice(1, 3)))
    s = segmentation_scores(np.zeros_like(b), b)
    assert s["dsc"] == 0 and s["precision"] == 0 and s["recall"] == 0 and s["voe"] == 100
    assert math.isnan(s["rvd"]) and math.isnan(s["abs_rvd"])
    assert s["lesion_f1"] == 0 and s["fp_lesions"] == 1


def test_lesion_components_use_full_3d_connectivity():
    gt = np.zeros((3, 5, 5), bool)
    gt[0, 0, 0] = gt[1, 1, 1] = True  # diagonal neighbours: one lesion with 26-connectivity
    gt[2, 4, 4] = True  # a second, missed lesion
    pred = np.zeros_like(gt)
    pred[1, 1, 1] = True
    c = lesion_counts(gt, pred)
    assert c == {"gt_lesions": 2, "pred_lesions": 1, "tp_lesions": 1, "fn_lesions": 1, "fp_lesions": 0}
    assert lesion_counts(gt, pred, connectivity=1)["gt_lesions"] == 3


def test_channel_axis_and_shape_mismatch():
    a = _vol((0, 0, 0))[..., None]
    assert segmentation_scores(a, a)["dsc"] == 1.0
    with pytest.raises(ValueError, match=r"\(6, 8, 8, 1\) vs \(6, 8, 8\)"):
        segmentation_scores(a, a[..., 0])


def test_summarize_mean_std_and_nan_exclusion():
    rows = [{"dsc": 0.2, "rvd": 10.0}, {"dsc": 0.4, "rvd": float("nan")}, {"dsc": 0.6, "rvd": 30.0}]
    s = summarize(rows, names=("dsc", "rvd"))
    assert s["dsc"]["mean"] == pytest.approx(0.4) and s["dsc"]["std"] == pytest.approx(0.2)
    assert s["rvd"] == {"mean": pytest.approx(20.0), "std": pytest.approx(np.std([10, 30], ddof=1)),
                        "n": 2, "n_nan": 1}
    assert summarize([{"dsc": 0.5}], names=("dsc",))["dsc"]["std"] is None


# --------------------------------------------------------------------------
# ATLAS 2.0 challenge scores, against a transcription of the organisers' definitions
# (npnl/atlas2_grand_challenge, isles/scoring.py: components by scipy.ndimage.label's
# default structure; a GT component overlapping the prediction is a TP; a predicted
# component overlapping no GT is an FP; F1 = TP / (TP + (FP + FN) / 2)).
# --------------------------------------------------------------------------
def _organisers(gt, pred):
    from scipy import ndimage

    gt, pred = gt.astype(bool), pred.astype(bool)
    gl, ng = ndimage.label(gt)
    pl, npred = ndimage.label(pred)
    tp = sum(bool((pred & (gl == i)).any()) for i in range(1, ng + 1))
    fn = ng - tp
    fp = sum(not (gt & (pl == i)).any() for i in range(1, npred + 1))
    denom = gt.sum() + pred.sum()
    return {
        "dice": 1.0 if denom == 0 else 2 * (gt & pred).sum() / denom,
        "volume_difference": abs(int(pred.sum()) - int(gt.sum())),
        "simple_lesion_count": abs(npred - ng),
        "lesion_f1": 1.0 if tp + fp + fn == 0 else tp / (tp + (fp + fn) / 2),
    }


def test_atlas2_scores_match_the_organisers_definitions_on_random_masks():
    from clci_keras.evaluation.metrics import atlas2_scores

    rng = np.random.default_rng(0)
    for _ in range(20):
        gt = rng.random((8, 9, 10)) > 0.85
        pred = rng.random((8, 9, 10)) > 0.85
        got, ref = atlas2_scores(gt, pred), _organisers(gt, pred)
        assert got.keys() == ref.keys()
        for k in ref:
            assert got[k] == pytest.approx(ref[k]), k


def test_atlas2_components_touching_only_diagonally_are_separate():
    from clci_keras.evaluation.metrics import atlas2_scores

    gt = np.zeros((3, 3, 3), bool)
    gt[0, 0, 0] = gt[1, 1, 1] = True  # share only a corner: 2 lesions with 6-connectivity
    pred = np.zeros_like(gt)
    pred[0, 0, 0] = True
    s = atlas2_scores(gt, pred)
    assert s["simple_lesion_count"] == 1 and s["volume_difference"] == 1
    assert s["lesion_f1"] == pytest.approx(1 / (1 + 0.5))  # TP 1, FN 1
    assert s["dice"] == pytest.approx(2 / 3)
    assert s == pytest.approx(_organisers(gt, pred))
    full = atlas2_scores(gt, pred, connectivity=3)  # 26-connectivity: one lesion, found
    assert full["simple_lesion_count"] == 0 and full["lesion_f1"] == 1.0
    # the project's own lesion_f1 uses 26-connectivity
    assert segmentation_scores(gt, pred)["lesion_f1"] == 1.0


def test_atlas2_empty_cases_and_errors():
    from clci_keras.evaluation.metrics import atlas2_scores

    empty = np.zeros((4, 4, 4), bool)
    assert atlas2_scores(empty, empty) == {"dice": 1.0, "volume_difference": 0,
                                           "simple_lesion_count": 0, "lesion_f1": 1.0}
    one = empty.copy()
    one[1, 1, 1] = True
    assert atlas2_scores(one, empty)["lesion_f1"] == 0.0  # FN only
    assert atlas2_scores(empty, one)["lesion_f1"] == 0.0  # FP only
    assert atlas2_scores(empty, one)["dice"] == 0.0
    with pytest.raises(ValueError, match="connectivity=4"):
        atlas2_scores(one, one, connectivity=4)
    with pytest.raises(ValueError, match="shape"):
        atlas2_scores(one, one[:2])
