"""Weights of the wrong kind: one short error naming the file, what it holds and what was expected,
without the hundreds of Keras warnings a failed Keras 3 load prints (issue 14)."""
import warnings

import h5py
import numpy as np
import pytest

from clci_keras.models import CLCI_Net, load_weights
from clci_keras.models.weights import WeightsMismatchError


@pytest.fixture(scope="module")
def clci_small():
    return CLCI_Net(input_shape=(32, 32, 1))


def _other_keras3_weights(path):
    """Keras 3 ``.weights.h5`` of a small two-conv model (another architecture)."""
    import keras

    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="other_a")(inputs)
    x = keras.layers.BatchNormalization(name="other_bn")(x)
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", name="other_b")(x)
    keras.Model(inputs, out, name="other").save_weights(str(path))
    return path


@pytest.mark.parametrize("kind", ["keras3 weights of another model", "HDF5 that is not weights"])
def test_wrong_weights_give_one_short_error(clci_small, tmp_path, capfd, kind):
    if kind.startswith("keras3"):
        path = _other_keras3_weights(tmp_path / "other.weights.h5")
        holds = r"Keras 3 weights of 3 layers with weights"
    else:
        path = tmp_path / "slices.h5"
        with h5py.File(path, "w") as f:
            f["data"] = np.zeros((2, 4), np.float32)
            f["label"] = np.zeros((2, 4), np.uint8)
        holds = r"HDF5 file with top-level entries 'data', 'label'"
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(WeightsMismatchError) as e:
            load_weights(clci_small, path)
    out = capfd.readouterr()
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and len(msg) < 600
    assert __import__("re").search(holds, msg), msg
    if kind.startswith("keras3"):
        assert "model 'clci_net' has 105 layers with weights ('enc1_1_conv'" in msg
    assert [str(w.message)[:80] for w in caught] == []  # no Python warnings escape
    assert len((out.out + out.err).splitlines()) < 5, out.out + out.err
