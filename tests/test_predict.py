"""Tests of whole-volume inference: `predict_volume` and `clci-keras predict`.

Most tests use two cheap stand-in models registered here (full CLCI-Net costs
~0.45 s per 224x176 slice on CPU): ``test_threshold``, whose output is a fixed
function of intensity (lesion = scaled intensity > 1.5), so that the expected
mask is known voxel by voxel, and ``test_tiny_conv``, a small random conv net
with batch norm used for the exactness and precision checks. The real
CLCI-Net class is built where no forward pass is needed (weights checks).
"""
from __future__ import annotations

import gzip
import os

import keras
import nibabel as nib
import numpy as np
import pytest

from clci_keras.cli import main as cli_main
from clci_keras.data.constants import ATLAS_SHAPE
from clci_keras.inference import (
    ATLAS_AFFINE,
    GridWarning,
    InputError,
    brain_slice_indices,
    build_inference_model,
    load_image,
    predict_volume,
    segment_image,
)
from clci_keras.models import register_model, save_weights_legacy
from clci_keras.models.weights import WeightsMismatchError

LESION_CENTER = np.array([24.0, -10.0, 12.0])  # world mm, inside the brain slices
LESION_RADIUS = 7.0
HEAD_VALUE, LESION_VALUE = 80.0, 250.0  # r1.1 scaling /100: 0.8 and 2.5; the stand-in's cut is 1.5


def _threshold_model(input_shape=(224, 176, 1), num_class=1, name="test_threshold"):
    """Probability sigmoid(40 * (x - 1.5)): > 0.5 exactly where the scaled intensity is > 1.5."""
    inputs = keras.Input(input_shape, name="image")
    outputs = keras.layers.Conv2D(
        num_class,
        1,
        activation="sigmoid",
        kernel_initializer=keras.initializers.Constant(40.0),
        bias_initializer=keras.initializers.Constant(-60.0),
        name="output",
    )(inputs)
    return keras.Model(inputs, outputs, name=name)


def _tiny_conv(input_shape=(224, 176, 1), num_class=1, name="test_tiny_conv"):
    """3x3 conv-BN-ReLU x2 and a 1x1 sigmoid head; seeded random weights."""
    init = lambda k: keras.initializers.HeNormal(seed=k)  # noqa: E731
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for k in range(2):
        x = keras.layers.Conv2D(8, 3, padding="same", kernel_initializer=init(k), name=f"conv{k}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{k}")(x)
        x = keras.layers.ReLU(name=f"relu{k}")(x)
    outputs = keras.layers.Conv2D(num_class, 1, activation="sigmoid", kernel_initializer=init(9), name="output")(x)
    return keras.Model(inputs, outputs, name=name)


register_model("test_threshold", _threshold_model, description="test stand-in", reference="tests")
register_model("test_tiny_conv", _tiny_conv, description="test stand-in", reference="tests")


# --------------------------------------------------------------------------
# Phantoms
# --------------------------------------------------------------------------
def _world(affine, shape):
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    a = np.asarray(affine, dtype=np.float32)
    return (a[:3, :3] @ ijk + a[:3, 3:4]).reshape((3, *shape))


def _phantom(affine, shape, seed=None):
    """Head ellipsoid (80) with a bright spherical lesion (250) at LESION_CENTER, in world space."""
    x, y, z = _world(affine, shape)
    head = (x / 70) ** 2 + ((y + 18) / 95) ** 2 + ((z - 10) / 80) ** 2 <= 1
    lesion = (x - LESION_CENTER[0]) ** 2 + (y - LESION_CENTER[1]) ** 2 + (z - LESION_CENTER[2]) ** 2 <= LESION_RADIUS**2
    vol = np.where(head, HEAD_VALUE, 0.0).astype(np.float32)
    if seed is not None:  # texture for the conv stand-in
        rng = np.random.default_rng(seed)
        vol[head] *= rng.uniform(0.6, 1.4, size=int(head.sum())).astype(np.float32)
    vol[lesion] = LESION_VALUE
    return vol, lesion


def _nifti(vol, affine, dtype=np.int16):
    img = nib.Nifti1Image(np.asarray(vol, dtype=dtype), affine)
    img.set_qform(affine, code=1)  # scanner
    img.set_sform(affine, code=4)  # MNI
    img.header.set_xyzt_units("mm")
    return img


def _flip_x_affine():
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = ATLAS_SHAPE[0] - 1
    return ATLAS_AFFINE @ flip


def _oblique_affine():
    from clci_keras.data.synthetic import axis_rotation as rot

    a = np.eye(4)
    a[:3, :3] = rot(2, 14) @ rot(0, -9) @ np.diag([1.3, 1.2, 1.4])
    shape = (150, 180, 130)
    center = a[:3, :3] @ ((np.array(shape) - 1) / 2)
    a[:3, 3] = np.array([0.0, -18.0, 10.0]) - center
    return a, shape


def _world_of(mask, affine):
    ijk = np.argwhere(np.asarray(mask) > 0)
    return ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


@pytest.fixture(scope="module")
def threshold_model():
    return _threshold_model()


@pytest.fixture(scope="module")
def tiny_conv():
    model = _tiny_conv()
    # Non-trivial batch-norm statistics so the BN layers matter.
    rng = np.random.default_rng(0)
    for k in range(2):
        bn = model.get_layer(f"bn{k}")
        bn.set_weights(
            [rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.2, 8), rng.normal(0, 0.3, 8), rng.uniform(0.5, 2, 8)]
        )
    return model


@pytest.fixture(scope="module")
def ras_case():
    vol, lesion = _phantom(ATLAS_AFFINE, ATLAS_SHAPE)
    return _nifti(vol, ATLAS_AFFINE), lesion


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, tiny_conv):
    d = tmp_path_factory.mktemp("weights")
    save_weights_legacy(_threshold_model(), str(d / "threshold.h5"))
    save_weights_legacy(tiny_conv, str(d / "tiny_conv.h5"))
    (d / "garbage.h5").write_bytes(b"this is not an HDF5 file\n" * 10)
    return d


# --------------------------------------------------------------------------
# Grid and round trips
# --------------------------------------------------------------------------
def test_brain_slices_come_from_the_mni152_brain_mask():
    from nilearn.datasets import load_mni152_brain_mask

    mask_img = load_mni152_brain_mask(resolution=1)
    assert mask_img.shape == ATLAS_SHAPE
    np.testing.assert_allclose(mask_img.affine, ATLAS_AFFINE)
    idx = brain_slice_indices()
    assert len(idx) == 155
    z_any = np.asanyarray(mask_img.dataobj).any(axis=(0, 1))
    assert list(idx) == list(np.flatnonzero(z_any))


def test_ras_on_atlas_grid_takes_training_path(threshold_model, ras_case, tmp_path):
    img, lesion = ras_case
    seg = segment_image(threshold_model, img, return_probabilities=True)
    assert seg.grid == "atlas" and seg.slices_computed == 155 and not seg.notes
    mask = np.asanyarray(seg.mask.dataobj)
    assert mask.dtype == np.uint8 and mask.shape == img.shape
    np.testing.assert_array_equal(mask, lesion.astype(np.uint8))  # voxel-exact
    # Written and read back: same affine, shape, sform/qform and their codes, no scaling.
    nib.save(seg.mask, tmp_path / "m.nii.gz")
    nib.save(seg.probabilities, tmp_path / "p.nii.gz")
    for name, dtype in (("m.nii.gz", np.uint8), ("p.nii.gz", np.float32)):
        back = nib.load(tmp_path / name)
        assert back.get_data_dtype() == dtype and back.shape == img.shape
        np.testing.assert_array_equal(back.affine, img.affine)
        np.testing.assert_array_equal(back.header.get_sform(), img.header.get_sform())
        np.testing.assert_array_equal(back.header.get_qform(), img.header.get_qform())
        assert int(back.header["sform_code"]) == 4 and int(back.header["qform_code"]) == 1
        assert back.dataobj.slope == 1 and back.dataobj.inter == 0
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "m.nii.gz").dataobj), mask)
    prob = np.asanyarray(nib.load(tmp_path / "p.nii.gz").dataobj)
    assert prob.min() >= 0 and prob.max() <= 1
    np.testing.assert_array_equal(prob > 0.5, mask > 0)


@pytest.mark.parametrize("codes", ["LAS", "PIR"])
def test_reoriented_atlas_grid_is_lossless(threshold_model, ras_case, codes):
    from nibabel import orientations as no

    img, lesion = ras_case
    ornt = no.ornt_transform(no.axcodes2ornt("RAS"), no.axcodes2ornt(codes))
    data = no.apply_orientation(np.asanyarray(img.dataobj), ornt)
    affine = ATLAS_AFFINE @ no.inv_ornt_aff(ornt, ATLAS_SHAPE)
    assert "".join(nib.aff2axcodes(affine)) == codes
    other = _nifti(data, affine)
    seg = segment_image(threshold_model, other)
    assert seg.grid == "reoriented" and seg.slices_computed == 155
    np.testing.assert_array_equal(seg.mask.affine, affine)
    mask = np.asanyarray(seg.mask.dataobj)
    assert mask.shape == data.shape
    np.testing.assert_array_equal(mask, no.apply_orientation(lesion.astype(np.uint8), ornt))
    # Same lesion voxels in world coordinates as the RAS prediction.
    world = _world_of(mask, affine)
    ref = _world_of(lesion, ATLAS_AFFINE)
    np.testing.assert_array_equal(world[np.lexsort(world.T)], ref[np.lexsort(ref.T)])


def test_oblique_grid_is_resampled_and_mapped_back(threshold_model, tmp_path):
    affine, shape = _oblique_affine()
    vol, lesion = _phantom(affine, shape)
    img = _nifti(vol, affine, dtype=np.float32)
    with pytest.warns(GridWarning, match="not on the ATLAS MNI152 1 mm grid.*register"):
        mask_img, prob_img = predict_volume(threshold_model, img, return_probabilities=True)
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)  # stored as float32 in the header
    affine = img.affine
    np.testing.assert_array_equal(mask_img.affine, affine)
    np.testing.assert_array_equal(prob_img.affine, affine)
    assert mask_img.shape == shape and prob_img.shape == shape
    assert int(mask_img.header["sform_code"]) == 4 and int(mask_img.header["qform_code"]) == 1
    mask = np.asanyarray(mask_img.dataobj) > 0
    dice = 2 * (mask & lesion).sum() / (mask.sum() + lesion.sum())
    assert dice > 0.85, dice
    centroid = _world_of(mask, affine).mean(axis=0)
    assert np.linalg.norm(centroid - LESION_CENTER) < 1.0, centroid
    # Nothing outside the lesion, and the file is written intact.
    assert not (mask & ~lesion).sum() > 0.2 * lesion.sum()
    nib.save(mask_img, tmp_path / "m.nii.gz")
    np.testing.assert_array_equal(nib.load(tmp_path / "m.nii.gz").affine, affine)


# --------------------------------------------------------------------------
# Skipping slices outside the brain
# --------------------------------------------------------------------------
def test_brain_slices_only_equals_all_slices_on_brain_slices(tiny_conv):
    vol, _ = _phantom(ATLAS_AFFINE, ATLAS_SHAPE, seed=1)
    img = _nifti(vol, ATLAS_AFFINE, dtype=np.float32)
    fast = segment_image(tiny_conv, img, batch_size=4, return_probabilities=True)
    full = segment_image(tiny_conv, img, batch_size=4, return_probabilities=True, skip_empty_slices=False)
    assert (fast.slices_computed, full.slices_computed) == (155, 189)
    brain = np.asarray(brain_slice_indices())
    other = np.setdiff1d(np.arange(189), brain)
    p_fast = np.asanyarray(fast.probabilities.dataobj)
    p_full = np.asanyarray(full.probabilities.dataobj)
    m_fast = np.asanyarray(fast.mask.dataobj)
    m_full = np.asanyarray(full.mask.dataobj)
    # The stand-in predicts lesion in parts of the head, so equality is not trivial,
    # and computing the slices above the brain gives non-zero output there.
    assert m_full[:, :, brain].sum() > 5000 and m_full[:, :, other].sum() > 0
    assert (p_full[10:186, 5:229][:, :, other] > 0).mean() > 0.99  # inside the 224x176 crop
    np.testing.assert_array_equal(m_fast[:, :, brain], m_full[:, :, brain])
    np.testing.assert_array_equal(p_fast[:, :, brain], p_full[:, :, brain])  # bit for bit
    assert not m_fast[:, :, other].any() and not p_fast[:, :, other].any()


# --------------------------------------------------------------------------
# Bad inputs (library)
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, match",
    [
        (np.ones((64, 64), np.float32), "expected a 3D T1 volume, got 2D"),
        (np.ones((16, 16, 16, 3), np.float32), "expected a 3D T1 volume, got 4D data .*3 volumes"),
        (np.where(np.arange(4096).reshape(16, 16, 16) == 5, np.nan, 1.0).astype(np.float32), "1 voxels are NaN or inf"),
        (np.where(np.arange(4096).reshape(16, 16, 16) < 3, np.inf, 1.0).astype(np.float32), "3 voxels are NaN or inf"),
        (np.zeros((16, 16, 16), np.float32), "empty volume"),
    ],
    ids=["2d", "4d", "nan", "inf", "empty"],
)
def test_bad_volumes_are_rejected_with_the_file_name(threshold_model, tmp_path, data, match):
    path = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(InputError, match=f"bad.nii.gz: {match}"):
        load_image(path)
    with pytest.raises(InputError, match=match):
        predict_volume(threshold_model, nib.load(path))


def test_unreadable_files_are_rejected_with_the_file_name(ras_case, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    with pytest.raises(InputError, match="notes.txt: not a readable NIfTI file"):
        load_image(text)
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(gzip.compress(b"\0" * 100))
    with pytest.raises(InputError, match="fake.nii.gz: not a readable NIfTI"):
        load_image(fake)
    good = tmp_path / "good.nii.gz"
    nib.save(ras_case[0], good)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(InputError, match="truncated.nii.gz: .*truncated or corrupt"):
        load_image(truncated)
    with pytest.raises(InputError, match="missing.nii.gz: file not found"):
        load_image(tmp_path / "missing.nii.gz")


# --------------------------------------------------------------------------
# Weights and precision
# --------------------------------------------------------------------------
def test_weights_of_another_architecture_are_rejected(weights_dir):
    path = str(weights_dir / "tiny_conv.h5")
    with pytest.raises(WeightsMismatchError, match=r"tiny_conv.h5: cannot load these weights into model 'clci_net'"):
        build_inference_model("clci_net", path)  # the real CLCI-Net class, no forward pass
    with pytest.raises(WeightsMismatchError, match=r"tiny_conv.h5: .*'test_threshold'"):
        build_inference_model("test_threshold", path)
    with pytest.raises(WeightsMismatchError, match="garbage.h5: cannot load"):
        build_inference_model("test_threshold", str(weights_dir / "garbage.h5"))
    with pytest.raises(WeightsMismatchError, match="nothere.h5: cannot load"):
        build_inference_model("test_threshold", str(weights_dir / "nothere.h5"))


def test_bf16_model_loads_the_same_weights_and_agrees(tiny_conv, weights_dir):
    path = str(weights_dir / "tiny_conv.h5")
    plain = build_inference_model("test_tiny_conv", path, precision="bf16", optimize=False)
    assert plain.dtype_policy.name == "mixed_bfloat16" and plain.get_layer("conv0").kernel.dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # global policy restored
    for a, b in zip(plain.get_weights(), tiny_conv.get_weights()):
        np.testing.assert_array_equal(a, b)
    folded = build_inference_model("test_tiny_conv", path, precision="bf16")  # BN folded for bf16
    assert isinstance(folded.get_layer("bn0"), keras.layers.Identity)
    assert folded.get_layer("conv0").compute_dtype == "bfloat16"
    vol, _ = _phantom(ATLAS_AFFINE, ATLAS_SHAPE, seed=2)
    img = _nifti(vol, ATLAS_AFFINE, dtype=np.float32)
    m32 = np.asanyarray(predict_volume(tiny_conv, img).dataobj) > 0
    assert m32.sum() > 10000
    for model in (plain, folded):
        m16 = np.asanyarray(predict_volume(model, img).dataobj) > 0
        dice = 2 * (m32 & m16).sum() / (m32.sum() + m16.sum())
        assert dice > 0.98, dice


def test_optimized_clci_net_gives_the_same_numbers():
    from clci_keras.inference import ZeroStateConvLSTM2D, optimize_for_inference
    from clci_keras.models import build_model

    model = build_model("clci_net", input_shape=(32, 48, 1))
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained-like BN statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 2, n)])
    fast = optimize_for_inference(model)
    lstm = [l for l in fast.layers if isinstance(l, keras.layers.ConvLSTM2D)]
    assert len(lstm) == 4 and all(type(l) is ZeroStateConvLSTM2D for l in lstm)
    assert [l.name for l in fast.layers] == [l.name for l in model.layers]
    x = rng.random((3, 32, 48, 1), dtype=np.float32)
    ref = model.predict_on_batch(x)
    np.testing.assert_array_equal(fast.predict_on_batch(x), ref)  # exact: only zero terms skipped
    folded = optimize_for_inference(model, fold_batch_norm=True)
    assert sum(isinstance(l, keras.layers.Identity) for l in folded.layers) == 50
    np.testing.assert_allclose(folded.predict_on_batch(x), ref, atol=2e-5)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def _save(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def test_cli_batch_continues_past_bad_files_and_reports_all(ras_case, weights_dir, tmp_path, capsys):
    src = tmp_path / "scans"
    img, lesion = ras_case
    _save(img, src / "good1.nii.gz")
    _save(_nifti(np.asanyarray(img.dataobj)[::-1], _flip_x_affine()), src / "sub" / "good2_las.nii")
    (src / "notnifti.nii.gz").write_text("hello\n")
    good = (src / "good1.nii.gz").read_bytes()
    (src / "truncated.nii.gz").write_bytes(good[: len(good) // 3])
    _save(nib.Nifti1Image(np.ones((32, 32), np.float32), np.eye(4)), src / "flat2d.nii.gz")
    _save(nib.Nifti1Image(np.ones((8, 8, 8, 2), np.float32), np.eye(4)), src / "series4d.nii.gz")
    nan = np.ones((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    _save(nib.Nifti1Image(nan, np.eye(4)), src / "nan.nii.gz")
    _save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), src / "empty.nii.gz")
    _save(nib.Nifti1Image(lesion.astype(np.uint8), ATLAS_AFFINE), src / "good1_lesion_mask.nii.gz")  # skipped
    out = tmp_path / "out"
    rc = cli_main(["predict", str(src), "-o", str(out), "--weights", str(weights_dir / "threshold.h5"),
                   "--model", "test_threshold", "--prob"])
    captured = capsys.readouterr()
    assert rc == 1
    summary = captured.err[captured.err.index("6 of 8 input(s) failed"):]
    for name in ("notnifti.nii.gz", "truncated.nii.gz", "flat2d.nii.gz", "series4d.nii.gz", "nan.nii.gz", "empty.nii.gz"):
        assert str(src / name) in summary
    assert "segmented 2 of 8" in captured.out
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    tables = ["lesion_load.json", "lesion_load.tsv", "lesion_mask.nii.gz", "lesion_prob.nii.gz", "lesions.json",
              "lesions.tsv", "qc.png"]
    assert written == [f"good1_{t}" for t in tables] + ["predict_summary.csv", "sub"] + [
        f"sub/good2_las_{t}" for t in tables]  # nothing for the bad inputs, no temporary files
    import csv

    with open(out / "predict_summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and sum(r["status"] == "failed" for r in rows) == 6
    good = next(r for r in rows if r["input"].endswith("good1.nii.gz"))
    assert good["status"] == "ok" and int(good["components"]) == 1
    assert abs(float(good["lesion_ml"]) - lesion.sum() / 1000) < 1e-3
    m1 = nib.load(out / "good1_lesion_mask.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(m1.dataobj), lesion.astype(np.uint8))
    m2 = nib.load(out / "sub" / "good2_las_lesion_mask.nii.gz")
    np.testing.assert_array_equal(m2.affine, _flip_x_affine())
    np.testing.assert_array_equal(np.asanyarray(m2.dataobj), lesion[::-1].astype(np.uint8))
    # Existing outputs are kept unless --overwrite.
    rc = cli_main(["predict", str(src / "good1.nii.gz"), "-o", str(out), "--weights",
                   str(weights_dir / "threshold.h5"), "--model", "test_threshold"])
    assert rc == 1 and "exists (pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("weights, match", [
    ("garbage.h5", "garbage.h5: cannot load these weights"),
    ("tiny_conv.h5", "tiny_conv.h5: cannot load these weights into model 'test_threshold'"),
    ("nothere.h5", "nothere.h5: cannot load"),
])
def test_cli_bad_weights_stop_before_any_output(ras_case, weights_dir, tmp_path, capsys, weights, match):
    scan = _save(ras_case[0], tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    rc = cli_main(["predict", str(scan), "-o", str(out), "--weights", str(weights_dir / weights),
                   "--model", "test_threshold"])
    assert rc == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_cli_atlas_trees_single_file_output_and_all_slices(tmp_path, weights_dir, capsys):
    from clci_keras.data.synthetic import generate_dataset

    r11, v2 = tmp_path / "r11", tmp_path / "v2"
    generate_dataset(str(r11), layout="r1.1", n_subjects=2, seed=0)
    generate_dataset(str(v2), layout="v2", n_subjects=1, seed=0)
    out = tmp_path / "out"
    rc = cli_main(["predict", str(r11), str(v2), "-o", str(out), "--weights", str(weights_dir / "tiny_conv.h5"),
                   "--model", "test_tiny_conv", "--intensity", "v2", "--batch-size", "8", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.nii.gz"))
    assert written == [
        "Site1/031000/t01/031000_t1w_deface_stx_lesion_mask.nii.gz",
        "Site2/031001/t01/031001_t1w_deface_stx_lesion_mask.nii.gz",
        "Training/R001/sub-r001s001/ses-1/anat/sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w_lesion_mask.nii.gz",
    ]  # T1 images only, lesion masks skipped
    # One input file: OUT can be the mask path; --all-slices computes slices outside the brain too.
    t1 = next(r11.rglob("*_t1w_deface_stx.nii.gz"))
    target = tmp_path / "single" / "mask.nii.gz"
    rc = cli_main(["predict", str(t1), "-o", str(target), "--weights", str(weights_dir / "tiny_conv.h5"),
                   "--model", "test_tiny_conv", "--all-slices", "--prob"])
    assert rc == 0
    assert "189 slices" in capsys.readouterr().out
    assert sorted(p.name for p in target.parent.iterdir()) == [
        "mask.nii.gz", "mask_lesion_load.json", "mask_lesion_load.tsv", "mask_lesions.json", "mask_lesions.tsv",
        "mask_prob.nii.gz", "mask_qc.png", "predict_summary.csv"]
    ref = nib.load(t1)
    res = nib.load(target)
    assert res.shape == ref.shape and res.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(res.affine, ref.affine)
    assert nib.load(target.parent / "mask_prob.nii.gz").get_data_dtype() == np.float32


def test_top_level_export():
    import clci_keras

    assert clci_keras.predict_volume is predict_volume


@pytest.mark.parametrize("extra, match", [
    (["--threshold", "1.5"], "--threshold must lie in [0, 1), got 1.5"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
])
def test_cli_rejects_bad_arguments(tmp_path, capsys, extra, match):
    rc = cli_main(["predict", str(tmp_path), "-o", str(tmp_path / "out"), "--weights", "w.h5", *extra])
    assert rc == 2 and match in capsys.readouterr().err


def test_cli_reports_missing_inputs(tmp_path, capsys, weights_dir):
    rc = cli_main(["predict", str(tmp_path / "nothing.nii.gz"), str(tmp_path), "-o", str(tmp_path / "out"),
                   "--weights", str(weights_dir / "threshold.h5"), "--model", "test_threshold"])
    err = capsys.readouterr().err
    assert rc == 2 and "nothing.nii.gz: no such file or folder" in err
    assert "contains no NIfTI T1 image" in err and "no input to segment" in err


def test_progress_in_a_log_has_no_redraws(threshold_model, ras_case, capfd):
    """predict's progress off a terminal (captured stderr): plain lines, no carriage returns or ANSI."""
    img, _ = ras_case
    capfd.readouterr()
    segment_image(threshold_model, img, progress=True)
    err = capfd.readouterr().err
    assert "predicting: 155/155 slice (100%)" in err
    assert "\r" not in err and "\x1b[" not in err


# --------------------------------------------------------------------------
# Re-running a batch (issue 24): --continue, the merged summary, links, one run per folder
# --------------------------------------------------------------------------
def _summary_rows(out):
    import csv

    with open(out / "predict_summary.csv") as f:
        return {os.path.basename(r["input"]): r for r in csv.DictReader(f)}


def test_continue_redoes_only_unfinished_inputs_and_the_summary_keeps_earlier_rows(ras_case, weights_dir, tmp_path,
                                                                                 capsys):
    src, out = tmp_path / "scans", tmp_path / "out"
    img, _ = ras_case
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz"):
        _save(img, src / name)
    args = ["--weights", str(weights_dir / "threshold.h5"), "--model", "test_threshold"]
    assert cli_main(["predict", str(src / "a.nii.gz"), "-o", str(out), *args]) == 0
    assert set(_summary_rows(out)) == {"a.nii.gz"}
    # A batch over the folder refuses to replace a's outputs, and a's row stays as it was.
    assert cli_main(["predict", str(src), "-o", str(out), *args]) == 1
    assert "a_lesion_mask.nii.gz exists" in capsys.readouterr().err
    rows = _summary_rows(out)
    assert set(rows) == {"a.nii.gz", "b.nii.gz", "c.nii.gz"} and {r["status"] for r in rows.values()} == {"ok"}
    # An interrupted run: c's QC picture never written, b's mask corrupt.
    os.remove(out / "c_qc.png")
    (out / "b_lesion_mask.nii.gz").write_bytes(b"not a NIfTI")
    before = (out / "a_lesion_mask.nii.gz").stat().st_mtime_ns
    assert cli_main(["predict", str(src), "-o", str(out), "--continue", *args]) == 0
    printed = capsys.readouterr().out
    assert "a.nii.gz: finished earlier, skipped" in printed and "segmented 2 of 3 input(s)" in printed
    assert (out / "a_lesion_mask.nii.gz").stat().st_mtime_ns == before
    assert nib.load(out / "b_lesion_mask.nii.gz").shape == ATLAS_SHAPE and (out / "c_qc.png").exists()
    assert {r["status"] for r in _summary_rows(out).values()} == {"ok"} and len(_summary_rows(out)) == 3
    with pytest.raises(SystemExit) as e:
        cli_main(["predict", str(src), "-o", str(out), "--continue", "--overwrite", *args])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_linked_folders_are_followed_once_and_a_link_loop_ends(ras_case, weights_dir, tmp_path):
    src, elsewhere, out = tmp_path / "scans", tmp_path / "elsewhere" / "site2", tmp_path / "out"
    img, _ = ras_case
    _save(img, src / "site1" / "a.nii.gz")
    _save(img, elsewhere / "b.nii.gz")
    os.symlink(elsewhere, src / "site2")
    os.symlink(src, src / "site1" / "loop")  # a loop back to the top
    assert cli_main(["predict", str(src), "-o", str(out), "--weights", str(weights_dir / "threshold.h5"),
                     "--model", "test_threshold", "--no-qc"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.nii.gz")) == [
        "site1/a_lesion_mask.nii.gz", "site2/b_lesion_mask.nii.gz"]


def test_a_second_predict_into_a_folder_in_use_fails_at_once_naming_the_process(ras_case, weights_dir, tmp_path,
                                                                              capsys):
    from clci_keras.fileio import exclusive

    src, out = tmp_path / "a.nii.gz", tmp_path / "out"
    _save(ras_case[0], src)
    with exclusive(out, inside=True):  # as a first run holds it
        rc = cli_main(["predict", str(src), "-o", str(out), "--weights", str(weights_dir / "threshold.h5"),
                       "--model", "test_threshold"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"in use by another run (process {os.getpid()}" in err[0]
    assert not list(out.glob("*.nii.gz"))
