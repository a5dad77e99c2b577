"""CLCI-Net: Cross-Level fusion and Context Inference network.

Reference:
    H. Yang, W. Huang, K. Qi, C. Li, X. Liu, M. Wang, H. Zheng, S. Wang.
    "CLCI-Net: Cross-Level Fusion and Context Inference Networks for Lesion
    Segmentation of Chronic Stroke", MICCAI 2019, LNCS 11766, pp. 266-274.
    arXiv:1907.07008.

The graph reproduces the authors' Keras 2.2 code (repository YH0517/CLCI_Net)
layer for layer: same layers, same order, same hyper-parameters, so that the
weight-holding layers (51 Conv2D, 50 BatchNormalization, 4 ConvLSTM2D at full
configuration) line up one-to-one with weights saved by the original code.

Keras 2.2 → Keras 3 differences handled here:

* ``ConvLSTM2D`` defaulted to ``recurrent_activation="hard_sigmoid"`` with the
  Keras-2 formula ``clip(0.2x + 0.5, 0, 1)``; Keras 3 defaults to ``sigmoid`` and
  redefined ``hard_sigmoid``. We pass :func:`hard_sigmoid_keras2` explicitly.
* ``he_normal`` is a truncated normal with std ``sqrt(2 / fan_in) / 0.8796`` in
  both Keras 2.2 and Keras 3; ``glorot_uniform``, ``orthogonal``,
  ``unit_forget_bias=True`` and BatchNormalization's ``momentum=0.99``,
  ``epsilon=1e-3`` are also unchanged, and are written out to pin them.
* The original's ``tf.image.resize_bilinear`` is :class:`BilinearUpsampling`
  (TF-1 corner alignment) and its ``custom_concat`` is :class:`SequenceConcat`.
* The original defined (then disabled) an L2(1e-5) regulariser; no regulariser
  is used, as in the published code.
"""
from __future__ import annotations

import keras
from keras import layers

from clci_keras.models.common import (
    batch_norm,
    KERNEL_INIT,
    output_activation,
    resolve_input,
    validate_num_class,
)
from clci_keras.models.layers import BilinearUpsampling, Dropout, SequenceConcat, hard_sigmoid_keras2

#: Number of 2×2 poolings in the encoder: spatial sizes must be multiples of 2**4.
NUM_POOLINGS = 4
#: Base widths of the encoder levels 1..5.
ENCODER_FILTERS = (32, 64, 128, 256, 512)
#: Width of every CLF-ASPP branch (the projection has 4× this).
ASPP_FILTERS = 256
#: Dilation rates of the three atrous branches of the CLF-ASPP.
ASPP_RATES = (2, 4, 6)
#: Dropout rate after the bottleneck and after the CLF-ASPP projection.
DROPOUT_RATE = 0.5

# --------------------------------------------------------------------------
# Blocks (names follow the paper's parts)
# --------------------------------------------------------------------------
def conv_bias_bn_relu(x, filters, kernel_size=(3, 3), strides=(1, 1), dilation_rate=(1, 1), *, name):
    """Conv2D **with bias** (He-normal, 'same') → BatchNorm → ReLU; the original's basic unit.

    The authors' Keras 2.2 code keeps ``Conv2D``'s default ``use_bias=True``
    before every BatchNormalization, so each of these convolutions holds a
    kernel *and* a bias: the bias is what makes the layer line up with the
    original weight files (a bias-free conv cannot load them). Not
    interchangeable with :func:`clci_keras.models.common.conv_bn_relu`
    (bias-free, as the comparison models' references build it).
    """
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        dilation_rate=dilation_rate,
        use_bias=True,
        kernel_initializer=KERNEL_INIT,
        name=f"{name}_conv",
    )(x)
    x = batch_norm(f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def double_conv(x, filters, *, name):
    """Two 3×3 conv-BN-ReLU units: one encoder or decoder stage."""
    x = conv_bias_bn_relu(x, filters, name=f"{name}_1")
    return conv_bias_bn_relu(x, filters, name=f"{name}_2")


def clf_downsample(source, target, filters, stride, *, name):
    """One cross-level path: strided 3×3 conv of ``source``, concatenated to ``target``.

    ``stride`` brings the shallower level ``source`` down to ``target``'s size.
    """
    down = conv_bias_bn_relu(source, filters, strides=(stride, stride), name=name)
    return layers.Concatenate(axis=-1, name=f"{name}_concat")([down, target])


def clf_fusion(features, pooled, level, *, name):
    """Cross-Level feature Fusion before encoder stage ``level + 1``.

    ``features`` are the outputs of stages 1..level (shallow first) and
    ``pooled`` the max-pooled output of stage ``level``. Starting from the
    shallowest stage, each stage ``j`` is downsampled by a strided conv
    (stride ``2**(level - j + 1)``) and concatenated to the running tensor
    (first ``pooled``, then the previous concatenation), and a 1×1 conv with
    4× the next stage's width fuses the result.
    """
    width = ENCODER_FILTERS[level - 1]
    x = pooled
    for j in range(1, level + 1):
        stride = 2 ** (level - j + 1)
        x = clf_downsample(features[j - 1], x, width, stride, name=f"{name}_from{j}")
    return conv_bias_bn_relu(x, 4 * ENCODER_FILTERS[level], kernel_size=(1, 1), name=f"{name}_fuse")


def clf_aspp(x, skips, clf=True, *, name="clf_aspp"):
    """CLF-extended atrous spatial pyramid pooling on the bottleneck.

    Branches: 1×1 conv; 3×3 convs at dilation 2, 4, 6; global average pooling
    → 1×1 conv → bilinear upsampling; and (with ``clf``) one strided 3×3 conv per
    encoder stage 1..4 bringing it to the bottleneck size. The CLF branches
    come first in the concatenation, then a 1×1 projection to 1024 channels
    and dropout 0.5. The image pooling averages the whole bottleneck map, so
    its pool size is ``x``'s static spatial size (``H/16 × W/16``).
    """
    ph, pw = x.shape[1], x.shape[2]
    if ph is None or pw is None:
        raise ValueError(f"clf_aspp needs a static spatial size, got shape {tuple(x.shape)}")
    b0 = conv_bias_bn_relu(x, ASPP_FILTERS, kernel_size=(1, 1), name=f"{name}_b0")
    atrous = [
        conv_bias_bn_relu(x, ASPP_FILTERS, dilation_rate=(r, r), name=f"{name}_rate{r}")
        for r in ASPP_RATES
    ]
    b4 = layers.AveragePooling2D(pool_size=(ph, pw), name=f"{name}_pool")(x)
    b4 = conv_bias_bn_relu(b4, ASPP_FILTERS, kernel_size=(1, 1), name=f"{name}_pool")
    b4 = BilinearUpsampling((ph, pw), name=f"{name}_pool_upsample")(b4)
    branches = []
    if clf:
        for j, skip in enumerate(skips, start=1):
            stride = 2 ** (NUM_POOLINGS - j + 1)
            branches.append(
                conv_bias_bn_relu(
                    skip, ASPP_FILTERS, strides=(stride, stride), name=f"{name}_clf{j}"
                )
            )
    branches += [b0, *atrous, b4]
    out = layers.Concatenate(axis=-1, name=f"{name}_concat")(branches)
    out = conv_bias_bn_relu(out, 4 * ASPP_FILTERS, kernel_size=(1, 1), name=f"{name}_project")
    return Dropout(DROPOUT_RATE, name=f"{name}_dropout")(out)


def context_inference(decoded, skip, filters, *, name):
    """Context inference: a ConvLSTM over the two-step sequence (decoder, skip).

    Both maps (same size and ``filters`` channels) become one time step each;
    ``ConvLSTM2D`` (3×3, He-normal kernel, orthogonal recurrent kernel,
    Keras-2 hard-sigmoid gates, tanh) returns its last hidden state. Its two
    steps are unrolled (``unroll=True``: the same operations as the loop, no
    weights change); a loop's backward pass is slow under XLA on CPUs
    (benchmarks/RESULTS.md, Backends side by side).
    """
    h, w, c = decoded.shape[1], decoded.shape[2], decoded.shape[3]
    step1 = layers.Reshape((1, h, w, c), name=f"{name}_step_decoder")(decoded)
    step2 = layers.Reshape((1, h, w, c), name=f"{name}_step_skip")(skip)
    seq = SequenceConcat(axis=1, name=f"{name}_sequence")([step1, step2])
    return layers.ConvLSTM2D(
        filters,
        (3, 3),
        strides=(1, 1),
        padding="same",
        activation="tanh",
        recurrent_activation=hard_sigmoid_keras2,
        kernel_initializer=KERNEL_INIT,
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        unit_forget_bias=True,
        return_sequences=False,
        unroll=True,
        name=f"{name}_convlstm",
    )(seq)


def decoder_stage(x, skip, filters, inference=True, *, name):
    """Upsample ×2 (nearest) → 2×2 conv, merge with the encoder skip, double conv.

    With ``inference`` the skip goes through a 1×1 conv and the merge is
    :func:`context_inference`; without it the raw skip is concatenated
    (U-Net style) and no 1×1 conv is used.
    """
    up = layers.UpSampling2D(size=(2, 2), interpolation="nearest", name=f"{name}_upsample")(x)
    up = conv_bias_bn_relu(up, filters, kernel_size=(2, 2), name=f"{name}_up")
    if inference:
        skip = conv_bias_bn_relu(skip, filters, kernel_size=(1, 1), name=f"{name}_skip")
        merged = context_inference(up, skip, filters, name=f"{name}_context")
    else:
        merged = layers.Concatenate(axis=-1, name=f"{name}_concat")([up, skip])
    return double_conv(merged, filters, name=f"{name}_conv")


# --------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------
def CLCI_Net(
    input_shape=(224, 176, 1),
    num_class=1,
    aspp=True,
    clf=True,
    inference=True,
    input_tensor=None,
    name="clci_net",
):
    """Build CLCI-Net (Yang et al., MICCAI 2019) as a functional Keras model.

    Args:
        input_shape: ``(H, W, C)``; ``H`` and ``W`` must be multiples of 16.
            The paper feeds 224×176×1 crops of ATLAS axial slices in [0, ~1].
        num_class: output channels; 1 gives a sigmoid map, more a softmax.
        aspp: keep the CLF-ASPP bottleneck. ``False`` feeds the (dropped-out)
            bottleneck stage straight into the decoder.
        clf: keep the cross-level fusion paths. ``False`` removes the strided
            cross-level convs, their concatenations and the 1×1 fusion convs in
            the encoder (each stage then takes the previous stage's max-pool
            output, as in U-Net) and the four CLF branches of the ASPP.
        inference: keep the ConvLSTM context inference at the four decoder
            skips. ``False`` concatenates the raw encoder output to the
            upsampled decoder map instead (no 1×1 skip conv, no ConvLSTM).
        input_tensor: optional Keras tensor (e.g. ``keras.Input(shape)``) to use
            as the input; its static ``(H, W, C)`` must satisfy the same rule
            and replaces ``input_shape``.
        name: model name.

    All three switches off is the paper's "Baseline" (a U-Net of the same
    depth and widths). With everything on and 224×176×1 input the model has
    36,838,305 parameters.

    Returns:
        A ``keras.Model`` mapping ``(batch, H, W, C)`` to ``(batch, H, W, num_class)``.
    """
    _, inputs = resolve_input(input_shape, input_tensor, multiple=2**NUM_POOLINGS)
    num_class = validate_num_class(num_class)

    # Encoder with cross-level feature fusion.
    stages = []
    x = inputs
    for level in range(1, NUM_POOLINGS + 1):
        conv = double_conv(x, ENCODER_FILTERS[level - 1], name=f"enc{level}")
        stages.append(conv)
        pooled = layers.MaxPooling2D(pool_size=(2, 2), name=f"enc{level}_pool")(conv)
        x = clf_fusion(stages, pooled, level, name=f"clf{level}") if clf else pooled
    x = double_conv(x, ENCODER_FILTERS[NUM_POOLINGS], name=f"enc{NUM_POOLINGS + 1}")
    x = Dropout(DROPOUT_RATE, name=f"enc{NUM_POOLINGS + 1}_dropout")(x)

    if aspp:
        x = clf_aspp(x, stages, clf=clf)

    # Decoder with context inference at each skip.
    for d, level in enumerate(range(NUM_POOLINGS, 0, -1), start=1):
        x = decoder_stage(
            x, stages[level - 1], ENCODER_FILTERS[level - 1], inference=inference, name=f"dec{d}"
        )

    outputs = layers.Conv2D(
        num_class,
        (1, 1),
        padding="valid",
        activation=output_activation(num_class),
        kernel_initializer="glorot_uniform",
        name="output",
    )(x)
    return keras.Model(inputs=inputs, outputs=outputs, name=name)
