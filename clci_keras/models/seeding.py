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

A network whose weights are redrawn or loaded right after it is built need not
pay for Keras's own draws (on JAX each initialiser compiles an XLA program of
its own). Build it under
:func:`deferred_initializers`; see there.
"""
from __future__ import annotations

import contextlib
import math
import threading
import zlib

import keras
import numpy as np

from clci_keras.models.layers import BilinearKernel, all_layers, bilinear_kernel

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
    for layer in all_layers(model):
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
    for layer in all_layers(model):
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


# --- building without Keras's initialisers -------------------------------------------------

_PATCH_LOCK = threading.Lock()
_PATCH = {"users": 0, "original": None}
_ACTIVE = threading.local()  # .scopes: the open deferred_initializers() scopes of this thread


class DeferredWeights:
    """What :func:`deferred_initializers` yields: ``placeholders``, the paths of the weights
    created under it that hold zeros in place of a random draw (to be drawn or loaded)."""

    def __init__(self):
        self.placeholders = []

    def unset(self, model):
        """Paths of ``model``'s placeholder weights that still hold only zeros (neither drawn nor loaded)."""
        pending = set(self.placeholders)
        return [w.path for w in model.weights
                if w.path in pending and not np.any(keras.ops.convert_to_numpy(w))]

    def __repr__(self):
        return f"DeferredWeights({len(self.placeholders)} placeholder weights)"


@contextlib.contextmanager
def deferred_initializers():
    """Build networks without running Keras's weight initialisers, for a draw or a load right after.

    Under this context (in this thread), :meth:`keras.layers.Layer.add_weight` creates each
    weight from a NumPy array instead of calling its initialiser:

    * a random initialiser (those :func:`draw_initial_state` draws: He, Glorot, orthogonal,
      ...) gives **zeros, a placeholder**: the weight must be drawn
      (:func:`draw_initial_state`) or loaded (:func:`clci_keras.models.load_weights`,
      ``model.load_weights``) before the network is used;
    * a constant one gives its exact value: zeros, ones, ``Constant``, ``Identity``, the
      bilinear kernels of :class:`clci_keras.models.layers.BilinearKernel` and the LSTM
      forget-gate bias (``unit_forget_bias``), the values Keras would give;
    * any other initialiser is Keras's own, called as usual.

    Nothing else changes: the weights' names, shapes and dtypes, the layers' initialiser
    attributes, ``get_config()`` and the ``.keras`` file's config (still ``HeNormal``,
    ``GlorotUniform``, ...). After :func:`draw_initial_state` the weights equal those of a
    network built without this context, after loading a weights file too, bit for bit. On
    JAX it saves one XLA compilation per initialiser (most of a build); on TensorFlow and
    PyTorch the backends' random draws.

    Yields a :class:`DeferredWeights` whose ``placeholders`` lists the placeholder weights'
    paths (and whose ``unset(model)`` those still all zeros). Typical use::

        with deferred_initializers() as deferred:
            model = build_model("clci_net", input_shape=(224, 176, 1))
        draw_initial_state(model, seed)  # or load_weights(model, path)
        assert not deferred.unset(model)
    """
    record = DeferredWeights()
    with _PATCH_LOCK:
        if _PATCH["users"] == 0:
            _PATCH["original"] = keras.layers.Layer.add_weight
            keras.layers.Layer.add_weight = _add_weight_deferred
        _PATCH["users"] += 1
    scopes = _ACTIVE.__dict__.setdefault("scopes", [])
    scopes.append(record)
    try:
        yield record
    finally:
        scopes.remove(record)
        with _PATCH_LOCK:
            _PATCH["users"] -= 1
            if _PATCH["users"] == 0:
                keras.layers.Layer.add_weight = _PATCH["original"]
                _PATCH["original"] = None


_ADD_WEIGHT_POSITIONAL = ("shape", "initializer", "dtype")  # Keras 2's positional call style


def _add_weight_deferred(layer, *args, **kwargs):
    """``Layer.add_weight`` while :func:`deferred_initializers` is open: a NumPy initial value."""
    original = _PATCH["original"]
    scopes = getattr(_ACTIVE, "scopes", None)
    if not scopes:  # another thread's scope is open, not this one's
        return original(layer, *args, **kwargs)
    given = dict(zip(_ADD_WEIGHT_POSITIONAL, args))
    shape, initializer, dtype = (kwargs.get(k, given.get(k)) for k in _ADD_WEIGHT_POSITIONAL)
    shape = () if shape is None else tuple(int(d) for d in shape)
    dtype = keras.backend.standardize_dtype(dtype) if dtype is not None else layer.variable_dtype
    if initializer is None:  # add_weight's own default
        initializer = "glorot_uniform" if "float" in dtype else "zeros"
    if isinstance(initializer, str):
        initializer = keras.initializers.get(initializer)
    value, placeholder = _initial_value(layer, initializer, shape, kwargs.get("name"))
    if value is None:
        return original(layer, *args, **kwargs)
    stand_in = _Fixed(value)
    if len(args) > 1:
        args = args[:1] + (stand_in,) + args[2:]
    else:
        kwargs["initializer"] = stand_in
    variable = original(layer, *args, **kwargs)
    if placeholder:
        scopes[-1].placeholders.append(variable.path)
    return variable


class _Fixed:
    """An initialiser returning one NumPy array, converted to the variable's dtype."""

    def __init__(self, value):
        self.value = value

    def __call__(self, shape, dtype=None, **kwargs):
        value = self.value
        if dtype is not None:
            try:
                value = value.astype(np.dtype(keras.backend.standardize_dtype(dtype)), copy=False)
            except TypeError:  # a dtype NumPy lacks (bfloat16): the backend converts
                return keras.ops.convert_to_tensor(value, dtype=dtype)
        return value


def _initial_value(layer, init, shape, name):
    """``(NumPy value, is_placeholder)`` standing in for ``init(shape)``; ``(None, False)``: call ``init``."""
    if isinstance(init, _RANDOM):
        return np.zeros(shape, dtype="float32"), True
    if isinstance(init, keras.initializers.Zeros):
        return np.zeros(shape, dtype="float32"), False
    if isinstance(init, keras.initializers.Ones):
        return np.ones(shape, dtype="float32"), False
    if isinstance(init, keras.initializers.Constant):
        return np.full(shape, np.asarray(init.value, dtype="float32")), False
    if isinstance(init, keras.initializers.Identity) and len(shape) == 2:
        return (init.gain * np.eye(*shape)).astype("float32"), False
    if type(init) is BilinearKernel and len(shape) == 4 and shape[0] == shape[1] and shape[2] == shape[3]:
        return bilinear_kernel(shape[0], shape[3]), False
    if (not isinstance(init, keras.initializers.Initializer) and callable(init) and name == "bias"
            and getattr(layer, "unit_forget_bias", False) and len(shape) == 1 and shape[0] % 4 == 0):
        # Keras's LSTM cells: bias_initializer for the input gate, ones for the forget gate,
        # bias_initializer for the cell and output gates
        units = shape[0] // 4
        parts = [_initial_value(layer, layer.bias_initializer, (n,), None) for n in (units, 2 * units)]
        if any(value is None or placeholder for value, placeholder in parts):
            return None, False
        return np.concatenate([parts[0][0], np.ones(units, dtype="float32"), parts[1][0]]), False
    return None, False
