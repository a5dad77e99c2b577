"""Losses and metrics of the original code.

* :func:`dice_coef` / :func:`dice_coef_loss`: CLCI-Net's soft Dice over the
  whole batch, smoothing 1, sums of squares in the denominator.
* :func:`bce_dice_loss`: the X-Net protocol's loss (binary cross-entropy plus
  ``1 - Dice`` with plain sums), offered as an option.

All are registered serializables so compiled models save to ``.keras``.
"""
from __future__ import annotations

import keras
from keras import ops

from clci_keras.models.choices import LOSSES
from clci_keras.models.layers import PACKAGE

SMOOTH = 1.0


@keras.saving.register_keras_serializable(package=PACKAGE)
def dice_coef(y_true, y_pred):
    """Soft Dice of the flattened batch: ``(2·Σtp + 1) / (Σt² + Σp² + 1)``."""
    t = ops.reshape(ops.cast(y_true, y_pred.dtype), (-1,))
    p = ops.reshape(y_pred, (-1,))
    inter = ops.sum(t * p)
    return (2.0 * inter + SMOOTH) / (ops.sum(t * t) + ops.sum(p * p) + SMOOTH)


@keras.saving.register_keras_serializable(package=PACKAGE)
def dice_coef_loss(y_true, y_pred):
    """``1 - dice_coef``: CLCI-Net's training loss."""
    return 1.0 - dice_coef(y_true, y_pred)


@keras.saving.register_keras_serializable(package=PACKAGE)
def xnet_dice(y_true, y_pred):
    """X-Net's Dice: ``2·Σtp / (Σt + Σp)``, 0 when both sums are 0."""
    t = ops.cast(y_true, y_pred.dtype)
    inter = ops.sum(t * y_pred)
    union = ops.sum(t) + ops.sum(y_pred)
    return ops.where(union > 0, 2.0 * inter / ops.maximum(union, 1e-12), ops.zeros_like(union))


@keras.saving.register_keras_serializable(package=PACKAGE)
def bce_dice_loss(y_true, y_pred):
    """X-Net protocol loss: mean binary cross-entropy + ``1 - xnet_dice``."""
    t = ops.cast(y_true, y_pred.dtype)
    bce = ops.mean(keras.losses.binary_crossentropy(t, y_pred))
    return bce + 1.0 - xnet_dice(y_true, y_pred)


#: The loss of each name of :data:`clci_keras.models.choices.LOSSES`.
LOSS_FUNCTIONS = dict(zip(LOSSES, (dice_coef_loss, bce_dice_loss)))


def get_loss(name):
    """Loss function by name (:data:`clci_keras.models.choices.LOSSES`)."""
    if name not in LOSS_FUNCTIONS:
        raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
    return LOSS_FUNCTIONS[name]
