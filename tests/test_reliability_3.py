"""Nothing silent, nothing lost, part 3 (issue 35): SIGTERM, leftovers of killed runs, publish last,
locks before the start-up, backend write errors, links out of the input, summaries per input."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import slow_prep_script, wait_for as _wait_for

from clci_keras import fileio




# --- 1. SIGTERM (and SIGHUP) end a command as Ctrl-C does: one line, the same cleanup, 128 + signal ---
SLOW_SYNTH = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "import clci_keras.data.synthetic as s\n"
    "real = s.generate_subject\n"
    "def slow(seed=0, index=0, **k):\n"
    "    if index == 1:\n"
    "        open(sys.argv[2], 'w').close()\n"
    "        time.sleep(600)\n"
    "    return real(seed=seed, index=index, **k)\n"
    "s.generate_subject = slow\n"
    "from clci_keras.cli import main\n"
    "sys.exit(main(['synth', sys.argv[1], '--layout', 'v2', '--subjects', '3', '--quiet']))\n"
)


@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                (signal.SIGINT, 130, "interrupted")])
def test_a_signal_in_synth_exits_with_one_line_and_leaves_nothing(tmp_path, signum, code, word):
    out, flag = tmp_path / "out" / "ds", tmp_path / "second-subject"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SYNTH, str(out), str(flag)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(flag.exists, proc, "the second subject")
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clci-keras synth: {word}; nothing was written to {out}"), err
    assert not (tmp_path / "out").exists()  # no half-made folder, no temporary, no lock file, no empty folder


def test_terminated_is_ctrl_c_with_its_own_exit_code_and_line(monkeypatch, capsys, tmp_path):
    import clci_keras.cli.tables as tables
    from clci_keras.cli import Terminated, main

    for signum, code in ((signal.SIGTERM, 143), (signal.SIGHUP, 129)):
        def run(args, signum=signum):
            raise Terminated(signum)

        monkeypatch.setattr(tables, "run", run)
        assert main(["tables", str(tmp_path), "-o", str(tmp_path)]) == code
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"clci-keras tables: terminated ({signal.Signals(signum).name}); nothing was published "
                       "under a final name; run the command again"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler lives only while a command runs


def test_the_sigterm_handler_raises_in_the_command_and_is_restored(monkeypatch, capsys, tmp_path):
    import clci_keras.cli.tables as tables
    from clci_keras.cli import main

    seen = []

    def run(args):
        seen.append(signal.getsignal(signal.SIGTERM))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(tables, "run", run)
    assert main(["tables", str(tmp_path), "-o", str(tmp_path)]) == 143
    assert seen[0] not in (signal.SIG_DFL, signal.SIG_IGN)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert "terminated (SIGTERM)" in capsys.readouterr().err


def test_the_leftovers_of_killed_runs_are_recognised_and_removed(tmp_path):
    out = tmp_path / "model.onnx"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    left = [fileio.temporary(out), fileio.temporary(out, tag="partial"), fileio.temporary(tmp_path / "ds", folder=True),
            str(tmp_path / f".model.onnx.tmp-{dead}")]
    open(left[-1], "w").close()
    mine = fileio.temporary(out, per_process=True)  # this live process's: kept
    kept = [tmp_path / "model.onnx.card.json", tmp_path / ".other.tmp.onnx", tmp_path / "notes.txt"]
    for k in kept:
        k.write_text("x")
    removed = fileio.remove_leftovers(out, tmp_path / "ds")
    assert sorted(removed) == sorted(left)
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(mine)] + [k.name for k in kept])


# --- 2. publish last, check first: synth ---
def test_synth_into_a_new_folder_appears_only_when_complete(monkeypatch, tmp_path):
    import clci_keras.data.synthetic as s

    real = s.generate_subject
    out = tmp_path / "ds"

    def stop_at_second(seed=0, index=0, **k):
        if index == 1:
            assert not out.exists()  # being written elsewhere
            raise KeyboardInterrupt
        return real(seed=seed, index=index, **k)

    monkeypatch.setattr(s, "generate_subject", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        s.generate_dataset(out, layout="v2", n_subjects=2)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(s, "generate_subject", real)
    recs = s.generate_dataset(out, layout="v2", n_subjects=2)  # no --overwrite needed
    assert all(os.path.isfile(r["t1_path"]) and r["t1_path"].startswith(str(out)) for r in recs)
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_an_interrupted_synth_in_an_existing_folder_is_completed_by_the_same_command(monkeypatch, tmp_path, capsys):
    import clci_keras.data.synthetic as s
    from clci_keras.cli import main
    from clci_keras.data.constants import SYNTHETIC_MARKER

    real = s.generate_subject
    out = tmp_path / "ds"
    out.mkdir()

    def stop_at_second(seed=0, index=0, **k):
        if index == 1:
            raise KeyboardInterrupt
        return real(seed=seed, index=index, **k)

    monkeypatch.setattr(s, "generate_subject", stop_at_second)
    argv = ["synth", str(out), "--layout", "v2", "--subjects", "2", "--quiet"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"clci-keras synth: interrupted; the subjects written so far are kept in {out}, marked "
                   "unfinished; run the same command again to complete it"]
    assert (out / s.PARTIAL_MARKER).exists() and not (out / SYNTHETIC_MARKER).exists()
    monkeypatch.setattr(s, "generate_subject", real)
    assert main(argv[:-3] + ["--subjects", "3", "--quiet"]) == 2  # other arguments: refused, named
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out}: holds an unfinished synthetic release of other settings" in err[0]
    assert "n_subjects 2" in err[0]
    assert main(argv) == 0  # the same command completes it, without --overwrite
    assert not (out / s.PARTIAL_MARKER).exists() and (out / SYNTHETIC_MARKER).exists()
    assert len(list(out.rglob("*_T1w.nii.gz"))) == 2
    assert main(argv) == 2  # a complete one is not written again
    assert f"{out}: output folder is not empty (pass --overwrite" in capsys.readouterr().err


def test_a_full_disk_in_synth_names_the_output_and_leaves_nothing(monkeypatch, tmp_path, capsys):
    import clci_keras.data.synthetic as s
    from clci_keras.cli import main

    def full(arr, affine, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(s, "save_nifti", full)
    out = tmp_path / "ds"
    assert main(["synth", str(out), "--layout", "r1.1", "--subjects", "1", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (f"clci-keras synth: error: {out}: cannot write it: "
                                               "No space left on device")
    assert os.listdir(tmp_path) == []


# --- 3. locks, taken before the expensive start-up ---
def test_a_second_synth_into_a_folder_in_use_fails_at_once(monkeypatch, tmp_path, capsys):
    import clci_keras.data.synthetic as s
    from clci_keras.cli import main

    def never(*a, **k):
        raise AssertionError("started although the output is in use")

    monkeypatch.setattr(s, "generate_subject", never)
    out = tmp_path / "ds"
    with fileio.exclusive(out, what="output folder"):
        assert main(["synth", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out}: this output folder is in use by another run (process {os.getpid()}" in err[0]


def test_a_second_export_to_an_output_in_use_fails_before_tensorflow_starts(tmp_path):
    out = tmp_path / "m.onnx"
    code = ("import sys\nfrom clci_keras.cli import main\n"
            f"rc = main(['export', '--weights', {str(tmp_path / 'w.weights.h5')!r}, '--format', 'onnx', '-o', "
            f"{str(out)!r}])\n"
            "print(rc, [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules])\n")
    with fileio.exclusive(out, what="export output"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "2 []", proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and f"{out}: this export output is in use by another run (process {os.getpid()}" in err[0]


# --- 2, 4. export: checked and carded as a temporary, published last; backend write errors in one line ---
class _FakeNet:
    input_shape = (None, 8, 8, 1)

    def __init__(self, fail=None):
        self.fail = fail

    def __call__(self, x, training=False):
        return x

    def export(self, path, format, verbose=False):
        if self.fail is not None:
            raise self.fail
        if format == "onnx":
            with open(path, "wb") as f:
                f.write(b"onnx" * 100)
        else:
            os.makedirs(os.path.join(path, "variables"), exist_ok=True)
            with open(os.path.join(path, "saved_model.pb"), "wb") as f:
                f.write(b"pb" * 100)


@pytest.fixture
def fake_export(monkeypatch, tmp_path):
    import clci_keras.inference.export as ex
    import clci_keras.inference.predict as pr

    state = {"net": _FakeNet(), "seen": []}
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"w")
    monkeypatch.setattr(pr, "card_settings", lambda w, model=None: {"model": "clci_net", "crop": "clci", "cards": {}})
    monkeypatch.setattr(pr, "build_inference_model", lambda *a, **k: state["net"])
    monkeypatch.setattr(ex, "_crop_of", lambda net: "clci")

    def check(net, path, fmt):
        state["seen"].append(("check", os.path.basename(path), os.path.lexists(tmp_path / "out" / "m")))
        return 0.0

    def card(weights, settings, info):
        state["seen"].append(("card", os.path.lexists(info["path"])))
        if state.get("card_fails"):
            raise KeyboardInterrupt
        path = info["path"] + ".card.json"
        with fileio.atomic_text(path) as f:
            json.dump({"export": {"file": os.path.basename(info["path"])}}, f)
        return path

    monkeypatch.setattr(ex, "_check", check)
    monkeypatch.setattr(ex, "_write_export_card", card)
    state["weights"] = str(weights)
    return state


@pytest.mark.parametrize("fmt", ["onnx", "savedmodel"])
def test_an_export_is_checked_and_carded_before_it_appears(fake_export, tmp_path, fmt):
    from clci_keras.inference.export import export_model

    out = tmp_path / "out" / "m"
    fake_export["card_fails"] = True  # Ctrl-C while its card is written
    with pytest.raises(KeyboardInterrupt):
        export_model(fake_export["weights"], out, fmt=fmt)
    assert fake_export["seen"][0][0] == "check" and fake_export["seen"][0][1].startswith(".")  # the temporary
    assert fake_export["seen"][0][2] is False and fake_export["seen"][1] == ("card", False)
    assert not (tmp_path / "out").exists()  # nothing under the final name, no temporary, no lock, no empty folder
    fake_export["card_fails"] = False
    info = export_model(fake_export["weights"], out, fmt=fmt)  # the same command: no --overwrite needed
    assert os.path.exists(out) and os.path.isfile(info["card"])
    assert sorted(os.listdir(tmp_path / "out")) == ["m", "m.card.json"]


def test_a_backend_error_while_exporting_is_one_line_naming_the_output(fake_export, tmp_path, capsys):
    from clci_keras.cli import main

    class ResourceExhaustedError(Exception):  # as TensorFlow reports a write on a full disk
        pass

    out = tmp_path / "out" / "m"
    fake_export["net"] = _FakeNet(ResourceExhaustedError(f"{out}/variables/x.data; No space left on device"))
    assert main(["export", "--weights", fake_export["weights"], "--format", "savedmodel", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"clci-keras export: error: {out}: cannot write it: "
                                               "No space left on device (ResourceExhaustedError)")
    assert not (tmp_path / "out").exists()


def test_a_tensorflow_op_error_while_writing_names_the_output():
    tf = pytest.importorskip("tensorflow")
    from clci_keras.inference.export import _write_error

    e = _write_error(tf.errors.UnknownError(None, None, "Failed to write the variables\nmore detail"), "/o/m")
    assert isinstance(e, OSError) and e.filename == "/o/m"
    assert e.strerror == "cannot write it: UnknownError: Failed to write the variables"
    bad_model = ValueError("cannot export this layer")
    assert _write_error(bad_model, "/o/m") is bad_model


def test_write_errors_of_libraries_name_the_target(tmp_path):
    from clci_keras.cli import error_line

    class InternalError(Exception):
        pass

    for exc, text in ((InternalError("flush failed: Read-only file system"), "Read-only file system"),
                      (RuntimeError("write: Disk quota exceeded"), "Disk quota exceeded")):
        err = fileio.write_error(exc, tmp_path / "x")
        assert error_line("export", err) == (f"clci-keras export: error: {tmp_path / 'x'}: cannot write it: "
                                             f"{text} ({type(exc).__name__})")
    other = RuntimeError("a bug")
    assert fileio.write_error(other, "x") is other
    stop = KeyboardInterrupt("No space left on device")
    assert fileio.write_error(stop, "x") is stop
    named = OSError(errno.ENOSPC, "cannot write it: No space left on device", "/a/card.json")
    assert fileio.write_error(named, "/a/m") is named  # a file written inside the block keeps its name


# --- 5. paths: resolved output checks, every input named, BIDS names that disagree with their folders ---
def _touch(*paths):
    for p in paths:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "w").close()


def test_every_nifti_found_is_taken_or_named_with_its_reason(tmp_path):
    from clci_keras.inference.io import find_inputs

    d = tmp_path / "in"
    t1s = [str(d / "sub-01" / "anat" / "sub-01_T1w.nii.gz"), str(d / "sub-01" / "anat" / "scan_0001.nii")]
    others = [str(d / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz"),
              str(d / "sub-01" / "anat" / "sub-01_label-L_desc-T1lesion_mask.nii.gz")]
    _touch(*t1s, *others, str(d / "notes.txt"))
    skipped = []
    inputs, errors = find_inputs([str(d)], skipped=skipped)
    assert sorted(p for p, _ in inputs) == sorted(t1s) and errors == []
    assert dict(skipped) == {others[0]: "a BIDS FLAIR image by its name, not a T1w image",
                             others[1]: "a label image by its name (lesion, mask, label, _seg, _prob), "
                                        "not a T1 image"}
    only_flair = tmp_path / "flair"
    _touch(str(only_flair / "sub-02_FLAIR.nii.gz"))
    inputs, errors = find_inputs([str(only_flair)])
    assert inputs == [] and errors[0][1].startswith(f"{only_flair}: folder contains no NIfTI T1 image")
    assert "1 NIfTI file(s) skipped" in errors[0][1]


def test_an_output_folder_linked_into_the_inputs_is_not_read_as_input(tmp_path):
    from clci_keras.inference.io import find_inputs

    d = tmp_path / "in"
    _touch(str(d / "a.nii.gz"), str(d / "results" / "a_lesion_mask.nii.gz"), str(d / "results" / "b.nii.gz"))
    os.symlink(d / "results", tmp_path / "out")  # the output given through a link
    inputs, _ = find_inputs([str(d)], exclude=[str(tmp_path / "out")])
    assert [p for p, _ in inputs] == [str(d / "a.nii.gz")]


@pytest.mark.parametrize("relpath, why", [
    ("sub-03/anat/sub-04_T1w.nii.gz", "its name says sub-04 but it lies in the folder sub-03"),
    ("sub-03/ses-1/anat/sub-03_ses-2_T1w.nii.gz", "its name says ses-2 but it lies in the folder ses-1"),
    ("sub-03/ses-1/anat/sub-03_T1w.nii.gz", "its name says no session but it lies in the folder ses-1"),
    ("sub-03/anat/sub-03_ses-1_T1w.nii.gz", "its name says ses-1 but it lies in no ses- folder"),
    ("sub-03/ses-1/anat/sub-03_ses-1_T1w.nii.gz", None),
])
def test_a_bids_name_that_disagrees_with_its_folders_is_named(relpath, why):
    from clci_keras.bids.layout import misfiled, parse_entities

    assert misfiled(relpath, parse_entities(relpath)) == why


def test_find_scans_refuses_a_scan_filed_under_another_subject(tmp_path):
    pytest.importorskip("bids")
    from clci_keras.bids.layout import find_scans

    (tmp_path / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    good, bad = tmp_path / "sub-01/anat/sub-01_T1w.nii.gz", tmp_path / "sub-03/anat/sub-04_T1w.nii.gz"
    _touch(str(good), str(bad))
    with pytest.raises(ValueError, match=f"{bad}: its name says sub-04 but it lies in the folder sub-03; refused"):
        find_scans(tmp_path)
    refused = []
    assert [s.path for s in find_scans(tmp_path, refused=refused)] == [str(good)]
    assert [p for p, _ in refused] == [str(bad)]


def _external_h5(tmp_path, kind):
    import h5py

    from clci_keras.data.preprocess import read_subjects  # noqa: F401  (the reader under test)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with h5py.File(elsewhere / "src.h5", "w") as g:
        g["data"] = np.zeros((189, 4, 4), np.float32)
    path = tmp_path / "slices.h5"
    with h5py.File(path, "w") as f:
        if kind == "external link":
            f["data"] = h5py.ExternalLink(str(elsewhere / "src.h5"), "/data")
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(189, 4, 4), dtype="f4")
            layout[:] = h5py.VirtualSource(str(elsewhere / "src.h5"), "data", shape=(189, 4, 4))
            f.create_virtual_dataset("data", layout)
        else:
            f.create_dataset("data", shape=(189, 4, 4), dtype="f4",
                             external=[(str(elsewhere / "raw.bin"), 0, 189 * 16 * 4)])
            (elsewhere / "raw.bin").write_bytes(bytes(189 * 16 * 4))
        f["label"] = np.zeros((189, 4, 4), np.uint8)
    return path


@pytest.mark.parametrize("kind, said", [("external link", "an external link to"),
                                        ("virtual", "a virtual dataset mapping"),
                                        ("external storage", "stored in the external files")])
def test_hdf5_data_outside_the_file_is_refused_unless_allowed(tmp_path, monkeypatch, kind, said):
    from clci_keras.data.h5links import ALLOW_ENV
    from clci_keras.data.preprocess import read_subjects
    from clci_keras.data.reader import SliceReader

    path = _external_h5(tmp_path, kind)
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    with pytest.raises(ValueError) as e:
        read_subjects(str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}: HDF5 object /data is {said} ") and str(tmp_path / "elsewhere") in msg
    assert ALLOW_ENV in msg and "\n" not in msg
    with pytest.raises(ValueError, match="outside this file"):
        SliceReader(str(path), "clci").file
    monkeypatch.setenv(ALLOW_ENV, "1")
    assert len(read_subjects(str(path))) == 1


def test_split_refuses_an_hdf5_file_with_an_external_link_in_one_line(tmp_path, monkeypatch, capsys):
    from clci_keras.cli import main
    from clci_keras.data.h5links import ALLOW_ENV

    monkeypatch.delenv(ALLOW_ENV, raising=False)
    path = _external_h5(tmp_path, "external link")
    assert main(["split", str(path), "-o", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}: HDF5 object /data is an external link" in err[0]


# --- 6. messages: no internal spellings, the output named ---
def test_messages_have_no_internal_spellings(tmp_path):
    from clci_keras.inference.io import InputError, validate_volume

    with pytest.raises(InputError) as e:
        validate_volume(np.zeros((4, 4, 4), np.float32), "x.nii.gz")
    assert str(e.value) == "x.nii.gz: empty volume (every voxel equals 0.0)"


def test_a_full_disk_while_saving_outputs_names_the_output(monkeypatch, tmp_path):
    import nibabel as nib

    from clci_keras.inference.io import save_atomic

    def full(img, path):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(nib, "save", full)
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    with pytest.raises(OSError) as e:
        save_atomic([(b"{}", tmp_path / "a.json"), (img, tmp_path / "a_mask.nii.gz")])
    assert e.value.filename == str(tmp_path / "a_mask.nii.gz") and "cannot write it" in e.value.strerror
    assert os.listdir(tmp_path) == []


# --- 7. the predict summary: recorded per input; --continue keeps the rows of the inputs it skips ---
class _Seg:
    grid = "atlas"
    seconds = 0.5
    registration = None

    def __init__(self, voxels):
        import nibabel as nib

        m = np.zeros((4, 4, 4), np.uint8)
        m.flat[:voxels] = 1
        self.mask = nib.Nifti1Image(m, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_the_summary_keeps_every_finished_input_through_a_kill_and_continue(monkeypatch, tmp_path):
    import csv

    import nibabel as nib

    import clci_keras.inference.batch as batch
    from clci_keras.inference.batch import Job, segment_files

    out = tmp_path / "out"
    jobs = [Job(str(tmp_path / f"{k}.nii.gz"), str(out / f"{k}_lesion_mask.nii.gz")) for k in "abc"]
    summary = str(out / "predict_summary.csv")
    stop_at = {"b"}

    def fake(model, job, *a):
        name = os.path.basename(job.input)[0]
        if name in stop_at:
            raise KeyboardInterrupt
        seg = _Seg({"a": 1, "b": 2, "c": 3}[name])
        os.makedirs(out, exist_ok=True)
        nib.save(seg.mask, job.mask)
        return seg

    monkeypatch.setattr(batch, "_segment_job", fake)
    net = type("FakeNet", (), {"name": "fake"})()  # never run: _segment_job is replaced
    with pytest.raises(KeyboardInterrupt):
        segment_files(net, jobs, summary=summary)
    rows = list(csv.DictReader(open(summary)))
    assert [(r["input"], r["lesion_ml"]) for r in rows] == [(jobs[0].input, "0.008")]  # recorded at once
    os.remove(summary)  # as a run killed between writing a mask and its row would leave it
    stop_at.clear()
    result = segment_files(net, jobs, resume=True, summary=summary)
    assert [j.input for j in result.skipped] == [jobs[0].input] and len(result.done) == 2
    rows = {r["input"]: r for r in csv.DictReader(open(summary))}
    assert [rows[j.input]["lesion_ml"] for j in jobs] == ["0.008", "0.016", "0.024"]
    assert rows[jobs[0].input]["message"] == "finished by an earlier run" and rows[jobs[0].input]["status"] == "ok"
    before = open(summary).read()
    segment_files(net, jobs, resume=True, summary=summary)  # all skipped: every row kept as it was
    assert open(summary).read() == before


def test_the_leftovers_in_a_locked_output_folder_are_removed(tmp_path):
    out = tmp_path / "out"
    deep = out / "sub-01" / "anat"
    deep.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    left = [fileio.temporary(deep / "a_lesion_mask.nii.gz"), fileio.temporary(out / "predict_summary.csv"),
            fileio.temporary(out / "sub-01" / "figures", folder=True), str(deep / f".x.json.tmp-{dead}")]
    open(left[-1], "w").close()
    open(os.path.join(left[2], "inside.png"), "w").close()
    mine = fileio.temporary(deep / "b.json", per_process=True)
    (deep / "a_lesion_mask.nii.gz").write_text("kept")
    with fileio.exclusive(out, what="output folder", inside=True):
        assert sorted(fileio.remove_leftovers_under(out)) == sorted(left)
    assert sorted(os.listdir(deep)) == sorted([os.path.basename(mine), "a_lesion_mask.nii.gz"])
    assert sorted(os.listdir(out)) == ["sub-01"]


def test_sigterm_in_prep_with_workers_exits_143_with_one_line_and_no_file(synthetic_r11_dir, tmp_path):
    out, pids = tmp_path / "p.h5", tmp_path / "pids"
    pids.mkdir()
    code = slow_prep_script(synthetic_r11_dir, out, pids, ["time.sleep(600)"])  # each subject waits (and says where)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _wait_for(lambda: len(os.listdir(pids)) == 2, proc, "two workers started")
        os.killpg(proc.pid, signal.SIGTERM)  # as a batch system's stop: the whole process group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clci-keras prep: terminated (SIGTERM);"), err
    assert sorted(os.listdir(tmp_path)) == ["pids"]  # no output, no temporary, no lock
    for pid in os.listdir(pids):  # the workers are gone too
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


def test_a_library_error_of_a_full_disk_anywhere_is_one_line(monkeypatch, capsys, tmp_path):
    import clci_keras.cli.tables as tables
    from clci_keras.cli import main

    class ResourceExhaustedError(Exception):
        pass

    def run(args):
        raise ResourceExhaustedError(f"{tmp_path}/ckpt.data-00000; No space left on device\n\tdetail line")

    monkeypatch.setattr(tables, "run", run)
    assert main(["tables", str(tmp_path), "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"clci-keras tables: error: ResourceExhaustedError: {tmp_path}/"
                                               "ckpt.data-00000; No space left on device")

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(tables, "run", bug)
    with pytest.raises(RuntimeError):  # anything else keeps its traceback
        main(["tables", str(tmp_path), "-o", str(tmp_path)])


def test_an_output_that_is_an_input_through_a_link_is_refused(tmp_path, capsys):
    from clci_keras.cli import main

    h5 = tmp_path / "data.h5"
    h5.write_bytes(b"not read")
    os.symlink(h5, tmp_path / "alias.json")
    assert main(["split", str(h5), "-o", str(tmp_path / "alias.json"), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"clci-keras split: error: {tmp_path / 'alias.json'}: the split file is the input {h5} "
                   "; choose another split file".replace(" ;", ";")]
    os.link(h5, tmp_path / "hard.onnx")
    with pytest.raises(ValueError, match="hard.onnx: the export output is the input .*data.h5; choose another"):
        fileio.check_not_an_input(tmp_path / "hard.onnx", [h5], what="export output")
    inside = tmp_path / "ds" / "derivatives"
    (tmp_path / "ds").mkdir()
    os.symlink(tmp_path / "ds", tmp_path / "link")
    with pytest.raises(ValueError, match=r"the output folder lies inside the input .*link \(resolved: .*ds\)"):
        fileio.check_not_an_input(inside, [tmp_path / "link"], what="output folder")
    fileio.check_not_an_input(tmp_path / "other.json", [h5, None])
    assert h5.read_bytes() == b"not read"


def test_a_command_can_lock_its_output_before_its_start_up_and_call_a_locking_library(tmp_path):
    out = tmp_path / "out"
    with fileio.exclusive(out, what="output folder", inside=True):  # the command, before its start-up
        assert fileio.holds(out, inside=True)
        with fileio.exclusive(out, what="output folder", inside=True, reentrant=True):  # the library
            assert fileio.holds(out, inside=True)
        assert fileio.holds(out, inside=True) and os.path.exists(out / ".clci-keras.lock")
        with pytest.raises(fileio.OutputInUseError):  # not reentrant: refused, as before
            with fileio.exclusive(out, what="output folder", inside=True):
                pass
    assert not fileio.holds(out, inside=True) and not out.exists()  # the lock's own folder goes when empty
    with fileio.exclusive(out, inside=True, reentrant=True):  # not held yet: locks
        assert fileio.holds(out, inside=True)


def test_what_a_killed_synth_left_is_removed_by_the_next_run(tmp_path):
    from clci_keras.data.synthetic import generate_dataset

    out, flag = tmp_path / "out" / "ds", tmp_path / "second-subject"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SYNTH, str(out), str(flag)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(flag.exists, proc, "the second subject")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no cleanup code runs
        proc.communicate(timeout=60)
    left = os.listdir(tmp_path / "out")
    assert any(fileio.is_temporary(n, "ds") for n in left) and not out.exists()  # recognisable as such
    recs = generate_dataset(out, layout="v2", n_subjects=3)
    assert os.listdir(tmp_path / "out") == ["ds"] and len(recs) == 3


def test_a_second_tables_run_into_a_folder_in_use_fails_at_once(tmp_path, capsys):
    from clci_keras.cli import main

    (tmp_path / "runs").mkdir()
    out = tmp_path / "tables"
    with fileio.exclusive(out, what="tables folder", inside=True):
        assert main(["tables", str(tmp_path / "runs"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out}: this tables folder is in use by another run (process {os.getpid()}" in err[0]
    assert not out.exists()


# --- 3, 5, 6 in predict and the BIDS App: lock before the start-up, resolved paths, named inputs ---
@pytest.mark.parametrize("command", ["predict", "bids"])
def test_a_second_predict_or_bids_run_fails_before_keras_starts(tmp_path, command):
    ds = tmp_path / "ds"
    scan = tmp_path / "scan.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), scan)
    (ds / "sub-01" / "anat").mkdir(parents=True)
    (ds / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), ds / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"not read before the lock")
    if command == "predict":
        out = tmp_path / "out"
        argv, locked = ["predict", str(scan), "-o", str(out), "--weights", str(weights)], out
    else:
        out = tmp_path / "bout"
        argv, locked = ["bids", str(ds), str(out), "participant", "--weights", str(weights)], out / "clci_keras"
    code = ("import sys\nfrom clci_keras.cli import main\n"
            f"rc = main({argv!r})\n"
            "print(rc, [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules])\n")
    with fileio.exclusive(locked, what="output folder", inside=True):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "2 []", proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and f"in use by another run (process {os.getpid()}" in err[0], err


def test_predict_names_what_it_found_nothing_in_and_what_it_skipped(tmp_path, capsys):
    import nibabel as nib

    from clci_keras.cli import main

    src = tmp_path / "src"
    src.mkdir()
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), src / "sub-01_label-L_desc-T1lesion_mask.nii.gz")
    assert main(["predict", str(src), "-o", str(tmp_path / "out"), "--weights", str(tmp_path / "w.h5")]) == 2
    captured = capsys.readouterr()
    assert f"skipped {src / 'sub-01_label-L_desc-T1lesion_mask.nii.gz'}" in captured.out
    assert f"{src}: no input to segment (no NIfTI T1 image found; 1 NIfTI file(s) skipped" in captured.err
    scan = src / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), scan)
    before = scan.read_bytes()
    assert main(["predict", str(scan), "-o", str(scan), "--weights", str(tmp_path / "w.h5"), "--overwrite"]) == 2
    assert "output mask" in capsys.readouterr().err and scan.read_bytes() == before  # the input is not replaced


def test_a_bids_output_linked_into_the_input_dataset_is_refused(tmp_path, capsys):
    from clci_keras.cli import main

    ds = tmp_path / "ds"
    (ds / "sub-01" / "anat").mkdir(parents=True)
    (ds / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    os.symlink(ds / "sub-01", tmp_path / "out")  # looks outside, writes inside
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"x")
    assert main(["bids", str(ds), str(tmp_path / "out"), "participant", "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "must not lie inside the input dataset" in err and "resolved:" in err
    assert sorted(os.listdir(ds / "sub-01")) == ["anat"]  # nothing written into the raw dataset
