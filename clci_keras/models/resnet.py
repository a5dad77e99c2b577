"""Dilated bottleneck ResNet encoder of PSPNet (output stride 8) and DeepLabv3+ (16).

Reference:
    K. He, X. Zhang, S. Ren, J. Sun. "Deep Residual Learning for Image
    Recognition", CVPR 2016.
"""
from __future__ import annotations

from keras import layers

from clci_keras.models.common import conv_bn_relu

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
