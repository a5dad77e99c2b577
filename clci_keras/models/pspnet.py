"""PSPNet, a comparison method of the paper's Table 1.

Reference:
    H. Zhao, J. Shi, X. Qi, X. Wang, J. Jia. "Pyramid Scene Parsing Network",
    CVPR 2017. arXiv:1612.01105.

Reference configuration followed: the authors' ResNet-50 PSPNet: dilated
ResNet-50 with the 3×3 deep stem (output stride 8: stage 3 dilated ×2,
stage 4 ×4), pyramid pooling module with 1×1, 2×2, 3×3 and 6×6 bins, each
reduced by a 1×1 conv to 1/4 of the feature width (512) and upsampled
bilinearly, concatenated with the features, 3×3 conv 512 → dropout 0.1 →
1×1 classifier, bilinear ×8 upsampling; optional auxiliary head on stage 3
(3×3 conv 256 → dropout 0.1 → 1×1 classifier), weighted 0.4 in training.

Choices the CLCI-Net paper leaves open (it only names "PSPNet"):

* **Backbone depth**: ResNet-50 (``depth=50``; ``depth=101`` also works),
  full widths, trained from scratch on one channel (no ImageNet weights).
* **Uneven bins**: at 224×176 the 1/8 map is 28×22, which 3 and 6 do not
  divide; the pyramid uses adaptive average pooling with PyTorch's bin edges
  (:class:`~clci_keras.models.layers.AdaptiveAveragePooling2D`), not fixed
  pooling kernels that would need a 48-multiple input.
* **Sizes**: inputs whose sides are not multiples of 8 are zero-padded
  symmetrically to the next multiple and the ×8-upsampled score map is
  cropped back (224×176 needs no padding). Bilinear resizes use half-pixel
  centres (Caffe's ``Interp`` layer aligned corners).
* **Auxiliary head** is off by default (``aux_head=False``); with it on the
  model has two outputs ``[output, aux_output]`` (both full size, same
  activation) to train with ``loss_weights=[1.0, 0.4]``.
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
from clci_keras.models.layers import AdaptiveAveragePooling2D, Dropout, ResizeTo
from clci_keras.models.registry import register_model
from clci_keras.models.resnet import resnet_encoder

OUTPUT_STRIDE = 8
#: Bins of the pyramid pooling module.
PYRAMID_BINS = (1, 2, 3, 6)
DROPOUT_RATE = 0.1
#: Weight of the auxiliary loss in the reference training.
AUX_LOSS_WEIGHT = 0.4


def pyramid_pooling(x, bins=PYRAMID_BINS, *, name="ppm"):
    """Pyramid pooling module: adaptive pool → 1×1 conv (C/len(bins)) → upsample, concat."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    branches = [x]
    for b in bins:
        y = AdaptiveAveragePooling2D((b, b), name=f"{name}_pool{b}")(x)
        y = conv_bn_relu(y, c // len(bins), 1, name=f"{name}_bin{b}")
        y = ResizeTo((h, w), name=f"{name}_bin{b}_resize")(y)
        branches.append(y)
    return layers.Concatenate(name=f"{name}_concat")(branches)


def _head(x, filters, num_class, size, *, name):
    x = conv_bn_relu(x, filters, 3, name=f"{name}_conv")
    x = Dropout(DROPOUT_RATE, name=f"{name}_dropout")(x)
    x = score_conv(x, num_class, name=f"{name}_score")
    return ResizeTo(size, name=f"{name}_upsample")(x)


def PSPNet(
    input_shape=(224, 176, 1),
    num_class=1,
    depth=50,
    aux_head=False,
    input_tensor=None,
    name="pspnet",
):
    """Build PSPNet (Zhao et al., CVPR 2017) on a dilated ResNet, from scratch.

    Args:
        input_shape: ``(H, W, C)`` with ``H, W >= 8``; sides that are not
            multiples of 8 are zero-padded inside and the output cropped back.
        num_class: output channels; 1 gives a sigmoid map, more a softmax.
        depth: ResNet depth, 50 or 101.
        aux_head: add the auxiliary classifier on stage 3; the model then
            returns ``[output, aux_output]``.
        input_tensor: optional Keras tensor to use as the input; its static
            ``(H, W, C)`` replaces ``input_shape``.
        name: model name.

    Returns:
        A ``keras.Model`` mapping ``(batch, H, W, C)`` to ``(batch, H, W, num_class)``
        (a list of two such outputs with ``aux_head``).
    """
    shape, inputs = resolve_input(input_shape, input_tensor, min_size=OUTPUT_STRIDE)
    num_class = validate_num_class(num_class)
    x, pads = pad_to_multiple(inputs, OUTPUT_STRIDE, name="pad")
    padded_size = (int(x.shape[1]), int(x.shape[2]))

    feats = resnet_encoder(x, depth=depth, output_stride=OUTPUT_STRIDE, name="resnet")
    y = pyramid_pooling(feats["out"])
    y = _head(y, 512, num_class, padded_size, name="head")
    outputs = output_head(y, num_class, pads, name="output")
    if aux_head:
        aux = _head(feats["stage3"], 256, num_class, padded_size, name="aux")
        outputs = [outputs, output_head(aux, num_class, pads, name="aux_output")]
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


register_model(
    "pspnet",
    PSPNet,
    description="PSPNet: dilated ResNet-50 (output stride 8), pyramid pooling 1/2/3/6 bins",
    reference="Zhao et al., PSPNet, CVPR 2017 (arXiv:1612.01105)",
)
