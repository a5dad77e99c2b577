"""Custom layers and Keras-2 semantics needed to reproduce CLCI-Net.

Everything here is registered with :func:`keras.saving.register_keras_serializable`
under the package name ``clci_keras``, so models that use it save to ``.keras``
and load back with ``safe_mode`` on (no ``Lambda`` layers anywhere).
"""
from __future__ import annotations

import keras
from keras import ops

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


CUSTOM_OBJECTS = {
    "SequenceConcat": SequenceConcat,
    "BilinearUpsampling": BilinearUpsampling,
    "hard_sigmoid_keras2": hard_sigmoid_keras2,
}
