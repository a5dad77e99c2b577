"""Slicing helpers, intensity schemes and the tf.data pipeline."""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from clci_keras.data import (
    ATLAS_SHAPE,
    CROPS,
    crop_slices,
    load_subject_slices,
    make_dataset,
    normalize_intensity,
    num_batches,
    slices_to_volume,
    uncrop_slices,
    volume_to_slices,
)


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


def test_train_dataset_shapes_and_determinism(synthetic_h5):
    ds = make_dataset(synthetic_h5, subjects=[0, 2], batch_size=8, seed=3)
    b1 = batches(ds, 4)
    x, y = b1[0]
    assert x.shape == (8, 224, 176, 1) and x.dtype == np.float32
    assert y.shape == (8, 224, 176, 1) and y.dtype == np.float32
    assert set(np.unique(y)) <= {0.0, 1.0}
    again = batches(make_dataset(synthetic_h5, subjects=[0, 2], batch_size=8, seed=3), 4)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(b1, again))
    other = batches(make_dataset(synthetic_h5, subjects=[0, 2], batch_size=8, seed=4), 1)
    assert not np.array_equal(other[0][0], x)
    # next epoch reshuffles
    second_epoch = batches(ds, 1)
    assert not np.array_equal(second_epoch[0][0], x)


def test_train_epoch_covers_selected_subjects_exactly(synthetic_h5):
    ds = make_dataset(synthetic_h5, subjects=[1, 3], batch_size=16, seed=0)
    got = batches(ds)
    assert len(got) == num_batches(2, 16) == 24
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


def test_eval_mode_keeps_whole_patients_in_order(synthetic_h5):
    ds = make_dataset(synthetic_h5, subjects=[2, 0], mode="eval", batch_size=9, in_memory=False)
    got = batches(ds)
    x = np.concatenate([b[0] for b in got])
    y = np.concatenate([b[1] for b in got])
    assert x.shape == (378, 224, 176, 1)
    x2, y2 = load_subject_slices(synthetic_h5, 2)
    x0, y0 = load_subject_slices(synthetic_h5, 0)
    np.testing.assert_array_equal(x[:189], x2)
    np.testing.assert_array_equal(x[189:], x0)
    np.testing.assert_array_equal(y[:189], y2)
    # shuffle is ignored in eval mode; in-memory eval gives the same stream
    same = batches(make_dataset(synthetic_h5, subjects=[2, 0], mode="eval", batch_size=9, shuffle=True, in_memory=True))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in same]), x)


def test_load_subject_slices_and_crops(synthetic_h5):
    x, y = load_subject_slices(synthetic_h5, 0, crop=None, channel_axis=False)
    assert x.shape == (189, 233, 197) and y.dtype == np.float32
    with h5py.File(synthetic_h5, "r") as f:
        np.testing.assert_array_equal(x, f["data"][:189])
    xx, _ = load_subject_slices(synthetic_h5, 0, crop="xnet")
    assert xx.shape == (189, 224, 192, 1)
    ds = make_dataset(synthetic_h5, subjects=[0], crop="xnet", batch_size=4, mode="eval")
    assert next(iter(ds))[0].shape == (4, 224, 192, 1)
    with pytest.raises(ValueError, match="out of range"):
        load_subject_slices(synthetic_h5, 4)


def test_streaming_train_mode_matches_content(synthetic_h5):
    ds = make_dataset(synthetic_h5, subjects=[1], batch_size=32, in_memory=False, seed=0)
    x = np.concatenate([b[0] for b in batches(ds)])
    ref, _ = load_subject_slices(synthetic_h5, 1)
    np.testing.assert_allclose(np.sort(x.sum(axis=(1, 2, 3))), np.sort(ref.sum(axis=(1, 2, 3))), rtol=1e-5)
    again = batches(make_dataset(synthetic_h5, subjects=[1], batch_size=32, in_memory=False, seed=0))
    again = np.concatenate([b[0] for b in again])
    np.testing.assert_array_equal(x, again)


def test_repeat_and_bad_arguments(synthetic_h5):
    ds = make_dataset(synthetic_h5, subjects=[0], batch_size=100, repeat=True, drop_remainder=True)
    assert len(batches(ds, 3)) == 3  # 189 slices -> 1 full batch per pass, repeats
    with pytest.raises(ValueError, match="'test'"):
        make_dataset(synthetic_h5, mode="test")
    with pytest.raises(ValueError, match="'a'"):
        make_dataset(synthetic_h5, subjects=["a"])
    with pytest.raises(ValueError, match="out of range"):
        make_dataset(synthetic_h5, subjects=[9])


def test_original_generator_file_is_readable(tmp_path):
    """An h5 from the original generator (no metadata) is treated as blocks of 189."""
    path = tmp_path / "orig.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.random.default_rng(0).random((378, 233, 197))  # float64, as the original
        f["label"] = np.zeros((378, 233, 197), np.int64)
    x, y = load_subject_slices(path, 1)
    assert x.shape == (189, 224, 176, 1) and x.dtype == np.float32
    ds = make_dataset(path, mode="eval", batch_size=189)
    assert len(batches(ds)) == 2
