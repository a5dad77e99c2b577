"""Keras-2 reference of CLCI-Net built with ``tf_keras`` (test-only).

``tf_keras`` is the Keras 2 line that installs on Python 3.11; it keeps the
Keras 2 semantics (``ConvLSTM2D`` gates default to the 0.2x+0.5
``hard_sigmoid``, TF resize ops, legacy HDF5 weights). This module restates the
published architecture with Keras 2 defaults (nothing passed that Keras 2.2
would not have used) so tests can compare our Keras 3 model with it:
same weight-holding layers in the same order, and the same outputs for the
same weights.
"""
import numpy as np
import tensorflow as tf
import tf_keras
from tf_keras import layers as L


def _cbr(x, n, k=3, s=1, d=1):
    x = L.Conv2D(n, k, strides=s, dilation_rate=d, padding="same", kernel_initializer="he_normal")(x)
    x = L.BatchNormalization()(x)
    return L.Activation("relu")(x)


def _two(x, n):
    return _cbr(_cbr(x, n), n)


class _Resize(L.Layer):
    """TF resize_bilinear with TF1 corner convention (half_pixel_centers=False)."""

    def __init__(self, factor, **kw):
        super().__init__(**kw)
        self.factor = factor

    def call(self, x):
        h, w = x.shape[1] * self.factor[0], x.shape[2] * self.factor[1]
        return tf.compat.v1.image.resize_bilinear(x, (h, w), align_corners=False)


class _Cat(L.Layer):
    def call(self, xs):
        return tf.concat(xs, axis=1)


def reference_clci_net(input_shape=(224, 176, 1), num_class=1):
    widths = [32, 64, 128, 256, 512]
    inp = L.Input(input_shape)
    feats = []
    x = inp
    for lvl in range(4):
        c = _two(x, widths[lvl])
        feats.append(c)
        p = L.MaxPooling2D(2)(c)
        acc = p
        for j, f in enumerate(feats):
            stride = 2 ** (lvl + 1 - j)
            acc = L.Concatenate()([_cbr(f, widths[lvl], s=stride), acc])
        x = _cbr(acc, 4 * widths[lvl + 1], k=1)
    c5 = L.Dropout(0.5)(_two(x, widths[4]))

    gh, gw = input_shape[0] // 16, input_shape[1] // 16
    branches = [_cbr(c5, 256, k=1)] + [_cbr(c5, 256, d=r) for r in (2, 4, 6)]
    g = _Resize((gh, gw))(_cbr(L.AveragePooling2D((gh, gw))(c5), 256, k=1))
    side = [_cbr(f, 256, s=2 ** (4 - j)) for j, f in enumerate(feats)]
    x = L.Dropout(0.5)(_cbr(L.Concatenate()(side + branches + [g]), 1024, k=1))

    for lvl in (3, 2, 1, 0):
        n = widths[lvl]
        up = _cbr(L.UpSampling2D(2)(x), n, k=2)
        sk = _cbr(feats[lvl], n, k=1)
        h, w = up.shape[1], up.shape[2]
        seq = _Cat()([L.Reshape((1, h, w, n))(up), L.Reshape((1, h, w, n))(sk)])
        x = _two(L.ConvLSTM2D(n, 3, padding="same", kernel_initializer="he_normal")(seq), n)
    out = L.Conv2D(num_class, 1, activation="sigmoid" if num_class == 1 else "softmax")(x)
    return tf_keras.Model(inp, out)


def randomize_keras2(model, seed=0):
    """Random weights everywhere, BN moving variance positive, so parity is non-trivial."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        new = []
        for w in layer.weights:
            shape = tuple(w.shape)
            if "moving_variance" in w.name:
                new.append(rng.uniform(0.5, 1.5, shape))
            elif "gamma" in w.name:
                new.append(rng.uniform(0.8, 1.2, shape))
            else:
                fan_in = np.prod(shape[:-1]) if len(shape) > 1 else 10
                new.append(rng.normal(0, 1.0 / np.sqrt(fan_in), shape))
        if new:
            layer.set_weights([a.astype("float32") for a in new])
