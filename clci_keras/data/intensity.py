"""Intensity normalisation schemes of the HDF5 file.

* ``"r1.1"``: divide by 100, as the original generator does for ATLAS R1.1
  (the release's intensities then lie roughly in [0, 1]).
* ``"v2"``: for ATLAS 2.0, whose intensities have no common scale across
  cohorts: negative values are set to 0 and the volume is divided by the
  99.5th percentile of its non-zero voxels, so that bright white matter sits
  near 1 as in the R1.1 scheme.  (Choice of this package; the original
  generator only handled R1.1.)
* ``"none"``: values unchanged.
"""
from __future__ import annotations

import numpy as np

from clci_keras.data.constants import R11_SCALE, V2_PERCENTILE

SCHEMES = ("r1.1", "v2", "none")


def _check_scheme(scheme):
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown intensity scheme {scheme!r}; expected one of {SCHEMES}.")


def v2_reference(volume):
    """The divisor of the "v2" scheme: 99.5th percentile of non-zero voxels (1.0 if none)."""
    v = np.asarray(volume)
    nz = v[v > 0]
    if nz.size == 0:
        return 1.0
    ref = float(np.percentile(nz, V2_PERCENTILE))
    return ref if ref > 0 else 1.0


def normalize_intensity(volume, scheme="r1.1", dtype=np.float32):
    """Normalise a T1 volume (any shape) with ``scheme`` and return ``dtype``.

    For "r1.1" the division is done as the original generator does it
    (``get_data() / 100``: in the array's own float type, or in float64 for
    integer arrays) and the result is then cast to ``dtype``.
    """
    _check_scheme(scheme)
    v = np.asanyarray(volume)
    if scheme == "r1.1":
        if not np.issubdtype(v.dtype, np.floating):
            v = v.astype(np.float64)
        return np.asarray(v / R11_SCALE, dtype=dtype)
    if scheme == "v2":
        ref = v2_reference(v)
        out = np.asarray(v, dtype=np.float64) / ref
        np.maximum(out, 0, out=out)
        return out.astype(dtype)
    return np.asarray(v, dtype=dtype)


def normalize_slice(slice_, scheme="r1.1", reference=None, dtype=np.float32):
    """Normalise one slice (or block) with a per-volume ``reference`` for "v2"."""
    _check_scheme(scheme)
    v = np.asanyarray(slice_)
    if scheme == "r1.1":
        if not np.issubdtype(v.dtype, np.floating):
            v = v.astype(np.float64)
        return np.asarray(v / R11_SCALE, dtype=dtype)
    if scheme == "v2":
        if reference is None:
            raise ValueError("normalize_slice(scheme='v2') needs the volume's reference value.")
        out = np.asarray(v, dtype=np.float64) / float(reference)
        np.maximum(out, 0, out=out)
        return out.astype(dtype)
    return np.asarray(v, dtype=dtype)
