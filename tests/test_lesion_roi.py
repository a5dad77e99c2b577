"""clci_keras.bids.lesion_roi: the lesion mask fMRIPrep/sMRIPrep mask out of normalization (no Keras)."""
import json
import os
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from clci_keras.bids.layout import Scan, parse_entities
from clci_keras.bids.lesion_roi import (BIDSIGNORE_LINE, copy_dataset_skeleton, ensure_bidsignore, lesion_roi_name,
                                        lesion_roi_path, write_lesion_roi)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The synthetic raw dataset without its deliberately truncated sub-04, and its T1w scans."""
    from clci_keras.bids.synthetic import write_synthetic_bids

    root = tmp_path_factory.mktemp("lesion_roi") / "ds"
    write_synthetic_bids(str(root), seed=0)
    shutil.rmtree(root / "sub-04")
    scans = {}
    for path in sorted(root.rglob("*_T1w.nii.gz")):
        rel = os.path.relpath(path, root)
        scans[rel] = Scan(str(path), rel, parse_entities(path))
    return root, scans


def _scan(raw, name):
    return next(s for rel, s in raw[1].items() if rel.endswith(name))


def _mask_for(scan, offset=0):
    """A binary mask made from the T1w's header (a cube of ones)."""
    t1 = nib.load(scan.path)
    data = np.zeros(t1.shape[:3], np.uint8)
    c = [s // 2 + offset for s in t1.shape[:3]]
    data[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 1
    return nib.Nifti1Image(data, t1.affine, t1.header)


def test_names_with_and_without_session():
    assert lesion_roi_name("01") == "sub-01_label-lesion_roi.nii.gz"
    assert lesion_roi_name("sub-01", "ses-2") == "sub-01_ses-2_label-lesion_roi.nii.gz"
    assert (lesion_roi_name("01", session="pre", run="02", acq="mp")
            == "sub-01_ses-pre_acq-mp_run-02_label-lesion_roi.nii.gz")  # BIDS order, not the call's
    with pytest.raises(ValueError, match="space"):
        lesion_roi_name("01", space="MNI")


def test_bidsignore_keeps_its_lines_and_adds_fmriprep_s_line_once(tmp_path):
    roi = str(tmp_path / "sub-01" / "anat" / "sub-01_label-lesion_roi.nii.gz")
    (tmp_path / ".bidsignore").write_text("*.html")
    assert ensure_bidsignore(tmp_path, roi) == BIDSIGNORE_LINE
    assert ensure_bidsignore(tmp_path, roi) is None
    assert (tmp_path / ".bidsignore").read_text() == "*.html\n" + BIDSIGNORE_LINE + "\n"
    (tmp_path / ".bidsignore").write_text("# masks\n**/*_roi.nii.gz\n")
    assert ensure_bidsignore(tmp_path, roi) is None


def test_path_is_beside_the_t1w_in_the_raw_dataset_or_a_copy(raw, tmp_path):
    root, _ = raw
    s2, s3 = _scan(raw, "sub-02_T1w.nii.gz"), _scan(raw, "sub-03_ses-2_T1w.nii.gz")
    assert lesion_roi_path(root, s2) == str(root / "sub-02" / "anat" / "sub-02_label-lesion_roi.nii.gz")
    assert lesion_roi_path(tmp_path / "copy", s3) == str(
        tmp_path / "copy" / "sub-03" / "ses-2" / "anat" / "sub-03_ses-2_label-lesion_roi.nii.gz")


def test_written_mask_is_binary_uint8_on_the_t1w_grid_and_never_overwritten(raw, tmp_path):
    s3 = _scan(raw, "sub-03_ses-2_T1w.nii.gz")
    dest = copy_dataset_skeleton(raw[0], tmp_path / "rois")
    assert json.loads((tmp_path / "rois" / "dataset_description.json").read_text())["DatasetType"] == "raw"
    mask = _mask_for(s3)
    mask.set_data_dtype(np.float32)  # a float mask of 0/1 is stored as uint8
    path, written, message = write_lesion_roi(mask, s3, dest)
    assert written and path == lesion_roi_path(dest, s3) and path in message
    out, t1 = nib.load(path), nib.load(s3.path)
    assert out.get_data_dtype() == np.uint8 and out.shape == t1.shape[:3]
    np.testing.assert_allclose(out.affine, t1.affine, atol=1e-5)
    assert set(np.unique(np.asanyarray(out.dataobj))) == {0, 1}
    assert int(np.asanyarray(out.dataobj).sum()) == 216
    assert BIDSIGNORE_LINE in (tmp_path / "rois" / ".bidsignore").read_text().splitlines()

    before = open(path, "rb").read()
    path2, written, message = write_lesion_roi(_mask_for(s3, offset=5), s3, dest)
    assert (path2, written) == (path, False) and message.startswith(path) and "\n" not in message
    assert open(path, "rb").read() == before
    # another *_roi of the same participant/session (a hand-drawn mask) also blocks the write
    s2 = _scan(raw, "sub-02_T1w.nii.gz")
    hand = tmp_path / "rois" / "sub-02" / "anat" / "sub-02_label-manual_roi.nii"
    hand.parent.mkdir(parents=True)
    nib.save(_mask_for(s2), str(hand))
    _, written, message = write_lesion_roi(_mask_for(s2), s2, dest)
    assert not written and str(hand) in message and not os.path.exists(lesion_roi_path(dest, s2))


def test_mask_on_another_grid_or_not_binary_is_refused_naming_both_files(raw, tmp_path):
    s2, s3 = _scan(raw, "sub-02_T1w.nii.gz"), _scan(raw, "sub-03_ses-1_T1w.nii.gz")
    other = tmp_path / "other_mask.nii.gz"
    nib.save(_mask_for(s2), str(other))  # sub-02's grid, given for sub-03
    with pytest.raises(ValueError) as e:
        write_lesion_roi(str(other), s3, tmp_path / "out")
    assert str(other) in str(e.value) and s3.path in str(e.value)
    shifted = _mask_for(s3)
    affine = shifted.affine.copy()
    affine[0, 3] += 2.0  # the T1w's grid moved by 2 mm
    shifted = nib.Nifti1Image(np.asanyarray(shifted.dataobj), affine, shifted.header)
    nib.save(shifted, str(tmp_path / "shifted.nii.gz"))
    with pytest.raises(ValueError, match="affine differs") as e:
        write_lesion_roi(str(tmp_path / "shifted.nii.gz"), s3, tmp_path / "out")
    assert s3.path in str(e.value)
    prob = _mask_for(s3)
    prob = nib.Nifti1Image(np.asanyarray(prob.dataobj) * np.float32(0.7), prob.affine, prob.header)
    with pytest.raises(ValueError, match="only 0 and 1"):
        write_lesion_roi(prob, s3, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pybids_finds_the_roi_as_the_nipreps_query_does(raw, tmp_path):
    """niworkflows' collect_data: datatype anat, suffix roi, .nii/.nii.gz, subject, session."""
    bids = pytest.importorskip("bids")
    root = tmp_path / "ds"
    shutil.copytree(raw[0], root)
    scans = {rel: Scan(str(root / rel), rel, s.entities) for rel, s in raw[1].items()}
    for scan in scans.values():
        assert write_lesion_roi(_mask_for(scan), scan, root)[1]
    layout = bids.BIDSLayout(str(root), validate=False)
    query = dict(return_type="file", datatype="anat", suffix="roi", extension=[".nii", ".nii.gz"])
    assert layout.get(subject="02", session=bids.layout.Query.OPTIONAL, **query) == [
        lesion_roi_path(root, scans["sub-02/anat/sub-02_T1w.nii.gz"])]
    assert layout.get(subject="03", session="1", **query) == [
        lesion_roi_path(root, scans["sub-03/ses-1/anat/sub-03_ses-1_T1w.nii.gz"])]


@pytest.mark.skipif(shutil.which("bids-validator-deno") is None, reason="bids-validator-deno is not installed")
def test_the_bids_validator_accepts_the_raw_dataset_with_lesion_rois(raw, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(raw[0], root)
    rois = []
    for rel, s in raw[1].items():
        scan = Scan(str(root / rel), rel, s.entities)
        path, written, _ = write_lesion_roi(_mask_for(scan), scan, root)
        assert written
        rois.append("/" + os.path.relpath(path, root).replace(os.sep, "/"))
    assert (root / ".bidsignore").read_text() == BIDSIGNORE_LINE + "\n"
    proc = subprocess.run(["bids-validator-deno", str(root), "--format", "json"], capture_output=True,
                          text=True, timeout=300)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    about_rois = [(i["code"], i.get("location")) for i in issues
                  if i["severity"] == "error" and "_roi." in (i.get("location") or "")]
    assert about_rois == []
    assert len(rois) == 4  # sub-01, sub-02, sub-03 ses-1 and ses-2
    # the control: without fMRIPrep's .bidsignore line the same files are errors (NOT_INCLUDED)
    (root / ".bidsignore").unlink()
    proc = subprocess.run(["bids-validator-deno", str(root), "--format", "json"], capture_output=True,
                          text=True, timeout=300)
    flagged = sorted(i.get("location") for i in json.loads(proc.stdout)["issues"]["issues"]
                     if i["severity"] == "error" and "_roi." in (i.get("location") or ""))
    assert flagged == sorted(rois), "the validator now takes *_roi files: is the .bidsignore line still needed?"
