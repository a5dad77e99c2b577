"""Nothing silent, nothing lost (issue 24): bad files named in one line, interrupts, links, names."""
import csv
import json
import os

import pytest
from conftest import slow_prep_script, wait_for as _wait_for

from clci_keras.data.splits import load_split
from clci_keras.evaluation.evaluate import write_scores
from clci_keras.reports.tables import write_tables


# --- split files: any JSON value where a list belongs is a one-line ValueError naming the file ---
@pytest.mark.parametrize("split", [
    {"train": None, "val": [], "test": [1]},
    {"train": 3, "val": [], "test": [1]},
    {"train": [0], "val": "1", "test": [1]},
    {"train": [0], "val": [], "test": [1], "folds": None},
    {"train": [0], "val": [], "test": [1], "folds": [3]},
    {"train": [0], "val": [], "test": [1], "subject_ids": 5},
    {"train": [0], "val": [], "test": [1], "folds": [{"train": None, "test": [1]}]},
    {"ids": None},
    {"ids": {"train": None}},
    {"ids": {"train": ["a"], "test": 7}},
    [0, 1],
    None,
    "train",
])
def test_a_malformed_split_file_is_a_value_error_naming_it(tmp_path, split):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    with pytest.raises(ValueError) as e:
        load_split(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# --- tables: a cut scores row or a broken summary names the file; the other runs still make tables ---
def _run(root, name, model, dscs):
    run = os.path.join(root, name)
    os.makedirs(run)
    rows = [{"subject_index": i, "subject_id": f"s{i}", "site": "x", "dsc": d, "precision": 0.5,
             "recall": 0.25, "voe": 40.0, "rvd": -10.0} for i, d in enumerate(dscs)]
    write_scores(rows, os.path.join(run, "scores_test.csv"))
    with open(os.path.join(run, "summary_test.json"), "w") as f:
        json.dump({"model": model, "part": "test", "data": {"h5": "/d/x.h5"}, "scores": {}}, f)
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump({"model": model}, f)
    return run


def _cut_last_row(csv_path):
    text = open(csv_path).read().rstrip("\n")
    open(csv_path, "w").write(text[: text.rfind(",", 0, text.rfind(",") - 1)] + "\n")


@pytest.mark.parametrize("damage", ["cut_csv_row", "empty_summary", "half_summary", "summary_list"])
def test_tables_leave_out_a_broken_run_and_write_the_others(tmp_path, damage):
    good = _run(tmp_path / "runs", "good", "fcn8s", [0.5, 0.7])
    bad = _run(tmp_path / "runs", "bad", "clci_net", [0.6, 0.8])
    summary = os.path.join(bad, "summary_test.json")
    if damage == "cut_csv_row":
        _cut_last_row(os.path.join(bad, "scores_test.csv"))
        named = os.path.join(bad, "scores_test.csv")
    else:
        text = {"empty_summary": "", "half_summary": open(summary).read()[:20], "summary_list": "[1]"}[damage]
        open(summary, "w").write(text)
        named = summary
    with pytest.raises(ValueError, match=named.replace("\\", "\\\\")):
        write_tables(tmp_path / "runs", tmp_path / "t1")  # without a list: the first error, naming the file
    broken = []
    written = write_tables(tmp_path / "runs", tmp_path / "tables", broken=broken)
    assert [(r, m) for r, m, _ in broken] == [(bad, "clci_net")]
    assert named in broken[0][2]
    rows = {r["model"]: r for r in csv.DictReader(open(written["table1.csv"]))}
    assert float(rows["fcn8s"]["measured_dsc"]) == pytest.approx(0.6)
    assert rows["clci_net"]["measured_dsc"] == "" and bad in rows["clci_net"]["measured_on"]
    assert good not in rows["clci_net"]["measured_on"]


def test_tables_cli_exits_1_naming_the_broken_run(tmp_path, capsys):
    from clci_keras.cli import main

    _run(tmp_path / "runs", "good", "fcn8s", [0.5])
    bad = _run(tmp_path / "runs", "bad", "clci_net", [0.6])
    open(os.path.join(bad, "summary_test.json"), "w").close()
    assert main(["tables", str(tmp_path / "runs"), "-o", str(tmp_path / "tables")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad in err[0] and "summary_test.json" in err[0]
    assert os.path.exists(tmp_path / "tables" / "table1.md")


# --- Ctrl-C: exit 130 and one line, the same cleanup as any error, no worker tracebacks ---


def test_ctrl_c_in_prep_exits_130_with_one_line_and_no_file(synthetic_r11_dir, tmp_path):
    import signal
    import subprocess
    import sys

    out, pids = tmp_path / "p.h5", tmp_path / "pids"
    pids.mkdir()
    code = slow_prep_script(synthetic_r11_dir, out, pids, ["time.sleep(1)", "raise RuntimeError('never reached in this test')"],
                            sigint_default=True)  # each subject takes a while (and says which worker took it)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _wait_for(lambda: len(os.listdir(pids)) == 2, proc, "two workers started")
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clci-keras prep: interrupted;"), err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["pids"]  # no output, no temporary


# --- full disk: one OSError naming the target, no temporary left, no crash at exit ---
FULL_DISK = r'''
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
import numpy as np, h5py
from clci_keras import fileio
folder = sys.argv[1]
with open(os.path.join(folder, "kept.csv"), "w") as f:
    f.write("earlier results\n")
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
left_open = []
def write_like_keras(path):  # writes by file name and leaves the file open when a write fails
    f = h5py.File(path, "w")
    left_open.append(f)
    f.create_dataset("w", data=np.random.default_rng(0).random((300, 300)))
    f.close()
for name, write in (("best.weights.h5", None), ("kept.csv", None)):
    try:
        if name.endswith(".h5"):
            with fileio.atomic_path(os.path.join(folder, name)) as tmp:
                write_like_keras(tmp)
        else:
            with fileio.atomic_text(os.path.join(folder, name)) as f:
                f.write("x" * 500_000)
    except OSError as e:
        print(f"{name}: {e}")
'''


def test_a_full_disk_is_one_error_naming_the_target_and_nothing_is_lost(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr  # no crash freeing h5py objects
    lines = proc.stdout.strip().splitlines()
    assert lines == [f"best.weights.h5: [Errno 27] cannot write it: File too large: '{tmp_path / 'best.weights.h5'}'",
                     f"kept.csv: [Errno 27] cannot write it: File too large: '{tmp_path / 'kept.csv'}'"]
    assert sorted(os.listdir(tmp_path)) == ["kept.csv"]  # no temporary, no partial weights
    assert (tmp_path / "kept.csv").read_text() == "earlier results\n"  # the earlier file untouched


def test_the_cli_names_the_target_of_a_full_disk(capsys):
    import errno

    from clci_keras.cli import error_line
    from clci_keras.fileio import _failed

    e = _failed(OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: ...)"), "/o/x.h5")
    assert error_line("train", e) == "clci-keras train: error: /o/x.h5: cannot write it: No space left on device"


# --- one run per output ---
def test_exclusive_is_reused_after_a_killed_holder_and_refused_while_one_lives(tmp_path):
    import signal
    import subprocess
    import sys

    from clci_keras.fileio import OutputInUseError, exclusive

    out = tmp_path / "data.h5"
    code = ("import sys, time\nfrom clci_keras.fileio import exclusive\n"
            f"with exclusive({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputInUseError, match=rf"data.h5: this output is in use by another run \(process "
                                                   rf"{holder.pid}\b"):
            with exclusive(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(60)
    assert (tmp_path / ".data.h5.lock").exists()  # left by the killed holder...
    with exclusive(out):  # ...and taken over at once
        pass
    assert os.listdir(tmp_path) == []


def test_a_forked_child_does_not_keep_its_killed_parents_lock(tmp_path):
    """Pool workers forked while `prep` holds its output's lock must not hold it once `prep` is killed."""
    import signal
    import subprocess
    import sys

    from clci_keras.fileio import exclusive

    out, forked = tmp_path / "data.h5", tmp_path / "forked"
    code = ("import os, time\nfrom clci_keras.fileio import exclusive\n"
            f"with exclusive({str(out)!r}):\n"
            "    child = os.fork()\n"
            # the fork hooks have run once fork() returns in the child: say so, then wait
            f"    if child == 0:\n        open({str(forked)!r}, 'w').close()\n        time.sleep(600)\n"
            "        os._exit(0)\n"
            "    print(child, flush=True)\n    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        _wait_for(forked.exists, parent, "the child to be forked")
        parent.send_signal(signal.SIGKILL)
        parent.wait(60)
        os.kill(child, 0)  # the child still runs...
        with exclusive(out):  # ...and the output is free
            pass
    finally:
        if parent.poll() is None:
            parent.kill()
        if child:
            os.kill(child, signal.SIGKILL)


def test_a_second_prep_to_an_output_in_use_fails_at_once(synthetic_r11_dir, tmp_path, capsys):
    from clci_keras.cli import main
    from clci_keras.fileio import exclusive

    out = tmp_path / "p.h5"
    with exclusive(out, what="HDF5 output"):
        assert main(["prep", str(synthetic_r11_dir), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"p.h5: this HDF5 output is in use by another run (process {os.getpid()}" in err[0]
    assert sorted(os.listdir(tmp_path)) == []


# --- names in data: ids and sites from tables must name folders inside the release ---
@pytest.mark.parametrize("row, what", [
    ("../Site2,031001, t01", "site '../Site2'"),
    ("Site1,../031001, t01", "subject id '../031001'"),
    ("/etc,031001, t01", "site '/etc'"),
    ("Site1,031768,../t01", "session '../t01'"),
    ("..,031768, t01", "site '..'"),
])
def test_r11_table_rows_that_leave_the_release_are_refused(synthetic_r11_dir, tmp_path, row, what):
    import shutil

    from clci_keras.data import discover_subjects
    from clci_keras.data.atlas import AtlasDataError
    from clci_keras.data.constants import R11_CSV_NAME

    src = tmp_path / "release"
    shutil.copytree(synthetic_r11_dir, src)
    table = src / R11_CSV_NAME
    lines = table.read_text(encoding="latin-1").splitlines()
    table.write_text("\n".join(lines + [row]) + "\n", encoding="latin-1")
    with pytest.raises(AtlasDataError, match=rf"{R11_CSV_NAME}, line {len(lines) + 1}: {what} is not a plain"):
        discover_subjects(str(src))


def test_a_linked_subject_folder_is_found_in_a_v2_tree(tmp_path):
    from clci_keras.data import discover_subjects
    from clci_keras.data.synthetic import generate_dataset

    root = tmp_path / "v2"
    generate_dataset(str(root), n_subjects=2, layout="v2", seed=0)
    base = next(p for p in root.rglob("sub-*") if p.is_dir())
    moved = tmp_path / "elsewhere" / base.name
    moved.parent.mkdir()
    os.rename(base, moved)
    os.symlink(moved, base)  # the subject's folder now lives elsewhere, linked in
    os.symlink(root, base.parent / "loop")  # and a loop back to the top
    _, records = discover_subjects(str(root))
    assert len(records) == 2


# --- a damaged HDF5 file: the read names the file, the subject and the slices ---
def _damage_a_chunk(src, dst, slice_index):
    import shutil

    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r") as f:
        info = f["data"].id.get_chunk_info_by_coord((slice_index, 0, 0))
    with open(dst, "r+b") as f:  # overwrite the middle of the compressed chunk
        f.seek(info.byte_offset + info.size // 2)
        f.write(b"\xff" * min(64, info.size // 4))


def test_a_damaged_chunk_is_named_with_file_subject_and_slices(synthetic_h5, tmp_path):
    from clci_keras.data.preprocess import read_subjects
    from clci_keras.data.reader import SliceReader
    from clci_keras.data.stream import StreamingReader

    second = read_subjects(synthetic_h5)[1]
    bad = tmp_path / "damaged.h5"
    _damage_a_chunk(synthetic_h5, bad, second["offset"] + 100)
    idx = [second["offset"] + 99, second["offset"] + 100]
    with SliceReader(bad, "clci") as reader:
        reader.read([0, 1])  # other slices still read
        with pytest.raises(OSError) as e:
            reader.read(idx)
    message = str(e.value)
    assert message.startswith(f"{bad}: cannot read subject {second['subject_id']} (index 1) slices 99..100")
    assert "\n" not in message and "prep" in message
    with pytest.raises(OSError, match=rf"{bad}: cannot read subject {second['subject_id']} \(index 1\) slices 0..188"):
        SliceReader(bad, "clci", in_memory=True)
    with StreamingReader(bad, "clci", buffer_subjects=1, workers=1) as reader:
        with pytest.raises(OSError, match=rf"{bad}: cannot read slices {second['offset']}\.\."):
            reader.read(idx)


@pytest.mark.parametrize("command, hint", [("train", "run the same command again to resume"),
                                           ("predict", "--continue"), ("tables", "run the command again")])
def test_every_command_ends_a_ctrl_c_with_130_and_one_line(monkeypatch, capsys, tmp_path, command, hint):
    import importlib

    from clci_keras.cli import SUBCOMMANDS, main

    module = importlib.import_module(SUBCOMMANDS[command][0])

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run", interrupted)
    argv = {"train": ["train", "--h5", "x.h5", "--split", "s.json", "--out", str(tmp_path)],
            "predict": ["predict", "x.nii.gz", "-o", str(tmp_path), "--weights", "w.h5"],
            "tables": ["tables", str(tmp_path), "-o", str(tmp_path)]}[command]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"clci-keras {command}: interrupted;") and hint in err[0]
