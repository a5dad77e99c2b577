"""A network's random starting state from one seed, the same on TensorFlow, JAX and PyTorch.

Keras draws initial weights and dropout masks from each backend's own random
generator, so ``keras.utils.set_random_seed(s)`` gives three different networks
on three backends. :func:`draw_initial_state` makes the start a function of
the seed alone:

* every weight whose initialiser is random is drawn again by NumPy, from the
  initialiser's own distribution (its config: ``VarianceScaling`` and its
  He / Glorot / LeCun forms, ``Orthogonal``, ``RandomNormal``,
  ``RandomUniform``, ``TruncatedNormal``), each weight from its own stream
  ``(seed, position in model.weights)``; weights of constant initialisers
  (zeros, ones, the LSTM forget-gate bias, bilinear kernels) are already equal;
* every :class:`keras.random.SeedGenerator` (the dropout layers') starts at a
  state drawn from ``(seed, layer name)``; with
  :class:`clci_keras.models.layers.Dropout` the masks are then equal too.

The distributions are Keras's (and Keras 2.2's: the truncated normal cut at
two standard deviations, the same fans and scales); only the stream differs
from what Keras would draw. A random initialiser not listed above is refused
with a ``ValueError`` naming the layer, rather than left backend-dependent.
"""
from __future__ import annotations

import math
import zlib

import keras
import numpy as np

from clci_keras.models.layers import BilinearKernel

#: Initialisers whose values do not depend on a random draw.
_CONSTANT = (keras.initializers.Zeros, keras.initializers.Ones, keras.initializers.Constant,
             keras.initializers.Identity)
#: ``X_initializer`` attribute -> the weight attribute it fills, where the names differ.
_WEIGHT_OF = {"recurrent": "recurrent_kernel", "depthwise": "depthwise_kernel", "pointwise": "pointwise_kernel"}
#: Initialisers this module draws (subclasses included: HeNormal, GlorotUniform, ... are VarianceScaling).
_RANDOM = (keras.initializers.VarianceScaling, keras.initializers.Orthogonal, keras.initializers.TruncatedNormal,
           keras.initializers.RandomNormal, keras.initializers.RandomUniform)
#: Keras's truncated normal: cut at 2 standard deviations; the std of the cut unit normal.
_TRUNCATION, _TRUNCATED_STD = 2.0, 0.87962566103423978


def seed_generators(model):
    """``{layer name/attribute: SeedGenerator}`` of every layer of ``model`` (e.g. Dropout's)."""
    out = {}
    for layer in model._flatten_layers(include_self=False):
        for attr, value in vars(layer).items():
            if isinstance(value, keras.random.SeedGenerator):
                out[f"{layer.name}/{attr}"] = value
    return out


def _fans(shape):
    """Keras's fan-in / fan-out of a weight ``shape`` (kernels: receptive field × channels)."""
    if len(shape) < 2:
        size = shape[0] if shape else 1
        return size, size
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated(rng, shape, mean, stddev):
    """Normal values cut at ``_TRUNCATION`` standard deviations, by redrawing those beyond it."""
    values = rng.standard_normal(size=shape)
    outside = np.abs(values) > _TRUNCATION
    while outside.any():  # ~4.6 % per round
        values[outside] = rng.standard_normal(size=int(outside.sum()))
        outside = np.abs(values) > _TRUNCATION
    return mean + stddev * values


def _variance_scaling(init, shape, rng):
    fan_in, fan_out = _fans(shape)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[init.mode]
    scale = init.scale / max(1.0, fan)
    if init.distribution == "truncated_normal":
        return _truncated(rng, shape, 0.0, math.sqrt(scale) / _TRUNCATED_STD)
    if init.distribution == "untruncated_normal":
        return rng.normal(0.0, math.sqrt(scale), size=shape)
    limit = math.sqrt(3.0 * scale)
    return rng.uniform(-limit, limit, size=shape)


def _orthogonal(init, shape, rng):
    rows, cols = math.prod(shape[:-1]), shape[-1]
    q, r = np.linalg.qr(rng.normal(size=(max(rows, cols), min(rows, cols))))
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return init.gain * q.reshape(shape)


def _draw(init, shape, rng):
    """Values of the random initialiser ``init`` (one of ``_RANDOM``) for ``shape``."""
    if isinstance(init, keras.initializers.VarianceScaling):
        return _variance_scaling(init, shape, rng)
    if isinstance(init, keras.initializers.Orthogonal):
        return _orthogonal(init, shape, rng)
    if isinstance(init, keras.initializers.TruncatedNormal):
        return _truncated(rng, shape, init.mean, init.stddev)
    if isinstance(init, keras.initializers.RandomNormal):
        return rng.normal(init.mean, init.stddev, size=shape)
    if isinstance(init, keras.initializers.RandomUniform):
        return rng.uniform(init.minval, init.maxval, size=shape)
    raise TypeError(f"not a random initialiser of {_RANDOM}: {init!r}")


def _random_weights(model):
    """``{id(weight): initialiser}`` of the weights that random initialisers filled."""
    out = {}
    for layer in model._flatten_layers(include_self=False):
        for attr, init in vars(layer).items():
            if not attr.endswith("_initializer") or not isinstance(init, keras.initializers.Initializer):
                continue
            weight = getattr(layer, _WEIGHT_OF.get(attr[:-12], attr[:-12]), None)
            if weight is None or isinstance(init, _CONSTANT + (BilinearKernel,)):
                continue
            if not isinstance(init, _RANDOM):
                raise ValueError(f"layer {layer.name!r}: no backend-neutral draw for its {attr} "
                                 f"{type(init).__name__}")
            out[id(weight)] = init
    return out


def draw_initial_state(model, seed, weights=True):
    """Redraw ``model``'s random weights and its dropout generator states from ``seed`` with NumPy.

    Call it on a built model before training (the trainer does; with initial
    weights given, ``weights=False`` sets only the generator states). Returns
    the number of weights drawn. See the module docstring for what is drawn and how.
    """
    seed = int(seed)
    randoms = _random_weights(model) if weights else {}
    drawn = 0
    for position, weight in enumerate(model.weights):
        if id(weight) not in randoms:
            continue
        rng = np.random.default_rng([seed, position])
        weight.assign(np.asarray(_draw(randoms[id(weight)], tuple(weight.shape), rng), dtype=weight.dtype))
        drawn += 1
    for path, generator in seed_generators(model).items():
        start = np.random.default_rng([seed, zlib.crc32(path.encode())]).integers(1, 2**31 - 1)
        generator.state.assign(np.array([start, 0], dtype=generator.state.dtype))
    return drawn
