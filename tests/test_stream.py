"""Streaming input (clci_keras.data.stream): the buffered-shuffle walk, whole-subject reads, the plan."""
import glob
import json
import os

import h5py
import numpy as np
import pytest

from clci_keras.data import batches as B
from clci_keras.data import reader as R
from clci_keras.data.stream import StreamingReader, iter_stream_batches, stream_windows


def _groups(sizes, start=0):
    out, at = [], start
    for n in sizes:
        out.append(np.arange(at, at + n))
        at += n + 3  # gaps: global indices need not be contiguous
    return out


def test_walk_shuffles_within_windows_and_replays():
    groups = _groups([7, 5, 9, 4, 6])  # 31 slices; batch 4 ends passes mid-batch
    owner = {int(i): k for k, g in enumerate(groups) for i in g}
    n = 31
    it = iter_stream_batches(groups, 4, seed=3, buffer_subjects=2)
    flat = np.concatenate([next(it) for _ in range(24)])  # 96 slices: 3 passes and a bit
    for p in range(3):
        chunk = flat[n * p:n * (p + 1)]
        assert sorted(chunk.tolist()) == sorted(np.concatenate(groups).tolist())  # each slice once a pass
        # the pass is its windows one after the other: a subject's slices stay in one window
        windows = stream_windows(groups, 3, p, 2)
        np.testing.assert_array_equal(chunk, np.concatenate([w[1] for w in windows]))
        at = 0
        for members, idx in windows:
            assert {owner[int(i)] for i in chunk[at:at + idx.size]} == set(members.tolist())
            at += idx.size
    assert not np.array_equal(flat[:n], flat[n:2 * n])  # a new shuffle each pass
    # batch k depends on (seed, k, buffer) only
    again = iter_stream_batches(groups, 4, seed=3, first_batch=13, buffer_subjects=2)
    np.testing.assert_array_equal(np.concatenate([next(again) for _ in range(11)]), flat[52:])
    other = iter_stream_batches(groups, 4, seed=4, buffer_subjects=2)
    assert not np.array_equal(next(other), flat[:4])
    # in order (evaluation): subjects and slices keep their order
    ordered = iter_stream_batches(groups, 4, buffer_subjects=2, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([next(ordered) for _ in range(8)])[:n],
                                  np.concatenate(groups))
    with pytest.raises(ValueError, match="buffer_subjects must be >= 1, got 0"):
        stream_windows(groups, 0, 0, 0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        next(iter_stream_batches(groups, 0))


def test_walk_announces_the_next_window_before_it_is_read():
    groups = _groups([3, 3, 3, 3, 3])
    owner = {int(i): k for k, g in enumerate(groups) for i in g}
    hints = []
    it = iter_stream_batches(groups, 2, seed=1, buffer_subjects=2, on_window=lambda m: hints.append(set(m.tolist())))
    for _ in range(20):  # 40 slices: 2 passes and a bit
        batch = next(it)
        needed = {owner[int(i)] for i in batch}
        announced = set().union(*hints)
        assert needed <= announced  # every subject was asked for before its first batch
    assert len(hints) >= 6


def _check_same(reader, ref, idx):
    x, y = reader.read(idx)
    xr, yr = ref.read(idx)
    assert x.shape == xr.shape and x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_array_equal(x, xr)
    np.testing.assert_array_equal(y, yr)


def test_streaming_reader_equals_the_slice_reader(synthetic_h5):
    ref = R.SliceReader(synthetic_h5, "clci")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 4 * 189, 40)
    idx[5] = idx[6]  # repeats allowed
    before = set(glob.glob("/dev/shm/clci_stream_*"))
    # one slot: every subject change evicts; two worker processes
    with StreamingReader(synthetic_h5, "clci", buffer_subjects=1, cache_subjects=1, workers=2) as r:
        _check_same(r, ref, idx)
        _check_same(r, ref, np.arange(189, 2 * 189))  # a whole subject, in order
        assert sum(r.loads.values()) > 4  # subjects were evicted and loaded again
        r.prefetch([3, 0])  # read-ahead beyond the cache is ignored, not an error
        _check_same(r, ref, [3 * 189 + 100, 7])
        with pytest.raises(ValueError, match="slice index 756 is outside every subject"):
            r.read([756])
    assert set(glob.glob("/dev/shm/clci_stream_*")) == before  # shared memory released
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        StreamingReader(synthetic_h5, "clci", workers=0)


def test_streaming_reader_reads_other_layouts_through_h5py(tmp_path):
    """The original generator's file (float64, int64 labels, contiguous): same values, slower path."""
    path = tmp_path / "orig.h5"
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        f["data"] = rng.random((378, 233, 197))
        f["label"] = (rng.random((378, 233, 197)) > 0.9).astype(np.int64)
    with StreamingReader(path, "xnet", buffer_subjects=1, workers=1) as r:
        _check_same(r, R.SliceReader(path, "xnet"), [300, 2, 188, 189])


def test_a_subject_is_one_contiguous_byte_range(synthetic_h5):
    """prep's chunking (one chunk per slice, data and label chunks of a slice side by side, slices in
    file order) makes each subject one byte range that no other subject's chunk enters (HDF5's
    chunk-index nodes take the rest: under 1 %)."""
    ranges = []
    with h5py.File(synthetic_h5, "r") as f:
        d, l = f["data"], f["label"]
        assert d.chunks == (1, 233, 197) and l.chunks == (1, 233, 197)
        for off, count in R.subject_table(synthetic_h5).values():
            infos = [ds.id.get_chunk_info_by_coord((i, 0, 0)) for ds in (d, l) for i in range(off, off + count)]
            ranges.append((min(i.byte_offset for i in infos), max(i.byte_offset + i.size for i in infos),
                           sum(i.size for i in infos)))
    ranges.sort()
    for (a0, a1, size), (b0, _, _) in zip(ranges, ranges[1:]):
        assert a1 <= b0  # subjects do not interleave
    assert all(size >= 0.99 * (a1 - a0) for a0, a1, size in ranges)  # one read wastes < 1 %


def test_streamed_training_batches_follow_the_walk_and_resume_exactly(synthetic_h5):
    idx = R.select_slices(synthetic_h5, [0, 1, 2, 3], "lesion", crop="74:122,34:82")
    with StreamingReader(synthetic_h5, "74:122,34:82", buffer_subjects=1, cache_subjects=2, workers=1) as r:
        steps = R.steps_for(idx.size, 8)
        first = [(x.numpy(), y.numpy()) for x, y in B.train_dataset(r, idx, 8, seed=5, n_batches=steps + 2)]
        assert sum(r.loads.values()) >= 4  # windows of one subject: each loaded in turn
        subjects, groups = B._groups(r, idx)
        walk = iter_stream_batches(groups, 8, 5, 0, 1)
        for x, y in first:  # the dataset serves the walk's slices
            xr, yr = r.read(next(walk))
            np.testing.assert_array_equal(x, xr)
            np.testing.assert_array_equal(y, yr)
        resumed = [x.numpy() for x, _ in B.train_dataset(r, idx, 8, seed=5, first_batch=steps, n_batches=2)]
        for a, b in zip(first[steps:], resumed):
            np.testing.assert_array_equal(a[0], b)
        ev = np.concatenate([x.numpy() for x, _ in B.eval_dataset(r, idx, 9)])
    np.testing.assert_array_equal(ev, R.SliceReader(synthetic_h5, "74:122,34:82").read(idx)[0])


def test_plan_input_streams_what_does_not_fit(synthetic_h5):
    subject = 189 * 224 * 176 * 5
    plan = R.plan_input(synthetic_h5, [0, 1, 2], max_memory_gb=1)
    assert plan["mode"] == "memory" and plan["bytes"] == 3 * subject
    small = 2.5 * subject / 1024**3
    plan = R.plan_input(synthetic_h5, [0, 1, 2], max_memory_gb=small)
    assert plan["mode"] == "stream" and plan["buffer_subjects"] == 1
    plan = R.plan_input(synthetic_h5, [0, 1, 2], max_memory_gb=12 * subject / 1024**3)
    assert plan["mode"] == "memory"
    plan = R.plan_input(synthetic_h5, [0, 1], mode="stream", max_memory_gb=12 * subject / 1024**3)
    assert plan["buffer_subjects"] == 2  # half the budget for three windows
    assert R.plan_input(synthetic_h5, [0], mode="stream", buffer_subjects=5)["buffer_subjects"] == 5
    assert R.plan_input(synthetic_h5, [0, 1])["budget_bytes"] == R.default_memory_budget()
    assert isinstance(R.open_reader(synthetic_h5, "clci", [0], {"mode": "memory"}), R.SliceReader)
    with pytest.raises(ValueError, match="input mode must be one of .* got 'disk'"):
        R.plan_input(synthetic_h5, [0], mode="disk")
    with pytest.raises(ValueError, match="max_memory_gb must be > 0, got -1"):
        R.plan_input(synthetic_h5, [0], max_memory_gb=-1)


def test_trainer_pins_the_input_plan_of_the_first_start(synthetic_h5, tmp_path):
    from clci_keras.training import TrainConfig
    from clci_keras.training.trainer import _make_data

    split = {"train": [0, 1, 2], "val": [3]}
    cfg = TrainConfig(h5=str(synthetic_h5), split="s.json", out_dir=str(tmp_path), input_mode="stream",
                      stream_buffer_subjects=2, train_slices="lesion", val_slices="lesion", epochs=2).validate()
    inputs = _make_data(cfg, str(tmp_path), split)
    try:
        assert getattr(inputs.reader, "streaming", False) and inputs.reader.buffer_subjects == 2
        x, y = next(iter(inputs.train_ds))
        assert x.shape == (8, 224, 176, 1)
    finally:
        inputs.reader.close()
    with open(tmp_path / "input_plan.json") as f:
        assert json.load(f)["mode"] == "stream"
    # a resumed run keeps the plan even where a new one would differ
    os.makedirs(tmp_path / "backup" / "epoch_0001")
    for name in ("model.weights.h5", "callback_state.json"):
        (tmp_path / "backup" / "epoch_0001" / name).write_text("")
    (tmp_path / "backup" / "latest.json").write_text(json.dumps({"epoch": 1, "dir": "epoch_0001"}))
    cfg.input_mode = "memory"
    inputs = _make_data(cfg, str(tmp_path), split)
    inputs.reader.close()
    assert getattr(inputs.reader, "streaming", False)
    with pytest.raises(ValueError, match=r"input_mode` must be one of \('auto', 'memory', 'stream'\), got 'ram'"):
        TrainConfig(h5="x", split="s.json", out_dir="y", input_mode="ram").validate()


def _running(pid):
    """True while ``pid`` exists and is not a zombie (an unreaped orphan has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_reader_processes_and_shared_memory_end_with_a_killed_trainer(synthetic_h5, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "hold.py"
    script.write_text(
        "import os, sys, time\n"
        "from clci_keras.data.stream import StreamingReader\n"
        "if __name__ == '__main__':\n"
        f"    r = StreamingReader({str(synthetic_h5)!r}, '74:122,34:82', buffer_subjects=1, workers=2)\n"
        "    r.prefetch([0, 1]); r.read([0, 200])\n"
        "    print(r._shm.name, *[p.pid for p in r._pool._processes.values()], flush=True)\n"
        "    time.sleep(3600)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        shm, *workers = proc.stdout.readline().split()  # hang guard: the test run's own timeout
        assert os.path.exists(f"/dev/shm/{shm}") and workers
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for _ in range(1200):  # workers poll their parent every 0.5 s; hang guard 600 s
        alive = [w for w in workers if _running(w)]
        if not alive and not os.path.exists(f"/dev/shm/{shm}"):
            break
        time.sleep(0.5)
    assert not alive, f"orphaned reader processes {alive}"
    assert not os.path.exists(f"/dev/shm/{shm}")  # the resource tracker unlinked it
