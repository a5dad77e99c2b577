"""Slicing helpers, intensity schemes and the one HDF5 reader (clci_keras.data.reader)."""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from clci_keras.data import (
    ATLAS_SHAPE,
    CROPS,
    SliceReader,
    brain_slice_indices,
    brain_z_range,
    crop_slices,
    dataset_info,
    eval_dataset,
    load_subject_slices,
    normalize_intensity,
    select_slices,
    slices_to_volume,
    subject_table,
    train_dataset,
    uncrop_slices,
    volume_to_slices,
)
from clci_keras.data.reader import steps_for


def test_import_does_not_load_tensorflow():
    code = "import sys, clci_keras.data; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_slicing_convention_and_crops():
    rng = np.random.default_rng(0)
    v = rng.random(ATLAS_SHAPE).astype(np.float32)
    s = volume_to_slices(v)
    assert s.shape == (189, 233, 197)
    np.testing.assert_array_equal(s[17], v[:, :, 17].T)
    np.testing.assert_array_equal(slices_to_volume(s), v)
    np.testing.assert_array_equal(slices_to_volume(s[..., None]), v)
    c = crop_slices(s, "clci")
    assert c.shape == (189, 224, 176)
    np.testing.assert_array_equal(c, s[:, 5:229, 10:186])
    assert crop_slices(s[..., None], "xnet").shape == (189, 224, 192, 1)
    u = uncrop_slices(c, "clci")
    np.testing.assert_array_equal(u[:, 5:229, 10:186], c)
    assert u.sum() == pytest.approx(c.sum(), rel=1e-5) and u[:, :5].max() == 0
    assert uncrop_slices(c[..., None], "clci", fill=-1).shape == (189, 233, 197, 1)
    assert CROPS["xnet"] == (slice(5, 229), slice(2, 194))
    with pytest.raises(ValueError, match="'square'"):
        crop_slices(s, "square")
    with pytest.raises(ValueError, match=r"\(10, 233, 196\)"):
        crop_slices(np.zeros((10, 233, 196)), "clci")


def test_intensity_schemes():
    v = np.array([0, 50, 100, 250], dtype=np.int16)
    r = normalize_intensity(v, "r1.1")
    assert r.dtype == np.float32
    np.testing.assert_array_equal(r, (v / 100).astype(np.float32))
    f = np.array([0.0, 10.0, 20.0, -3.0], np.float32)
    assert normalize_intensity(f, "r1.1")[1] == np.float32(f[1]) / np.float32(100)
    w = normalize_intensity(np.r_[np.zeros(5), np.linspace(1, 200, 1000)], "v2")
    assert w.min() == 0.0 and np.percentile(w[w > 0], 99.5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="'zscore'"):
        normalize_intensity(v, "zscore")


def batches(ds, n=None):
    out = []
    for i, (x, y) in enumerate(ds):
        if n is not None and i >= n:
            break
        out.append((x.numpy(), y.numpy()))
    return out


def _train(h5, subjects, batch_size, seed, epochs=1, in_memory=False, first_epoch=0):
    reader = SliceReader(h5, "clci", in_memory=in_memory, subjects=subjects if in_memory else None)
    idx = select_slices(h5, subjects, "all")
    steps = steps_for(idx.size, batch_size)
    return train_dataset(reader, idx, batch_size, seed, first_batch=first_epoch * steps, n_batches=epochs * steps)


def test_train_dataset_shapes_and_determinism(synthetic_h5):
    b1 = batches(_train(synthetic_h5, [0, 2], 8, seed=3, epochs=2))
    steps = steps_for(2 * 189, 8)
    assert len(b1) == 2 * steps
    x, y = b1[0]
    assert x.shape == (8, 224, 176, 1) and x.dtype == np.float32
    assert y.shape == (8, 224, 176, 1) and y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 1.0}
    again = batches(_train(synthetic_h5, [0, 2], 8, seed=3, epochs=2))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(b1, again))
    other = batches(_train(synthetic_h5, [0, 2], 8, seed=4), 1)
    assert not np.array_equal(other[0][0], x)
    # the walk goes on into a new shuffle, and a run resumed at epoch 1 replays it exactly
    assert not np.array_equal(b1[steps][0], x)
    resumed = batches(_train(synthetic_h5, [0, 2], 8, seed=3, first_epoch=1))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(b1[steps:], resumed))


def test_in_memory_and_streamed_readers_give_the_same_batches(synthetic_h5):
    streamed = batches(_train(synthetic_h5, [1, 3], 16, seed=0))
    memory = batches(_train(synthetic_h5, [1, 3], 16, seed=0, in_memory=True))
    assert len(streamed) == len(memory) == steps_for(2 * 189, 16) == 23
    for a, b in zip(streamed, memory):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    reader = SliceReader(synthetic_h5, in_memory=True, subjects=[1])
    assert reader.in_memory
    with pytest.raises(ValueError, match="not among the subjects"):
        reader.read([0])
    with pytest.raises(ValueError, match="in_memory"):
        SliceReader(synthetic_h5, in_memory="yes")


def test_train_epoch_covers_selected_subjects_exactly(synthetic_h5):
    got = batches(_train(synthetic_h5, [1, 3], 18, seed=0))  # 378 = 21 x 18: no remainder
    assert len(got) == 21
    x = np.concatenate([b[0] for b in got])
    y = np.concatenate([b[1] for b in got])
    assert x.shape[0] == 2 * 189
    with h5py.File(synthetic_h5, "r") as f:
        ref = np.concatenate([f["data"][189:378, 5:229, 10:186], f["data"][567:756, 5:229, 10:186]])
        ref_y = np.concatenate([f["label"][189:378, 5:229, 10:186], f["label"][567:756, 5:229, 10:186]])
    # same multiset of slices (order shuffled): match on per-slice sums
    np.testing.assert_allclose(np.sort(x.sum(axis=(1, 2, 3))), np.sort(ref.sum(axis=(1, 2))), rtol=1e-5)
    assert y.sum() == ref_y.sum()
    # pairs stay aligned: each x's y equals the label stored with it
    key = {float(s): i for i, s in enumerate(ref.sum(axis=(1, 2)))}
    checked = 0
    for xi, yi in zip(x, y):
        i = key.get(float(xi.sum()))
        if i is not None and xi.sum() > 0:
            np.testing.assert_array_equal(yi[..., 0], ref_y[i])
            checked += 1
    assert checked > 200


def test_eval_dataset_keeps_whole_patients_in_order(synthetic_h5):
    reader = SliceReader(synthetic_h5)
    idx = select_slices(synthetic_h5, [2, 0], "all")
    got = batches(eval_dataset(reader, idx, 9))
    x = np.concatenate([b[0] for b in got])
    y = np.concatenate([b[1] for b in got])
    assert x.shape == (378, 224, 176, 1)
    x2, y2 = load_subject_slices(synthetic_h5, 2)
    x0, y0 = load_subject_slices(synthetic_h5, 0)
    np.testing.assert_array_equal(x[:189], x2)
    np.testing.assert_array_equal(x[189:], x0)
    np.testing.assert_array_equal(y[:189], y2)
    memory = SliceReader(synthetic_h5, in_memory=True)
    same = batches(eval_dataset(memory, idx, 9))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in same]), x)


def test_load_subject_slices_and_crops(synthetic_h5):
    x, y = load_subject_slices(synthetic_h5, 0, crop=None, channel_axis=False)
    assert x.shape == (189, 233, 197) and y.dtype == np.float32
    with h5py.File(synthetic_h5, "r") as f:
        np.testing.assert_array_equal(x, f["data"][:189])
    xx, _ = load_subject_slices(synthetic_h5, 0, crop="xnet")
    assert xx.shape == (189, 224, 192, 1)
    reader = SliceReader(synthetic_h5, "xnet")
    assert next(iter(eval_dataset(reader, np.arange(189), 4)))[0].shape == (4, 224, 192, 1)
    with pytest.raises(ValueError, match="no subject with index 4"):
        load_subject_slices(synthetic_h5, 4)


def test_reader_returns_slices_in_the_asked_order(synthetic_h5):
    reader = SliceReader(synthetic_h5)
    x, _ = reader.read([200, 3, 200, 7])
    ref, _ = reader.read([3, 7, 200])
    np.testing.assert_array_equal(x[0], ref[2])
    np.testing.assert_array_equal(x[1], ref[0])
    np.testing.assert_array_equal(x[2], ref[2])
    np.testing.assert_array_equal(x[3], ref[1])


def test_bad_arguments(synthetic_h5):
    reader = SliceReader(synthetic_h5)
    with pytest.raises(ValueError, match="batch_size"):
        train_dataset(reader, np.arange(10), 0)
    with pytest.raises(ValueError, match="'a'"):
        select_slices(synthetic_h5, ["a"], "all")
    with pytest.raises(ValueError, match="no subject with index 9"):
        select_slices(synthetic_h5, [9], "all")
    with pytest.raises(ValueError, match="slice selection"):
        select_slices(synthetic_h5, [0], "most")


def test_brain_slices_and_dataset_info(synthetic_h5):
    idx = brain_slice_indices()
    assert len(idx) == 155 and brain_z_range() == (idx[0], idx[-1] + 1)
    assert brain_slice_indices(100) == tuple(i for i in idx if i < 100)
    info = dataset_info(synthetic_h5)
    assert info["synthetic"] is True and info["slices"] == 4 * 189


def test_original_generator_file_is_readable(tmp_path):
    """An h5 from the original generator (no metadata) is treated as blocks of 189."""
    path = tmp_path / "orig.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.random.default_rng(0).random((378, 233, 197))  # float64, as the original
        f["label"] = np.zeros((378, 233, 197), np.int64)
    x, y = load_subject_slices(path, 1)
    assert x.shape == (189, 224, 176, 1) and x.dtype == np.float32
    assert subject_table(path) == {0: (0, 189), 1: (189, 189)}
    assert len(batches(eval_dataset(SliceReader(path), np.arange(378), 189))) == 2


def test_training_walk_wraps_around_like_x_net():
    """No slice is dropped at a pass boundary: batches straddle passes, each pass a new shuffle."""
    from clci_keras.data.reader import batch_indices, epoch_permutation, iter_batches

    idx = np.arange(100, 123)  # 23 slices, batch 5: passes end mid-batch
    b = batch_indices(idx, 5, seed=7, n_batches=14)  # 70 slices: 3 passes and a bit
    flat = b.ravel()
    for p in range(3):
        chunk = flat[23 * p: 23 * (p + 1)]
        assert sorted(chunk.tolist()) == idx.tolist()  # every slice once per pass
        np.testing.assert_array_equal(chunk, idx[epoch_permutation(23, 7, p)])
    assert not np.array_equal(flat[:23], flat[23:46])  # reshuffled on wrap-around
    # batch k depends on (seed, k) alone: starting at batch 9 replays batches 9..13
    np.testing.assert_array_equal(batch_indices(idx, 5, seed=7, first_batch=9, n_batches=5), b[9:])
    # fewer slices than a batch: the batch spans several passes
    small = next(iter_batches(np.arange(3), 8, seed=0))
    assert small.size == 8 and set(small.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        next(iter_batches(idx, 0))
    with pytest.raises(ValueError, match="no training slices"):
        next(iter_batches(np.zeros(0), 4))
