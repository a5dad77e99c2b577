"""Keras's private API that the project still uses (clci_keras/models/keras_private.py) is there.

A Keras upgrade that removes or changes one of those items fails here, naming
it, instead of silently changing weight files or training; and the public
replacements of former private calls still do what the private ones did.
"""
import ast
import pathlib

import keras
import numpy as np

from clci_keras.models import keras_private
from clci_keras.models.layers import BatchNormalization, all_layers

ROOT = pathlib.Path(__file__).resolve().parent.parent / "clci_keras"


def test_every_private_item_is_in_this_keras():
    missing = keras_private.problems()
    assert not missing, (f"Keras {keras.__version__} changed private API that clci_keras uses "
                         f"(checked with {keras_private.CHECKED_KERAS}); see clci_keras/models/keras_private.py:\n"
                         + "\n".join(missing))


def test_untracked_keeps_the_debias_step_out_of_the_weights():
    layer = BatchNormalization()
    layer.build((None, 4, 4, 3))
    assert len(layer.weights) == 4, "untracked: BatchNormalization's debias step became a weight"
    assert any(v is layer._debias_step for v in layer.variables), \
        "untracked: BatchNormalization's debias step is no longer in layer.variables"


def test_symbolic_build_creates_the_optimizer_and_metric_variables():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    assert keras_private.symbolic_build(model, (np.zeros((1, 4), "float32"), np.zeros((1, 1), "float32"), None)), \
        "symbolic_build: keras.Model._symbolic_build is gone"
    assert model.optimizer.built, "symbolic_build: keras.Model._symbolic_build no longer builds the optimizer"


def test_all_layers_is_flatten_layers():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, keras.layers.Dense(3, name="d1")(inner_in), name="inner")
    x_in = keras.Input((4,))
    x = inner(x_in)
    x = keras.layers.Dense(2, name="d2")(keras.layers.Concatenate()([x, inner(x_in)]))
    model = keras.Model(x_in, BatchNormalization(name="bn")(x))
    names = [layer.name for layer in all_layers(model)]
    assert names == [layer.name for layer in model._flatten_layers(include_self=False)]
    assert names.count("d1") == 1 and "bn" in names


def test_no_private_keras_api_outside_keras_private():
    bad = []
    for path in ROOT.rglob("*.py"):
        if path.name == "keras_private.py":
            continue
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras.src"):
                bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} imports {node.module}")
            if isinstance(node, ast.Attribute) and node.attr in (
                    "_flatten_layers", "_symbolic_build", "_maybe_symbolic_build", "_save_model",
                    "_get_file_path", "_tracker", "_initial_epoch"):
                bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} uses .{node.attr}")
    assert not bad, "Keras private API outside clci_keras/models/keras_private.py:\n" + "\n".join(bad)


def test_all_layers_is_flatten_layers_for_clci_net():
    """CLCI-Net's ConvLSTM2D layers own their kernels through their ``cell`` (not in ``layers``)."""
    from clci_keras.models import build_model

    model = build_model("clci_net", input_shape=(64, 64, 1))
    ours = [id(layer) for layer in all_layers(model)]
    assert ours == [id(layer) for layer in model._flatten_layers(include_self=False)], \
        "all_layers no longer walks the layers Keras's own _flatten_layers walks (e.g. a recurrent layer's cell)"
    assert {id(w) for layer in all_layers(model) for w in layer.weights} >= {id(w) for w in model.weights}
