"""ATLAS -> HDF5 preprocessing: faithful content, metadata, safety, bad inputs."""
import csv
import gzip
import json
import os
import shutil

import h5py
import nibabel as nib
import numpy as np
import pytest

from clci_keras.data import AtlasDataError, NonBinaryMaskWarning, prepare_h5, read_subjects
from clci_keras.data.constants import R11_CSV_NAME, SLICE_SHAPE


def reference_r11(root):
    """What the original generator stores: CSV order, os.walk, its file-name rules,
    get_data().transpose(2, 1, 0) / 100, int64 masks > 0 -> 1, summed and clipped."""
    with open(os.path.join(root, R11_CSV_NAME)) as f:
        rows = list(csv.reader(f))[1:]
    data, label = [], []
    for site, sid, session, *_ in rows:
        folder = os.path.join(root, site, "0" + sid, session[1:])
        t1, segs = None, []
        for dirpath, _, files in os.walk(folder):
            for name in files:
                arr = np.asanyarray(nib.load(os.path.join(dirpath, name)).dataobj).transpose(2, 1, 0)
                if name.split("_")[-2] == "deface":
                    t1 = arr / 100
                elif name.split("_")[1] == "LesionSmooth":
                    seg = arr.astype(np.int64)
                    seg[seg > 0] = 1
                    segs.append(seg)
        s = np.sum(segs, axis=0)
        s[s > 1] = 1
        data.append(t1)
        label.append(s)
    return np.concatenate(data), np.concatenate(label)


def test_r11_content_is_faithful(synthetic_r11_dir, synthetic_h5):
    ref_data, ref_label = reference_r11(synthetic_r11_dir)
    with h5py.File(synthetic_h5, "r") as f:
        assert f["data"].dtype == np.float32 and f["label"].dtype == np.uint8
        assert f["data"].shape == (4 * 189,) + SLICE_SHAPE
        np.testing.assert_array_equal(f["data"][()], ref_data.astype(np.float32))
        np.testing.assert_array_equal(f["label"][()], ref_label)
        assert f["data"].chunks == (1,) + SLICE_SHAPE and f["data"].compression == "gzip"
        attrs = dict(f.attrs)
    assert ref_label.sum() > 0
    assert attrs["layout"] == "r1.1" and attrs["intensity_scheme"] == "r1.1"
    assert attrs["intensity_divisor"] == 100.0 and attrs["slices_per_subject"] == 189
    assert json.loads(attrs["crops"])["clci"] == [[5, 229], [10, 186]]
    assert "clci_keras_version" in attrs
    # compressed: well under the 139 MB per subject of the original's float64 file
    assert os.path.getsize(synthetic_h5) / 4 < 30e6


def test_subject_metadata(synthetic_r11_dir, synthetic_h5):
    subs = read_subjects(synthetic_h5)
    with open(synthetic_r11_dir / R11_CSV_NAME) as f:
        rows = list(csv.reader(f))[1:]
    assert [s["subject_id"] for s in subs] == ["0" + r[1] for r in rows]
    assert [s["site"] for s in subs] == [r[0] for r in rows]
    assert [s["offset"] for s in subs] == [0, 189, 378, 567]
    assert all(s["count"] == 189 and s["session"] == "t01" for s in subs)
    assert len(subs[0]["mask_paths"]) == 2 and os.path.isfile(subs[0]["t1_path"])
    assert subs[0]["affine"].shape == (4, 4)
    with h5py.File(synthetic_h5, "r") as f:
        lab = f["label"][:189]
    assert subs[0]["lesion_voxels"] == int(lab.sum())


def test_two_workers_give_identical_file_content(synthetic_r11_dir, synthetic_h5, tmp_path):
    out = prepare_h5(synthetic_r11_dir, tmp_path / "w2.h5", workers=2, progress=False, max_subjects=2)
    assert out["n_subjects"] == 2
    with h5py.File(synthetic_h5, "r") as a, h5py.File(tmp_path / "w2.h5", "r") as b:
        np.testing.assert_array_equal(a["data"][:378], b["data"][()])
        np.testing.assert_array_equal(a["label"][:378], b["label"][()])


def test_v2_prep_and_intensity(synthetic_v2_dir, synthetic_v2_h5):
    subs = read_subjects(synthetic_v2_h5)
    assert [s["subject_id"] for s in subs] == ["sub-r001s001", "sub-r002s001", "sub-r003s001"]
    assert [s["site"] for s in subs] == ["R001", "R002", "R003"]
    with h5py.File(synthetic_v2_h5, "r") as f:
        assert f.attrs["layout"] == "v2" and f.attrs["intensity_scheme"] == "v2"
        x = f["data"][:189]
        y = f["label"][:189]
        ref = f["subjects/intensity_reference"][0]
    t1 = np.asanyarray(nib.load(subs[0]["t1_path"]).dataobj)
    np.testing.assert_allclose(x, (t1.transpose(2, 1, 0) / ref).astype(np.float32), rtol=1e-6)
    assert np.percentile(x[x > 0], 99.5) == pytest.approx(1.0, rel=1e-3)
    m = np.asanyarray(nib.load(subs[0]["mask_paths"][0]).dataobj)
    np.testing.assert_array_equal(y, m.transpose(2, 1, 0))


def test_refuses_overwrite_and_replaces_with_flag(synthetic_r11_dir, tmp_path):
    out = tmp_path / "o.h5"
    out.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_h5(synthetic_r11_dir, out, progress=False, max_subjects=1)
    assert out.read_bytes() == b"keep"
    prepare_h5(synthetic_r11_dir, out, progress=False, max_subjects=1, overwrite=True)
    with h5py.File(out, "r") as f:
        assert f["data"].shape[0] == 189
    assert os.listdir(tmp_path) == ["o.h5"]  # no temporary file left


# ---------------------------------------------------------------- bad inputs
def one_subject_tree(src_root, dst, n_masks=1):
    """Copy subject 0 of the synthetic R1.1 tree (and a one-row table) to ``dst``."""
    with open(src_root / R11_CSV_NAME) as f:
        rows = list(csv.reader(f))
    site, sid, session = rows[1][:3]
    folder = dst / site / ("0" + sid) / session[1:]
    folder.mkdir(parents=True)
    src_folder = src_root / site / ("0" + sid) / session[1:]
    for name in sorted(os.listdir(src_folder)):
        if "_LesionSmooth_1_" in name and n_masks < 2:
            continue
        shutil.copy(src_folder / name, folder / name)
    with open(dst / R11_CSV_NAME, "w", newline="") as f:
        csv.writer(f).writerows(rows[:2])
    sid0 = "0" + sid
    return folder, folder / f"{sid0}_t1w_deface_stx.nii.gz", folder / f"{sid0}_LesionSmooth_stx.nii.gz"


def expect_error(src, out, match):
    with pytest.raises(AtlasDataError, match=match):
        prepare_h5(src, out, progress=False)
    assert not out.exists()
    assert not [p for p in os.listdir(out.parent) if p.endswith(".h5") or ".tmp" in p]


@pytest.fixture
def tree(synthetic_r11_dir, tmp_path):
    src = tmp_path / "src"
    folder, t1, mask = one_subject_tree(synthetic_r11_dir, src)
    (tmp_path / "out").mkdir()
    return src, folder, t1, mask, tmp_path / "out" / "x.h5"


def test_truncated_gzip(tree):
    src, _, t1, _, out = tree
    raw = t1.read_bytes()
    t1.write_bytes(raw[: len(raw) // 2])
    expect_error(src, out, r"t1w_deface_stx\.nii\.gz: cannot read T1 image .*truncated")


def test_unreadable_file(tree):
    src, _, _, mask, out = tree
    mask.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    expect_error(src, out, r"LesionSmooth_stx\.nii\.gz: cannot read lesion mask")


def test_missing_t1(tree):
    src, _, t1, _, out = tree
    t1.unlink()
    expect_error(src, out, r"missing T1")


def test_missing_mask(tree):
    src, _, _, mask, out = tree
    mask.unlink()
    expect_error(src, out, r"missing lesion mask")


def test_shape_mismatch(tree):
    src, _, t1, mask, out = tree
    img = nib.load(t1)
    nib.save(nib.Nifti1Image(np.zeros((197, 233, 188), np.uint8), img.affine), mask)
    expect_error(src, out, r"LesionSmooth_stx\.nii\.gz: shape mismatch.*\(197, 233, 188\)")


def test_t1_wrong_grid(tree):
    src, _, t1, mask, out = tree
    aff = nib.load(t1).affine
    nib.save(nib.Nifti1Image(np.ones((197, 233, 180), np.int16), aff), t1)
    nib.save(nib.Nifti1Image(np.zeros((197, 233, 180), np.uint8), aff), mask)
    expect_error(src, out, r"t1w_deface_stx\.nii\.gz: T1 image has shape \(197, 233, 180\)")


def test_affine_mismatch(tree):
    src, _, t1, mask, out = tree
    m = nib.load(mask)
    aff = m.affine.copy()
    aff[0, 3] += 2.0
    nib.save(nib.Nifti1Image(np.asanyarray(m.dataobj), aff), mask)
    expect_error(src, out, r"LesionSmooth_stx\.nii\.gz: affine mismatch")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_voxels(tree, bad):
    src, folder, t1, _, out = tree
    img = nib.load(t1)
    v = np.asanyarray(img.dataobj).astype(np.float32)
    v[100, 100, 100] = bad
    t1.unlink()
    nib.save(nib.Nifti1Image(v, img.affine), folder / t1.name.replace(".nii.gz", ".nii"))
    expect_error(src, out, r"t1w_deface_stx\.nii: T1 image has 1 NaN/inf voxels")


def test_non_binary_mask_is_binarised_with_warning(tree):
    src, _, _, mask, out = tree
    m = nib.load(mask)
    v = np.asanyarray(m.dataobj).astype(np.float32)
    v[v > 0] = 255.0
    v[10, 10, 10] = 0.5  # below 1: background, as int(0.5) == 0 in the original
    nib.save(nib.Nifti1Image(v, m.affine), mask)
    with pytest.warns(NonBinaryMaskWarning, match=r"LesionSmooth_stx\.nii\.gz: .*values other than 0/1"):
        prepare_h5(src, out, progress=False)
    with h5py.File(out, "r") as f:
        lab = f["label"][()]
        stored = f["subjects/warnings"][0]
    assert set(np.unique(lab)) == {0, 1}
    assert lab.sum() == int((v >= 1).sum())
    assert b"binarised" in stored


def test_csv_row_pointing_nowhere(tree):
    src, *_, out = tree
    with open(src / R11_CSV_NAME, "a", newline="") as f:
        csv.writer(f).writerow(["Site9", "99999", " t01"])
    expect_error(src, out, r"line 3: row \(site='Site9', subject='99999', session='t01'\) points to .*Site9.099999.t01")


def test_unknown_layout(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("x")
    (tmp_path / "out").mkdir()
    expect_error(tmp_path / "src", tmp_path / "out" / "x.h5", r"src: unknown layout")
    with pytest.raises(AtlasDataError, match="'r3'"):
        prepare_h5(tmp_path / "src", tmp_path / "out" / "x.h5", layout="r3")


def test_v2_reads_only_training_folder(synthetic_v2_dir, tmp_path):
    src = tmp_path / "v2"
    shutil.copytree(synthetic_v2_dir, src)
    t1 = sorted(src.rglob("*_T1w.nii.gz"))[0]
    test_dir = src / "Testing" / "R009" / "sub-r009s001" / "ses-1" / "anat"
    test_dir.mkdir(parents=True)
    shutil.copy(t1, test_dir / "sub-r009s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz")  # no mask, as in 2.0
    from clci_keras.data import discover_subjects

    layout, recs = discover_subjects(src)
    assert layout == "v2" and [r.subject_id for r in recs] == ["sub-r001s001", "sub-r002s001", "sub-r003s001"]


def test_v2_missing_mask(synthetic_v2_dir, tmp_path):
    src = tmp_path / "v2"
    shutil.copytree(synthetic_v2_dir, src)
    victim = sorted(src.rglob("*_desc-T1lesion_mask.nii.gz"))[1]
    victim.unlink()
    (tmp_path / "out").mkdir()
    expect_error(src, tmp_path / "out" / "x.h5", r"sub-r002s001_ses-1_.*_T1w\.nii\.gz: missing lesion mask")


def test_error_in_worker_leaves_no_output(tree, synthetic_r11_dir):
    src, _, t1, _, out = tree
    # second subject (copied under another id) is broken; the first is fine
    with open(src / R11_CSV_NAME) as f:
        rows = list(csv.reader(f))
    site, sid, session = rows[1][:3]
    other = src / site / "0777777" / "t01"
    other.mkdir(parents=True)
    raw = t1.read_bytes()
    (other / "0777777_t1w_deface_stx.nii.gz").write_bytes(raw[:1000])
    shutil.copy(t1.parent / f"0{sid}_LesionSmooth_stx.nii.gz", other / "0777777_LesionSmooth_stx.nii.gz")
    with open(src / R11_CSV_NAME, "a", newline="") as f:
        csv.writer(f).writerow([site, "777777", " t01"])
    with pytest.raises(AtlasDataError, match="0777777_t1w_deface_stx"):
        prepare_h5(src, out, progress=False, workers=2)
    assert os.listdir(out.parent) == []


def test_cli_prep(synthetic_r11_dir, tmp_path, capsys):
    from clci_keras.cli import main

    out = tmp_path / "c.h5"
    assert main(["prep", str(synthetic_r11_dir), "-o", str(out), "--max-subjects", "1", "--quiet"]) == 0
    assert "1 subjects (r1.1), 189 slices" in capsys.readouterr().out
    assert main(["prep", str(synthetic_r11_dir), "-o", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["prep", str(tmp_path / "nowhere"), "-o", str(tmp_path / "d.h5"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_killed_run_leaves_no_file_at_output(synthetic_r11_dir, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "k.h5"
    code = (
        "from clci_keras.data import prepare_h5\n"
        f"prepare_h5({str(synthetic_r11_dir)!r}, {str(out)!r}, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 600  # hang guard only
        while time.time() < deadline and not list(tmp_path.glob(".k.h5.tmp-*")):
            assert proc.poll() is None, "prep finished before it could be killed"
            time.sleep(0.005)
        assert list(tmp_path.glob(".k.h5.tmp-*")), "temporary file never appeared"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()


def test_latin1_table_is_read(tree):
    src, *_, out = tree
    raw = (src / R11_CSV_NAME).read_bytes().replace(b"Ischemic", b"isch\xe9mique")
    (src / R11_CSV_NAME).write_bytes(raw)  # not valid UTF-8
    assert prepare_h5(src, out, progress=False)["n_subjects"] == 1


def test_data_prep_script_writes_h5_and_fold(synthetic_r11_dir, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data_prep" / "prepare_atlas.py"
    spec = importlib.util.spec_from_file_location("prepare_atlas", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out, split_path = tmp_path / "a.h5", tmp_path / "fold.json"
    rc = mod.main([str(synthetic_r11_dir), "-o", str(out), "--quiet", "--split", str(split_path), "--folds", "4",
                   "--fold", "1"])
    assert rc == 0 and out.is_file()
    split = json.loads(split_path.read_text())
    assert split["mode"] == "kfold" and split["test"] == [1] and split["train"] == [0, 2, 3]


def test_synthetic_marker_sets_the_synthetic_attribute(synthetic_r11_dir, synthetic_h5, tmp_path):
    from clci_keras.data.constants import SYNTHETIC_MARKER

    assert os.path.isfile(os.path.join(synthetic_r11_dir, SYNTHETIC_MARKER))
    with h5py.File(synthetic_h5, "r") as f:
        assert bool(f.attrs["synthetic"]) is True
    # The same tree without the generator's marker reads as real data.
    real = tmp_path / "real"
    shutil.copytree(synthetic_r11_dir, real)
    os.remove(real / SYNTHETIC_MARKER)
    prepare_h5(real, tmp_path / "real.h5", max_subjects=1)
    with h5py.File(tmp_path / "real.h5", "r") as f:
        assert bool(f.attrs["synthetic"]) is False


# ------------------------------------------- issue 14: nothing silent, nothing lost
def _linked_r11_tree(synthetic_r11_dir, dst, rows):
    """An R1.1 tree at ``dst`` whose table holds ``rows`` (no header unless given) and whose
    site folders are links to the synthetic tree's."""
    dst.mkdir()
    for name in os.listdir(synthetic_r11_dir):
        if name.startswith("Site"):
            os.symlink(synthetic_r11_dir / name, dst / name)
    with open(dst / R11_CSV_NAME, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return dst


@pytest.mark.parametrize("header", ["none", "release", "other names"])
def test_r11_table_header_is_detected_not_assumed(synthetic_r11_dir, tmp_path, header):
    from clci_keras.data.atlas import discover_subjects

    with open(synthetic_r11_dir / R11_CSV_NAME) as f:
        rows = list(csv.reader(f))
    first = {"none": [], "release": [rows[0]], "other names": [["site", "subject", "session"]]}[header]
    src = _linked_r11_tree(synthetic_r11_dir, tmp_path / "src", first + rows[1:4])
    layout, records = discover_subjects(src)
    assert layout == "r1.1"
    assert [r.subject_id for r in records] == ["0" + r[1] for r in rows[1:4]]  # 3 of 3, first one kept
    assert records[0].csv_row == len(first) + 1


def test_duplicate_table_row_fails_at_prep_naming_table_and_id(synthetic_r11_dir, tmp_path, capsys):
    from clci_keras.cli import main

    with open(synthetic_r11_dir / R11_CSV_NAME) as f:
        rows = list(csv.reader(f))
    src = _linked_r11_tree(synthetic_r11_dir, tmp_path / "src", rows[1:3] + [rows[1]])  # no header, a repeat
    out = tmp_path / "d.h5"
    with pytest.raises(AtlasDataError, match=rf"{R11_CSV_NAME}, line 3: duplicate row: subject '{rows[1][1]}'.*line 1"):
        prepare_h5(src, out, progress=False)
    assert main(["prep", str(src), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("clci-keras prep: error: ")
    assert R11_CSV_NAME in err and rows[1][1] in err
    assert not out.exists()


def _proc_state(pid):
    """'Z' for a zombie, None for no process, else the state letter."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def _wait_gone(pids, polls=6000, interval=0.05):
    """Poll until no pid is a live process (a bounded number of polls); return the live ones."""
    import time

    alive = list(pids)
    for _ in range(polls):
        alive = [p for p in alive if _proc_state(p) not in (None, "Z")]
        if not alive:
            break
        time.sleep(interval)
    return alive


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc (Linux)")
def test_killed_prep_leaves_no_workers_and_a_rerun_cleans_up(synthetic_r11_dir, tmp_path):
    """SIGKILL a `prep --workers 2` whose workers are busy: the workers end with it; a rerun
    removes the killed run's temporary file and writes the complete output."""
    import signal
    import subprocess
    import sys
    import time

    out, pids_dir = tmp_path / "k.h5", tmp_path / "pids"
    pids_dir.mkdir()
    # Fault injection: every subject blocks its worker (after saying which process it is).
    code = (
        "import os, time\n"
        "import clci_keras.data.preprocess as pp\n"
        "def block(*a, **k):\n"
        f"    open(os.path.join({str(pids_dir)!r}, str(os.getpid())), 'w').close()\n"
        "    time.sleep(600)\n"
        "pp.process_subject = block\n"
        f"pp.prepare_h5({str(synthetic_r11_dir)!r}, {str(out)!r}, progress=False, workers=2)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    workers = []
    try:
        for _ in range(12000):  # hang guard only: 600 s
            workers = [int(p) for p in os.listdir(pids_dir)]
            if len(workers) == 2:
                break
            assert proc.poll() is None, "prep ended before its workers started"
            time.sleep(0.05)
        assert len(workers) == 2, "the two workers never started"
        assert all(_proc_state(p) not in (None, "Z") for p in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert _wait_gone(workers) == [], "workers outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in workers:
            if _proc_state(p) not in (None, "Z"):
                os.kill(p, signal.SIGKILL)
    stale = [p.name for p in tmp_path.glob(".k.h5.tmp-*")]
    assert stale == [f".k.h5.tmp-{proc.pid}"] and not out.exists()
    with pytest.warns(UserWarning, match=r"\.k\.h5\.tmp-\d+: removed the temporary file"):
        res = prepare_h5(synthetic_r11_dir, out, progress=False, max_subjects=2)
    assert [os.path.basename(p) for p in res["removed_temporaries"]] == stale
    assert sorted(os.listdir(tmp_path)) == ["k.h5", "pids"]
    with h5py.File(out, "r") as f:
        assert f["data"].shape[0] == f["label"].shape[0] == 2 * 189 and len(f["subjects/subject_id"]) == 2
        assert f["data"][189 + 100].any()  # the last subject's chunks were written


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc (Linux)")
def test_worker_watchdog_without_prctl_ends_an_orphan():
    """The portable fallback alone (no PR_SET_PDEATHSIG): a process running the initializer
    exits once its parent is gone."""
    import signal
    import subprocess
    import sys

    child = (
        "import os, time\n"
        "from clci_keras.process import die_with_parent\n"
        "die_with_parent(os.getppid(), use_prctl=False, poll=0.05)\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE)\n"
        "print(p.stdout.readline().decode().strip(), flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE)
    orphan = None
    try:
        orphan = int(proc.stdout.readline())
        assert _proc_state(orphan) not in (None, "Z")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert _wait_gone([orphan]) == [], "the orphan kept running"
    finally:
        if proc.poll() is None:
            proc.kill()
        if orphan and _proc_state(orphan) not in (None, "Z"):
            os.kill(orphan, signal.SIGKILL)


def test_rerun_removes_only_its_own_stale_temporaries(synthetic_r11_dir, tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    keep = [".x.h5.tmp-notapid", "x.h5.tmp-1", f".other.h5.tmp-{dead.pid}", f".x.h5.tmp-{os.getppid()}",
            "notes.txt"]
    for name in keep + [f".x.h5.tmp-{dead.pid}"]:
        (tmp_path / name).write_bytes(b"user data")
    with pytest.warns(UserWarning, match=rf"\.x\.h5\.tmp-{dead.pid}: removed"):
        res = prepare_h5(synthetic_r11_dir, tmp_path / "x.h5", progress=False, max_subjects=1)
    assert res["removed_temporaries"] == [str(tmp_path / f".x.h5.tmp-{dead.pid}")]
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ["x.h5"])  # a live run's and others' files stay
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert f["data"].shape[0] == 189


def test_prep_progress_in_a_log_has_no_redraws(synthetic_r11_dir, tmp_path, capfd):
    prepare_h5(synthetic_r11_dir, tmp_path / "p.h5", progress=True, max_subjects=2)
    err = capfd.readouterr().err
    assert "prep r1.1: 2/2 subject (100%)" in err
    assert "\r" not in err and "\x1b[" not in err


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_max_subjects_must_be_positive(synthetic_r11_dir, tmp_path, bad):
    with pytest.raises(ValueError, match=rf"max_subjects must be a positive integer.*{bad}"):
        prepare_h5(synthetic_r11_dir, tmp_path / "m.h5", progress=False, max_subjects=bad)
    assert os.listdir(tmp_path) == []


def test_cli_prep_says_which_stale_temporary_it_removed(synthetic_r11_dir, tmp_path, capsys):
    import subprocess
    import sys

    from clci_keras.cli import main

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".c.h5.tmp-{dead.pid}"
    stale.write_bytes(b"half-written")
    assert main(["prep", str(synthetic_r11_dir), "-o", str(tmp_path / "c.h5"), "--max-subjects", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err == f"note: {stale}: removed the temporary file of an interrupted earlier run\n"
    assert os.listdir(tmp_path) == ["c.h5"]
