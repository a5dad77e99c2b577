"""Affine registration of native-space T1 scans to the MNI152 1 mm template (the ATLAS grid).

The weights were trained on ATLAS scans, which were registered to MNI152. A
scan as a user has it (native space: its own voxel size, field of view, axis
order and head position) is brought to the template with a 12-parameter
affine transform found by maximising Mattes-style mutual information
(dipy's ``AffineRegistration``), predicted on the template grid, and the
mask is mapped back onto the scan's own grid.

Speed: both images are first smoothed and resampled to ``resolution`` mm
(default 3 mm), and the optimiser runs a two-level pyramid on those (factors
2 and 1) in three stages (translation, rigid, affine) after a centre-of-mass
start. The optional extra is ``dipy`` (``pip install -e ".[register]"``), not
ANTsPy: antspyx 0.6.3 pins ``numpy<2.4`` and ``scipy<1.16``, which this
package's environment does not allow.

The result is a :class:`Registration`: the matrix that maps template world
coordinates (mm, RAS) to the scan's world coordinates, the similarity of the
registered scan to the template (Pearson correlation inside the template's
head, after and before registration) and the settings. It is saved beside the
mask as JSON (:meth:`Registration.save`) and can be reused
(:meth:`Registration.load`, ``clci-keras predict --transform``).

A registration whose similarity is below ``min_similarity`` (0.5) or whose
transform is implausible (scales outside 0.5-2) raises
:class:`RegistrationError`: the input is not a T1 head scan, or the
optimiser failed.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import time
import warnings

import numpy as np
from scipy import ndimage

from clci_keras.data.constants import ATLAS_AFFINE, ATLAS_SHAPE
from clci_keras.fileio import write_json
from clci_keras.inference.io import InputError, describe, strip_nifti_suffix, validate_volume

#: Working resolution (mm) of the registration; both images are resampled to it first.
DEFAULT_RESOLUTION = 3.0
#: Optimiser iterations per pyramid level (coarsest first); levels at 2x and 1x the working resolution.
DEFAULT_ITERATIONS = (100, 30)
#: Below this correlation with the template (inside its head) a registration counts as failed.
MIN_SIMILARITY = 0.5
#: Allowed range of the transform's singular values (scales).
SCALE_RANGE = (0.5, 2.0)
#: Version of the transform JSON written by :meth:`Registration.save`.
TRANSFORM_FORMAT = 1
#: Suffix of the transform written beside the mask.
TRANSFORM_SUFFIX = "_to_mni152.json"

_INSTALL_HINT = 'pip install -e ".[register]"  (or: pip install dipy)'


class RegistrationError(InputError):
    """Registration to the template failed for one input; the message names the file."""


class RegistrationUnavailable(ImportError):
    """The optional registration dependency (dipy) is not installed."""


def require_dipy():
    """Import dipy's affine registration, or raise :class:`RegistrationUnavailable` saying how to install it."""
    try:
        from dipy.align import imaffine, transforms  # noqa: F401
    except ImportError as e:
        raise RegistrationUnavailable(
            f"registration needs the optional dependency dipy, which is not installed ({e}); "
            f"install it with: {_INSTALL_HINT}"
        ) from e
    return imaffine, transforms


@functools.lru_cache(maxsize=1)
def template():
    """nilearn's MNI152 2009 1 mm T1 template (the synthetic data's and the ATLAS grid): ``(data 0..1, affine)``."""
    from nilearn import datasets

    img = datasets.load_mni152_template(resolution=1)
    data = np.asarray(np.asanyarray(img.dataobj), dtype=np.float32)
    if data.max() > 1.5:
        data = data / data.max()
    data.setflags(write=False)
    return data, np.asarray(img.affine, dtype=np.float64)


# --------------------------------------------------------------------------
# Resampling helpers
# --------------------------------------------------------------------------
def resample(data, src_affine, dst_affine, dst_shape, order=1):
    """``data`` (on ``src_affine``) sampled on the ``dst_affine`` / ``dst_shape`` grid; 0 outside.

    The one resampler of inference: registration's mapping to and from the
    template, and :mod:`clci_keras.inference.predict`'s mapping of an input
    on another grid to the ATLAS grid and of the mask back. ``order``: spline
    order (1 linear, 0 nearest neighbour); float32 result.
    """
    m = np.linalg.solve(np.asarray(src_affine, np.float64), np.asarray(dst_affine, np.float64))
    return ndimage.affine_transform(
        np.asarray(data, dtype=np.float32), m[:3, :3], offset=m[:3, 3], output_shape=tuple(int(s) for s in dst_shape),
        order=order, mode="constant", cval=0.0, prefilter=False,
    )


def downsample(data, affine, mm):
    """Smooth and resample a volume to voxels of about ``mm`` (never finer than it is): ``(data, affine)``."""
    affine = np.asarray(affine, np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    step_wanted = np.maximum(mm / zooms, 1.0)
    shape = np.maximum(np.round(np.array(data.shape) / step_wanted).astype(int), 2)
    step = np.array(data.shape) / shape
    sigma = np.sqrt(np.maximum(step**2 - 1.0, 0.0)) / 2.355 * 2.0  # anti-aliasing, ~FWHM of the new voxel
    smooth = ndimage.gaussian_filter(np.asarray(data, np.float32), sigma) if sigma.any() else np.asarray(data, np.float32)
    offset = (step - 1) / 2
    out = ndimage.affine_transform(smooth, step, offset=offset, output_shape=tuple(shape), order=1, mode="nearest")
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * step[None, :]
    new[:3, 3] = affine[:3, :3] @ offset + affine[:3, 3]
    return out, new


def _robust_scale(data):
    """Clip to [0, 99.5th percentile of non-zero voxels] and scale to 0..1 (mutual information is then stable)."""
    d = np.asarray(data, np.float32)
    nz = d[d > 0]
    hi = float(np.percentile(nz, 99.5)) if nz.size else float(d.max())
    if not hi > 0:
        hi = float(np.abs(d).max()) or 1.0
    return np.clip(d / hi, 0.0, 1.0)


def correlation(a, b, mask):
    """Pearson correlation of ``a`` and ``b`` inside ``mask`` (0 when either is constant there)."""
    x = np.asarray(a, np.float64)[mask]
    y = np.asarray(b, np.float64)[mask]
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else 0.0


# --------------------------------------------------------------------------
# The transform
# --------------------------------------------------------------------------
@dataclasses.dataclass
class Registration:
    """An affine registration of one scan to the MNI152 1 mm template.

    Attributes:
        mni_to_native: 4x4 matrix mapping template world coordinates (mm, RAS)
            to the scan's world coordinates (the scan's affine then gives voxels).
        similarity: Pearson correlation of the registered scan with the template
            inside the template's head (at the working resolution).
        similarity_before: the same for the scan placed by its header affine alone.
        seconds: time spent registering (0 for a loaded transform).
        settings: working resolution, iterations, library and version.
        source: the registered file's name (or ``"<in-memory image>"``).
    """

    mni_to_native: np.ndarray
    similarity: float
    similarity_before: float = float("nan")
    seconds: float = 0.0
    settings: dict = dataclasses.field(default_factory=dict)
    source: str = ""

    @property
    def native_to_mni(self):
        return np.linalg.inv(self.mni_to_native)

    def to_template(self, data, affine, order=1):
        """``data`` on the scan's grid (``affine``) resampled onto the ATLAS (template) grid."""
        return resample(data, affine, self.mni_to_native @ ATLAS_AFFINE, ATLAS_SHAPE, order=order)

    def to_native(self, arr, affine, shape, order=0):
        """An array on the ATLAS grid resampled onto the scan's grid (``order`` 0 masks, 1 probabilities)."""
        return resample(arr, self.mni_to_native @ ATLAS_AFFINE, affine, shape, order=order)

    def to_dict(self):
        return {
            "format": TRANSFORM_FORMAT,
            "description": "affine registration of a T1 scan to nilearn's MNI152 2009 1 mm template (clci-keras)",
            "convention": "mni_to_native maps template world mm (RAS) to the scan's world mm (RAS): "
                          "x_native = M @ [x_mni, 1]; native_to_mni is its inverse. Voxel <-> world by each "
                          "image's own affine (the scan's NIfTI header; the template: ATLAS_AFFINE).",
            "mni_to_native": np.asarray(self.mni_to_native).tolist(),
            "native_to_mni": np.asarray(self.native_to_mni).tolist(),
            "similarity": self.similarity,
            "similarity_before": self.similarity_before,
            "seconds": self.seconds,
            "settings": self.settings,
            "source": self.source,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def save(self, path):
        """Write the transform as JSON (temporary file, then rename)."""
        path = os.fspath(path)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path):
        """A transform written by :meth:`save`; ``ValueError`` naming the file if it is not one."""
        path = os.fspath(path)
        try:
            with open(path) as f:
                d = json.load(f)
            m = np.asarray(d["mni_to_native"], dtype=np.float64)
            if m.shape != (4, 4) or not np.isfinite(m).all() or abs(np.linalg.det(m)) < 1e-6:
                raise ValueError(f"mni_to_native is not an invertible 4x4 matrix: {m.tolist()}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a clci-keras registration transform ({type(e).__name__}: {e})") from e
        return cls(m, float(d.get("similarity", float("nan"))), float(d.get("similarity_before", float("nan"))),
                   0.0, dict(d.get("settings", {})), str(d.get("source", "")))


def transform_path(mask_path):
    """The transform's file name beside a mask: ``X_lesion_mask.nii.gz`` -> ``X_lesion_mask_to_mni152.json``."""
    return strip_nifti_suffix(os.fspath(mask_path)) + TRANSFORM_SUFFIX


# --------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------
def register_to_mni(
    image,
    data=None,
    *,
    resolution=DEFAULT_RESOLUTION,
    iterations=DEFAULT_ITERATIONS,
    min_similarity=MIN_SIMILARITY,
    bins=32,
):
    """Affine registration of a T1 NIfTI image to nilearn's MNI152 1 mm template.

    Args:
        image: ``nibabel.Nifti1Image`` (any grid, axis order, voxel size).
        data: its voxel array if already loaded.
        resolution: working voxel size in mm (both images are smoothed and
            resampled to it; smaller is slower).
        iterations: optimiser iterations per pyramid level, coarsest first
            (levels at ``2**(n-1-k)`` times the working resolution).
        min_similarity: correlation with the template below which the
            registration is rejected.
        bins: histogram bins of the mutual information.

    Returns:
        :class:`Registration`.

    Raises:
        RegistrationUnavailable: dipy is not installed (says how to install it).
        RegistrationError: the result is implausible (scale outside 0.5-2,
            similarity below ``min_similarity``); the message names the file.
    """
    imaffine, transforms = require_dipy()

    name = describe(image)
    start = time.perf_counter()
    if data is None:
        data = np.asanyarray(image.dataobj)
    data = validate_volume(data, name)
    iterations = [int(i) for i in iterations]
    if not iterations or min(iterations) < 1:
        raise ValueError(f"`iterations` must be positive integers, got {iterations!r}")
    if not float(resolution) > 0:
        raise ValueError(f"`resolution` must be positive (mm), got {resolution!r}")
    tpl, tpl_affine = template()
    static, static_affine = downsample(tpl, tpl_affine, resolution)
    moving, moving_affine = downsample(_robust_scale(data), image.affine, resolution)
    if np.count_nonzero(moving > 0.05) < 100:
        raise RegistrationError(f"{name}: registration to MNI152 failed: almost no signal in the image")
    levels = len(iterations)
    factors = [2 ** (levels - 1 - k) for k in range(levels)]
    reg = imaffine.AffineRegistration(
        metric=imaffine.MutualInformationMetric(nbins=bins, sampling_proportion=None),
        level_iters=iterations, sigmas=[float(f - 1) for f in factors], factors=factors, verbosity=0,
    )
    similarity = _similarity_to_template(static, static_affine, moving, moving_affine)
    sim, m, stage, sim_before = _optimise(imaffine, transforms, reg, similarity,
                                          static, static_affine, moving, moving_affine)
    settings = {"library": "dipy", "dipy_version": _dipy_version(), "resolution_mm": float(resolution),
                "iterations": iterations, "factors": factors, "metric": f"mutual information ({bins} bins)",
                "stages": ["centre of mass or header", "translation", "rigid", "rigid + isotropic scaling", "affine"],
                "kept": stage,
                "template": "nilearn load_mni152_template(resolution=1)"}
    result = Registration(m, sim, sim_before, time.perf_counter() - start, settings, name)
    _check_registration(name, m, sim, sim_before, min_similarity)
    return result


def _similarity_to_template(static, static_affine, moving, moving_affine):
    """``similarity(m)``: correlation of the scan (``moving``) placed by ``m`` with the template
    (``static``) inside the template's head, where the scan has data (partial fields of view);
    0 when that overlap is under 5 % of the head."""
    head = static > 0.05
    fov = np.ones(moving.shape, np.float32)

    def similarity(m):
        inside = head & (resample(fov, moving_affine, m @ static_affine, static.shape, order=0) > 0.5)
        if np.count_nonzero(inside) < 0.05 * np.count_nonzero(head):
            return 0.0
        return correlation(static, resample(moving, moving_affine, m @ static_affine, static.shape), inside)

    return similarity


def _optimise(imaffine, transforms, reg, similarity, static, static_affine, moving, moving_affine):
    """The staged optimisation of :func:`register_to_mni` (dipy's warnings silenced).

    Returns:
        ``(similarity, matrix, stage, similarity before)``: the plausible stage result most
        similar to the template (similarity ``-inf`` mapped to 0), the name of its stage,
        and the similarity of the scan placed by its header alone.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dipy's convergence chatter
        com = imaffine.transform_centers_of_mass(static, static_affine, moving, moving_affine).affine
        sim_before = similarity(np.eye(4))
        # Start from the header's placement when it already fits better than the centres of mass
        # (scans with a partial field of view, whose centre of mass is not the brain's).
        m = np.eye(4) if sim_before > similarity(com) else com
        # Each stage starts from the previous one; the plausible stage result most similar to the
        # template is kept (a full affine can run away on a partial field of view).
        best = (max(similarity(m), -1.0), m, "centre of mass" if m is com else "header")
        for label, t in (("translation", transforms.TranslationTransform3D()),
                         ("rigid", transforms.RigidTransform3D()),
                         ("rigid + isotropic scaling", transforms.RigidIsoScalingTransform3D()),
                         ("affine", transforms.AffineTransform3D())):
            m = reg.optimize(static, moving, t, None, static_affine, moving_affine, starting_affine=m).affine
            m = np.asarray(m, dtype=np.float64)
            s = similarity(m) if _plausible(m) else -np.inf
            if s > best[0]:
                best = (s, m, label)
            else:
                m = best[1]
    sim, m, stage = best
    if not np.isfinite(sim):
        sim = 0.0
    return sim, m, stage, sim_before


def _check_registration(name, m, sim, sim_before, min_similarity):
    """Raise :class:`RegistrationError` (naming ``name``) for an implausible ``m`` or a
    similarity ``sim`` below ``min_similarity``."""
    if not _plausible(m):
        scales = np.linalg.svd(m[:3, :3], compute_uv=False) if np.isfinite(m).all() else [np.nan]
        raise RegistrationError(
            f"{name}: registration to MNI152 failed: implausible transform (scales "
            f"{', '.join(f'{s:.2f}' for s in scales)}; expected {SCALE_RANGE[0]}-{SCALE_RANGE[1]}); "
            "is this a T1-weighted head MRI with a correct header affine?"
        )
    if not sim >= min_similarity:
        raise RegistrationError(
            f"{name}: registration to MNI152 failed: correlation with the template {sim:.2f} after "
            f"registration ({sim_before:.2f} before) is below {min_similarity:g}; "
            "is this a T1-weighted head MRI?"
        )


def _plausible(m):
    """Finite, orientation-preserving, scales within :data:`SCALE_RANGE`."""
    if not np.isfinite(m).all() or np.linalg.det(m[:3, :3]) <= 0:
        return False
    scales = np.linalg.svd(m[:3, :3], compute_uv=False)
    return bool(scales.min() >= SCALE_RANGE[0] and scales.max() <= SCALE_RANGE[1])


def _dipy_version():
    try:
        import dipy

        return dipy.__version__
    except Exception:  # pragma: no cover
        return None
