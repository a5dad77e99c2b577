"""FCN-8s, the first comparison method of the paper's Table 1.

Reference:
    J. Long, E. Shelhamer, T. Darrell. "Fully Convolutional Networks for
    Semantic Segmentation", CVPR 2015 (and TPAMI 2017). arXiv:1411.4038.

Reference configuration followed: the VGG-16 FCN-8s ("fcn8s" of the authors'
release): VGG-16 convolutions (widths 64-128-256-512-512, 2-2-3-3-3 convs),
fully-connected layers as convolutions (fc6 7×7, fc7 1×1, dropout 0.5 each),
1×1 score layers on fc7, pool4 and pool3 (zero-initialised), learned
transposed-convolution upsampling ×2 / ×2 / ×8 initialised to bilinear
interpolation (no bias), and skip fusion by summation.

Choices the CLCI-Net paper leaves open (it only names "FCN-8s"):

* **No ImageNet weights** (single-channel MRI, trained from scratch as every
  model here). Because of that a BatchNorm follows every VGG/fc convolution
  by default (``batch_norm=True``); ``batch_norm=False`` gives the plain
  reference layers (conv with bias + ReLU).
* **fc width**: ``fc_filters=1024`` instead of VGG's 4096 (fc6 alone would
  hold 103 M parameters at 4096, the whole model 134 M); the 7×7 kernel is
  kept. ``fc_filters=4096`` restores the reference head.
* **Sizes**: the original pads its input by 100 pixels and crops the
  output with fixed offsets. Here the input is zero-padded symmetrically to
  the next multiple of 32 (224×176 → 224×192), every layer uses "same"
  padding so pool3/pool4/pool5 are exactly 1/8, 1/16, 1/32 of the padded
  size and the ×2/×2/×8 upsampled maps line up with the skips without
  cropping, and the final score map is cropped back to the input size.
* The "at-once" variant's fixed scaling of the pool3/pool4 features (1e-4,
  0.01) is not used (that of the staged training is).
"""
from __future__ import annotations

import keras
from keras import layers

from clci_keras.models.common import (
    KERNEL_INIT,
    batch_norm as bn_layer,
    output_head,
    pad_to_multiple,
    resolve_input,
    validate_num_class,
)
from clci_keras.models.layers import BilinearKernel, Dropout
from clci_keras.models.registry import register_model

#: Total downsampling of the VGG-16 encoder: input is padded to multiples of it.
OUTPUT_STRIDE = 32
#: (convs, filters) of the five VGG-16 blocks.
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
DROPOUT_RATE = 0.5


def _conv(x, filters, kernel_size, batch_norm, *, name):
    x = layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        use_bias=not batch_norm,
        kernel_initializer=KERNEL_INIT,
        name=f"{name}_conv" if batch_norm else name,
    )(x)
    if batch_norm:
        x = bn_layer(f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _upscore(x, num_class, factor, *, name):
    """Learned ×``factor`` upsampling: transposed conv, kernel 2·factor, bilinear init."""
    return layers.Conv2DTranspose(
        num_class,
        2 * factor,
        strides=factor,
        padding="same",
        use_bias=False,
        kernel_initializer=BilinearKernel(),
        name=name,
    )(x)


def _score(x, num_class, *, name):
    return layers.Conv2D(num_class, 1, kernel_initializer="zeros", name=name)(x)


def FCN8s(
    input_shape=(224, 176, 1),
    num_class=1,
    fc_filters=1024,
    batch_norm=True,
    input_tensor=None,
    name="fcn8s",
):
    """Build FCN-8s (Long et al., CVPR 2015) with a VGG-16 encoder, from scratch.

    Args:
        input_shape: ``(H, W, C)`` with ``H, W >= 32``; any size is accepted
            (zero-padded to multiples of 32 inside, output cropped back).
        num_class: output channels; 1 gives a sigmoid map, more a softmax.
        fc_filters: width of fc6 (7×7) and fc7 (1×1); the reference has 4096.
        batch_norm: BatchNorm after every VGG and fc convolution (not in the
            reference, which starts from ImageNet weights).
        input_tensor: optional Keras tensor to use as the input; its static
            ``(H, W, C)`` replaces ``input_shape``.
        name: model name.

    Returns:
        A ``keras.Model`` mapping ``(batch, H, W, C)`` to ``(batch, H, W, num_class)``.
    """
    shape, inputs = resolve_input(input_shape, input_tensor, min_size=OUTPUT_STRIDE)
    num_class = validate_num_class(num_class)
    if isinstance(fc_filters, bool) or not isinstance(fc_filters, int) or fc_filters < 1:
        raise ValueError(f"`fc_filters` must be a positive integer, got fc_filters={fc_filters!r}")

    x, pads = pad_to_multiple(inputs, OUTPUT_STRIDE, name="pad")
    pools = []
    for b, (convs, filters) in enumerate(VGG16_BLOCKS, start=1):
        for c in range(1, convs + 1):
            x = _conv(x, filters, 3, batch_norm, name=f"block{b}_conv{c}")
        x = layers.MaxPooling2D(2, name=f"pool{b}")(x)
        pools.append(x)

    x = _conv(x, fc_filters, 7, batch_norm, name="fc6")
    x = Dropout(DROPOUT_RATE, name="fc6_dropout")(x)
    x = _conv(x, fc_filters, 1, batch_norm, name="fc7")
    x = Dropout(DROPOUT_RATE, name="fc7_dropout")(x)

    x = _score(x, num_class, name="score_fr")
    x = _upscore(x, num_class, 2, name="upscore2")
    x = layers.Add(name="fuse_pool4")([x, _score(pools[3], num_class, name="score_pool4")])
    x = _upscore(x, num_class, 2, name="upscore_pool4")
    x = layers.Add(name="fuse_pool3")([x, _score(pools[2], num_class, name="score_pool3")])
    x = _upscore(x, num_class, 8, name="upscore8")
    outputs = output_head(x, num_class, pads)
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


register_model(
    "fcn8s",
    FCN8s,
    description="FCN-8s: VGG-16 encoder, score layers at pool3/pool4/fc7, learned x2/x2/x8 upsampling",
    reference="Long, Shelhamer, Darrell, FCN, CVPR 2015 (arXiv:1411.4038)",
)
