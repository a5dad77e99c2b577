"""2D DenseUNet (of H-DenseUNet), a comparison method of the paper's Table 1.

Reference:
    X. Li, H. Chen, X. Qi, Q. Dou, C.-W. Fu, P.-A. Heng. "H-DenseUNet: Hybrid
    Densely Connected UNet for Liver and Tumor Segmentation From CT Volumes",
    IEEE TMI 37(12), 2018. arXiv:1709.07330. (Encoder: DenseNet-161,
    G. Huang et al., "Densely Connected Convolutional Networks", CVPR 2017.)

Reference configuration followed: the 2D DenseUNet-167 of H-DenseUNet's
Table 1: DenseNet-161 encoder (7×7 stem conv of 96 with stride 2, 3×3 max
pooling, dense blocks of 6, 12, 36, 24 BN-ReLU-1×1(4k)-BN-ReLU-3×3(k) layers
with growth rate k = 48, transitions BN-ReLU-1×1 conv with compression 0.5
and 2×2 average pooling, final BN-ReLU) and a U-shaped decoder of five
upsampling stages, each ×2 upsampling → element-wise addition of the
same-resolution encoder feature → 3×3 conv-BN-ReLU with 768, 384, 96, 96, 64
channels, then a 1×1 classifier.

Choices the CLCI-Net paper leaves open (it only names "DenseUnet"), and
details of the reference we had to fix:

* **Single 2D network, from scratch**: only the 2D DenseUNet part of
  H-DenseUNet, no ImageNet initialisation, no 3D branch or hybrid fusion, no
  auto-context input; one input channel (H-DenseUNet fed 3 adjacent slices).
* **Skips**: stage 1 adds the dense-block-3 output (2112 channels) to the
  upsampled block-4 output (2208 channels); a 1×1 conv projects the skip to
  the decoder width wherever widths differ (only there by default). Stages
  2, 3, 4 add the block-2 output, block-1 output and the stem conv output
  (768, 384, 96 channels, equal to the decoder widths); stage 5 has no skip.
* **Upsampling** is bilinear (``UpSampling2D(interpolation="bilinear")``).
* **Sizes**: the encoder downsamples by 32, so sides that are not multiples
  of 32 are zero-padded symmetrically inside the model (224×176 → 224×192)
  and the output is cropped back.
* **Widths** are the reference ones (≈49.6 M parameters); ``blocks``,
  ``growth_rate``, ``stem_filters`` and ``decoder_filters`` give smaller
  variants (e.g. DenseNet-121: ``blocks=(6, 12, 24, 16), growth_rate=32,
  stem_filters=64``).
"""
from __future__ import annotations

import keras
from keras import layers

from clci_keras.models.common import (
    batch_norm,
    KERNEL_INIT,
    conv_bn_relu,
    output_head,
    pad_to_multiple,
    resolve_input,
    score_conv,
    validate_num_class,
)
from clci_keras.models.registry import register_model

OUTPUT_STRIDE = 32
DENSENET161_BLOCKS = (6, 12, 36, 24)
GROWTH_RATE = 48
STEM_FILTERS = 96
DECODER_FILTERS = (768, 384, 96, 96, 64)
COMPRESSION = 0.5
BOTTLENECK_WIDTH = 4


def _bn_relu_conv(x, filters, kernel_size, *, name):
    x = batch_norm(f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    return layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        use_bias=False,
        kernel_initializer=KERNEL_INIT,
        name=f"{name}_conv",
    )(x)


def dense_block(x, layers_count, growth_rate, *, name):
    """DenseNet-BC block: each layer adds ``growth_rate`` channels to the concatenation."""
    for i in range(1, layers_count + 1):
        y = _bn_relu_conv(x, BOTTLENECK_WIDTH * growth_rate, 1, name=f"{name}_l{i}_1")
        y = _bn_relu_conv(y, growth_rate, 3, name=f"{name}_l{i}_2")
        x = layers.Concatenate(name=f"{name}_l{i}_concat")([x, y])
    return x


def transition(x, *, name):
    """BN-ReLU-1×1 conv (×0.5 channels) → 2×2 average pooling."""
    x = _bn_relu_conv(x, int(x.shape[-1] * COMPRESSION), 1, name=name)
    return layers.AveragePooling2D(2, name=f"{name}_pool")(x)


def _positive_ints(value, length, argname):
    try:
        ok = len(value) == length and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        )
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"`{argname}` must be {length} positive integers, got {argname}={value!r}")
    return tuple(value)


def DenseUNet(
    input_shape=(224, 176, 1),
    num_class=1,
    blocks=DENSENET161_BLOCKS,
    growth_rate=GROWTH_RATE,
    stem_filters=STEM_FILTERS,
    decoder_filters=DECODER_FILTERS,
    input_tensor=None,
    name="denseunet",
):
    """Build the 2D DenseUNet of H-DenseUNet (Li et al., IEEE TMI 2018), from scratch.

    Args:
        input_shape: ``(H, W, C)`` with ``H, W >= 32``; sides that are not
            multiples of 32 are zero-padded inside and the output cropped back.
        num_class: output channels; 1 gives a sigmoid map, more a softmax.
        blocks: layers in the four dense blocks (DenseNet-161: 6, 12, 36, 24).
        growth_rate: channels added per dense layer (48).
        stem_filters: width of the 7×7 stride-2 stem conv (96).
        decoder_filters: widths of the five decoder stages (768, 384, 96, 96, 64).
        input_tensor: optional Keras tensor to use as the input; its static
            ``(H, W, C)`` replaces ``input_shape``.
        name: model name.

    Returns:
        A ``keras.Model`` mapping ``(batch, H, W, C)`` to ``(batch, H, W, num_class)``.
    """
    shape, inputs = resolve_input(input_shape, input_tensor, min_size=OUTPUT_STRIDE)
    num_class = validate_num_class(num_class)
    blocks = _positive_ints(blocks, 4, "blocks")
    decoder_filters = _positive_ints(decoder_filters, 5, "decoder_filters")
    (growth_rate,) = _positive_ints((growth_rate,), 1, "growth_rate")
    (stem_filters,) = _positive_ints((stem_filters,), 1, "stem_filters")

    x, pads = pad_to_multiple(inputs, OUTPUT_STRIDE, name="pad")
    stem = conv_bn_relu(x, stem_filters, 7, 2, name="stem")  # 1/2
    x = layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(stem)  # 1/4
    skips = [stem]
    for b, n in enumerate(blocks, start=1):
        x = dense_block(x, n, growth_rate, name=f"dense{b}")
        if b < len(blocks):
            skips.append(x)  # 1/4, 1/8, 1/16
            x = transition(x, name=f"transition{b}")
    x = batch_norm("dense_final_bn")(x)
    x = layers.Activation("relu", name="dense_final_relu")(x)  # 1/32

    # Decoder: skips from deep to shallow, the last stage has none.
    for d, filters in enumerate(decoder_filters, start=1):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{d}_upsample")(x)
        if d <= len(skips):
            skip = skips[-d]
            if skip.shape[-1] != x.shape[-1]:
                skip = layers.Conv2D(
                    x.shape[-1], 1, kernel_initializer=KERNEL_INIT, name=f"up{d}_skip_proj"
                )(skip)
            x = layers.Add(name=f"up{d}_add")([x, skip])
        x = conv_bn_relu(x, filters, 3, name=f"up{d}")

    x = score_conv(x, num_class, name="score")
    outputs = output_head(x, num_class, pads, name="output")
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


register_model(
    "denseunet",
    DenseUNet,
    description="2D DenseUNet of H-DenseUNet: DenseNet-161 encoder, 5-stage decoder with skip additions",
    reference="Li et al., H-DenseUNet, IEEE TMI 2018 (arXiv:1709.07330)",
)
