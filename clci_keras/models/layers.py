"""Custom layers, activations and initialisers of the segmentation models.

* CLCI-Net (Keras-2 semantics): :func:`hard_sigmoid_keras2` (ConvLSTM gates),
  :class:`SequenceConcat` (two-step sequences for the ConvLSTM) and
  :class:`BilinearUpsampling` (TF-1 ``resize_bilinear``).
* Training (Keras-2 semantics): :class:`BatchNormalization`, whose moving
  statistics are updated as Keras 2.2.4 on TensorFlow 1.x did; every model uses it.
* Training on every backend: :class:`Dropout`, whose masks are the same on
  TensorFlow, JAX and PyTorch for the same seed; every model uses it.
* Comparison models: :class:`AdaptiveAveragePooling2D` (PyTorch-style bins,
  for PSPNet's pyramid on a 28×22 map), :class:`ResizeTo` (bilinear resize to
  a fixed size) and :class:`BilinearKernel` (bilinear initialiser for FCN's
  learned upsampling).

Everything here is registered with :func:`keras.saving.register_keras_serializable`
under the package name ``clci_keras``, so models that use it save to ``.keras``
and load back with ``safe_mode`` on (no ``Lambda`` layers anywhere).
"""
from __future__ import annotations

import collections
import math

import keras
import numpy as np
from keras import ops

from clci_keras.models.choices import BN_UPDATES
from clci_keras.models.keras_private import untracked

PACKAGE = "clci_keras"


@keras.saving.register_keras_serializable(package=PACKAGE)
def hard_sigmoid_keras2(x):
    """Keras 2.x ``hard_sigmoid``: ``clip(0.2 * x + 0.5, 0, 1)``.

    Keras 2.2 used this piecewise-linear gate as the default
    ``recurrent_activation`` of ``ConvLSTM2D``. Keras 3 changed both the default
    (now ``sigmoid``) and the formula of ``hard_sigmoid`` (now
    ``relu6(x + 3) / 6``, slope 1/6), so CLCI-Net's ConvLSTM gates pass this
    function explicitly to keep the original behaviour.
    """
    return ops.clip(0.2 * x + 0.5, 0.0, 1.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SequenceConcat(keras.layers.Layer):
    """Concatenate tensors along an existing axis (default 1, the time axis).

    CLCI-Net's context-inference block reshapes the upsampled decoder map and
    the encoder skip to ``(1, H, W, C)`` each and joins them into a two-step
    sequence ``(2, H, W, C)`` for ``ConvLSTM2D``; this layer does the joining
    (the original code used its own ``custom_concat`` layer for it).

    Args:
        axis: axis to concatenate along; negative values count from the end.
    """

    def __init__(self, axis=1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(axis, int) or axis == 0:
            raise ValueError(
                f"`axis` must be a non-zero int (axis 0 is the batch), got axis={axis!r}"
            )
        self.axis = axis

    def call(self, inputs):
        return ops.concatenate(list(inputs), axis=self.axis)

    def compute_output_shape(self, input_shape):
        shapes = [list(s) for s in input_shape]
        out = list(shapes[0])
        total = 0
        for s in shapes:
            if s[self.axis] is None:
                total = None
                break
            total += s[self.axis]
        out[self.axis] = total
        return tuple(out)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


@keras.saving.register_keras_serializable(package=PACKAGE)
class BilinearUpsampling(keras.layers.Layer):
    """Bilinear upsampling by integer factors with TensorFlow-1 semantics.

    Reproduces ``tf.image.resize_bilinear(x, (h * fh, w * fw))`` of TF 1.x
    (``align_corners=False``, no half-pixel centres): output pixel ``i`` samples
    the input at ``i / f``, interpolating linearly between ``floor(i / f)`` and
    the next pixel, clamped at the border. Modern ``keras.ops.image.resize``
    uses half-pixel centres instead, which shifts the result by half a pixel,
    so the legacy mapping is written out with ``keras.ops`` here.

    In CLCI-Net this layer broadcasts the 1×1 image-pooling branch of the
    CLF-ASPP back to the bottleneck size; there both conventions agree, but the
    layer is exact for any input.

    Args:
        upsampling: ``(fh, fw)`` positive integer factors.
    """

    def __init__(self, upsampling=(2, 2), **kwargs):
        super().__init__(**kwargs)
        upsampling = tuple(int(u) for u in upsampling)
        if len(upsampling) != 2 or min(upsampling) < 1:
            raise ValueError(
                f"`upsampling` must be two positive integers, got upsampling={upsampling!r}"
            )
        self.upsampling = upsampling

    @staticmethod
    def _interp_axis(x, axis, factor):
        size = x.shape[axis]
        if factor == 1:
            return x
        if size is None:
            raise ValueError(
                "BilinearUpsampling needs static spatial sizes, got a tensor of shape "
                f"{tuple(x.shape)}"
            )
        pos = [i / factor for i in range(size * factor)]
        lo = [int(p) for p in pos]
        hi = [min(i + 1, size - 1) for i in lo]
        frac = [p - i for p, i in zip(pos, lo)]
        shape = [1] * len(x.shape)
        shape[axis] = size * factor
        w = ops.reshape(ops.convert_to_tensor(frac, dtype=x.dtype), shape)
        a = ops.take(x, ops.convert_to_tensor(lo, dtype="int32"), axis=axis)
        b = ops.take(x, ops.convert_to_tensor(hi, dtype="int32"), axis=axis)
        return a + (b - a) * w

    def call(self, inputs):
        x = self._interp_axis(inputs, 1, self.upsampling[0])
        return self._interp_axis(x, 2, self.upsampling[1])

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        return (
            input_shape[0],
            None if h is None else h * self.upsampling[0],
            None if w is None else w * self.upsampling[1],
            input_shape[3],
        )

    def get_config(self):
        return {**super().get_config(), "upsampling": list(self.upsampling)}


def adaptive_bins(size, bins):
    """PyTorch ``AdaptiveAvgPool`` bin edges: bin ``i`` covers ``[floor(i*s/n), ceil((i+1)*s/n))``."""
    return [
        (math.floor(i * size / bins), math.ceil((i + 1) * size / bins)) for i in range(bins)
    ]


def _pooling_matrix(size, bins):
    mat = np.zeros((bins, size), dtype="float32")
    for i, (lo, hi) in enumerate(adaptive_bins(size, bins)):
        mat[i, lo:hi] = 1.0 / (hi - lo)
    return mat


@keras.saving.register_keras_serializable(package=PACKAGE)
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """Average pooling to a fixed ``output_size`` grid (PyTorch ``AdaptiveAvgPool2d``).

    PSPNet pools its feature map into 1×1, 2×2, 3×3 and 6×6 bins. At a
    224×176 input the 1/8 map is 28×22, which 3 and 6 do not divide, so the
    bins are uneven: bin ``i`` of ``n`` over ``s`` pixels spans
    ``[floor(i*s/n), ceil((i+1)*s/n))`` (neighbouring bins may overlap by one
    pixel). Implemented as two constant averaging matrices, so any static
    size works and the result equals plain average pooling whenever ``n``
    divides ``s``.

    Args:
        output_size: ``(bins_h, bins_w)`` positive ints (or one int for both).
    """

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        output_size = tuple(int(s) for s in output_size)
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(
                f"`output_size` must be two positive integers, got output_size={output_size!r}"
            )
        self.output_size = output_size

    def call(self, inputs):
        h, w = inputs.shape[1], inputs.shape[2]
        if h is None or w is None:
            raise ValueError(
                f"AdaptiveAveragePooling2D needs static spatial sizes, got {tuple(inputs.shape)}"
            )
        ph = ops.convert_to_tensor(_pooling_matrix(h, self.output_size[0]), dtype=inputs.dtype)
        pw = ops.convert_to_tensor(_pooling_matrix(w, self.output_size[1]), dtype=inputs.dtype)
        x = ops.einsum("ih,bhwc->biwc", ph, inputs)
        return ops.einsum("jw,biwc->bijc", pw, x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "output_size": list(self.output_size)}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResizeTo(keras.layers.Layer):
    """Resize H and W to a fixed ``size`` (``keras.ops.image.resize``, half-pixel centres).

    Used where the scale factor is not an integer (PSPNet's pyramid bins back
    to the feature map) or where the target is known exactly (score maps back
    to the input size), so no rounding can change the output size.

    Args:
        size: ``(height, width)`` positive ints.
        interpolation: ``"bilinear"`` (default) or ``"nearest"``.
    """

    def __init__(self, size, interpolation="bilinear", **kwargs):
        super().__init__(**kwargs)
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"`size` must be two positive integers, got size={size!r}")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(
                f"`interpolation` must be 'bilinear' or 'nearest', got {interpolation!r}"
            )
        self.size = size
        self.interpolation = interpolation

    def call(self, inputs):
        if tuple(inputs.shape[1:3]) == self.size:
            return inputs
        return ops.image.resize(
            inputs, self.size, interpolation=self.interpolation, antialias=False
        )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": list(self.size), "interpolation": self.interpolation}


def bilinear_kernel(kernel_size, channels):
    """Conv2DTranspose kernel ``(k, k, channels, channels)`` doing bilinear upsampling.

    With stride ``k // 2`` and ``padding="same"`` it maps input pixel ``j`` to
    output position ``j*s + (s-1)/2`` (half-pixel centres), as FCN's
    initialisation of its deconvolutions.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = np.arange(kernel_size, dtype="float64")
    filt1d = 1.0 - np.abs(og - center) / factor
    filt = np.outer(filt1d, filt1d).astype("float32")
    kernel = np.zeros((kernel_size, kernel_size, channels, channels), dtype="float32")
    for c in range(channels):
        kernel[:, :, c, c] = filt
    return kernel


@keras.saving.register_keras_serializable(package=PACKAGE)
class BilinearKernel(keras.initializers.Initializer):
    """Initialiser for ``Conv2DTranspose`` kernels: per-channel bilinear interpolation.

    FCN (Long et al., 2015) initialises its learned upsampling layers to
    bilinear interpolation; channel ``c`` maps only to channel ``c``.
    Expects a square kernel ``(k, k, C, C)``.
    """

    def __call__(self, shape, dtype=None):
        kh, kw, cout, cin = shape
        if kh != kw or cout != cin:
            raise ValueError(
                f"BilinearKernel needs a square kernel with as many inputs as outputs, got {shape}"
            )
        return ops.convert_to_tensor(bilinear_kernel(kh, cin), dtype=dtype or "float32")

    def get_config(self):
        return {}


def _torch_batch_norm(x, gamma, beta, epsilon):
    """PyTorch's fused training-mode normalisation of a channels-last 4-D ``x`` (batch statistics).

    The same numbers as ``ops.batch_normalization`` with the biased batch moments (to float
    rounding), but autograd keeps only ``x`` and two per-channel vectors for the backward pass,
    where Keras's unfused ops keep ``x - mean`` as well, and the backward pass is one kernel:
    CLCI-Net's training step on PyTorch ran faster and in less memory (benchmarks/RESULTS.md).
    ``x.permute`` is a view (NHWC data in PyTorch's channels-last layout): nothing is copied.
    """
    import torch  # the backend's own module: only reached when Keras runs on PyTorch

    y = torch.nn.functional.batch_norm(x.permute(0, 3, 1, 2), None, None, gamma, beta, training=True, eps=epsilon)
    return y.permute(0, 2, 3, 1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose moving statistics follow Keras 2.2.4 on TensorFlow 1.x.

    It bears the name of Keras's own class on purpose: Keras 3 derives the
    paths inside ``.weights.h5`` files from class names, so weights files
    written with ``keras.layers.BatchNormalization`` (earlier versions of this
    project) and with this layer are interchangeable. Its registered name is
    ``clci_keras>BatchNormalization``.

    Normalisation is Keras 3's (batch statistics in training, the moving ones
    in inference; on PyTorch a training step normalises with PyTorch's fused
    ``batch_norm``, the same numbers in less memory); what changes is how a training step updates
    ``moving_mean`` / ``moving_variance``. Keras 2.2.4 on TensorFlow
    (``keras/layers/normalization.py`` ``BatchNormalization.call``,
    ``keras/backend/tensorflow_backend.py`` ``normalize_batch_in_training``
    and ``moving_average_update``) differs from Keras 3 in three ways:

    1. **Bessel's correction by the fused kernel.** For a 4-D input normalised
       over its last axis Keras 2.2.4 calls ``tf.nn.fused_batch_norm``, whose
       returned batch variance is the biased one times ``n / max(n - 1, 1)``
       (``fused_batch_norm_op.cc``, ``rest_size_adjust``); other ranks use
       ``tf.nn.moments`` (biased). ``n`` is the number of values per channel.
    2. **A second factor** ``n / (n - (1 + epsilon))`` on that variance, applied
       by the layer itself before the moving average.
    3. **Zero-debiased moving averages** (``assign_moving_average(...,
       zero_debias=True)``): TensorFlow keeps a biased average ``b`` started
       at 0 and a step count ``t``; after each step the moving value is
       ``b / (1 - momentum**t)``. The initial 0 / 1 never leak in: after the
       first step the moving statistics equal that batch's.

    Only ``t`` is kept here (``b`` is ``moving * (1 - momentum**(t-1))``, the
    same quantity); like TensorFlow 1's debiasing variables it is not a weight:
    it is in ``layer.variables`` (so every backend updates it in a traced step)
    but not in ``layer.weights``, weight files, legacy ``.h5`` files or
    parameter counts, which stay those of ``keras.layers.BatchNormalization``.
    A model whose weights are loaded starts again at ``t = 0``, as a fresh
    Keras 2 session did; the trainer's resume points save and restore ``t``
    (:func:`debias_steps`).

    Args:
        moving_update: ``"keras2"`` (the above; default) or ``"keras3"``
            (``keras.layers.BatchNormalization``'s plain exponential average of
            the biased batch variance).
        **kwargs: as ``keras.layers.BatchNormalization``. ``renorm``, masks and
            ``synchronized=True`` fall back to Keras 3's update.
    """

    def __init__(self, moving_update="keras2", **kwargs):
        super().__init__(**kwargs)
        if moving_update not in BN_UPDATES:
            raise ValueError(f"`moving_update` must be one of {BN_UPDATES}, got moving_update={moving_update!r}")
        self.moving_update = moving_update
        self._debias_step = None

    def build(self, input_shape):
        super().build(input_shape)
        with untracked():  # Keras private API: see clci_keras.models.keras_private
            # Not an attribute Keras tracks, so not a weight (see the class docstring).
            self._debias_step = keras.Variable(0.0, dtype="float32", trainable=False,
                                               name="debias_step", aggregation="only_first_replica")
        self._fused = len(input_shape) == 4 and self.axis in (3, -1)

    @property
    def variables(self):
        out = super().variables
        if self._debias_step is not None:
            out = out + [self._debias_step]
        return out

    def call(self, inputs, training=None, mask=None):
        if (not (training and self.trainable) or self.moving_update != "keras2" or mask is not None
                or self.renorm or self.synchronized):
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = ops.moments(x, axes=self._reduction_axes)  # biased, as the fused op normalises
        shape = ops.shape(x)
        count = math.prod(shape[a] for a in self._reduction_axes)
        n = ops.cast(count, x.dtype)
        fed = variance * (n / (n - (1.0 + self.epsilon)))
        if self._fused:
            fed = fed * (n / ops.maximum(n - 1.0, 1.0))
        m = float(self.momentum)
        t = ops.cast(self._debias_step, x.dtype)
        before, after = 1.0 - ops.power(m, t), 1.0 - ops.power(m, t + 1.0)
        for var, value in ((self.moving_mean, mean), (self.moving_variance, fed)):
            old = ops.cast(var, x.dtype)
            var.assign(ops.cast((m * before * old + (1.0 - m) * value) / after, var.dtype))
        self._debias_step.assign(t + 1.0)
        gamma = ops.cast(self.gamma, x.dtype) if self.scale else None
        beta = ops.cast(self.beta, x.dtype) if self.center else None
        # PyTorch's kernel refuses one value per channel (a pooled 1 x 1 map at batch 1).
        if keras.backend.backend() == "torch" and self._fused and count > 1:
            out = _torch_batch_norm(x, gamma, beta, self.epsilon)
        else:
            out = ops.batch_normalization(x, mean, variance, axis=self.axis, offset=beta, scale=gamma,
                                          epsilon=self.epsilon)
        return ops.cast(out, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "moving_update": self.moving_update}


def all_layers(model):
    """Every layer inside ``model``, each once; nested models' layers included.

    The public counterpart of Keras's private ``Layer._flatten_layers(include_self=False)``,
    in its order, for models built from layers (a layer that holds other layers must be a
    model, or a recurrent layer holding its ``cell``, e.g. ``ConvLSTM2D``'s, which owns the
    kernels): a queue of ``model.layers``, each one's own ``layers`` (or ``cell``) put in
    front of it.
    """
    out, seen, queue = [], set(), collections.deque(model.layers)
    while queue:
        layer = queue.popleft()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        cell = getattr(layer, "cell", None)
        queue.extendleft([cell] if isinstance(cell, keras.layers.Layer) else getattr(layer, "layers", ()))
    return out


def debias_steps(model):
    """``{layer name: t}`` of every :class:`BatchNormalization` of ``model`` that is built."""
    return {
        layer.name: float(np.asarray(layer._debias_step))
        for layer in all_layers(model)
        if isinstance(layer, BatchNormalization) and layer._debias_step is not None
    }


def set_debias_steps(model, steps):
    """Restore :func:`debias_steps` (layers not named in ``steps`` are left alone)."""
    for layer in all_layers(model):
        if isinstance(layer, BatchNormalization) and layer.name in steps and layer._debias_step is not None:
            layer._debias_step.assign(float(steps[layer.name]))


# ---------------------------------------------------------------------------
# Dropout with the same masks on every backend
# ---------------------------------------------------------------------------
#: Multipliers of the 32-bit integer mixer (C. Wellons' "lowbias32"), as signed int32.
_MIX = (0x7FEB352D, 0x846CA68B - (1 << 32))
_GOLDEN = 0x9E3779B9 - (1 << 32)


def _int32(value):
    return ops.convert_to_tensor(np.int32(value), dtype="int32")


def _shift_right(x, k):
    """Logical right shift of int32 ``x`` (``right_shift`` is arithmetic on every backend)."""
    return ops.bitwise_and(ops.right_shift(x, k), _int32((1 << (32 - k)) - 1))


def _mix32(x):
    """A bijective 32-bit hash; int32 products wrap around alike on every backend."""
    x = ops.bitwise_xor(x, _shift_right(x, 16))
    x = ops.multiply(x, _int32(_MIX[0]))
    x = ops.bitwise_xor(x, _shift_right(x, 15))
    x = ops.multiply(x, _int32(_MIX[1]))
    return ops.bitwise_xor(x, _shift_right(x, 16))


def counter_uniform(shape, seed):
    """Uniform floats in ``[0, 1)`` (24 random bits) of ``shape``: one hash per element.

    ``seed``: two integers (a :class:`keras.random.SeedGenerator` state: seed and
    counter). The values are a function of ``seed`` and the position alone, made
    of integer operations only, so every backend gives the same bits.
    """
    seed = ops.cast(seed, "int32")
    key_a = _mix32(seed[0])
    key_b = _mix32(ops.bitwise_xor(ops.multiply(seed[1], _int32(_GOLDEN)), key_a))
    index = _int32(0)
    for dim in shape:  # row-major element number, built axis by axis (the batch may be unknown)
        index = ops.expand_dims(index, -1) * ops.cast(dim, "int32") + ops.arange(dim, dtype="int32")
    bits = _mix32(ops.bitwise_xor(_mix32(ops.add(index, key_a)), key_b))
    return ops.cast(_shift_right(bits, 8), "float32") * (1.0 / (1 << 24))


@keras.saving.register_keras_serializable(package=PACKAGE)
class Dropout(keras.layers.Dropout):
    """``keras.layers.Dropout`` whose masks are the same on TensorFlow, JAX and PyTorch.

    Keras draws dropout masks from each backend's own generator (Philox on
    TensorFlow, threefry on JAX, PyTorch's), so one seed gives three different
    trainings; on a short run the draw decides much of the result. Here the
    mask of each call is :func:`counter_uniform` ``>= rate`` of the layer's
    seed-generator state, which advances by one per training call as Keras's
    does (so resume points, which save that state, replay the same masks).
    Kept values are scaled by ``1 / (1 - rate)``, as Keras and Keras 2 do;
    inference is the identity. The mask is a different draw from the original
    TensorFlow 1 code's, which no backend of Keras 3 reproduces anyway; the rate
    and where dropout acts are the original's. Same arguments and config as
    ``keras.layers.Dropout``; it has no weights, so weight files are unaffected.
    """

    def call(self, inputs, training=False):
        if not training or self.rate <= 0:
            return inputs
        if self.rate >= 1:
            return ops.zeros_like(inputs)
        shape = tuple(ops.shape(inputs))
        if self.noise_shape is not None:
            shape = tuple(s if n is None else n for s, n in zip(shape, self.noise_shape))
        keep = counter_uniform(shape, self.seed_generator.next()) >= self.rate
        scaled = inputs / ops.cast(1.0 - self.rate, inputs.dtype)
        return ops.where(keep, scaled, ops.zeros_like(inputs))
