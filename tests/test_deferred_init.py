"""Building under clci_keras.models.seeding.deferred_initializers: no Keras initialiser runs, and the
network, drawn from a seed or loaded from a file, is the one built without it, bit for bit.

:func:`check_deferred_build` runs the checks on the current backend: here on TensorFlow, and on JAX
in a child process (the backend whose initialisers each compile an XLA program).
"""
import contextlib
import json
import os
import sys
import tempfile
import zipfile

import numpy as np
import pytest

import keras

from clci_keras.models import build_model, load_weights
from clci_keras.models.seeding import deferred_initializers, draw_initial_state

SHAPE = (32, 32, 1)


def _initializer_classes(cls=keras.initializers.Initializer):
    """Every initialiser class that defines ``__call__`` (Keras's and this package's)."""
    out = []
    for sub in cls.__subclasses__():
        if "__call__" in vars(sub):
            out.append(sub)
        out.extend(_initializer_classes(sub))
    return list(dict.fromkeys(out))


@contextlib.contextmanager
def counted_initializer_calls():
    """``{class name: calls}`` of every initialiser's ``__call__`` while the context is open."""
    calls, originals = {}, {cls: vars(cls)["__call__"] for cls in _initializer_classes()}

    def counting(cls, call):
        def __call__(self, *args, **kwargs):
            calls[cls.__name__] = calls.get(cls.__name__, 0) + 1
            return call(self, *args, **kwargs)
        return __call__

    for cls, call in originals.items():
        cls.__call__ = counting(cls, call)
    try:
        yield calls
    finally:
        for cls, call in originals.items():
            cls.__call__ = call


def _values(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def _init_classes(config):
    """The class names of every ``*_initializer`` in a (nested) layer config."""
    found = set()
    if isinstance(config, dict):
        for key, value in config.items():
            if key.endswith("initializer") and isinstance(value, dict):
                found.add(value.get("class_name"))
            else:
                found |= _init_classes(value)
    elif isinstance(config, list):
        for value in config:
            found |= _init_classes(value)
    return found


def check_deferred_build(name="clci_net", seed=7, archive=True):
    """On the current backend: ``name`` built under ``deferred_initializers()`` calls no initialiser,
    has the plain build's variables and config, and after ``draw_initial_state`` / ``load_weights``
    the plain build's weights and outputs exactly. Returns ``{check: value}``; asserts.

    ``archive``: also save the loaded network as ``.keras`` and return its initialiser classes
    (the archive's config is ``to_json()``'s, compared here on every backend)."""
    with counted_initializer_calls() as calls:
        with deferred_initializers() as deferred:
            fast = build_model(name, input_shape=SHAPE)
        deferred_calls = dict(calls)
        plain = build_model(name, input_shape=SHAPE)
    assert deferred_calls == {}, f"initialisers called under deferred_initializers(): {deferred_calls}"
    assert calls, "the counter saw no initialiser of the plain build"
    assert [(w.path, w.name, tuple(w.shape), w.dtype, w.trainable) for w in fast.weights] == \
           [(w.path, w.name, tuple(w.shape), w.dtype, w.trainable) for w in plain.weights]
    assert fast.get_config() == plain.get_config() and fast.to_json() == plain.to_json()
    assert sorted(deferred.unset(fast)) == sorted(deferred.placeholders)  # zeros until drawn
    drawn = draw_initial_state(fast, seed)
    assert deferred.unset(fast) == []
    assert draw_initial_state(plain, seed) == drawn == len(deferred.placeholders)
    for a, b, w in zip(_values(fast), _values(plain), plain.weights):  # drawn and constant weights
        assert a.dtype == b.dtype and np.array_equal(a, b), w.path
    x = np.random.default_rng(0).random((2, *SHAPE), dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        # plain: Keras's own draw, then the seeded one over it; its file into a fresh deferred build
        path = os.path.join(tmp, "w.weights.h5")
        plain.save_weights(path)
        with deferred_initializers() as deferred:
            loaded = build_model(name, input_shape=SHAPE)
        load_weights(loaded, path)
        assert deferred.unset(loaded) == []
        want, got = (np.asarray(m.predict_on_batch(x)) for m in (plain, loaded))
        assert np.array_equal(got, want), np.abs(got - want).max()
        saved = {}
        if archive:
            loaded.save(os.path.join(tmp, "m.keras"))
            with zipfile.ZipFile(os.path.join(tmp, "m.keras")) as z:
                saved = json.loads(z.read("config.json"))
    classes = _init_classes(saved)
    return {"drawn": drawn, "plain_calls": sum(calls.values()), "initializers": sorted(c for c in classes if c)}


def test_no_initialiser_runs_and_the_network_is_unchanged_tensorflow():
    out = check_deferred_build("clci_net")
    assert out["drawn"] == 59 and out["plain_calls"] > 300  # 59 random kernels; 320 initialiser calls
    # the .keras file still names the original initialisers (He normal, orthogonal, Glorot, ...)
    assert {"HeNormal", "Orthogonal", "GlorotUniform", "Zeros", "Ones"} <= set(out["initializers"])


def test_constant_initialisers_bilinear_kernels_fcn8s():
    out = check_deferred_build("fcn8s")
    assert "BilinearKernel" in out["initializers"] and out["drawn"] > 0


def test_placeholders_are_listed_and_the_patch_is_removed_on_exit():
    original = keras.layers.Layer.add_weight
    with deferred_initializers() as outer:
        with deferred_initializers() as inner:
            dense = keras.layers.Dense(3, name="d")
            dense.build((None, 2))
        keras.layers.Dense(2, bias_initializer="ones", name="e").build((None, 2))
    assert keras.layers.Layer.add_weight is original
    assert inner.placeholders == ["d/kernel"] and outer.placeholders == ["e/kernel"]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(dense.kernel), np.zeros((2, 3)))
    assert dense.get_config()["kernel_initializer"]["class_name"] == "GlorotUniform"


def test_no_initialiser_runs_and_the_network_is_unchanged_jax():
    pytest.importorskip("jax")
    from test_backends import run_child

    out = run_child("jax", ["-c", "import json, test_deferred_init as t; "
                                  "print(json.dumps(t.check_deferred_build('clci_net', archive=False)))"])
    result = json.loads(out.strip().splitlines()[-1])
    assert result["drawn"] == 59 and result["plain_calls"] > 300


def test_optimize_for_inference_rebuilds_without_initialisers():
    from clci_keras.inference import optimize_for_inference

    with deferred_initializers():
        model = build_model("clci_net", input_shape=(32, 48, 1))
    draw_initial_state(model, 0)
    with counted_initializer_calls() as calls:
        fast, folded = optimize_for_inference(model), optimize_for_inference(model, fold_batch_norm=True)
    assert calls == {}
    assert len(fast.weights) == len(model.weights) and len(folded.weights) < len(model.weights)
