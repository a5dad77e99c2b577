"""Synthetic ATLAS-like generator: layouts, determinism, lesion properties."""
import csv
import os

import nibabel as nib
import numpy as np
import pytest

from clci_keras.data import synthetic
from clci_keras.data.constants import ATLAS_SHAPE, R11_CSV_NAME
from clci_keras.data.synthetic import generate_dataset, generate_subject


def test_r11_layout_matches_the_release(synthetic_r11_dir):
    with open(synthetic_r11_dir / R11_CSV_NAME, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["INDI Site ID", "INDI Subject ID", "Session"]
    body = rows[1:]
    assert len(body) == 4
    for site, sid, session, *_ in body:
        assert site.startswith("Site")
        assert not sid.startswith("0") and sid.isdigit()
        assert session == " t01"  # leading space, as the original generator expects
        # The original joins '0' + id and drops the first character of the session.
        folder = synthetic_r11_dir / site / ("0" + sid) / session[1:]
        names = sorted(os.listdir(folder))
        assert f"0{sid}_t1w_deface_stx.nii.gz" in names
        assert f"0{sid}_LesionSmooth_stx.nii.gz" in names
        # the original's file rules pick exactly one T1 and >= 1 mask
        assert sum(n.split("_")[-2] == "deface" for n in names) == 1
        assert sum(n.split("_")[1] == "LesionSmooth" for n in names) >= 1
    first = synthetic_r11_dir / body[0][0] / ("0" + body[0][1]) / "t01"
    assert (first / f"0{body[0][1]}_LesionSmooth_1_stx.nii.gz").is_file()  # subject 0 has two masks


def test_r11_images_have_release_grid_and_scale(synthetic_r11_dir):
    t1 = next(synthetic_r11_dir.glob("Site1/*/t01/*_t1w_deface_stx.nii.gz"))
    img = nib.load(t1)
    assert img.shape == ATLAS_SHAPE
    np.testing.assert_allclose(img.affine[:3, 3], [-98, -134, -72])
    v = np.asanyarray(img.dataobj) / 100.0  # what the original generator stores
    assert v.min() == 0.0
    assert 0.6 < np.percentile(v[v > 0], 99) < 1.3


def test_v2_bids_layout(synthetic_v2_dir):
    t1s = sorted(synthetic_v2_dir.glob("Training/R*/sub-r*s*/ses-1/anat/*_T1w.nii.gz"))
    assert len(t1s) == 3
    for t1 in t1s:
        sub = t1.parts[-4]
        assert t1.name == f"{sub}_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz"
        mask = t1.parent / f"{sub}_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz"
        assert mask.is_file()
        assert t1.parts[-5] == "R" + sub[5:8]


def test_generation_is_deterministic_per_seed():
    a = generate_subject(seed=5, index=2)
    b = generate_subject(seed=5, index=2)
    c = generate_subject(seed=6, index=2)
    np.testing.assert_array_equal(a.t1, b.t1)
    assert all(np.array_equal(m, n) for m, n in zip(a.masks, b.masks))
    assert not np.array_equal(a.t1, c.t1)


def test_dataset_files_are_deterministic(tmp_path):
    generate_dataset(tmp_path / "a", n_subjects=1, seed=3)
    generate_dataset(tmp_path / "b", n_subjects=1, seed=3)
    fa = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.nii.gz"))
    fb = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.nii.gz"))
    assert fa == fb and fa
    for rel in fa:
        x = np.asanyarray(nib.load(tmp_path / "a" / rel).dataobj)
        y = np.asanyarray(nib.load(tmp_path / "b" / rel).dataobj)
        np.testing.assert_array_equal(x, y)


def test_refuses_non_empty_output(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_dataset(tmp_path, n_subjects=1)
    with pytest.raises(ValueError, match="'r2'"):
        generate_dataset(tmp_path / "new", layout="r2", n_subjects=1)


def test_lesions_are_hypointense_separate_and_in_mca_territory():
    template, tissue, _, affine = synthetic._templates()
    s = generate_subject(seed=0, index=0)  # two lesions
    assert len(s.masks) == 2
    assert not np.any(s.masks[0] & s.masks[1])  # separate masks
    for m in s.masks:
        assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
        ijk = np.argwhere(m > 0).mean(axis=0)
        xyz = affine[:3, :3] @ ijk + affine[:3, 3]
        assert 10 <= abs(xyz[0]) <= 70  # lateral: MCA, not midline
        assert -70 <= xyz[1] <= 40 and -20 <= xyz[2] <= 60
        lesion = s.t1[m > 0].mean()
        brain = s.t1[(tissue > 0.9) & (m == 0)].mean()
        assert lesion < 0.6 * brain  # hypointense


@pytest.mark.parametrize("target", [400.0, 120_000.0])
def test_lesion_sizes_span_atlas_range(target):
    _, tissue, _, affine = synthetic._templates()
    rng = np.random.default_rng(0)
    img = np.ones(ATLAS_SHAPE, np.float32)
    centre = synthetic._pick_centre(rng, tissue, affine, side=1.0, kind="subcortical")
    mask = synthetic._paste_lesion(rng, img, tissue, centre, target, level=0.1)
    vol = int(mask.sum())
    assert target / 3 < vol < target * 1.5, vol  # < 1 cm^3 and > 100 cm^3 are reachable
    lo, hi = synthetic.LESION_VOLUME_RANGE
    assert lo < 1000 and hi > 100_000


def test_figure_is_written(tmp_path):
    out = synthetic.plot_synthetic_slices(str(tmp_path / "f.png"), n_subjects=2)
    assert os.path.getsize(out) > 5000


def test_cli_synth(tmp_path, capsys):
    from clci_keras.cli import main

    assert main(["synth", str(tmp_path / "s"), "--layout", "v2", "--subjects", "1", "--seed", "2", "--quiet"]) == 0
    assert "1 synthetic subjects" in capsys.readouterr().out
    assert len(list((tmp_path / "s").rglob("*_T1w.nii.gz"))) == 1
    assert main(["synth", str(tmp_path / "s"), "--subjects", "1", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
