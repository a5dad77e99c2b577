"""Tests of `predict --register` (native-space scans), ensembles/TTA/clean-up, QC outputs,
the intensity check and output-path errors of `clci-keras predict`.

Registration runs with a coarse schedule (4 mm working voxels, 50 + 20
iterations) to keep the suite fast; the round trip still holds to Dice 0.9.
The stand-in models are those of tests/test_predict.py (``test_threshold``:
lesion = scaled intensity > 1.5, so the expected mask is known).
"""
from __future__ import annotations

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest

from clci_keras.cli import main as cli_main
from clci_keras.data.constants import ATLAS_SHAPE
from clci_keras.data.synthetic import axis_rotation as _rot
from clci_keras.inference import (
    ATLAS_AFFINE,
    IntensityError,
    Registration,
    predict_volume,
    register_to_mni,
    remove_small_components,
    resolve_intensity,
)
from clci_keras.inference.predict import predict_atlas_volume
from clci_keras.inference.register import correlation, resample, template
from clci_keras.models import save_weights_legacy
from test_predict import _nifti, _phantom, _threshold_model  # noqa: F401  (registers the stand-ins)

FAST = ["--reg-resolution", "4", "--reg-iterations", "50,20"]
LESION_MNI = np.array([28.0, -12.0, 16.0])  # mm, right hemisphere white matter
LESION_R = 12.0


def _dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def native_case(tmp_path_factory):
    """MNI-space scan (template x 90, bright lesion) moved to a native grid by a known random affine.

    Returns (path, native image, native lesion, MNI lesion, true native->MNI matrix).
    """
    rng = np.random.default_rng(13)
    tpl, _ = template()
    ijk = np.indices(ATLAS_SHAPE, dtype=np.float32).reshape(3, -1).T
    world = ijk + ATLAS_AFFINE[:3, 3]
    lesion_mni = (np.linalg.norm(world - LESION_MNI, axis=1) <= LESION_R).reshape(ATLAS_SHAPE)
    mni = tpl * 90.0
    mni[lesion_mni] = 250.0
    a = np.eye(4)  # native world -> MNI world
    angles = rng.uniform(-15, 15, 3)
    a[:3, :3] = _rot(0, angles[0]) @ _rot(1, angles[1]) @ _rot(2, angles[2]) @ np.diag(rng.uniform(0.9, 1.1, 3))
    a[:3, 3] = rng.uniform(-10, 10, 3)
    zooms = np.array([1.2, 1.0, 1.3])  # other voxel size, PIR axis order
    perm = np.zeros((3, 3))
    perm[1, 0], perm[2, 1], perm[0, 2] = -1, -1, 1
    n = np.eye(4)
    n[:3, :3] = perm * zooms[None, :]
    shape = (190, 172, 150)
    n[:3, 3] = np.array([0.0, -18.0, 10.0]) - n[:3, :3] @ ((np.array(shape) - 1) / 2)
    native = resample(mni, ATLAS_AFFINE, a @ n, shape, order=1)
    native += rng.normal(0, 1.0, shape).astype(np.float32) * (native > 0)
    lesion_native = resample(lesion_mni.astype(np.float32), ATLAS_AFFINE, a @ n, shape, order=0) > 0.5
    img = _nifti(np.clip(native, 0, None), n, dtype=np.float32)
    assert "".join(nib.aff2axcodes(img.affine)) == "PIR"
    path = tmp_path_factory.mktemp("native") / "native_t1.nii.gz"
    nib.save(img, path)
    return path, nib.load(path), lesion_native, lesion_mni, a


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    save_weights_legacy(_threshold_model(), str(d / "threshold.h5"))
    return d / "threshold.h5"


def _run(args, capsys):
    rc = cli_main(["predict", *map(str, args)])
    return rc, capsys.readouterr()


def test_register_round_trip_native_mask_transform_qc_summary(native_case, weights, tmp_path, capsys):
    path, img, lesion_native, lesion_mni, a_true = native_case
    out = tmp_path / "out"
    rc, cap = _run([path, "-o", out, "--weights", weights, "--model", "test_threshold", "--register", "--prob",
                    *FAST], capsys)
    assert rc == 0, cap.err
    assert sorted(p.name for p in out.iterdir()) == [
        "native_t1_lesion_load.json", "native_t1_lesion_load.tsv", "native_t1_lesion_mask.nii.gz",
        "native_t1_lesion_prob.nii.gz", "native_t1_lesions.json", "native_t1_lesions.tsv", "native_t1_qc.png",
        "native_t1_to_mni152.json", "predict_summary.csv"]
    mask_img = nib.load(out / "native_t1_lesion_mask.nii.gz")
    assert mask_img.shape == img.shape and mask_img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(mask_img.affine, img.affine)
    assert int(mask_img.header["sform_code"]) == 4 and int(mask_img.header["qform_code"]) == 1
    assert nib.load(out / "native_t1_lesion_prob.nii.gz").shape == img.shape
    assert _dice(np.asanyarray(mask_img.dataobj), lesion_native) >= 0.9  # the predicted mask on the native grid
    with open(out / "native_t1_qc.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(out / "predict_summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "ok" and row["grid"] == "registered" and int(row["components"]) == 1
    # the lesion table: one component, its volume on the native grid, its centroid at the lesion's template place
    import pandas as pd

    (lesion,) = pd.read_csv(out / "native_t1_lesions.tsv", sep="\t").to_dict("records")
    assert lesion["volume_ml"] == pytest.approx(float(row["lesion_ml"]), rel=1e-3)
    ijk = np.argwhere(lesion_mni).mean(axis=0)
    expected = (ATLAS_AFFINE @ np.r_[ijk, 1.0])[:3]
    got = np.array([lesion["centroid_x_mm"], lesion["centroid_y_mm"], lesion["centroid_z_mm"]])
    assert np.linalg.norm(got - expected) < 4.0, (got, expected)
    assert float(row["registration_similarity"]) > 0.9 > float(row["similarity_before"])
    assert abs(float(row["lesion_ml"]) - lesion_native.sum() * 1.2 * 1.0 * 1.3 / 1000) < 0.1 * float(row["lesion_ml"])

    # The saved transform: the known lesion carried to MNI and back matches itself.
    reg = Registration.load(out / "native_t1_to_mni152.json")
    assert json.loads((out / "native_t1_to_mni152.json").read_text())["source"] == str(path)
    to_mni = reg.to_template(lesion_native.astype(np.float32), img.affine, order=0) > 0.5
    assert _dice(to_mni, lesion_mni) >= 0.9
    back = reg.to_native(to_mni.astype(np.float32), img.affine, img.shape, order=0) > 0.5
    assert _dice(back, lesion_native) >= 0.9
    # The registered image correlates better with the template than the unregistered (header-only) one.
    tpl, _ = template()
    head = tpl > 0.05
    data = np.asanyarray(img.dataobj)
    registered = reg.to_template(data, img.affine)
    unregistered = resample(data, img.affine, ATLAS_AFFINE, ATLAS_SHAPE)
    r_after, r_before = correlation(tpl, registered, head), correlation(tpl, unregistered, head)
    assert r_after > 0.7 and r_after > r_before + 0.2, (r_after, r_before)  # the bright lesion lowers both
    # The transform is close to the true one (mean error over the brain < 1 mm).
    pts = np.c_[np.argwhere(head)[::97] + ATLAS_AFFINE[:3, 3], np.ones(len(np.argwhere(head)[::97]))]
    err = np.linalg.norm((reg.mni_to_native @ pts.T - np.linalg.inv(a_true) @ pts.T)[:3], axis=0)
    assert err.mean() < 1.0, err.mean()

    # Reuse: --transform skips the registration and gives the same mask.
    out2 = tmp_path / "again"
    rc, cap = _run([path, "-o", out2, "--weights", weights, "--model", "test_threshold", "--transform",
                    out / "native_t1_to_mni152.json", "--no-qc"], capsys)
    assert rc == 0, cap.err
    np.testing.assert_array_equal(np.asanyarray(nib.load(out2 / "native_t1_lesion_mask.nii.gz").dataobj),
                                  np.asanyarray(mask_img.dataobj))


def test_nibabel_anatomical_registers_and_gets_a_mask_on_its_own_grid():
    path = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")
    img = nib.load(path)
    reg = register_to_mni(img, resolution=4, iterations=(50, 20))
    assert reg.similarity >= 0.5 and reg.source == path
    with pytest.raises(IntensityError, match="anatomical.nii: intensities are not on the scale.*--intensity v2"):
        predict_volume(_threshold_model(), img, register=reg)  # values up to 3e4: refused under r1.1
    mask = predict_volume(_threshold_model(), img, register=reg, intensity="v2")
    assert mask.shape == img.shape == (33, 41, 25)
    np.testing.assert_array_equal(mask.affine, img.affine)
    assert mask.get_data_dtype() == np.uint8


def test_failed_registration_is_reported_and_nothing_is_written(weights, tmp_path, capsys):
    src = tmp_path / "scans"
    src.mkdir()
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((50, 60, 40)).astype(np.float32) * 100, np.diag([3.0, 3, 3, 1])),
             src / "noise.nii.gz")
    nib.save(nib.Nifti1Image(np.full((40, 40, 40), 7.0, np.float32), np.diag([3.0, 3, 3, 1])), src / "constant.nii.gz")
    out = tmp_path / "out"
    rc, cap = _run([src, "-o", out, "--weights", weights, "--model", "test_threshold", "--register", *FAST], capsys)
    assert rc == 1
    assert f"{src / 'noise.nii.gz'}: registration to MNI152 failed" in cap.err
    assert f"{src / 'constant.nii.gz'}: empty volume" in cap.err
    assert sorted(p.name for p in out.iterdir()) == ["predict_summary.csv"]  # no mask, transform or QC
    with open(out / "predict_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["failed", "failed"]


def test_register_without_dipy_is_a_clear_error(monkeypatch, native_case, weights, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "dipy.align", None)  # import fails as if dipy were missing
    rc, cap = _run([native_case[0], "-o", tmp_path / "o", "--weights", weights, "--model", "test_threshold",
                    "--register"], capsys)
    assert rc == 2 and 'pip install -e ".[register]"' in cap.err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------
# Intensity (issue 14a)
# --------------------------------------------------------------------------
def test_scan_on_another_intensity_scale_is_refused_with_the_fix(weights, tmp_path, capsys):
    vol, lesion = _phantom(ATLAS_AFFINE, ATLAS_SHAPE)
    scan = tmp_path / "scaled.nii.gz"
    nib.save(_nifti(vol * 1e4, ATLAS_AFFINE, dtype=np.float32), scan)
    out = tmp_path / "out"
    rc, cap = _run([scan, "-o", out, "--weights", weights, "--model", "test_threshold"], capsys)
    assert rc == 1
    assert f"{scan}: intensities are not on the scale the weights were trained with" in cap.err
    assert "--intensity v2" in cap.err
    assert not (out / "scaled_lesion_mask.nii.gz").exists()
    rc, cap = _run([scan, "-o", out, "--weights", weights, "--model", "test_threshold", "--intensity", "v2"], capsys)
    assert rc == 0, cap.err
    mask = np.asanyarray(nib.load(out / "scaled_lesion_mask.nii.gz").dataobj)
    np.testing.assert_array_equal(mask, lesion.astype(np.uint8))  # head -> 1, lesion -> 3.1 after v2


def test_intensity_scheme_is_read_from_the_weights_record(tmp_path, monkeypatch):
    from clci_keras.models.manifest import add_to_manifest

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "m"
    run.mkdir(parents=True)
    w = run / "m_weights.h5"
    w.write_bytes(b"weights")
    assert resolve_intensity(str(w))[0] == "r1.1" and "assumed" in resolve_intensity(str(w))[1]
    add_to_manifest(tmp_path / "weights" / "manifest.json", w, "m-run",
                    training={"data": {"intensity_scheme": "v2"}})
    assert resolve_intensity(str(w)) == ("v2", f"manifest {tmp_path / 'weights' / 'manifest.json'} entry 'm-run'")
    (run / "result.json").write_text(json.dumps({"weights": "m_weights.h5", "data": {"intensity_scheme": "v2"}}))
    assert resolve_intensity(str(w))[1].startswith("training record")
    assert resolve_intensity(str(w), "r1.1") == ("r1.1", "given")
    assert resolve_intensity(str(tmp_path / "clcinet_atlas_traintest.h5"))[0] == "r1.1"  # catalogue: T1 / 100
    other = tmp_path / "other.h5"
    other.write_bytes(b"x")
    (tmp_path / "result.json").write_text(json.dumps({"weights": "other.h5", "data": {"intensity_scheme": "r1.1"}}))
    with pytest.raises(ValueError, match="different intensity schemes"):
        resolve_intensity([str(w), str(other)])


# --------------------------------------------------------------------------
# Ensembles, flip TTA, clean-up
# --------------------------------------------------------------------------
def test_ensemble_is_the_mean_and_flip_tta_mirrors(tmp_path, capsys, weights):
    import keras

    vol, lesion = _phantom(ATLAS_AFFINE, ATLAS_SHAPE)
    a = _threshold_model()
    b = _threshold_model()
    b.get_layer("output").set_weights([np.full((1, 1, 1, 1), 20.0, np.float32), np.full((1,), -25.0, np.float32)])
    pa, _ = predict_atlas_volume(a, vol)
    pb, _ = predict_atlas_volume(b, vol)
    pab, _ = predict_atlas_volume([a, b], vol)
    np.testing.assert_allclose(pab, (pa + pb) / 2, atol=1e-6)
    pf, _ = predict_atlas_volume(a, vol, tta="flip")
    mirrored, _ = predict_atlas_volume(a, vol[::-1].copy())
    np.testing.assert_allclose(pf, (pa + mirrored[::-1]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="tta"):
        predict_atlas_volume(a, vol, tta="rotate")
    # CLI: --ensemble with --tta flip, --save-probabilities and the clean-up
    scan = tmp_path / "s.nii.gz"
    vol2 = vol.copy()
    vol2[60:62, 150:152, 60:62] = 250.0  # an 8-voxel extra "lesion"
    nib.save(_nifti(vol2, ATLAS_AFFINE), scan)
    w2 = tmp_path / "b.h5"
    save_weights_legacy(b, str(w2))
    out = tmp_path / "out"
    rc, cap = _run([scan, "-o", out, "--ensemble", weights, w2, "--model", "test_threshold", "--tta", "flip",
                    "--save-probabilities", "--min-lesion-size", "20", "--no-qc"], capsys)
    assert rc == 0, cap.err
    assert "tta flip" in cap.out
    mask = np.asanyarray(nib.load(out / "s_lesion_mask.nii.gz").dataobj) > 0
    assert (out / "s_lesion_prob.nii.gz").exists()
    assert not mask[60:62, 150:152, 60:62].any() and _dice(mask, lesion) > 0.95
    keras.backend.clear_session()


def test_remove_small_components():
    m = np.zeros((20, 20, 20), bool)
    m[2:8, 2:8, 2:8] = True  # 216 voxels
    m[15, 15, 15] = True
    m[12:14, 12:14, 12] = True  # 4 voxels
    out, removed = remove_small_components(m, 5)
    assert removed == 2 and out.sum() == 216
    assert remove_small_components(m, 0)[1] == 0


# --------------------------------------------------------------------------
# Output paths (issue 14b)
# --------------------------------------------------------------------------
def test_output_problems_are_one_line_errors_with_exit_code_2(tmp_path, weights, capsys):
    vol, _ = _phantom(ATLAS_AFFINE, ATLAS_SHAPE)
    scan = tmp_path / "scan.nii.gz"
    nib.save(_nifti(vol, ATLAS_AFFINE), scan)
    # the output path is an existing folder, with --overwrite
    target = tmp_path / "taken.nii.gz"
    target.mkdir()
    rc, cap = _run([scan, "-o", target, "--weights", weights, "--model", "test_threshold", "--overwrite"], capsys)
    assert rc == 2 and cap.err.strip().count("\n") == 0
    assert cap.err.startswith("clci-keras predict: error: ") and str(target) in cap.err
    # a mask path inside the output folder that is a folder
    out = tmp_path / "out"
    (out / "scan_lesion_mask.nii.gz").mkdir(parents=True)
    rc, cap = _run([scan, "-o", out, "--weights", weights, "--model", "test_threshold", "--overwrite"], capsys)
    assert rc == 2 and cap.err.strip().count("\n") == 0 and "scan_lesion_mask.nii.gz is an existing folder" in cap.err
    # an output folder that cannot be created: its parent is a regular file
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, cap = _run([scan, "-o", blocker / "out", "--weights", weights, "--model", "test_threshold"], capsys)
    assert rc == 2 and cap.err.strip().count("\n") == 0
    assert f"cannot write to output folder {blocker / 'out'}" in cap.err


def test_read_only_output_folder_is_an_error(tmp_path, weights, capsys, monkeypatch):
    import tempfile

    vol, _ = _phantom(ATLAS_AFFINE, ATLAS_SHAPE)
    scan = tmp_path / "scan.nii.gz"
    nib.save(_nifti(vol, ATLAS_AFFINE), scan)
    out = tmp_path / "ro"
    out.mkdir()

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(out))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    rc, cap = _run([scan, "-o", out, "--weights", weights, "--model", "test_threshold"], capsys)
    assert rc == 2 and cap.err.strip() == f"clci-keras predict: error: cannot write to output folder {out}: " \
                                          "Permission denied"
    assert list(out.iterdir()) == []
