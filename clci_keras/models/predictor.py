"""Slice-batch prediction: lesion probability maps from any segmentation model.

One code path for evaluation and inference. :func:`predict_slices` feeds
2D slices through ``model.predict_on_batch`` in batches of a fixed size,
zero-padding the last one, so the predict function is traced once for one
input shape however many slices a volume has; :func:`lesion_probability`
picks the lesion channel of the model's output.
"""
from __future__ import annotations

import numbers

import keras
import numpy as np

from clci_keras.process import keep_freed_memory


def lesion_probability(output):
    """Lesion probability ``(N, H, W)`` float32 from a model output ``(N, H, W, C)``.

    ``C == 1`` is a sigmoid map (channel 0); ``C >= 2`` is a softmax over
    classes with class 0 the background, so channel 1 (the lesion class).
    """
    y = keras.ops.convert_to_numpy(output)
    if y.ndim != 4 or y.shape[-1] < 1:
        raise ValueError(
            f"`output` must be a model output of shape (N, H, W, C) with C >= 1, "
            f"got shape {y.shape}"
        )
    channel = 0 if y.shape[-1] == 1 else 1
    return y[..., channel].astype("float32", copy=False)


def predict_slices(model, x, batch_size=8, progress=None):
    """Lesion probabilities of a stack of slices, in fixed-size batches.

    Args:
        model: a Keras segmentation model; with several outputs (e.g. PSPNet's
            auxiliary head) the first one is used.
        x: slices ``(N, H, W)`` or ``(N, H, W, C)``.
        batch_size: slices per call of ``model.predict_on_batch``. Every call
            gets exactly ``batch_size`` slices (the last batch is zero-padded
            and its padding dropped), so the model is traced once per ``(H, W)``.
        progress: optional object with ``update(n)`` (e.g. a ``tqdm`` bar),
            called after each batch with its number of real slices.

    Returns:
        float32 array ``(N, H, W)``, see :func:`lesion_probability`.
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(f"`batch_size` must be a positive integer, got batch_size={batch_size!r}")
    x = np.asarray(x, dtype="float32")
    if x.ndim == 3:
        x = x[..., None]
    elif x.ndim != 4:
        raise ValueError(f"`x` must be slices (N, H, W) or (N, H, W, C), got shape {x.shape}")
    n = len(x)
    keep_freed_memory()  # each batch reuses the last one's freed memory (no page faults)
    out = np.empty(x.shape[:3], dtype="float32")
    if n == 0:
        return out
    padded = np.zeros((batch_size, *x.shape[1:]), dtype="float32")
    for start in range(0, n, batch_size):
        chunk = x[start : start + batch_size]
        k = len(chunk)
        if k < batch_size:
            padded[:k] = chunk
            chunk = padded
        y = model.predict_on_batch(chunk)
        if isinstance(y, (list, tuple)):
            y = y[0]
        out[start : start + k] = lesion_probability(y)[:k]
        if progress is not None:
            progress.update(k)
    return out
