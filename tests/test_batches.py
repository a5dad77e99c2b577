"""The backend-neutral batch sources (clci_keras.data.batches) behind every backend's ``fit`` input."""
import numpy as np
import pytest

from clci_keras.data import SliceReader, select_slices
from clci_keras.data.batches import EvalBatches, SourceDataset, TrainBatches
from clci_keras.data.reader import batch_indices


def test_random_access_batches_equal_the_walk_and_shard_it(synthetic_h5):
    idx = select_slices(synthetic_h5, [0, 1], "lesion", crop="74:122,34:82")
    reader = SliceReader(synthetic_h5, "74:122,34:82")
    src = TrainBatches(reader, idx, 8, seed=3, first_batch=5, n_batches=40)
    walk = batch_indices(idx, 8, seed=3, first_batch=5, n_batches=40)
    for k in (7, 0, 39, 0, 12):  # any order: each batch depends on (seed, k) alone
        np.testing.assert_array_equal(src.batch_indices(k), walk[k])
    with pytest.raises(IndexError):
        src.batch_indices(40)
    halves = [TrainBatches(reader, idx, 8, 3, 5, 40, shard=(i, 2))[4][0] for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), src[4][0])
    with pytest.raises(ValueError, match="shard"):
        TrainBatches(reader, idx, 8, shard=(0, 3))
    # the PyDataset used on JAX / PyTorch serves the same batches in the same order
    ds = SourceDataset(src, workers=1)
    assert len(ds) == 40
    np.testing.assert_array_equal(ds[9][1], src[9][1])
    ev = EvalBatches(reader, idx, 9)
    np.testing.assert_array_equal(np.concatenate([ev[k][0] for k in range(len(ev))]), reader.read(idx)[0])


def test_micro_batches_are_the_batches_in_order(synthetic_h5):
    idx = select_slices(synthetic_h5, [0, 1], "lesion", crop="74:122,34:82")
    reader = SliceReader(synthetic_h5, "74:122,34:82")
    src = TrainBatches(reader, idx, 8, seed=3, first_batch=5, n_batches=6)
    micro = TrainBatches(reader, idx, 8, seed=3, first_batch=5, n_batches=6, micro_batch=2)
    assert (len(micro), micro.parts, micro.rows, src.rows) == (24, 4, 2, 8)
    for k in (5, 0, 3):
        for part in (0, 1):  # x and y
            np.testing.assert_array_equal(np.concatenate([micro[4 * k + j][part] for j in range(4)]), src[k][part])
    sharded = TrainBatches(reader, idx, 8, 3, 5, 6, shard=(1, 2), micro_batch=2)
    assert (len(sharded), sharded.rows) == (12, 2)
    np.testing.assert_array_equal(np.concatenate([sharded[2 * 3 + j][0] for j in (0, 1)]), src[3][0][4:])
    for bad in (3, 0, True):
        with pytest.raises(ValueError, match="micro_batch"):
            TrainBatches(reader, idx, 8, micro_batch=bad)


class _Numbered:
    """Batch ``k``: images of 3 x 1 pixels equal to k, labels 0 (an identity network's loss is k^2)."""

    shape = (3, 1, 1)

    def __init__(self, n):
        self.n, self.reads, self.reader = n, [], self

    def __len__(self):
        return self.n

    def __getitem__(self, k):
        self.reads.append(k)
        return np.full((2, *self.shape), k, "float32"), np.zeros((2, *self.shape), "float32")


def fit_order(workers=2, epochs=2, steps=3):
    """The batch numbers that ``fit`` trained on, step by step, through :func:`fit_input`.

    tests/test_backends.py runs it on JAX and PyTorch (the :class:`SourceDataset` path).
    """
    import keras

    from clci_keras.data.batches import close_input, fit_input

    inputs = keras.Input(_Numbered.shape)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, kernel_initializer="ones", use_bias=False)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    means = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            means.append((batch, float(logs["loss"])))

    ds = fit_input(_Numbered(epochs * steps + 1), workers=workers)
    model.fit(ds, epochs=epochs, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=[Record()])
    close_input(ds)
    losses = [(i + 1) * m - (i * means[n - 1][1] if i else 0.0) for n, (i, m) in enumerate(means)]
    return [int(round(np.sqrt(max(v, 0.0)))) for v in losses]


def test_fit_trains_on_batches_0_1_2_in_order():
    assert fit_order() == [0, 1, 2, 3, 4, 5]  # TensorFlow: tf.data (JAX, PyTorch: tests/test_backends.py)


def test_source_dataset_serves_batch_k_whatever_was_asked_before():
    src = _Numbered(8)
    ds = SourceDataset(src, workers=2)
    assert [int(ds[k][0].flat[0]) for k in (0, 1, 0, 0, 1, 2, 3, 7, 2)] == [0, 1, 0, 0, 1, 2, 3, 7, 2]
    ds.close()
    assert max(src.reads) == 7  # read ahead, never past the end
    reads = len(src.reads)
    assert len(src.reads) == reads  # closed: nothing more is read
    assert int(ds[5][0].flat[0]) == 5  # usable again after close
    ds.close()
