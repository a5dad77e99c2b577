"""`clci-keras export` (clci_keras.inference.export): ONNX and SavedModel through Keras' `model.export`.

A small network with CLCI-Net's building blocks (conv-BN-ReLU, the bilinear image pooling, the
ConvLSTM context inference; 3k parameters) stands in for CLCI-Net, whose 36.8M parameters take
~40 s to export here. ONNX Runtime must reproduce Keras to 1e-5.
"""
from __future__ import annotations

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

from clci_keras.cli import DEBUG_ENV, main
from clci_keras.inference.export import ExportUnavailable, check_batch, check_export_support, run_exported
from clci_keras.models import build_model, list_models, register_model, save_weights_legacy
from clci_keras.models.card import card_path, read_card

MODEL = "test_mini_clci"
ONNX_READY = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not ONNX_READY, reason='ONNX export needs pip install -e ".[export]"')
needs_tf = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the TensorFlow backend's export")


def mini_clci(input_shape=(224, 176, 1), num_class=1, name=MODEL):
    from clci_keras.models.clci_net import decoder_stage, double_conv
    from clci_keras.models.layers import BilinearUpsampling

    inputs = keras.Input(input_shape, name="image")
    e1 = double_conv(inputs, 4, name="enc1")
    e2 = double_conv(keras.layers.MaxPooling2D(2, name="enc1_pool")(e1), 8, name="enc2")
    ph, pw = e2.shape[1], e2.shape[2]
    pooled = keras.layers.AveragePooling2D((ph, pw), name="img_pool")(e2)
    x = keras.layers.Concatenate(name="aspp_concat")([e2, BilinearUpsampling((ph, pw), name="img_up")(pooled)])
    x = decoder_stage(x, e1, 4, name="dec1")  # upsampling, 1x1 skip conv, ConvLSTM over (decoder, skip)
    outputs = keras.layers.Conv2D(num_class, 1, activation="sigmoid", name="output")(x)
    return keras.Model(inputs, outputs, name=name)


if MODEL not in list_models():
    register_model(MODEL, mini_clci, description="test stand-in (tests/test_export.py)", reference="tests")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = build_model(MODEL)
    for layer in model.layers:  # trained-looking BatchNorm statistics, so that a dropped one would show
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.linspace(-0.2, 0.2, n).astype("float32"))
            layer.moving_variance.assign(np.linspace(0.5, 2.0, n).astype("float32"))
    path = str(tmp_path_factory.mktemp("export") / "mini.h5")
    save_weights_legacy(model, path)
    return path, model


def _one_line_error(capsys, command):
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clci-keras {command}: error: ") and "\n" not in err, err
    return err


@needs_tf
@needs_onnx
def test_onnx_runtime_reproduces_keras(weights, tmp_path, capsys):
    import onnx

    path, model = weights
    out = str(tmp_path / "mini.onnx")
    assert main(["export", "--weights", path, "--model", MODEL, "--format", "onnx", "-o", out]) == 0
    printed = capsys.readouterr().out
    assert f"to {out} (onnx" in printed and "max |Keras - onnx| = " in printed
    assert sorted(os.listdir(tmp_path)) == ["mini.onnx", "mini.onnx.card.json"]  # no temporaries left
    x = check_batch((224, 176, 1), n=3, seed=7)  # another batch (and batch size) than the export's check
    got = run_exported(out, "onnx", x)
    want = keras.ops.convert_to_numpy(model(x, training=False))
    assert got.shape == (3, 224, 176, 1) and np.max(np.abs(got - want)) <= 1e-5
    assert "Loop" not in {n.op_type for n in onnx.load(out).graph.node}  # the ConvLSTM is unrolled
    card = read_card(out)
    assert card["architecture"]["name"] == MODEL and card["export"]["format"] == "onnx"
    assert card["export"]["max_abs_diff"] <= 1e-5 and card["export"]["from_weights"] == "mini.h5"
    # An existing output is refused, --overwrite replaces it (here: the model as trained, no rewrite).
    assert main(["export", "--weights", path, "--model", MODEL, "--format", "onnx", "-o", out]) == 2
    assert f"{out}: exists (pass --overwrite to replace it)" in _one_line_error(capsys, "export")
    assert main(["export", "--weights", path, "--model", MODEL, "--format", "onnx", "-o", out, "--overwrite",
                 "--no-optimize", "--no-check"]) == 0
    assert "not checked" in capsys.readouterr().out and read_card(out)["export"]["optimized"] is False
    assert np.max(np.abs(run_exported(out, "onnx", x) - want)) <= 1e-5


@needs_tf
def test_savedmodel_reproduces_keras(weights, tmp_path):
    from clci_keras.inference.export import export_model

    path, model = weights
    out = str(tmp_path / "mini_savedmodel")
    info = export_model(path, out, model=MODEL, fmt="savedmodel")
    assert os.path.isfile(os.path.join(out, "saved_model.pb")) and info["max_abs_diff"] <= 1e-5
    x = check_batch((224, 176, 1), n=3, seed=7)
    want = keras.ops.convert_to_numpy(model(x, training=False))
    assert np.max(np.abs(run_exported(out, "savedmodel", x) - want)) <= 1e-5
    assert json.load(open(card_path(out)))["export"]["keras_format"] == "tf_saved_model"
    assert sorted(os.listdir(tmp_path)) == ["mini_savedmodel", "mini_savedmodel.card.json"]


def test_unsupported_or_missing_is_one_line(weights, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(ExportUnavailable, match="savedmodel export is not available on the torch backend"):
        check_export_support("savedmodel", "torch")
    with pytest.raises(ValueError, match="--format must be one of .* got 'tflite'"):
        check_export_support("tflite", "tensorflow")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "tf2onnx" else real(m, *a))
    with pytest.raises(ExportUnavailable, match=r"needs tf2onnx: pip install tf2onnx \(or pip install -e"):
        check_export_support("onnx", "tensorflow")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    # A card that says another architecture: refused before any work, naming the weights.
    path, _ = weights
    other = str(tmp_path / "w.h5")
    with open(path, "rb") as src, open(other, "wb") as dst:
        dst.write(src.read())
    from clci_keras.models.card import make_card, write_card

    write_card(other, make_card(architecture="baseline", input_shape=[224, 176, 1], crop="clci", intensity="r1.1"))
    fmt = "savedmodel" if keras.backend.backend() == "tensorflow" else "onnx"
    assert main(["export", "--weights", other, "--model", MODEL, "--format", fmt, "-o", str(tmp_path / "m")]) == 2
    assert f"{other}: the weights are a 'baseline' model by their card, not '{MODEL}'" in \
        _one_line_error(capsys, "export")
    assert sorted(os.listdir(tmp_path)) == ["w.h5", "w.h5.card.json"]
