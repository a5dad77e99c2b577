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
