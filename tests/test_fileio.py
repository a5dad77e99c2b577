"""The one writer (:mod:`clci_keras.fileio`): atomic, unique temporaries, the user's umask, no leftovers."""

def test_published_outputs_get_the_users_umask(tmp_path):
    """Files written to a temporary name and renamed get 0644 under umask 022, not mkstemp's 0600."""
    import os
    import stat
    import tempfile

    from clci_keras.fileio import publish

    old = os.umask(0o022)
    try:
        fd, tmp = tempfile.mkstemp(dir=tmp_path)
        os.close(fd)
        publish(tmp, tmp_path / "out.nii.gz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out.nii.gz").st_mode) == 0o644


# --- the one writer: atomic_text, atomic_path, atomic_folder ------------------------------------

import os
import stat

import pytest

from clci_keras import fileio


class Boom(Exception):
    pass


def _listing(folder):
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("durable", [False, True])
def test_atomic_text_writes_and_publishes(tmp_path, durable):
    path = tmp_path / "sub" / "out.json"  # the folder is created
    with fileio.atomic_text(path, durable=durable) as f:
        f.write("new")
        assert not path.exists()  # nothing visible before the block ends
    assert path.read_text() == "new" and _listing(path.parent) == ["out.json"]


@pytest.mark.parametrize("writer", ["text", "path", "folder"])
def test_an_error_leaves_the_target_untouched_and_no_temporary(tmp_path, writer):
    """An exception inside the block (a KeyboardInterrupt too) removes the temporary; the old target stays."""
    target = tmp_path / ("old" if writer == "folder" else "best.weights.h5")
    if writer == "folder":
        target.mkdir()
        (target / "a.txt").write_text("old")
    else:
        target.write_text("old")
    for exc in (Boom, KeyboardInterrupt):
        with pytest.raises(exc):
            if writer == "text":
                with fileio.atomic_text(target) as f:
                    f.write("half")
                    raise exc()
            elif writer == "path":
                with fileio.atomic_path(target, durable=True, tag="partial") as tmp:
                    with open(tmp, "w") as f:
                        f.write("half")
                    raise exc()
            else:
                with fileio.atomic_folder(target, durable=True) as tmp:
                    (open(os.path.join(tmp, "a.txt"), "w")).close()
                    raise exc()
        assert _listing(tmp_path) == [target.name]
        assert (target / "a.txt" if writer == "folder" else target).read_text() == "old"


def test_a_failed_rename_leaves_no_temporary(tmp_path):
    """The target is a non-empty folder: the rename fails, the temporary goes."""
    target = tmp_path / "taken"
    target.mkdir()
    (target / "x").write_text("x")
    with pytest.raises(OSError):
        with fileio.atomic_text(target) as f:
            f.write("data")
    assert _listing(tmp_path) == ["taken"] and _listing(target) == ["x"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_published_files_and_folders_follow_the_umask(tmp_path, umask):
    """mkstemp's 0600 / mkdtemp's 0700 become what a direct open() / mkdir would give."""
    old = os.umask(umask)
    try:
        with fileio.atomic_text(tmp_path / "t.json") as f:
            f.write("{}")
        with fileio.atomic_path(tmp_path / "w.weights.h5", durable=True) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"x")
        with fileio.atomic_folder(tmp_path / "epoch_0001", durable=True) as tmp:
            with open(os.path.join(tmp, "s.json"), "w") as f:
                f.write("{}")
        with fileio.atomic_text(tmp_path / "run.sh", base_mode=0o777) as f:
            f.write("#!/bin/sh\n")
        (tmp_path / "direct").write_text("")
        (tmp_path / "direct_dir").mkdir()
    finally:
        os.umask(old)

    def mode(p):
        return stat.S_IMODE(os.stat(tmp_path / p).st_mode)

    assert mode("t.json") == mode("w.weights.h5") == mode("direct") == 0o666 & ~umask
    assert mode("epoch_0001") == mode("direct_dir") == mode("run.sh") == 0o777 & ~umask
    assert mode("epoch_0001/s.json") == 0o666 & ~umask


def test_temporaries_keep_the_extension_and_name_the_target(tmp_path):
    """Keras wants ``.weights.h5``, nibabel ``.nii.gz``, matplotlib the image format's extension."""
    cases = {"best.weights.h5": ".weights.h5", "mask.nii.gz": ".nii.gz", "fig.png": ".png", "plain": ""}
    for name, ext in cases.items():
        with fileio.atomic_path(tmp_path / name, tag="partial") as tmp:
            base = os.path.basename(tmp)
            assert os.path.dirname(tmp) == str(tmp_path) and os.path.exists(tmp)
            assert base.startswith(".") and base.endswith(f".{fileio.split_name(name)[0]}.partial{ext}")
            assert fileio.is_temporary(base) and fileio.is_temporary(base, of=name)
            assert not fileio.is_temporary(base, of="other" + name)
    with fileio.atomic_folder(tmp_path / "epoch_0002") as tmp:
        assert os.path.basename(tmp).endswith(".epoch_0002.tmp") and os.path.isdir(tmp)
    with pytest.raises(ValueError, match="tag"):
        with fileio.atomic_path(tmp_path / "x", tag="bak"):
            pass
    for name in ("best.weights.h5", ".gitignore", ".k.h5.tmp-123", "x.tmp"):
        assert not fileio.is_temporary(name)


def test_two_writers_of_one_target_do_not_collide(tmp_path):
    """Interleaved writers get distinct temporaries; each publish is whole; the last one wins."""
    path = tmp_path / "summary.json"
    with fileio.atomic_text(path) as a, fileio.atomic_text(path) as b:
        assert a.name != b.name
        a.write("A" * 1000)
        b.write("B")
    assert path.read_text() == "A" * 1000 and _listing(tmp_path) == ["summary.json"]  # b ended first
    with fileio.atomic_path(path) as p1, fileio.atomic_path(path) as p2:
        assert p1 != p2
    with fileio.atomic_folder(tmp_path / "d") as d1, fileio.atomic_folder(tmp_path / "d") as d2:
        assert d1 != d2
        (open(os.path.join(d1, "one"), "w")).close()
        (open(os.path.join(d2, "two"), "w")).close()
    assert _listing(tmp_path) == ["d", "summary.json"] and _listing(tmp_path / "d") == ["one"]


def test_remove_temporaries_clears_what_a_killed_writer_left(tmp_path):
    left = [fileio.temporary(tmp_path / "best.weights.h5", tag="partial"),
            fileio.temporary(tmp_path / "epoch_0003", folder=True),
            fileio.temporary(tmp_path / "latest.json")]
    keep = ["best.weights.h5", ".hidden", "notes.tmp", ".x.h5.tmp-12"]
    for name in keep:
        (tmp_path / name).write_text("")
    assert fileio.remove_temporaries(tmp_path, of="best.weights.h5") == [os.path.basename(left[0])]
    assert sorted(fileio.remove_temporaries(tmp_path)) == sorted(os.path.basename(p) for p in left[1:])
    assert _listing(tmp_path) == sorted(keep)
    assert fileio.remove_temporaries(tmp_path / "missing") == []


def test_per_process_temporary_and_removing_dead_ones(tmp_path):
    """``per_process=True`` names the temporary for this process; a rerun removes a dead process's only."""
    import subprocess
    import sys

    target = tmp_path / "x.h5"
    with fileio.atomic_path(target, per_process=True) as tmp:
        assert os.path.basename(tmp) == f".x.h5.tmp-{os.getpid()}" and os.path.isfile(tmp)
        assert fileio.remove_dead_temporaries(target) == []  # this process's stays
        with open(tmp, "w") as f:
            f.write("done")
    assert target.read_text() == "done" and _listing(tmp_path) == ["x.h5"]
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(target, per_process=True) as tmp:
            raise RuntimeError("boom")
    assert _listing(tmp_path) == ["x.h5"]

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    keep = [f".x.h5.tmp-{os.getppid()}", f".y.h5.tmp-{dead.pid}", ".x.h5.tmp-notapid", "x.h5"]
    for name in keep[:-1] + [f".x.h5.tmp-{dead.pid}"]:
        (tmp_path / name).write_text("")
    assert fileio.remove_dead_temporaries(target) == [str(tmp_path / f".x.h5.tmp-{dead.pid}")]
    assert _listing(tmp_path) == sorted(keep)
    assert fileio.remove_dead_temporaries(tmp_path / "missing" / "x.h5") == []
    with pytest.raises(ValueError, match="files, not folders"):
        fileio.temporary(target, folder=True, per_process=True)


def test_move_renames(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "attic").mkdir()
    fileio.move(tmp_path / "a", tmp_path / "attic" / "a", durable=True)
    assert (tmp_path / "attic" / "a").read_text() == "a" and not (tmp_path / "a").exists()


# --- JSON: one format, one reader -----------------------------------------------------------------

def test_write_json_has_one_format_and_reads_back(tmp_path):
    import numpy as np

    path = tmp_path / "summary.json"
    fileio.write_json(path, {"a": np.float32(0.5), "n": np.int64(3), "v": np.arange(2), "b": b"x", "p": tmp_path})
    assert path.read_text() == ('{\n  "a": 0.5,\n  "n": 3,\n  "v": [\n    0,\n    1\n  ],\n  "b": "x",\n'
                                f'  "p": "{tmp_path}"\n}}\n')
    fileio.write_json(path, {"epoch": 2}, indent=None)
    assert path.read_text() == '{"epoch": 2}\n' and fileio.read_json(path) == {"epoch": 2}
    assert _listing(tmp_path) == ["summary.json"]


def test_write_json_sorts_keys_when_told(tmp_path):
    path = tmp_path / "config.json"
    fileio.write_json(path, {"b": 1, "a": {"d": 2, "c": 3}}, sort_keys=True)
    assert path.read_text() == '{\n  "a": {\n    "c": 3,\n    "d": 2\n  },\n  "b": 1\n}\n'
    assert fileio.json_text({"b": 1, "a": 2}, indent=None) == '{"b": 1, "a": 2}\n'  # the order of obj by default


def test_read_json_names_a_broken_file_and_a_missing_one_is_told_apart(tmp_path):
    path = tmp_path / "config.json"
    assert fileio.read_json(path, missing=None) is None
    with pytest.raises(FileNotFoundError):
        fileio.read_json(path)
    path.write_text('{"half": ')
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON \(") as e:
        fileio.read_json(path, missing=None)
    assert "\n" not in str(e.value)
