"""DeepLabv3+, a comparison method of the paper's Table 1.

Reference:
    L.-C. Chen, Y. Zhu, G. Papandreou, F. Schroff, H. Adam. "Encoder-Decoder
    with Atrous Separable Convolution for Semantic Image Segmentation",
    ECCV 2018. arXiv:1802.02611. (ASPP and Multi-Grid: DeepLabv3,
    arXiv:1706.05587.)

Reference configuration followed: DeepLabv3+ with a ResNet backbone at
output stride 16 as in the authors' release (``resnet_v1_50_beta``): ResNet-50
with the 3×3 deep stem, stage 4 dilated ×2 with Multi-Grid (1, 2, 4), ASPP
with a 1×1 branch, three 3×3 branches at rates 6, 12, 18 and image-level
pooling (256 channels each, BatchNorm), 1×1 projection to 256 with dropout
0.1; decoder: ×4 bilinear upsampling to the 1/4-resolution stage-1 output,
which is reduced to 48 channels by a 1×1 conv, concatenation, two 3×3 convs
of 256, 1×1 classifier and ×4 bilinear upsampling.

Choices the CLCI-Net paper leaves open (it only names "DeepLabv3+"):

* **Backbone**: ResNet-50 at full width rather than the modified aligned
  Xception-65 (both are configurations of the DeepLabv3+ paper); it trains
  from scratch on one channel without ImageNet weights, and plain 3×3
  convolutions are used in ASPP and decoder (the paper's separable
  convolutions belong to its Xception variant). ``depth=101`` gives
  ResNet-101.
* **Sizes**: sides that are not multiples of 16 are zero-padded
  symmetrically to the next multiple inside the model and the output is
  cropped back (224×176 → 14×11 at stride 16 and 56×44 at stride 4, no
  padding). Bilinear resizes are to the exact skip / input size with
  half-pixel centres (the TF reference aligned corners).
"""
from __future__ import annotations

import keras
from keras import layers

from clci_keras.models.common import (
    conv_bn_relu,
    output_head,
    pad_to_multiple,
    resolve_input,
    score_conv,
    validate_num_class,
)
from clci_keras.models.layers import Dropout, ResizeTo
from clci_keras.models.registry import register_model
from clci_keras.models.resnet import resnet_encoder

OUTPUT_STRIDE = 16
#: Dilation rates of the three atrous ASPP branches at output stride 16.
ASPP_RATES = (6, 12, 18)
ASPP_FILTERS = 256
LOW_LEVEL_FILTERS = 48
DECODER_FILTERS = 256
MULTI_GRID = (1, 2, 4)
DROPOUT_RATE = 0.1


def aspp(x, rates=ASPP_RATES, filters=ASPP_FILTERS, *, name="aspp"):
    """Atrous spatial pyramid pooling: 1×1, 3×3 at ``rates``, image pooling; 1×1 projection."""
    h, w = x.shape[1], x.shape[2]
    branches = [conv_bn_relu(x, filters, 1, name=f"{name}_b0")]
    for r in rates:
        branches.append(conv_bn_relu(x, filters, 3, dilation_rate=r, name=f"{name}_rate{r}"))
    pool = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_image_pool")(x)
    pool = conv_bn_relu(pool, filters, 1, name=f"{name}_image")
    branches.append(ResizeTo((h, w), name=f"{name}_image_resize")(pool))
    y = layers.Concatenate(name=f"{name}_concat")(branches)
    y = conv_bn_relu(y, filters, 1, name=f"{name}_project")
    return Dropout(DROPOUT_RATE, name=f"{name}_dropout")(y)


def DeepLabV3Plus(
    input_shape=(224, 176, 1),
    num_class=1,
    depth=50,
    input_tensor=None,
    name="deeplabv3plus",
):
    """Build DeepLabv3+ (Chen et al., ECCV 2018) on a ResNet backbone, from scratch.

    Args:
        input_shape: ``(H, W, C)`` with ``H, W >= 16``; sides that are not
            multiples of 16 are zero-padded inside and the output cropped back.
        num_class: output channels; 1 gives a sigmoid map, more a softmax.
        depth: ResNet depth, 50 or 101.
        input_tensor: optional Keras tensor to use as the input; its static
            ``(H, W, C)`` replaces ``input_shape``.
        name: model name.

    Returns:
        A ``keras.Model`` mapping ``(batch, H, W, C)`` to ``(batch, H, W, num_class)``.
    """
    shape, inputs = resolve_input(input_shape, input_tensor, min_size=OUTPUT_STRIDE)
    num_class = validate_num_class(num_class)
    x, pads = pad_to_multiple(inputs, OUTPUT_STRIDE, name="pad")
    padded_size = (int(x.shape[1]), int(x.shape[2]))

    feats = resnet_encoder(
        x, depth=depth, output_stride=OUTPUT_STRIDE, multi_grid=MULTI_GRID, name="resnet"
    )
    y = aspp(feats["out"])
    low = feats[4]
    y = ResizeTo(tuple(low.shape[1:3]), name="decoder_upsample")(y)
    low = conv_bn_relu(low, LOW_LEVEL_FILTERS, 1, name="decoder_low_level")
    y = layers.Concatenate(name="decoder_concat")([y, low])
    y = conv_bn_relu(y, DECODER_FILTERS, 3, name="decoder_conv1")
    y = conv_bn_relu(y, DECODER_FILTERS, 3, name="decoder_conv2")
    y = score_conv(y, num_class, name="score")
    y = ResizeTo(padded_size, name="upsample")(y)
    outputs = output_head(y, num_class, pads, name="output")
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


register_model(
    "deeplabv3plus",
    DeepLabV3Plus,
    description="DeepLabv3+: ResNet-50 (output stride 16), ASPP 6/12/18 + image pooling, 1/4 decoder",
    reference="Chen et al., DeepLabv3+, ECCV 2018 (arXiv:1802.02611)",
)
