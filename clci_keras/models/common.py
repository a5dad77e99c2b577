"""Shared helpers of the model builders: input checks, padding, conv units, heads.

* Input handling: :func:`resolve_input` validates ``input_shape`` or, when
  given, the shape of ``input_tensor`` (``H`` and ``W`` multiples of CLCI-Net's
  16, or at least a comparison model's output stride). The comparison models
  accept any size: :func:`pad_to_multiple` zero-pads the input symmetrically
  to the next multiple of the stride inside the model and :func:`crop_to` cuts
  the score map back, so the model's input and output are exactly the size
  the user gave (224×176 is not a multiple of 32).
* Units: :func:`conv_bn_relu` (bias-free conv, BatchNorm, ReLU; CLCI-Net's
  unit, :func:`clci_keras.models.clci_net.conv_bias_bn_relu`, keeps the conv
  bias of the authors' code),
  :func:`score_conv` and :func:`output_head` (crop, sigmoid/softmax).
"""
from __future__ import annotations

import keras
from keras import layers

KERNEL_INIT = "he_normal"
BN_KWARGS = dict(axis=-1, momentum=0.99, epsilon=1e-3)


def batch_norm(name, **kwargs):
    """The models' BatchNormalization: Keras 2.2's defaults and moving-statistics update.

    :class:`clci_keras.models.layers.BatchNormalization` with
    ``BN_KWARGS`` (Keras 2.2.4's defaults: ``momentum=0.99``, ``epsilon=1e-3``);
    the same four weights as ``keras.layers.BatchNormalization``.
    """
    from clci_keras.models.layers import BatchNormalization

    return BatchNormalization(**{**BN_KWARGS, **kwargs}, name=name)


# --------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------
def validate_input_shape(input_shape, *, multiple=1, min_size=1, name="input_shape"):
    """Check an ``(H, W, C)`` shape; returns it as a tuple of ints.

    ``H`` and ``W`` must be multiples of ``multiple`` (CLCI-Net: 16, four 2×2
    poolings) and at least ``min_size`` (comparison models: their output
    stride). Raises ``ValueError`` echoing the bad value otherwise.
    """
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"`{name}` must be a tuple (height, width, channels), got {input_shape!r}"
        ) from None
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(
            f"`{name}` must be (height, width, channels) with positive sizes, got {input_shape!r}"
        )
    h, w, _ = shape
    if h % multiple or w % multiple:
        raise ValueError(
            f"`{name}`={input_shape!r}: height and width must be multiples of {multiple} "
            f"(the network downsamples by {multiple}); crop or pad the slices, e.g. ATLAS "
            f"slices are cropped to 224x176."
        )
    if min(h, w) < min_size:
        raise ValueError(
            f"`{name}`={input_shape!r}: height and width must be at least {min_size} "
            f"(the network's output stride)"
        )
    return shape


def resolve_input(input_shape, input_tensor, *, multiple=1, min_size=1):
    """Validated ``(H, W, C)`` and the model's input tensor, keras.applications-style.

    With ``input_tensor`` (a Keras tensor, e.g. ``keras.Input(...)``) its static
    shape is used and ``input_shape`` is ignored; otherwise ``input_shape`` is
    checked and a new ``keras.Input`` named ``"image"`` is made. See
    :func:`validate_input_shape` for ``multiple`` and ``min_size``.

    Returns:
        ``(shape, inputs)``.
    """
    if input_tensor is None:
        shape = validate_input_shape(input_shape, multiple=multiple, min_size=min_size)
        return shape, keras.Input(shape=shape, name="image")
    if not keras.backend.is_keras_tensor(input_tensor):
        raise ValueError(
            f"`input_tensor` must be a Keras tensor (e.g. keras.Input(shape)), "
            f"got input_tensor={input_tensor!r}"
        )
    full = tuple(input_tensor.shape)
    if len(full) != 4 or None in full[1:]:
        raise ValueError(
            f"`input_tensor` must have a static (batch, height, width, channels) shape, "
            f"got shape {full}"
        )
    shape = validate_input_shape(
        full[1:], multiple=multiple, min_size=min_size, name="input_tensor.shape[1:]"
    )
    return shape, input_tensor


def validate_num_class(num_class):
    """``num_class`` must be a positive int; returns it."""
    if isinstance(num_class, bool) or not isinstance(num_class, int) or num_class < 1:
        raise ValueError(f"`num_class` must be a positive integer, got num_class={num_class!r}")
    return num_class


def output_activation(num_class):
    """Sigmoid for one class, softmax over the class axis otherwise (as CLCI-Net)."""
    return "sigmoid" if num_class == 1 else "softmax"


# --------------------------------------------------------------------------
# Padding to the output stride
# --------------------------------------------------------------------------
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
# Units and heads
# --------------------------------------------------------------------------
def conv_bn_relu(x, filters, kernel_size=3, strides=1, dilation_rate=1, *, name, relu=True):
    """Conv2D (He-normal, **no bias**, 'same') → BatchNorm → optional ReLU: the comparison models' unit.

    PSPNet, DeepLabv3+ and DenseUNet build on ResNet / DenseNet, whose
    reference convolutions have no bias before BatchNormalization (its shift
    makes the bias redundant). CLCI-Net's unit keeps it, because the authors' Keras 2.2 code
    did and its weight files hold one:
    :func:`clci_keras.models.clci_net.conv_bias_bn_relu`. The two are not
    interchangeable: a network built with the other unit has other weights.
    """
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
    x = batch_norm(f"{name}_bn")(x)
    if relu:
        x = layers.Activation("relu", name=f"{name}_relu")(x)
    return x


def score_conv(x, num_class, *, name, kernel_initializer="glorot_uniform"):
    """1×1 conv to ``num_class`` logits (with bias, no activation)."""
    return layers.Conv2D(
        num_class, 1, kernel_initializer=kernel_initializer, name=name
    )(x)


def output_head(logits, num_class, pads, *, name="output"):
    """Crop padded logits back to the input size and apply sigmoid/softmax."""
    logits = crop_to(logits, pads, name=f"{name}_crop")
    return layers.Activation(output_activation(num_class), name=name)(logits)
