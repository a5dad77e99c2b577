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


_SMALL = {}


def _small_model(input_shape=None, **_):
    """The module's small CLCI-Net, registered as a model for build_inference_model and the CLI."""
    return _SMALL["model"]


def test_a_bug_while_loading_is_not_taken_for_bad_weights(clci_small, tmp_path, monkeypatch, capsys):
    """One error class, caught narrowly (issue 22): files at fault become the one-line
    ``WeightsMismatchError`` (exit 2 in the CLI); a genuine bug (here a ``TypeError`` inside our
    loader) keeps its type and traceback instead of turning into a one-line exit 2."""
    import nibabel as nib

    from clci_keras.cli import main as cli_main
    from clci_keras.inference import build_inference_model
    from clci_keras.models import list_models, register_model, save_weights_legacy
    from clci_keras.models import weights as weights_module

    _SMALL["model"] = clci_small
    if "test_weights_errors_small" not in list_models():
        register_model("test_weights_errors_small", _small_model, description="test stand-in", reference="tests")
    path = save_weights_legacy(clci_small, tmp_path / "small.h5")
    assert build_inference_model("test_weights_errors_small", path, optimize=False) is clci_small

    with pytest.raises(WeightsMismatchError, match=r"nothere.h5: cannot load these weights"):
        build_inference_model("test_weights_errors_small", tmp_path / "nothere.h5", optimize=False)
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), scan)
    argv = ["predict", str(scan), "-o", str(tmp_path / "out"), "--model", "test_weights_errors_small"]
    capsys.readouterr()
    assert cli_main(argv + ["--weights", str(tmp_path / "nothere.h5")]) == 2
    err = capsys.readouterr().err
    assert "nothere.h5: cannot load these weights" in err and len(err.splitlines()) == 1, err

    def buggy(model, group, path):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setattr(weights_module, "_load_legacy_group", buggy)
    with pytest.raises(TypeError, match="unsupported operand") as e:
        build_inference_model("test_weights_errors_small", path, optimize=False)
    assert not isinstance(e.value, WeightsMismatchError)
    with pytest.raises(TypeError, match="unsupported operand"):  # a traceback, not exit 2
        cli_main(argv + ["--weights", str(path)])
