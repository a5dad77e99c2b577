"""Ensembles, flip test-time augmentation and small-component clean-up on the ATLAS grid.

:func:`ensemble_probabilities` averages the lesion probability of one volume
over several models (e.g. the five folds of a k-fold run) and, with
``flip=True``, over the volume and its left-right mirror image (on the ATLAS
grid x = 0 is voxel 98 of 197, so the mirror is exact). Every model call goes
through :func:`clci_keras.models.predictor.predict_slices`, the one slice
predictor. :func:`remove_small_components` drops connected components of a
mask below a size.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from clci_keras.data.slicing import crop_slices, slices_to_volume, uncrop_slices, volume_to_slices

#: Test-time augmentations of :func:`ensemble_probabilities` (``None`` or ``"none"``: off).
TTA_CHOICES = ("none", "flip")


def as_model_list(models):
    """A model or a list/tuple of models -> non-empty list."""
    out = list(models) if isinstance(models, (list, tuple)) else [models]
    if not out:
        raise ValueError("`model` must be a Keras model or a non-empty list of models, got an empty list")
    return out


def check_tta(tta):
    """``None``/``"none"`` -> False, ``"flip"`` -> True; ValueError otherwise."""
    if tta in (None, "none", False):
        return False
    if tta == "flip":
        return True
    raise ValueError(f"`tta` must be one of {TTA_CHOICES} or None, got tta={tta!r}")


def ensemble_probabilities(models, volume, idx, *, crop_of, flip=False, batch_size=4, progress=None, members=None):
    """Mean lesion probability of an intensity-scaled ATLAS-grid volume over ``models`` (and its mirror).

    Args:
        models: list of Keras models (each with one (B, H, W, 1) input).
        volume: scaled (197, 233, 189) volume.
        idx: axial slice indices to compute (others stay 0).
        crop_of: function model -> crop name (its input window).
        flip: also predict the left-right mirrored volume and mirror the result back.
        batch_size: slices per model call.
        progress: optional ``update(n)`` object, called per batch.
        members: a list to which each member's own probabilities (one per model and view,
            float32 (197, 233, 189)) are appended, or ``None``.

    Returns:
        float32 (197, 233, 189) probabilities, the mean over models x views.
    """
    from clci_keras.models.predictor import predict_slices  # loads Keras: not at import, for the CLI's choices

    views = [False, True] if flip else [False]
    total = None
    idx = np.asarray(idx)
    slices_cache = {}
    for model in models:
        crop = crop_of(model)
        for mirrored in views:
            key = (crop, mirrored)
            if key not in slices_cache:
                v = volume[::-1] if mirrored else volume
                slices_cache[key] = crop_slices(volume_to_slices(v), crop)
            x = slices_cache[key]
            prob = np.zeros(x.shape, dtype=np.float32)
            prob[idx] = predict_slices(model, x[idx], batch_size=batch_size, progress=progress)
            vol = slices_to_volume(uncrop_slices(prob, crop, fill=0.0))
            if mirrored:
                vol = vol[::-1]
            if members is not None:
                members.append(np.ascontiguousarray(vol, dtype=np.float32))
            total = vol.astype(np.float32) if total is None else total + vol
    return np.ascontiguousarray(total / np.float32(len(models) * len(views)), dtype=np.float32)


def remove_small_components(mask, min_voxels, connectivity=3):
    """``mask`` without its connected components smaller than ``min_voxels`` voxels.

    ``connectivity`` 3 is 26-connectivity in 3D (the lesion-wise F1 of
    :mod:`clci_keras.evaluation.metrics` uses the same). Returns
    ``(mask, n_removed)``.
    """
    mask = np.asarray(mask, dtype=bool)
    if not min_voxels or min_voxels <= 1 or not mask.any():
        return mask, 0
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    labels, n = ndimage.label(mask, structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes < min_voxels
    small[0] = False
    if not small.any():
        return mask, 0
    return mask & ~small[labels], int(small.sum())


def count_components(mask, connectivity=3):
    """Number of connected components (26-connectivity by default) of a 3D mask."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0
    return int(ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, connectivity))[1])
