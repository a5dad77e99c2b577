"""Shared pieces of the comparison models (FCN-8s, PSPNet, DeepLabv3+, DenseUNet).

* Input handling: :func:`validate_image_shape` accepts any ``(H, W, C)`` of at
  least the network's output stride; :func:`pad_to_multiple` zero-pads the
  input symmetrically to the next multiple of the stride inside the model and
  :func:`crop_to` cuts the score map back, so the model's input and output are
  exactly the size the user gave (224×176 is not a multiple of 32).
* Layers: :class:`AdaptiveAveragePooling2D` (PyTorch-style bins, for
  PSPNet's pyramid on a 28×22 map), :class:`ResizeTo` (bilinear resize to a
  fixed size) and :class:`BilinearKernel` (bilinear initialiser for FCN's
  learned upsampling). All are registered for ``.keras`` saving with
  ``safe_mode`` on.
* A dilated bottleneck ResNet encoder (:func:`resnet_encoder`) used by
  PSPNet (output stride 8) and DeepLabv3+ (output stride 16).
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from clci_keras.models.clci_net import (  # noqa: F401 (re-exported for the builders)
    output_activation,
    validate_input_shape,
    validate_num_class,
)
from clci_keras.models.layers import PACKAGE

KERNEL_INIT = "he_normal"
BN_KWARGS = dict(axis=-1, momentum=0.99, epsilon=1e-3)


# --------------------------------------------------------------------------
# Input / output size handling
# --------------------------------------------------------------------------
def validate_image_shape(input_shape, min_size, name="input_shape"):
    """``(H, W, C)`` of positive ints with ``H, W >= min_size``; ``ValueError`` otherwise.

    Unlike CLCI-Net the comparison models pad internally, so ``H`` and ``W``
    need not be multiples of anything.
    """
    shape = validate_input_shape(input_shape, multiple=1, name=name)
    if min(shape[:2]) < min_size:
        raise ValueError(
            f"`{name}`={input_shape!r}: height and width must be at least {min_size} "
            f"(the network's output stride)"
        )
    return shape


def resolve_input(input_shape, input_tensor, min_size):
    """Validated shape and the Keras input tensor (``input_tensor`` or a new ``Input``)."""
    if input_tensor is not None:
        tensor_shape = tuple(input_tensor.shape[1:])
        if None in tensor_shape:
            raise ValueError(
                f"`input_tensor` needs a static (H, W, C) shape, got {tuple(input_tensor.shape)}"
            )
        input_shape = tensor_shape
    shape = validate_image_shape(input_shape, min_size)
    inputs = input_tensor if input_tensor is not None else keras.Input(shape=shape, name="image")
    return shape, inputs


def padding_to_multiple(size, multiple):
    """``(before, after)`` zero padding bringing ``size`` to the next multiple."""
    total = (-size) % multiple
    return total // 2, total - total // 2


def pad_to_multiple(x, multiple, *, name):
    """Zero-pad H and W symmetrically to multiples of ``multiple`` (no-op if already).

    Returns ``(x, ((top, bottom), (left, right)))`` for :func:`crop_to`.
    """
    pads = tuple(padding_to_multiple(int(s), multiple) for s in x.shape[1:3])
    if any(sum(p) for p in pads):
        x = layers.ZeroPadding2D(pads, name=name)(x)
    return x, pads


def crop_to(x, pads, *, name):
    """Undo :func:`pad_to_multiple` on a full-resolution map."""
    if any(sum(p) for p in pads):
        x = layers.Cropping2D(pads, name=name)(x)
    return x


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------
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


# --------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------
def conv_bn_relu(x, filters, kernel_size=3, strides=1, dilation_rate=1, *, name, relu=True):
    """Conv2D (He-normal, no bias, 'same') → BatchNorm → optional ReLU."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        dilation_rate=dilation_rate,
        use_bias=False,
        kernel_initializer=KERNEL_INIT,
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(**BN_KWARGS, name=f"{name}_bn")(x)
    if relu:
        x = layers.Activation("relu", name=f"{name}_relu")(x)
    return x


def score_conv(x, num_class, *, name, kernel_initializer="glorot_uniform"):
    """1×1 conv to ``num_class`` logits (with bias, no activation)."""
    return layers.Conv2D(
        num_class, 1, kernel_initializer=kernel_initializer, name=name
    )(x)


#: Bottleneck blocks per stage of ResNet-50 / -101 (He et al., CVPR 2016).
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def bottleneck(x, filters, strides=1, dilation_rate=1, *, name, project=False):
    """ResNet bottleneck: 1×1 → 3×3 (stride, dilation) → 1×1 (4×), identity or projected shortcut.

    The stride sits on the 3×3 conv (the "v1.5" / Caffe-PSPNet placement).
    """
    shortcut = x
    if project:
        shortcut = conv_bn_relu(x, 4 * filters, 1, strides, name=f"{name}_proj", relu=False)
    y = conv_bn_relu(x, filters, 1, name=f"{name}_1")
    y = conv_bn_relu(y, filters, 3, strides, dilation_rate, name=f"{name}_2")
    y = conv_bn_relu(y, 4 * filters, 1, name=f"{name}_3", relu=False)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def resnet_encoder(x, depth=50, output_stride=8, multi_grid=(1, 1, 1), *, name="resnet"):
    """Dilated bottleneck ResNet with the 3×3 "deep stem"; returns ``{stride: feature}``.

    Stem: three 3×3 convs (64, 64, 128; the first with stride 2) and a 3×3
    max-pool with stride 2, as in PSPNet's ResNet and DeepLab's
    ``resnet_v1_beta``. Stages 1..4 have widths 64, 128, 256, 512 (outputs
    ×4). Once the requested ``output_stride`` is reached further stages keep
    their resolution and dilate their 3×3 convs instead (rate doubles per
    skipped stride). ``multi_grid`` multiplies the rates of the three
    first blocks of stage 4 (DeepLabv3's "Multi-Grid").

    Returns:
        dict mapping strides 4, 8, 16, 32 (only those reached) and ``"out"``
        to feature tensors; stride-4 is stage 1's output (the DeepLabv3+
        low-level feature) and ``"stage3"`` is stage 3's output (PSPNet's
        auxiliary head input).
    """
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"`depth` must be one of {sorted(RESNET_BLOCKS)}, got depth={depth!r}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"`output_stride` must be 8, 16 or 32, got output_stride={output_stride!r}")
    x = conv_bn_relu(x, 64, 3, 2, name=f"{name}_stem1")
    x = conv_bn_relu(x, 64, 3, name=f"{name}_stem2")
    x = conv_bn_relu(x, 128, 3, name=f"{name}_stem3")
    x = layers.MaxPooling2D(3, 2, padding="same", name=f"{name}_stem_pool")(x)
    feats = {}
    stride, rate = 4, 1
    for stage, (blocks, width) in enumerate(zip(RESNET_BLOCKS[depth], (64, 128, 256, 512)), 1):
        first_stride = 1
        if stage > 1:
            if stride < output_stride:
                first_stride = 2
                stride *= 2
            else:
                rate *= 2
        for b in range(blocks):
            unit_rate = rate * (multi_grid[b] if stage == 4 and b < len(multi_grid) else 1)
            x = bottleneck(
                x,
                width,
                strides=first_stride if b == 0 else 1,
                dilation_rate=unit_rate,
                project=b == 0,
                name=f"{name}_s{stage}b{b + 1}",
            )
        if stage == 3:
            feats["stage3"] = x
        feats.setdefault(stride, x)
    feats["out"] = x
    return feats


def output_head(logits, num_class, pads, *, name="output"):
    """Crop padded logits back to the input size and apply sigmoid/softmax."""
    logits = crop_to(logits, pads, name=f"{name}_crop")
    return layers.Activation(output_activation(num_class), name=name)(logits)
