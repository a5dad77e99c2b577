"""Tests of the BIDS App (`clci-keras bids`): derivative names, sidecars, grids, reports, group map, re-runs.

One synthetic BIDS dataset (clci_keras.bids.synthetic: an ATLAS-2.0-named scan on the template
grid, a native scan off it, a subject with two sessions, one in LAS order, and a truncated T1w)
is segmented once by the participant level and summarised once by the group level; the tests
read what they left. The model is a stand-in of two 1x1 convolutions (lesion = scaled intensity
in a band of dark tissue), so a scan costs seconds; the native scan is registered with a coarse
schedule (6 mm, 20 + 10 iterations).
"""
from __future__ import annotations

import base64
import csv
import html.parser
import io
import json
import os
import re
import shutil
import subprocess

import keras
import nibabel as nib
import numpy as np
import pytest

from clci_keras.bids import derivatives as dv
from clci_keras.bids.layout import find_scans, needs_registration, strip_label
from clci_keras.cli import main as cli_main
from clci_keras.data.constants import ATLAS_AFFINE, ATLAS_SHAPE
from clci_keras.models import register_model, save_weights_legacy
from clci_keras.models.manifest import sha256

pytest.importorskip("bids", reason="pybids (the [bids] extra) is not installed")

MODEL = "test_bids_band"
FAST = ["--reg-resolution", "6", "--reg-iterations", "20,10", "--intensity", "v2"]
TPL = dv.TEMPLATE_SPACE


def _band_model(input_shape=(224, 176, 1), num_class=1, name=MODEL):
    """p > 0.5 where the scaled intensity lies in about (0.11, 0.38): dark tissue and lesions."""
    x = keras.Input(input_shape)
    h = keras.layers.Conv2D(2, 1, activation="relu", kernel_initializer=keras.initializers.Constant(1.0),
                            bias_initializer=keras.initializers.Constant([-0.1, -0.35]))(x)
    k = np.array([400.0, -4000.0]).reshape(1, 1, 2, 1)
    y = keras.layers.Conv2D(num_class, 1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(k),
                            bias_initializer=keras.initializers.Constant(-4.0))(h)
    return keras.Model(x, y, name=name)


register_model(MODEL, _band_model, description="test stand-in", reference="tests")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The dataset, the weights, and the participant + group runs' exit codes and output."""
    from clci_keras.bids.synthetic import write_synthetic_bids

    base = tmp_path_factory.mktemp("bids")
    ds, out = base / "ds", base / "out"
    records = write_synthetic_bids(ds, seed=0)
    weights = base / "band.h5"
    save_weights_legacy(_band_model(), str(weights))
    return {"ds": ds, "out": out, "root": out / dv.PIPELINE_NAME, "records": records, "weights": weights}


def _cli(args):
    """``(exit code, stdout, stderr)`` of ``clci-keras ARGS`` run in this process."""
    import contextlib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(args)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def participant(run):
    return _cli(["bids", str(run["ds"]), str(run["out"]), "participant", "--weights", str(run["weights"]),
                 "--model", MODEL, *FAST])


@pytest.fixture(scope="module")
def group(run, participant):
    rc = cli_main(["bids", str(run["ds"]), str(run["out"]), "group"])
    return rc


def _derivatives(root):
    from bids import BIDSLayout

    return BIDSLayout(str(root), validate=False, is_derivative=True)


# --------------------------------------------------------------------------
# Participant level
# --------------------------------------------------------------------------
def test_broken_scan_is_named_and_the_others_go_on(participant):
    rc, out, err = participant
    assert rc == 1
    assert re.search(r"FAILED .*sub-04_T1w\.nii\.gz: .*truncated or corrupt", err)
    assert out.count("done ") == 4 and "4 segmented, 0 finished earlier, 1 failed of 5" in out


def test_outputs_are_indexed_by_pybids_with_their_entities(run, participant):
    layout = _derivatives(run["root"])
    masks = layout.get(suffix="mask", desc="lesion", label="L", extension=".nii.gz")
    got = sorted((f.entities["subject"], f.entities.get("session", ""), f.entities.get("space", "")) for f in masks)
    assert got == [("01", "", "MNI152NLin2009aSym"), ("02", "", ""), ("02", "", TPL), ("03", "1", ""), ("03", "2", "")]
    probs = layout.get(suffix="probseg", desc="lesion", extension=".nii.gz")
    assert len(probs) == len(masks)
    # only the native scan was registered: its transform, in ITK text and clci-keras JSON
    xfm = sorted(os.path.relpath(p, run["root"]) for p in
                 map(str, run["root"].rglob("*_xfm.*")))
    assert xfm == [f"sub-02/anat/sub-02_from-T1w_to-{TPL}_mode-image_xfm.json",
                   f"sub-02/anat/sub-02_from-T1w_to-{TPL}_mode-image_xfm.txt"]
    reports = sorted(p.name for p in run["root"].glob("*.html"))
    assert reports == ["sub-01.html", "sub-02.html", "sub-03_ses-1.html", "sub-03_ses-2.html"]


def test_dataset_description_and_sidecars_are_complete(run, participant):
    desc = json.loads((run["root"] / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"]
    gen = desc["GeneratedBy"][0]
    assert gen["Name"] == "clci-keras" and gen["Version"] and gen["CodeURL"].startswith("https://")
    assert desc["SourceDatasets"][0]["URL"] == "file://" + str(run["ds"])
    digest = sha256(run["weights"])
    sidecars = sorted(p for p in run["root"].glob("sub-*/**/anat/*_desc-lesion_*.json")
                      if p.name.endswith(("_mask.json", "_probseg.json")))
    assert len(sidecars) == 10
    for p in sidecars:
        meta = json.loads(p.read_text())
        assert meta["Description"] and meta["SpatialReference"]
        assert meta["Sources"][0].startswith("bids:raw:sub-") and (run["ds"] / meta["Sources"][0][9:]).is_file()
        if p.name.endswith("_mask.json"):
            assert meta["Type"] == "Lesion"
        assert meta["Weights"] == [{"file": str(run["weights"]), "sha256": digest}]
        assert meta["Threshold"] == 0.5 and meta["IntensityScheme"] == "v2" and meta["Model"] == MODEL
        assert "MNI152" in meta["Template"] and meta["SoftwareUsed"]["clci-keras"]
        assert "keras" in meta["SoftwareUsed"] and "ModelCards" in meta
        assert meta["Lesion"]["volume_ml"] > 0 and meta["IntensityCheck"]["passed"] is True
        registered = p.name.startswith("sub-02_")
        assert (meta["Registration"] is not None) == registered
        if registered:
            assert meta["Registration"]["similarity"] > 0.8 and meta["Grid"] == "registered"
    assert json.loads((run["root"] / "sub-03/ses-2/anat/sub-03_ses-2_label-L_desc-lesion_mask.json")
                      .read_text())["Grid"] == "reoriented"


def test_every_scan_has_its_lesion_table_and_load_and_the_group_gathers_the_load(run, participant, group):
    import pandas as pd

    lesion_tables = sorted(run["root"].glob("sub-*/**/anat/*_desc-lesion_lesions.tsv"))
    assert len(lesion_tables) == 4  # the four scans that were segmented
    total = 0
    for table in lesion_tables:
        rows = pd.read_csv(table, sep="\t")
        side = json.loads(table.with_suffix(".json").read_text())
        assert set(rows.columns) <= set(side) and side["Atlas"]["name"]
        (load_table,) = table.parent.glob(table.name.split("_desc-")[0] + f"_space-{TPL}_desc-lesion_load.tsv")
        load = pd.read_csv(load_table, sep="\t")
        assert set(load.loc[load["kind"] == "tract", "region"]) == {"Corticospinal_tract_left",
                                                                      "Corticospinal_tract_right"}
        mask = next(table.parent.glob(table.name.split("_desc-")[0] + "*_desc-lesion_mask.json"))
        meta = json.loads(mask.read_text())
        assert len(rows) == meta["Lesion"]["components"]  # the report's summary and the table agree
        assert rows["volume_ml"].sum() == pytest.approx(meta["Lesion"]["volume_ml"], abs=1e-2)
        total += len(load)
    group_load = pd.read_csv(run["root"] / "group" / "lesion_load.tsv", sep="\t")
    assert len(group_load) == total and group_load["participant_id"].str.startswith("sub-").all()
    page = (run["root"] / "group.html").read_text()
    assert "Lesion load" in page and "Corticospinal_tract_left" in page
    report = (run["root"] / "sub-01.html").read_text()
    assert "Lesion load (template space)" in report and "Corticospinal_tract_right" in report


def test_masks_lie_on_each_inputs_grid_and_the_template_copy_on_the_template(run, participant):
    root = run["root"]
    pairs = {"sub-01/anat/sub-01_space-MNI152NLin2009aSym_T1w.nii.gz":
             "sub-01/anat/sub-01_space-MNI152NLin2009aSym_label-L_desc-lesion",
             "sub-02/anat/sub-02_T1w.nii.gz": "sub-02/anat/sub-02_label-L_desc-lesion",
             "sub-03/ses-2/anat/sub-03_ses-2_T1w.nii.gz": "sub-03/ses-2/anat/sub-03_ses-2_label-L_desc-lesion"}
    for src, stem in pairs.items():
        t1 = nib.load(run["ds"] / src)
        for suffix, dtype in (("_mask.nii.gz", np.uint8), ("_probseg.nii.gz", np.float32)):
            img = nib.load(root / (stem + suffix))
            assert img.shape == t1.shape and np.allclose(img.affine, t1.affine, atol=1e-5)
            assert img.get_data_dtype() == dtype
            data = np.asanyarray(img.dataobj)
            assert data.min() >= 0 and data.max() <= 1 and data.any()
    tmask = nib.load(root / f"sub-02/anat/sub-02_space-{TPL}_label-L_desc-lesion_mask.nii.gz")
    assert tmask.shape == ATLAS_SHAPE and np.allclose(tmask.affine, ATLAS_AFFINE)


def test_itk_transform_is_the_registration(run, participant):
    from clci_keras.inference import Registration

    folder = run["root"] / "sub-02" / "anat"
    itk = dv.read_itk_affine(folder / f"sub-02_from-T1w_to-{TPL}_mode-image_xfm.txt")
    reg = Registration.load(folder / f"sub-02_from-T1w_to-{TPL}_mode-image_xfm.json")
    assert np.allclose(itk, reg.mni_to_native, atol=1e-6)
    # and it is near the transform the native scan was made with (template -> scan world): within the
    # 6 mm working voxel, the synthetic subject's own shift of up to 2 voxels per axis included
    from clci_keras.bids.synthetic import native_grid

    a, _, _ = native_grid(0)
    centre = np.array([0.0, -18.0, 10.0, 1.0])
    assert np.linalg.norm((itk @ centre)[:3] - (np.linalg.inv(a) @ centre)[:3]) < 6.0


@pytest.mark.skipif(shutil.which("bids-validator-deno") is None, reason="bids-validator-deno is not installed")
def test_the_bids_validator_reports_no_error(run, participant, group):
    assert group == 0
    proc = subprocess.run(["bids-validator-deno", str(run["root"]), "--format", "json"], capture_output=True,
                          text=True, timeout=300)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location"), i.get("subCode")) for i in issues if i["severity"] == "error"]
    assert errors == []


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.headings, self._h = [], [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag in ("link", "script", "iframe") or a.get("href"):
            self.links.append((tag, a))
        self._h = tag in ("h1", "h2")

    def handle_data(self, data):
        if self._h and data.strip():
            self.headings.append(data.strip())
            self._h = False


def _decode_images(srcs):
    import matplotlib.image as mpimg

    shapes = []
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        shapes.append(mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png").shape)
    return shapes


def test_reports_are_self_contained_and_their_images_decode(run, participant, group):
    for name, n_images in (("sub-01.html", 1), ("sub-02.html", 2), ("sub-03_ses-2.html", 1), ("group.html", 1)):
        text = (run["root"] / name).read_text()
        page = _Page()
        page.feed(text)
        assert page.links == [] and "http://" not in text.replace("http://www.w3.org", "")
        shapes = _decode_images(page.images)
        assert len(shapes) == n_images and all(s[0] > 100 and s[1] > 100 for s in shapes)
        if name != "group.html":
            for heading in ("Summary", "Warnings", "Lesion", "Lesion overlay (native scan)", "Registration check",
                            "Intensity check", "Model card"):
                assert heading in page.headings, (name, heading)
    assert "registration similarity" not in (run["root"] / "sub-01.html").read_text()
    assert "similarity_before" in (run["root"] / "sub-02.html").read_text()


# --------------------------------------------------------------------------
# Group level
# --------------------------------------------------------------------------
def test_group_map_is_the_mean_of_the_template_space_masks(run, participant, group):
    assert group == 0
    root = run["root"]
    masks = [root / f"sub-02/anat/sub-02_space-{TPL}_label-L_desc-lesion_mask.nii.gz",
             root / "sub-01/anat/sub-01_space-MNI152NLin2009aSym_label-L_desc-lesion_mask.nii.gz",
             root / "sub-03/ses-1/anat/sub-03_ses-1_label-L_desc-lesion_mask.nii.gz",
             root / "sub-03/ses-2/anat/sub-03_ses-2_label-L_desc-lesion_mask.nii.gz"]
    stack = []
    for p in masks:
        img = nib.as_closest_canonical(nib.load(p))  # LAS -> RAS: the template grid
        assert np.allclose(img.affine, ATLAS_AFFINE)
        stack.append(np.asanyarray(img.dataobj) > 0)
    expected = np.mean(stack, axis=0)
    overlap = nib.load(root / f"anat/space-{TPL}_label-L_desc-overlap_probseg.nii.gz")
    assert overlap.shape == ATLAS_SHAPE and np.allclose(overlap.affine, ATLAS_AFFINE)
    np.testing.assert_allclose(np.asarray(overlap.dataobj), expected, atol=1e-6)
    assert json.loads((root / f"anat/space-{TPL}_label-L_desc-overlap_probseg.json").read_text())["NumberOfScans"] == 4
    with open(root / "group" / "lesions.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(r["participant_id"], r["session_id"]) for r in rows] == [
        ("sub-01", "n/a"), ("sub-02", "n/a"), ("sub-03", "ses-1"), ("sub-03", "ses-2")]
    assert rows[1]["grid"] == "registered" and float(rows[1]["registration_similarity"]) > 0.8
    assert rows[0]["registration_similarity"] == "n/a"
    side = json.loads((root / "sub-03/ses-1/anat/sub-03_ses-1_label-L_desc-lesion_mask.json").read_text())
    assert float(rows[2]["lesion_volume_ml"]) == side["Lesion"]["volume_ml"]
    assert set(json.loads((root / "group" / "lesions.json").read_text())) == set(rows[0])


# --------------------------------------------------------------------------
# Labels, decisions, errors
# --------------------------------------------------------------------------
def test_labels_with_or_without_prefix_select_scans(run):
    scans = find_scans(run["ds"], ["sub-03", "01"], None)
    assert [s.key for s in scans] == ["sub-01", "sub-03_ses-1", "sub-03_ses-2"]
    assert [s.key for s in find_scans(run["ds"], ["03"], ["ses-2"])] == ["sub-03_ses-2"]
    with pytest.raises(ValueError, match="no participant sub-09"):
        find_scans(run["ds"], ["09"])
    with pytest.raises(ValueError, match="sub label must be letters and digits.*'sub-0_1'"):
        strip_label("sub-0_1", "sub")


def test_auto_registration_decides_from_grid_and_space():
    las = ATLAS_AFFINE @ nib.orientations.inv_ornt_aff(
        nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt("LAS")),
        ATLAS_SHAPE)
    other = np.diag([2.0, 2.0, 2.0, 1.0])
    assert needs_registration("auto", "MNI152NLin2009aSym", ATLAS_SHAPE, ATLAS_AFFINE)[0] is False
    assert needs_registration("auto", None, ATLAS_SHAPE, las)[0] is False
    assert needs_registration("auto", None, (91, 109, 91), other)[0] is True
    assert needs_registration("auto", "T1w", ATLAS_SHAPE, ATLAS_AFFINE)[0] is True
    assert needs_registration("auto", "MNI152NLin6Asym", (91, 109, 91), other)[0] is False
    assert needs_registration("always", "MNI152NLin2009aSym", ATLAS_SHAPE, ATLAS_AFFINE)[0] is True
    assert needs_registration("never", None, (91, 109, 91), other)[0] is False


def test_cli_errors_are_one_line_with_exit_code_2(run, tmp_path, capsys):
    assert cli_main(["bids", str(run["ds"]), str(tmp_path / "o"), "participant"]) == 2
    assert "clci-keras bids: error: the participant level needs --weights" in capsys.readouterr().err
    assert cli_main(["bids", str(run["ds"]), str(tmp_path / "o"), "participant", "--weights", str(run["weights"]),
                     "--model", MODEL, "--participant_label", "09"]) == 2
    assert "no participant sub-09" in capsys.readouterr().err
    assert cli_main(["bids", str(run["ds"]), str(tmp_path / "o"), "group"]) == 2
    err = capsys.readouterr().err
    assert "no clci-keras derivative dataset" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    assert cli_main(["bids", str(tmp_path / "empty"), str(tmp_path / "o"), "participant", "--weights",
                     str(run["weights"])]) == 2
    assert "empty: not a BIDS dataset (no dataset_description.json)" in capsys.readouterr().err
    assert cli_main(["bids", str(run["ds"]), str(run["ds"] / "out"), "participant", "--weights",
                     str(run["weights"])]) == 2
    assert "must not lie inside the input dataset" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Model cards
# --------------------------------------------------------------------------
def _carded_weights(run, folder, **card):
    """A copy of the stand-in weights with a model card (``make_card`` of ``card``, crop clci)."""
    from clci_keras.models.card import make_card, write_card

    weights = folder / "carded.h5"
    shutil.copyfile(run["weights"], weights)
    write_card(weights, make_card(input_shape=(224, 176, 1), crop="clci", **card))
    return weights


def test_a_card_of_another_architecture_stops_the_run_naming_the_weights(run, tmp_path, capsys):
    weights = _carded_weights(run, tmp_path, architecture="clci_net", intensity="v2")
    out = tmp_path / "o"
    assert cli_main(["bids", str(run["ds"]), str(out), "participant", "--weights", str(weights), "--model", MODEL,
                     "--participant-label", "01"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clci-keras bids: error: {weights}: the weights are a 'clci_net' model by their card, "
                          f"not '{MODEL}'") and len(err.splitlines()) == 1
    assert not (out / dv.PIPELINE_NAME / "dataset_description.json").exists()  # refused before any output


def test_the_cards_model_and_intensity_are_used_and_its_space_checked_per_scan(run, participant, tmp_path):
    from clci_keras.models.card import card_path, read_card

    # sub-01 of the dataset, and the same image named as a native-space scan (space-T1w), not registered
    ds = tmp_path / "ds"
    src = run["ds"] / "sub-01/anat/sub-01_space-MNI152NLin2009aSym_T1w.nii.gz"
    for rel in ("sub-01/anat/" + src.name, "sub-05/anat/sub-05_space-T1w_T1w.nii.gz"):
        (ds / rel).parent.mkdir(parents=True)
        shutil.copyfile(src, ds / rel)
    shutil.copyfile(run["ds"] / "dataset_description.json", ds / "dataset_description.json")
    weights = _carded_weights(run, tmp_path, architecture=MODEL, intensity="v2", name="band-card",
                              space="MNI152NLin6Asym")
    rc, out, err = _cli(["bids", str(ds), str(tmp_path / "o"), "participant", "--weights", str(weights),
                         "--register", "never"])  # no --model, no --intensity: the card's
    assert rc == 1 and "1 segmented, 0 finished earlier, 1 failed of 2" in out
    assert re.search(r"FAILED .*sub-05_space-T1w_T1w\.nii\.gz: CardMismatchError: .*carded\.h5: the input is in "
                     r"space 'T1w'.*register it to MNI152 first", err)
    root = tmp_path / "o" / dv.PIPELINE_NAME
    stem = "sub-01/anat/sub-01_space-MNI152NLin2009aSym_label-L_desc-lesion_"
    meta = json.loads((root / (stem + "probseg.json")).read_text())
    assert meta["Model"] == MODEL and meta["ModelCards"] == [read_card(weights)]
    assert meta["IntensityScheme"] == "v2" and meta["IntensitySchemeSource"] == f"model card {card_path(weights)}"
    assert any("input in space 'MNI152NLin2009aSym', the weights were trained in 'MNI152NLin6Asym'" in w
               for w in meta["Warnings"])
    # v2 scaling, as the participant run given --intensity v2: the same probabilities
    np.testing.assert_array_equal(np.asarray(nib.load(root / (stem + "probseg.nii.gz")).dataobj),
                                  np.asarray(nib.load(run["root"] / (stem + "probseg.nii.gz")).dataobj))
    assert "band-card" in (root / "sub-01.html").read_text()
    assert not list(root.glob("sub-05/anat/*"))


def test_rerun_skips_finished_scans_and_redoes_a_half_finished_one(run, participant, group):
    root = run["root"]
    half = root / "sub-03/ses-1/anat/sub-03_ses-1_label-L_desc-lesion_probseg.json"
    half.unlink()  # as if the run had stopped inside sub-03 ses-1
    (root / "sub-03_ses-1.html").unlink()
    kept = [root / f"sub-02/anat/sub-02_space-{TPL}_label-L_desc-lesion_mask.nii.gz", root / "sub-01.html"]
    before = [p.stat().st_mtime_ns for p in kept]
    rc, out, err = _cli(["bids", str(run["ds"]), str(run["out"]), "participant", "--weights", str(run["weights"]),
                         "--model", MODEL, *FAST])
    assert rc == 1 and "sub-04_T1w.nii.gz" in err  # still broken, still named
    assert "1 segmented, 3 finished earlier, 1 failed of 5" in out
    assert "done sub-03/ses-1/anat/sub-03_ses-1_T1w.nii.gz" in out
    assert half.is_file() and (root / "sub-03_ses-1.html").is_file()
    assert [p.stat().st_mtime_ns for p in kept] == before


def test_lesion_roi_for_fmriprep_is_written_beside_the_t1w_and_never_overwritten(run, participant, tmp_path):
    copy = tmp_path / "raw_copy"
    args = ["bids", str(run["ds"]), str(tmp_path / "out"), "participant", "--weights", str(run["weights"]),
            "--model", MODEL, "--participant-label", "01", "--lesion-roi", str(copy), *FAST]
    rc, out, err = _cli(args)
    assert rc == 0, err
    (roi,) = copy.glob("sub-01/anat/sub-01_label-lesion_roi.nii.gz")
    (mask,) = (tmp_path / "out" / dv.PIPELINE_NAME).glob("sub-01/anat/sub-01_*desc-lesion_mask.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(nib.load(roi).dataobj), np.asanyarray(nib.load(mask).dataobj))
    assert "*lesion_roi.nii.gz" in (copy / ".bidsignore").read_text()
    nib.save(nib.Nifti1Image(np.zeros(ATLAS_SHAPE, np.uint8), ATLAS_AFFINE), roi)  # a hand-corrected mask
    rc, out, err = _cli(args + ["--overwrite"])
    assert rc == 0, err
    assert not np.asanyarray(nib.load(roi).dataobj).any()  # kept as it was
    assert str(roi) in out + err
