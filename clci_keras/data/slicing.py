"""Volume <-> slice conversion and crop windows.

Convention of the original generator: a volume ``v`` of shape (197, 233, 189)
becomes ``v.transpose(2, 1, 0)``, i.e. 189 slices where slice ``i`` is
``v[:, :, i].T`` (rows = y, columns = x).
"""
from __future__ import annotations

import re

import numpy as np

from clci_keras.data.constants import ATLAS_SHAPE, CROPS, DEFAULT_CROP, SLICE_SHAPE


def get_crop(crop):
    """Return the ``(row_slice, col_slice)`` window for ``crop``.

    Args:
        crop: a name in :data:`CROPS` (``"clci"`` or ``"xnet"``), a window
            string ``"r0:r1,c0:c1"``, an explicit pair of ``slice`` objects, or
            ``None`` for the full 233 x 197 slice.
    """
    if crop is None:
        return (slice(0, SLICE_SHAPE[0]), slice(0, SLICE_SHAPE[1]))
    if isinstance(crop, str):
        if crop in CROPS:
            return CROPS[crop]
        m = re.match(r"^\s*(\d+):(\d+)\s*,\s*(\d+):(\d+)\s*$", crop)
        if not m:
            raise ValueError(
                f"Unknown crop {crop!r}; expected one of {sorted(CROPS)}, a window 'r0:r1,c0:c1' or None."
            )
        r0, r1, c0, c1 = map(int, m.groups())
        crop = (slice(r0, r1), slice(c0, c1))
    if (
        isinstance(crop, (tuple, list))
        and len(crop) == 2
        and all(isinstance(s, slice) for s in crop)
    ):
        rows, cols = crop
        for s, n in zip((rows, cols), SLICE_SHAPE):
            start, stop, step = s.indices(n)
            if step != 1 or stop <= start:
                raise ValueError(f"Invalid crop window {crop!r} for slices of shape {SLICE_SHAPE}.")
        return (slice(*rows.indices(SLICE_SHAPE[0])[:2]), slice(*cols.indices(SLICE_SHAPE[1])[:2]))
    raise ValueError(f"Invalid crop {crop!r}; expected a name in {sorted(CROPS)}, two slices or None.")


def crop_shape(crop):
    """(rows, cols) of slices after ``crop``: (224, 176) for "clci"."""
    rows, cols = get_crop(crop)
    return (rows.stop - rows.start, cols.stop - cols.start)


def volume_to_slices(vol):
    """(197, 233, 189[, ...]) volume -> (189, 233, 197[, ...]) slices (a view)."""
    vol = np.asanyarray(vol)
    if vol.shape[:3] != ATLAS_SHAPE:
        raise ValueError(f"Expected a volume of shape {ATLAS_SHAPE}, got {vol.shape}.")
    return np.swapaxes(vol, 0, 2)


def slices_to_volume(slices):
    """(189, 233, 197[, ...]) slices -> (197, 233, 189[, ...]) volume (a view).

    A trailing channel axis of size 1 is dropped.
    """
    slices = np.asanyarray(slices)
    if slices.ndim == 4 and slices.shape[-1] == 1:
        slices = slices[..., 0]
    expected = ATLAS_SHAPE[::-1]
    if slices.shape[:3] != expected:
        raise ValueError(f"Expected slices of shape {expected}, got {slices.shape}.")
    return np.swapaxes(slices, 0, 2)


def crop_slices(arr, crop=DEFAULT_CROP):
    """Crop the last two (or, with a channel axis of size 1, the two before it) axes.

    Works on a single slice (233, 197), a stack (N, 233, 197) or (N, 233, 197, 1).
    """
    arr = np.asanyarray(arr)
    rows, cols = get_crop(crop)
    if arr.ndim >= 3 and arr.shape[-1] == 1 and arr.shape[-3:-1] == SLICE_SHAPE:  # channel axis
        return arr[..., rows, cols, :]
    if arr.shape[-2:] != SLICE_SHAPE:
        raise ValueError(f"Expected slices of shape {SLICE_SHAPE} in the last axes, got {arr.shape}.")
    return arr[..., rows, cols]


def uncrop_slices(arr, crop=DEFAULT_CROP, fill=0):
    """Inverse of :func:`crop_slices`: paste cropped slices into full 233 x 197 slices.

    Accepts (h, w), (N, h, w) or (N, h, w, 1) with (h, w) the crop's shape;
    the channel axis, if any, is kept.  Pixels outside the window get ``fill``.
    """
    arr = np.asanyarray(arr)
    rows, cols = get_crop(crop)
    shape = crop_shape(crop)
    channel = arr.ndim >= 3 and arr.shape[-1] == 1 and arr.shape[-3:-1] == shape
    core = arr.shape[-3:-1] if channel else arr.shape[-2:]
    if core != shape:
        raise ValueError(f"Expected cropped slices of shape {shape} for crop {crop!r}, got {arr.shape}.")
    if channel:
        out = np.full(arr.shape[:-3] + SLICE_SHAPE + (1,), fill, dtype=arr.dtype)
        out[..., rows, cols, :] = arr
    else:
        out = np.full(arr.shape[:-2] + SLICE_SHAPE, fill, dtype=arr.dtype)
        out[..., rows, cols] = arr
    return out
