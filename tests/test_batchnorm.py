"""Keras2BatchNormalization: Keras 2.2.4 / TensorFlow 1.x moving statistics in Keras 3.

The reference below is a NumPy transcription of what one training step of
Keras 2.2.4's BatchNormalization did to ``moving_mean`` / ``moving_variance``
on TensorFlow 1.x (sources read at keras 2.2.4 and TF 1.10):

* keras/backend/tensorflow_backend.py, ``normalize_batch_in_training``: a 4-D
  input normalised over axes [0, 1, 2] goes to ``_fused_normalize_batch_in_training``
  (``tf.nn.fused_batch_norm``); other ranks to ``_regular_normalize_batch_in_training``
  (``tf.nn.moments``, the biased variance).
* tensorflow/core/kernels/fused_batch_norm_op.cc, training branch: the returned
  ``batch_var`` is the biased variance times ``rest_size_adjust = n / max(n - 1, 1)``
  ("Bessel's correction"); the output itself is normalised with the biased one.
* keras/layers/normalization.py, ``BatchNormalization.call``: ``sample_size`` = the
  product of the reduced dimensions, then ``variance *= sample_size / (sample_size
  - (1.0 + self.epsilon))`` before ``K.moving_average_update``.
* keras/backend/tensorflow_backend.py, ``moving_average_update``:
  ``moving_averages.assign_moving_average(x, value, momentum, zero_debias=True)``;
  tensorflow/python/training/moving_averages.py ``_zero_debias``: a ``biased``
  variable (initialised to 0) moves by ``(biased - value) * (1 - momentum)``, a
  ``local_step`` counts the updates, and the variable becomes
  ``biased / (1 - momentum ** local_step)``.
"""
import numpy as np
import pytest

import keras

from clci_keras.models.layers import BatchNormalization as Keras2BatchNormalization, debias_steps, set_debias_steps


def keras224_moving_stats(batches, momentum=0.99, epsilon=1e-3, fused=True):
    """(moving_mean, moving_variance) after each batch, in float64 (see the module docstring)."""
    channels = batches[0].shape[-1]
    biased_mean, biased_var, step = np.zeros(channels), np.zeros(channels), 0
    out = []
    for x in batches:
        flat = np.asarray(x, np.float64).reshape(-1, channels)
        n = flat.shape[0]
        mean, var = flat.mean(0), flat.var(0)
        if fused:
            var = var * n / max(n - 1, 1)
        var = var * n / (n - (1.0 + epsilon))
        step += 1
        biased_mean = biased_mean - (biased_mean - mean) * (1.0 - momentum)
        biased_var = biased_var - (biased_var - var) * (1.0 - momentum)
        out.append((biased_mean / (1.0 - momentum ** step), biased_var / (1.0 - momentum ** step)))
    return out


def _batches(shape, steps, seed=0):
    rng = np.random.default_rng(seed)
    # a different scale and offset per step, so that a wrong weighting shows
    return [(rng.normal(size=shape) * (1 + k) + 3 * k - 1).astype("float32") for k in range(steps)]


@pytest.mark.parametrize("shape,momentum,fused", [
    ((8, 6, 5, 3), 0.99, True),     # a feature map: fused path
    ((8, 1, 1, 4), 0.99, True),     # batch 8 on a 1x1 map (CLF-ASPP image pooling): n = 8
    ((8, 1, 1, 4), 0.9, True),
    ((16, 4), 0.99, False),         # a vector input: tf.nn.moments path, no Bessel factor
    ((2, 3, 4, 5, 2), 0.99, False),  # 5-D: not fused either
])
def test_update_matches_keras_224_over_several_steps(shape, momentum, fused):
    layer = Keras2BatchNormalization(momentum=momentum, epsilon=1e-3)
    batches = _batches(shape, 6)
    ref = keras224_moving_stats(batches, momentum, 1e-3, fused)
    for x, (mean, var) in zip(batches, ref):
        layer(x, training=True)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance), var, rtol=1e-5)
    assert debias_steps(keras.Sequential([keras.Input(shape[1:]), layer])) == {layer.name: 6.0}


def test_first_step_replaces_the_initial_statistics_and_inference_uses_them():
    layer = Keras2BatchNormalization()
    x = _batches((8, 4, 4, 2), 1, seed=3)[0]
    y_train = np.asarray(layer(x, training=True))
    n = 8 * 4 * 4
    flat = x.reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(np.asarray(layer.moving_mean), flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(layer.moving_variance),
                               flat.var(0) * n / (n - 1) * n / (n - 1.001), rtol=1e-5)
    # Training output: batch statistics (biased variance), exactly as Keras 3's layer.
    plain = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3)
    np.testing.assert_allclose(y_train, np.asarray(plain(x, training=True)), rtol=1e-5, atol=1e-5)
    # Inference: the moving statistics.
    y_inf = np.asarray(layer(x, training=False))
    expect = (flat - np.asarray(layer.moving_mean)) / np.sqrt(np.asarray(layer.moving_variance) + 1e-3)
    np.testing.assert_allclose(y_inf.reshape(-1, 2), expect, rtol=1e-4, atol=1e-5)


def test_one_value_per_channel_trains_to_beta():
    """A batch of one 1 x 1 map (an image-level pooling branch trained at batch 1): the batch
    variance is 0, the output is ``beta`` and the moving mean that value, as Keras 2.2.4 gave;
    PyTorch's fused kernel refuses such input, so the layer must not hand it over (run there
    by tests/test_backends.py)."""
    layer = Keras2BatchNormalization()
    x = np.array([[[[0.5, -2.0, 3.0, 7.0]]]], dtype="float32")
    layer.build(x.shape)
    layer.beta.assign(np.array([0.1, 0.2, 0.3, 0.4], dtype="float32"))
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y.reshape(-1), [0.1, 0.2, 0.3, 0.4], atol=1e-4)  # float rounding of x - mean
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), x.reshape(-1), rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance), 0.0, atol=1e-3)


def test_keras3_switch_is_keras_layers_batchnormalization():
    x = _batches((4, 3, 3, 2), 3, seed=5)
    ours = Keras2BatchNormalization(moving_update="keras3", momentum=0.9)
    plain = keras.layers.BatchNormalization(momentum=0.9)
    for b in x:
        ours(b, training=True)
        plain(b, training=True)
    np.testing.assert_allclose(np.asarray(ours.moving_mean), np.asarray(plain.moving_mean), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ours.moving_variance), np.asarray(plain.moving_variance), rtol=1e-6)
    with pytest.raises(ValueError, match="moving_update='keras4'"):
        Keras2BatchNormalization(moving_update="keras4")


def test_same_weights_as_keras_batchnormalization_and_the_step_is_not_one():
    ours = keras.Sequential([keras.Input((5, 5, 3)), Keras2BatchNormalization(name="bn")])
    plain = keras.Sequential([keras.Input((5, 5, 3)), keras.layers.BatchNormalization(name="bn")])
    assert ours.count_params() == plain.count_params() == 12
    assert [w.path.split("/")[-1] for w in ours.weights] == [w.path.split("/")[-1] for w in plain.weights] == [
        "gamma", "beta", "moving_mean", "moving_variance"]
    assert len(ours.layers[0].variables) == 5  # the debiasing step: state, not a weight
    ours.set_weights(plain.get_weights())
    layer = Keras2BatchNormalization.from_config(ours.layers[0].get_config())
    assert layer.moving_update == "keras2" and layer.momentum == 0.99 and layer.epsilon == 1e-3


def test_weights_files_hold_the_four_weights_and_loading_restarts_the_debiasing(tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 2)), Keras2BatchNormalization(name="bn")])
    for b in _batches((8, 4, 4, 2), 3):
        model.layers[0](b, training=True)
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    plain = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.BatchNormalization(name="bn")])
    plain.load_weights(path)  # the same layout as Keras 3's own layer
    np.testing.assert_array_equal(plain.layers[0].moving_mean, model.layers[0].moving_mean)
    fresh = keras.Sequential([keras.Input((4, 4, 2)), Keras2BatchNormalization(name="bn")])
    fresh.load_weights(path)
    assert debias_steps(fresh) == {"bn": 0.0} and debias_steps(model) == {"bn": 3.0}
    set_debias_steps(fresh, debias_steps(model))
    nxt = _batches((8, 4, 4, 2), 1, seed=9)[0]
    model.layers[0](nxt, training=True)
    fresh.layers[0](nxt, training=True)
    np.testing.assert_allclose(np.asarray(fresh.layers[0].moving_variance),
                               np.asarray(model.layers[0].moving_variance), rtol=1e-6)


def _recorded_bn_inputs(model, bns, batches):
    """What each of ``bns`` sees in training mode, from an eager copy of ``model`` (same weights)."""
    probe = keras.Model(model.inputs, [l.input for l in bns])
    recorder = keras.models.clone_model(probe)
    recorder.set_weights(probe.get_weights())
    outs = [recorder(b, training=True) for b in batches]
    return {l.name: [keras.ops.convert_to_numpy(o[i]) for o in outs] for i, l in enumerate(bns)}


def _assert_keras224(bns, seen, steps):
    for layer in bns:
        mean, var = keras224_moving_stats(seen[layer.name], 0.99, 1e-3, fused=True)[-1]
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), mean, rtol=1e-5, atol=1e-6,
                                   err_msg=layer.name)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance), var, rtol=1e-5, atol=1e-7,
                                   err_msg=layer.name)
        assert float(keras.ops.convert_to_numpy(layer._debias_step)) == steps


def _data(shape, batch, steps, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps * batch, *shape)).astype("float32")
    y = (rng.random((steps * batch, *shape)) > 0.8).astype("float32")
    return x, y, [x[k * batch:(k + 1) * batch] for k in range(steps)]


def test_a_compiled_training_step_updates_as_keras_224():
    """``fit``'s traced train step (conv, BN, BN on a pooled 1x1 map) against the reference.

    Learning rate 0: the recorder and the trained model see the same inputs at
    every step (training-mode outputs do not depend on the moving statistics).
    """
    from clci_keras.models.common import batch_norm
    from clci_keras.training.trainer import compile_model

    inp = keras.Input((12, 10, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", name="c1")(inp)
    h = keras.layers.ReLU()(batch_norm("bn1")(h))
    g = keras.layers.GlobalAveragePooling2D(keepdims=True)(h)
    g = batch_norm("bn_pool")(keras.layers.Conv2D(3, 1, name="c2")(g))
    out = keras.layers.Conv2D(1, 1, activation="sigmoid")(keras.layers.Concatenate()([
        h, keras.layers.UpSampling2D((12, 10))(g)]))
    model = keras.Model(inp, out)
    x, y, batches = _data((12, 10, 1), 8, 4)
    bns = [model.get_layer("bn1"), model.get_layer("bn_pool")]
    seen = _recorded_bn_inputs(model, bns, batches)
    compile_model(model, learning_rate=0.0)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    _assert_keras224(bns, seen, 4)


def test_clci_net_trained_a_few_steps_ends_with_the_keras_224_statistics():
    """Every BatchNormalization of CLCI-Net after 3 training steps = the NumPy reference.

    Dropout off and learning rate 0, so that the eager recorder sees what the
    trained network sees; the steps run through ``fit`` (eagerly: tracing the
    whole network costs a minute of CPU, and the traced step is checked above).
    """
    from clci_keras.models import CLCI_Net
    from clci_keras.training.trainer import compile_model

    shape, batch, steps = (32, 32, 1), 8, 3
    x, y, batches = _data(shape, batch, steps)
    model = CLCI_Net(input_shape=shape)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    bns = [l for l in model.layers if isinstance(l, Keras2BatchNormalization)]
    assert len(bns) == 50
    seen = _recorded_bn_inputs(model, bns, batches)
    assert (1, 1) in {seen[l.name][0].shape[1:3] for l in bns}  # the CLF-ASPP image pooling
    compile_model(model, learning_rate=0.0)
    model.run_eagerly = True
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    _assert_keras224(bns, seen, steps)


def pytorch_keeps_one_full_size_tensor():
    """On PyTorch (tests/test_backends.py runs it there): a training-mode call keeps, of the
    tensors as large as its input, only the input itself for the backward pass (PyTorch's fused
    ``batch_norm``; Keras's ``ops.batch_normalization`` would keep ``x - mean`` too: a second
    full-size tensor per layer, benchmarks/RESULTS.md)."""
    import torch

    assert keras.backend.backend() == "torch"
    layer = Keras2BatchNormalization()
    x = torch.tensor(np.random.default_rng(0).normal(size=(2, 16, 16, 8)).astype("float32"))
    layer.build(x.shape)
    full = {}

    def pack(t):
        if t.numel() >= x.numel():
            full[t.untyped_storage().data_ptr()] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x, training=True)
    assert y.shape == x.shape and len(full) == 1, [tuple(t.shape) for t in full.values()]
    assert next(iter(full.values())).untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
