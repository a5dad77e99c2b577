"""Published CLCI-Net weights end to end: ATLAS R1.2, named published splits, the SPiN preset.

Synthetic R1.2 trees use real published scan ids (two of the SPiN test ids
and one of their training ids), so the named split ``spin_traintest``
resolves on them.  References restated here, independently of the package:

* :func:`reference_r12` — the SPiN authors' HDF5 generator
  (``external_src/generate_h5/generate_h5.py``: ``glob(root/*/*)``, their
  file-name rules, ``transpose(2, 1, 0) / 100``, masks ``int64 > 0`` summed
  and clipped), compared subject by subject **by id**, since their order is
  the file system's;
* :func:`their_scores` — ``dice_score``/``IOU``/``precision``/``recall`` of
  their ``src/eval_utils.py`` as ``run_val_prediction_CLCI.py`` applies them,
  and the "VOE"/"RVD" of ``external_src/CLCI-Net/utils.py``;
* :func:`their_small_lesion_slices` — ``setup/setup_dataset_atlas_small_lesion.py``
  (cv2-style component statistics, re-done with scikit-image).

The Keras-2 check predicts all 189 slices of each test patient, so it runs
CLCI-Net on a 16 x 16 crop window (the weights do not depend on the input
size); the full 224 x 176 run is the documented manual check.
"""
import csv
import glob
import os
import shutil

import h5py
import nibabel as nib
import numpy as np
import pytest

from clci_keras.cli import main
from clci_keras.data import AtlasDataError, discover_subjects, prepare_h5, read_subjects
from clci_keras.data.published_splits import SPIN_TRAINTEST_TEST, SPIN_TRAINTEST_TRAIN
from clci_keras.data.splits import (
    load_split,
    preset_split,
    read_id_list,
    resolve_split,
    save_split,
    split_from_lists,
)

TEST_IDS = ["c0008s0028t01", "c0004s0011t01"]  # published SPiN test scans
TRAIN_IDS = ["c0008s0011t01"]  # a published SPiN training scan


@pytest.fixture(scope="module")
def r12_tree(tmp_path_factory):
    from clci_keras.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("r12") / "atlas_standard"
    generate_dataset(out, layout="r1.2", subject_ids=TEST_IDS + TRAIN_IDS, seed=0)
    return out


@pytest.fixture(scope="module")
def r12_h5(r12_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("r12h5") / "r12.h5"
    assert main(["prep", str(r12_tree), "-o", str(out), "--quiet"]) == 0
    return out


# ------------------------------------------------------------------ prep
def reference_r12(root):
    """What the SPiN authors' generator stores, by scan folder name: (data, label) per subject."""
    out = {}
    for folder in glob.glob(os.path.join(root, "*/*")):  # their unsorted order
        t1, segs = None, []
        for _dirpath, _dirs, files in os.walk(folder):
            for name in files:
                if name.split("_")[-2] == "t1w":
                    t1 = np.asanyarray(nib.load(os.path.join(folder, name)).dataobj).transpose(2, 1, 0) / 100
                elif name.split("_")[1] == "LesionSmooth":
                    seg = np.asanyarray(nib.load(os.path.join(folder, name)).dataobj).transpose(2, 1, 0)
                    seg = seg.astype(np.int64)
                    seg[seg > 0] = 1
                    segs.append(seg)
        s = np.sum(segs, axis=0)
        s[s > 1] = 1
        out[os.path.basename(folder)] = (t1, s)
    return out


def test_r12_prep_equals_their_generator(r12_tree, r12_h5):
    ref = reference_r12(r12_tree)
    subs = read_subjects(r12_h5)
    assert sorted(ref) == sorted(s["subject_id"] for s in subs)
    assert [s["subject_id"] for s in subs] == sorted(ref)  # ours: sorted by (site, scan folder)
    with h5py.File(r12_h5, "r") as f:
        assert f.attrs["layout"] == "r1.2" and f.attrs["intensity_scheme"] == "r1.1"
        assert f.attrs["intensity_divisor"] == 100.0
        for s in subs:
            data, label = ref[s["subject_id"]]
            block = slice(s["offset"], s["offset"] + s["count"])
            np.testing.assert_array_equal(f["data"][block], data.astype(np.float32))
            np.testing.assert_array_equal(f["label"][block], label)
            assert label.sum() > 0
    by_id = {s["subject_id"]: s for s in subs}
    assert by_id["c0008s0028t01"]["site"] == "c0008" and by_id["c0008s0028t01"]["session"] == "t01"
    assert len(by_id["c0008s0028t01"]["mask_paths"]) == 2  # two masks merged (seed 0, subject 0)


def _copy_tree(src, dst):
    shutil.copytree(src, dst)
    return dst


def _expect(src, tmp_path, match, layout="auto"):
    out = tmp_path / "out.h5"
    with pytest.raises(AtlasDataError, match=match):
        prepare_h5(src, out, layout=layout, progress=False)
    assert not out.exists()


def test_r12_detection_and_bad_trees(r12_tree, tmp_path):
    assert discover_subjects(r12_tree)[0] == "r1.2"
    assert [r.subject_id for r in discover_subjects(r12_tree, layout="r1.2")[1]] == sorted(TEST_IDS + TRAIN_IDS)
    src = _copy_tree(r12_tree, tmp_path / "a")
    scan = src / "c0004" / "c0004s0011t01"
    (scan / "c0004s0011t01_t1w_stx.nii.gz").unlink()
    _expect(src, tmp_path, r"c0004s0011t01: missing T1: no 'c0004s0011t01_t1w_stx\.nii\.gz'")

    src = _copy_tree(r12_tree, tmp_path / "b")
    (src / "c0004" / "c0004s0011t01" / "c0004s0011t01_LesionSmooth_stx.nii.gz").unlink()
    _expect(src, tmp_path, r"c0004s0011t01: missing lesion mask")

    src = _copy_tree(r12_tree, tmp_path / "c")
    (src / "c0004" / "scan_1").mkdir()
    _expect(src, tmp_path, r"scan_1: not an R1.2 scan folder")

    src = _copy_tree(r12_tree, tmp_path / "d")
    shutil.move(src / "c0004" / "c0004s0011t01", src / "c0008" / "c0004s0011t01")
    _expect(src, tmp_path, r"c0004s0011t01: scan folder 'c0004s0011t01' lies in site folder 'c0008'")

    src = _copy_tree(r12_tree, tmp_path / "e")
    t1 = src / "c0008" / "c0008s0011t01" / "c0008s0011t01_t1w_stx.nii.gz"
    raw = t1.read_bytes()
    t1.write_bytes(raw[: len(raw) // 2])
    _expect(src, tmp_path, r"c0008s0011t01_t1w_stx\.nii\.gz: cannot read T1 image .*truncated")

    src = _copy_tree(r12_tree, tmp_path / "f")
    t1 = src / "c0008" / "c0008s0011t01" / "c0008s0011t01_t1w_stx.nii.gz"
    shutil.copy(r12_tree / "c0008" / "c0008s0011t01" / t1.name, src / "c0008" / "c0008s0011t01" / "copy_t1w_stx.nii.gz")
    _expect(src, tmp_path, r"c0008s0011t01: several T1 files")

    empty = tmp_path / "g"
    (empty / "c0001").mkdir(parents=True)
    _expect(empty, tmp_path, r"g: unknown layout: .*R1\.2 scan folders")
    _expect(empty, tmp_path, r"g: no R1\.2 site folders|hold no scan folders", layout="r1.2")


def test_synthetic_r12_ids():
    from clci_keras.data.synthetic import generate_dataset, r12_subject_ids

    assert r12_subject_ids(3) == list(SPIN_TRAINTEST_TEST[:3])
    assert r12_subject_ids(28)[-1] == SPIN_TRAINTEST_TRAIN[0]
    with pytest.raises(ValueError, match=r"'sub-1'"):
        generate_dataset("/nonexistent/never", layout="r1.2", subject_ids=["sub-1"])
    with pytest.raises(ValueError, match="only used by the r1.2 layout"):
        generate_dataset("/nonexistent/never", layout="r1.1", subject_ids=["c0001s0001t01"])


# ------------------------------------------------------------------ splits
def test_published_split_lists():
    assert len(SPIN_TRAINTEST_TRAIN) == 212 and len(SPIN_TRAINTEST_TEST) == 27
    assert not set(SPIN_TRAINTEST_TRAIN) & set(SPIN_TRAINTEST_TEST)
    assert SPIN_TRAINTEST_TEST[:2] == ("c0008s0028t01", "c0004s0011t01")  # first lines of test_scans.txt
    s = preset_split("spin_traintest")
    assert s["mode"] == "ids" and s["source"]["test"].endswith("testing/test_scans.txt")
    with pytest.raises(ValueError, match=r"'spin_6fold'.*spin_traintest"):
        preset_split("spin_6fold")


def test_split_preset_by_name_resolves_by_id(r12_h5, tmp_path, capsys):
    ids = [s["subject_id"] for s in read_subjects(r12_h5)]
    # without the HDF5 file: an id-only file, resolved when used
    out = tmp_path / "split.json"
    assert main(["split", "--preset", "spin_traintest", "-o", str(out)]) == 0
    with pytest.raises(ValueError, match=r"names subjects by id; pass the HDF5 slice file"):
        load_split(out)
    with pytest.raises(ValueError, match=r"split preset 'spin_traintest': this split names subjects by id"):
        load_split("spin_traintest")
    # resolved by id, in the published order; missing ids are listed
    with pytest.raises(ValueError, match=r"r12\.h5 lacks 25 of the 27 'test' ids \(c0004s0022t01, "):
        load_split(out, h5=r12_h5, parts=("test",))
    s = load_split("spin_traintest", h5=r12_h5, parts=("test",), allow_missing=True)
    assert [ids[i] for i in s["test"]] == TEST_IDS and [ids[i] for i in s["train"]] == TRAIN_IDS
    assert len(s["missing"]["test"]) == 25 and len(s["missing"]["train"]) == 211
    # a file resolved at split time is read back as written, also without h5
    out2 = tmp_path / "resolved.json"
    assert main(["split", str(r12_h5), "--preset", "spin_traintest", "-o", str(out2)]) == 2
    assert "lacks 211 of the 212 'train' ids" in capsys.readouterr().err
    assert main(["split", str(r12_h5), "--preset", "spin_traintest", "-o", str(out2), "--allow-missing"]) == 0
    assert load_split(out2)["test"] == s["test"]
    # the file order does not matter: ids are matched, never positions
    assert resolve_split(preset_split("spin_traintest"), ids[::-1], parts=("test",),
                         allow_missing=True)["test"] == [len(ids) - 1 - i for i in s["test"]]


def test_split_from_lists(r12_h5, tmp_path):
    train = tmp_path / "train_scans.txt"
    test = tmp_path / "test_scans.txt"
    train.write_text("c0008/c0008s0011t01/c0008s0011t01_t1w_stx.npy\n")
    test.write_text("# their ground-truth lines name the same folders\n"
                    "c0004/c0004s0011t01/c0004s0011t01_LesionSmooth_stx.npy\n\nc0008s0028t01\n")
    assert read_id_list(test) == ["c0004s0011t01", "c0008s0028t01"]
    out = tmp_path / "lists.json"
    assert main(["split", str(r12_h5), "--from-lists", str(train), str(test), "-o", str(out)]) == 0
    s = load_split(out)
    ids = [x["subject_id"] for x in read_subjects(r12_h5)]
    assert [ids[i] for i in s["test"]] == ["c0004s0011t01", "c0008s0028t01"]
    assert [ids[i] for i in s["train"]] == ["c0008s0011t01"]
    bad = tmp_path / "bad.txt"
    bad.write_text("c0004s0011t01\nc0004/c0004s0011t01/c0004s0011t01_t1w_stx.npy\n")
    with pytest.raises(ValueError, match=r"bad\.txt, line 2: subject id 'c0004s0011t01' repeats line 1"):
        read_id_list(bad)
    bad.write_text("c0004s0011t01_t1w_stx.npy\n")
    with pytest.raises(ValueError, match=r"bad\.txt, line 1: cannot tell the subject id"):
        read_id_list(bad)
    with pytest.raises(ValueError, match=r"test_scans\.txt: subject id 'c0004s0011t01' is in both 'train' and 'test'"):
        split_from_lists(test, test)
    with pytest.raises(ValueError, match="'val'"):
        save_split({"mode": "ids", "ids": {"train": ["a"], "val": ["a"], "test": []}}, tmp_path / "x.json")


# ------------------------------------------------------------------ formulas
def _eval_utils(src, tgt):
    """Their src/eval_utils.py dice_score, IOU, precision, recall (restated)."""
    inter = np.logical_and(src, tgt).sum()
    total = src.sum() + tgt.sum()
    union = np.logical_or(src, tgt).sum()
    fn = np.logical_and(np.logical_not(src), tgt).sum()
    return {
        "dsc": 0.0 if total == 0 else 2 * inter / total,
        "iou": 0.0 if union == 0 else inter / union,
        "precision": 0.0 if src.sum() == 0 else inter / src.sum(),
        "recall": 0.0 if inter + fn == 0 else inter / (inter + fn),
    }


def their_scores(gt, prob):
    """run_val_prediction_CLCI.py: prob >= 0.5, gt > 0; utils.py's VOE and RVD."""
    out = prob.copy()
    out[out >= 0.5] = 1
    out[out < 0.5] = 0
    g = np.uint(gt)
    g[g > 0] = 1
    s = _eval_utils(out, g)
    lp, pp = int(np.count_nonzero(g)), int(np.count_nonzero(out))
    s["voe"] = 2 * (pp - lp) / (pp + lp) if pp + lp != 0 else 0
    s["rvd"] = pp / lp - 1 if lp != 0 else -1
    return s


def their_small_lesion_slices(label_full):
    """setup_dataset_atlas_small_lesion.py's chunks 'with only small lesions' (8-connectivity, <= 100 px)."""
    from skimage.measure import label as cc

    keep = []
    for z, sl in enumerate(label_full):
        comp = cc(sl.astype(np.uint8), connectivity=2)
        stats = np.array([np.count_nonzero(comp == i) for i in range(comp.max() + 1)])
        stats = stats[np.argsort(stats)[::-1]]
        sizes = stats[1:]
        sizes = sizes[np.where(sizes > 0)[0]]
        n_large = np.where(sizes > 100)[0].shape[0]
        if not n_large > 0 and sizes.shape[0] - n_large > 0:
            keep.append(z)
    return keep


def test_spin_score_conventions():
    from clci_keras.evaluation.metrics import segmentation_scores
    from clci_keras.evaluation.published import spin_scores

    gt = np.zeros((2, 4, 4), np.uint8)
    prob = np.zeros((2, 4, 4), np.float32)
    s = spin_scores(gt, prob)
    assert (s["dsc"], s["iou"], s["precision"], s["recall"], s["voe"], s["rvd"]) == (0, 0, 0, 0, 0, -1)
    assert segmentation_scores(gt, prob)["dsc"] == 1.0  # ours: two empty masks agree
    gt[0, 1, 1:3] = 1
    prob[0, 1, 1] = 0.5  # exactly the threshold: lesion for SPiN's evaluator (>=), not for ours (>)
    prob[1, 2, 2] = 0.9
    s = spin_scores(gt, prob)
    assert s["at_threshold_voxels"] == 1 and s["pred_voxels"] == 2 and s["tp_voxels"] == 1
    for k, v in their_scores(gt, prob).items():
        assert s[k] == pytest.approx(v, abs=1e-12), k
    assert segmentation_scores(gt, prob)["pred_voxels"] == 1


def test_small_lesion_rule():
    from clci_keras.evaluation.published import only_small_lesions, small_lesion_slices

    lab = np.zeros((5, 233, 197), np.uint8)
    lab[1, 10:20, 10:20] = 1  # 100 px: small
    lab[2, 10:20, 10:20] = 1
    lab[2, 50, 50:51 + 0] = 1  # and a 1-px lesion: still only small
    lab[3, 10:20, 10:21] = 1  # 110 px: large
    lab[4, 10:20, 10:20] = 1
    lab[4, 20, 20] = 1  # diagonal neighbour: one 8-connected component of 101 px -> large
    assert list(small_lesion_slices(lab)) == [1, 2] == their_small_lesion_slices(lab)
    assert not only_small_lesions(np.ones((233, 197)))


# ------------------------------------------------------------------ Keras 2 weights, preset, CLI
def test_keras2_weights_through_the_preset_cli(r12_tree, r12_h5, tmp_path, capsys):
    tf_keras = pytest.importorskip("tf_keras", reason="tf_keras is a test dependency (see .ci/run)")
    from keras2_reference import randomize_keras2, reference_clci_net

    subs = {s["subject_id"]: s for s in read_subjects(r12_h5)}
    with h5py.File(r12_h5, "r") as f:
        labels = {sid: f["label"][s["offset"]: s["offset"] + 189] for sid, s in subs.items()}
        # a 16 x 16 window on the smaller test lesion (weights do not depend on the input size)
        r, c = np.unravel_index(labels["c0004s0011t01"].sum(0).argmax(), (233, 197))
        r0, c0 = int(np.clip(r - 8, 0, 233 - 16)), int(np.clip(c - 8, 0, 197 - 16))
        win = (slice(r0, r0 + 16), slice(c0, c0 + 16))
        x = {sid: f["data"][subs[sid]["offset"]: subs[sid]["offset"] + 189, win[0], win[1]] for sid in TEST_IDS}
    assert all(labels[sid][:, win[0], win[1]].any() for sid in TEST_IDS)

    # Keras 2 CLCI-Net, random weights; its features, then its own sigmoid head with a bias that
    # puts the threshold in a gap of the logits, so float noise (~1e-6) cannot flip a voxel
    ref = reference_clci_net((16, 16, 1))
    randomize_keras2(ref, seed=3)
    head = ref.layers[-1]
    features = tf_keras.Model(ref.input, ref.layers[-2].output)
    h = {sid: features.predict(x[sid][..., None], batch_size=27, verbose=0) for sid in TEST_IDS}
    k, _ = head.get_weights()
    raw = np.concatenate([(h[sid] @ k[0, 0]).ravel() for sid in TEST_IDS])
    lesion = np.concatenate([labels[sid][:, win[0], win[1]].ravel() > 0 for sid in TEST_IDS])
    if raw[lesion].mean() < raw[~lesion].mean():  # orient the head so that its positives favour lesions
        k, raw = -k, -raw
    logits = np.sort(raw)
    lo, hi = np.searchsorted(logits, np.quantile(logits, [0.8, 0.97]))
    gap = lo + int(np.argmax(np.diff(logits[lo:hi])))
    cut = 0.5 * (logits[gap] + logits[gap + 1])
    scale = 5.0 / logits.std()
    head.set_weights([k * scale, np.array([-cut * scale], np.float32)])
    prob = {sid: head(h[sid]).numpy()[..., 0] for sid in TEST_IDS}
    assert min(np.abs(p - 0.5).min() for p in prob.values()) > 2e-5  # Keras 2 vs 3 differ by ~1e-6
    assert 0.02 < np.mean([(p >= 0.5).mean() for p in prob.values()]) < 0.25
    weights = tmp_path / "clcinet_atlas_traintest.h5"
    ref.save_weights(str(weights))  # the Keras 2 save_weights layout (as ModelCheckpoint(save_weights_only=True))

    out = tmp_path / "eval"
    crop = f"{win[0].start}:{win[0].stop},{win[1].start}:{win[1].stop}"
    args = ["evaluate", "--preset", "spin_clcinet", "--weights", str(weights), "--h5", str(r12_h5),
            "--out", str(out), "--crop", crop, "--quiet"]
    assert main(args) == 2  # 25 of the 27 test ids are not in this tree
    assert "lacks 25 of the 27 'test' ids" in capsys.readouterr().err
    assert main(args + ["--allow-missing"]) == 0
    printed = capsys.readouterr()
    assert "(published: dsc 0.599 | iou 0.469 | precision 0.741 | recall 0.536)" in printed.out
    assert "25 of the 27 test ids are not in" in printed.err

    with open(out / "scores_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["subject_id"] for r in rows] == TEST_IDS  # published order
    for r in rows:
        sid = r["subject_id"]
        gt = labels[sid][:, win[0], win[1]]
        expected = their_scores(gt, prob[sid])
        for key in ("dsc", "iou", "precision", "recall", "voe", "rvd"):
            assert abs(float(r[key]) - expected[key]) <= 1e-6, (sid, key)
        small = their_small_lesion_slices(labels[sid])
        assert int(r["sl_slices"]) == len(small)
        if small:
            sl = their_scores(gt[small], prob[sid][small])
            for key in ("dsc", "iou", "precision", "recall"):
                assert abs(float(r[f"sl_{key}"]) - sl[key]) <= 1e-6, (sid, key)
        assert int(r["at_threshold_voxels"]) == 0
    assert any(float(r["dsc"]) > 0 for r in rows)
    md = (out / "comparison_test.md").read_text()
    assert "[SYNTHETIC]" in md and "| 0.599 | 0.469 | 0.741 | 0.536 |" in md and "Departure" in md
    assert "c0004s0022t01" in md  # the missing ids are listed


def test_preset_split_name_in_plain_evaluate(r12_h5, tmp_path):
    import keras

    from clci_keras.evaluation.evaluate import evaluate_run

    inputs = keras.Input((224, 176, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer="zeros",
                                                    bias_initializer=keras.initializers.Constant(8.0))(inputs))
    with pytest.raises(ValueError, match="lacks 25 of the 27 'test' ids"):
        evaluate_run(None, "clci_net", r12_h5, "spin_traintest", out_dir=tmp_path, model=model, progress=False)
    s = evaluate_run(None, "clci_net", r12_h5, "spin_traintest", out_dir=tmp_path, model=model, progress=False,
                     slices="brain", allow_missing=True)
    ids = [x["subject_id"] for x in read_subjects(r12_h5)]
    assert [ids[i] for i in s["subjects"]] == TEST_IDS
    assert s["scores"]["recall"]["mean"] == pytest.approx(1.0)


# ------------------------------------------------------------------ catalogue
def test_weights_catalogue(capsys):
    import json

    from clci_keras.models.catalog import catalog_json, get_weights_entry, list_weights

    e = get_weights_entry("spin_clcinet")
    assert e["architecture"] == "clci_net" and e["input_shape"] == [224, 176, 1] and e["crop"] == "spin"
    assert e["training_data"] == {"dataset": "ATLAS R1.2 (standard MNI)", "split": "spin_traintest",
                                  "part": "train", "scans": 212}
    assert e["published_scores"]["test"]["dsc"] == 0.599
    assert e["published_scores"]["small_lesion"]["recall"] == 0.215
    assert e["source"]["path_in_archive"] == "pretrained_models/clci-net/clcinet_atlas_traintest.h5"
    from clci_keras.data.slicing import crop_shape

    assert crop_shape(e["crop"]) == tuple(e["input_shape"][:2])
    assert [w["name"] for w in list_weights() if w["kind"] == "published"] == ["spin_clcinet"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(repo, "weights", "catalog.json")) as f:
        assert json.load(f) == catalog_json()  # weights/catalog.json is the catalogue
    assert main(["weights", "spin_clcinet", "--manifest", "/nonexistent.json"]) == 0
    out = capsys.readouterr().out
    assert "DSC 0.599" in out and "212 scans" in out and "clcinet_atlas_traintest.h5" in out
    assert main(["weights", "nope", "--manifest", "/nonexistent.json"]) == 2
    with pytest.raises(ValueError, match=r"'nope'.*spin_clcinet"):
        get_weights_entry("nope")
