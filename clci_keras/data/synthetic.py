"""Synthetic ATLAS-like data on the MNI152 2009 1 mm template shipped with nilearn.

Real ATLAS data are under a data-use agreement, so tests, the demo and CI use
this generator.  Each subject is the nilearn MNI152 T1 template (already on the
ATLAS 197 x 233 x 189 grid) with

* a random global intensity scale (R1.1: white matter near 70-100, the scale
  the original generator divides by 100; 2.0: an arbitrary per-subject scale),
* a smooth multiplicative bias field and Gaussian noise inside the head,
* a small integer shift (up to 2 voxels per axis),
* one or two chronic-stroke-like lesions: hypointense (towards CSF), irregular,
  centred in middle-cerebral-artery territory (lateral cortex or the
  subcortical white matter / basal ganglia), restricted to grey + white
  matter, with volumes drawn log-uniformly from about 0.3 cm^3 to 150 cm^3.
  About a third of the subjects get two separate lesions, written as two
  masks (``..._LesionSmooth_stx`` and ``..._LesionSmooth_1_stx``) in R1.1
  and R1.2.

R1.2 trees use real ATLAS R1.2 scan ids (by default the published SPiN test
ids, then their training ids, :mod:`clci_keras.data.published_splits`), so
that the named split ``spin_traintest`` resolves on them; the images are
synthetic all the same.

Everything is drawn from ``numpy.random.default_rng([seed, subject])`` so a
subject depends only on the seed and its number.  The images are not
anatomically realistic beyond the template; they exercise the data path and
let a network learn something in a few steps.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import functools
import os
import re
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage

from clci_keras.data.constants import ATLAS_SHAPE, LAYOUTS, R11_CSV_NAME, SYNTHETIC_MARKER, V2_SPACE
from clci_keras.data.published_splits import SPIN_TRAINTEST_TEST, SPIN_TRAINTEST_TRAIN
from clci_keras.fileio import (
    LOCK_NAME,
    atomic_path,
    atomic_text,
    check_writable_folder,
    discard,
    exclusive,
    publish,
    read_json,
    remove_leftovers,
    temporary,
    write_json,
)
from clci_keras.version import __version__

#: Sites of the synthetic R1.1 release (real R1.1 has 9 sites).
N_SITES = 3
#: Log-uniform range of the target lesion volume in voxels (= mm^3).
LESION_VOLUME_RANGE = (300.0, 150_000.0)
#: Probability of a second, separate lesion.
P_TWO_LESIONS = 0.35
#: Hidden file a run that fills an existing folder writes there first and removes once the release
#: is complete: a folder holding it is an unfinished release, which the same command completes.
PARTIAL_MARKER = ".clci-keras-synth.partial.json"

R11_CSV_HEADER = [
    "INDI Site ID",
    "INDI Subject ID",
    "Session",
    "Lesion Hemisphere",
    "Vascular territory",
    "Stroke type",
    "Primary Stroke location",
    "Lesion count",
]


@dataclass
class SyntheticSubject:
    """One generated subject: T1 volume, lesion masks and descriptors."""

    t1: np.ndarray
    masks: list
    affine: np.ndarray
    hemisphere: str
    locations: list = field(default_factory=list)
    lesion_volumes: list = field(default_factory=list)


@functools.lru_cache(maxsize=1)
def _templates():
    """Template (0..1), grey+white matter probability, head mask, affine (cached)."""
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=1)
    def load(img):
        a = np.asfortranarray(np.asanyarray(img.dataobj), dtype=np.float32)  # nibabel's order
        return a / a.max() if a.max() > 1.5 else a  # stored as uint8 0..255 or scaled to 0..1

    t1 = load(t1_img)
    gm = load(datasets.load_mni152_gm_template(resolution=1))
    wm = load(datasets.load_mni152_wm_template(resolution=1))
    tissue = np.clip(gm + wm, 0.0, 1.0)
    if t1.shape != ATLAS_SHAPE:
        raise RuntimeError(f"nilearn's MNI152 template has shape {t1.shape}, expected {ATLAS_SHAPE}.")
    head = np.flatnonzero(t1.reshape(-1, order="F") > 0)  # F order, as the arrays
    for a in (t1, tissue):
        a.setflags(write=False)
    return t1, tissue, head, np.asarray(t1_img.affine, dtype=np.float64)


def _mm_to_vox(affine, xyz):
    ijk = np.linalg.solve(affine, np.r_[xyz, 1.0])[:3]
    return np.round(ijk).astype(int)


def _pick_centre(rng, tissue, affine, side, kind):
    """A voxel in MCA territory with grey+white matter probability > 0.6."""
    for _ in range(200):
        if kind == "cortical":
            xyz = (side * rng.uniform(32, 60), rng.uniform(-55, 25), rng.uniform(-5, 45))
        else:  # subcortical white matter / basal ganglia / corona radiata
            xyz = (side * rng.uniform(16, 32), rng.uniform(-22, 18), rng.uniform(-2, 28))
        i, j, k = _mm_to_vox(affine, xyz)
        if all(0 <= c < n for c, n in zip((i, j, k), ATLAS_SHAPE)) and tissue[i, j, k] > 0.6:
            return np.array([i, j, k])
    raise RuntimeError("could not place a lesion centre")  # pragma: no cover


def _lesion_field(rng, volume):
    """Irregular blob: (field, half box size, mean radius); the lesion is where field < 1."""
    r = (3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0)
    aniso = rng.uniform(0.7, 1.4, size=3)
    radii = r * aniso / np.prod(aniso) ** (1.0 / 3.0)
    half = np.ceil(radii * 1.5).astype(int) + 2
    # Low-frequency random perturbation of an ellipsoid, built on a coarse
    # grid and interpolated (cheap even for 150 cm^3 lesions).

    coarse = rng.standard_normal((5, 5, 5)).astype(np.float32)
    shape = tuple(2 * half + 1)
    noise = ndimage.zoom(coarse, [s / 5.0 for s in shape], order=1, mode="nearest", grid_mode=True)
    noise = noise[: shape[0], : shape[1], : shape[2]]
    ax = [((np.arange(n, dtype=np.float32) - h) / rad) ** 2 for n, h, rad in zip(shape, half, radii)]
    dist = np.sqrt(ax[0][:, None, None] + ax[1][None, :, None] + ax[2][None, None, :])
    return dist + 0.35 * noise, half, float(radii.mean())


def _paste_lesion(rng, img, tissue, centre, volume, level):
    """Make one lesion around ``centre``; darken ``img`` in place; return the uint8 mask."""
    fld, half, radius = _lesion_field(rng, volume)
    lo = centre - half
    hi = centre + half + 1
    clo = np.maximum(lo, 0)
    chi = np.minimum(hi, ATLAS_SHAPE)
    sub = tuple(slice(a - l, b - l) for a, b, l in zip(clo, chi, lo))
    box = tuple(slice(a, b) for a, b in zip(clo, chi))
    f = fld[sub]
    t = tissue[box]
    inside = (f < 1.0) & (t > 0.3)
    # Partial-volume rim about 1.5 voxels wide: CSF-like core, fading at the edge.
    w = np.clip((1.0 - f) * radius / 1.5, 0.0, 1.0) * inside
    region = img[box]
    region *= 1.0 - w
    region += w * level
    mask = np.zeros(ATLAS_SHAPE, dtype=np.uint8, order="F")
    mask[box] = inside
    return mask


def _apply_bias_field(rng, img):
    """Multiply ``img`` in place by a smooth field exp(f(x) + g(y) + h(z) + c*x*y) (~+-15 %).

    The field is separable, so it is applied as a 2D (x, y) factor and a 1D z
    factor without building the 3D field.
    """
    factors = []
    for n in ATLAS_SHAPE:
        u = np.linspace(-1.0, 1.0, n)
        a, b = rng.uniform(-0.12, 0.12, size=2)
        ph = rng.uniform(0, 2 * np.pi)
        factors.append((u, a * u + b * np.cos(np.pi * u + ph)))
    c = rng.uniform(-0.08, 0.08)
    (ux, fx), (uy, fy), (_, fz) = factors
    xy = np.exp(fx[:, None] + fy[None, :] + c * ux[:, None] * uy[None, :]).astype(np.float32)
    img *= xy[:, :, None]
    img *= np.exp(fz).astype(np.float32)[None, None, :]
    return img


def _shift(arr, offset):
    """Integer shift with zero fill (no wrap-around)."""
    out = np.zeros_like(arr)  # keeps the memory order
    src, dst = [], []
    for o, n in zip(offset, arr.shape):
        if o >= 0:
            src.append(slice(0, n - o))
            dst.append(slice(o, n))
        else:
            src.append(slice(-o, n))
            dst.append(slice(0, n + o))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def generate_subject(seed=0, index=0, scale=None, layout="r1.1"):
    """Generate one synthetic subject.

    Args:
        seed: dataset seed.
        index: subject number inside the dataset (0-based).
        scale: white-matter intensity; drawn per subject if None
            (70-100 for "r1.1", 200-1200 for "v2").
        layout: "r1.1", "r1.2" or "v2" (only changes the default intensity scale:
            R1.2 has R1.1's scale).

    Returns:
        A :class:`SyntheticSubject` with a float32 T1 volume of shape
        (197, 233, 189) and a list of one or two uint8 masks.
    """
    template, tissue, head, affine = _templates()
    rng = np.random.default_rng([int(seed), int(index)])
    if scale is None:
        scale = rng.uniform(70.0, 100.0) if layout in ("r1.1", "r1.2") else rng.uniform(200.0, 1200.0)
    img = template * np.float32(scale / 0.9)  # template white matter ~0.9; F order
    n_lesions = 2 if rng.random() < P_TWO_LESIONS else 1
    side = float(rng.choice([-1.0, 1.0]))
    masks, locations, volumes = [], [], []
    csf_level = np.float32(scale * rng.uniform(0.12, 0.22))
    for n in range(n_lesions):
        kind = "cortical" if rng.random() < 0.6 else "subcortical"
        lo, hi = np.log(LESION_VOLUME_RANGE)
        vol = float(np.exp(rng.uniform(lo, hi)))
        if n == 1:
            vol = min(vol, 20_000.0)  # second lesions are usually smaller
        for _ in range(20):
            centre = _pick_centre(rng, tissue, affine, side, kind)
            near = tuple(slice(max(c - 3, 0), c + 4) for c in centre)
            if not any(m[near].any() for m in masks):  # second centre outside the first lesion
                break
        mask = _paste_lesion(rng, img, tissue, centre, vol, csf_level)
        if n == 1 and masks:
            mask[masks[0] > 0] = 0  # keep the two masks separate
        if not mask.any():  # a tiny lesion can fall outside tissue: keep one dark voxel
            mask[tuple(centre)] = 1
            img[tuple(centre)] = csf_level
        masks.append(mask)
        locations.append(kind)
        volumes.append(int(mask.sum()))
    _apply_bias_field(rng, img)
    img = np.asfortranarray(img)  # no copy: already F-contiguous, as ``head`` indexes
    flat = img.reshape(-1, order="F")  # a view
    sigma = scale * rng.uniform(0.01, 0.03)
    flat[head] += rng.standard_normal(head.size, dtype=np.float32) * np.float32(sigma)
    np.maximum(img, 0.0, out=img)
    offset = rng.integers(-2, 3, size=3)
    img = _shift(img, offset)
    masks = [_shift(m, offset) for m in masks]
    hemisphere = "L" if side < 0 else "R"
    return SyntheticSubject(img, masks, affine.copy(), hemisphere, locations, volumes)


def axis_rotation(axis, degrees):
    """3x3 rotation by ``degrees`` in the plane of the two axes other than ``axis``
    (``axis`` 0, 1 or 2); the oblique and native grids of the test data are built from it."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def save_nifti(arr, affine, path, dtype, xform_code=4):
    """Write ``arr`` as a NIfTI image of ``dtype`` (atomically), qform and sform ``affine``
    with ``xform_code`` (4: MNI152, 1: scanner); float data stored as integers are scaled."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer) and np.issubdtype(arr.dtype, np.floating):
        data = arr  # nibabel picks scl_slope so the integers keep the float precision
    else:
        data = np.asarray(arr, dtype=dtype)
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=xform_code)
    img.set_sform(affine, code=xform_code)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def r11_subject_id(index, seed=0):
    """Six-digit R1.1-style subject id ("031768"-like), unique per index."""
    return f"0{31000 + 7 * int(seed) % 1000 + int(index):05d}"[-6:]


def r12_subject_ids(n_subjects):
    """Default R1.2 scan ids: the published SPiN test ids, then their training ids (line order)."""
    pool = SPIN_TRAINTEST_TEST + SPIN_TRAINTEST_TRAIN
    if not 1 <= int(n_subjects) <= len(pool):
        raise ValueError(f"n_subjects must be in 1..{len(pool)} for the r1.2 layout, got {n_subjects}.")
    return list(pool[: int(n_subjects)])


def _check_r12_ids(ids):
    ids = [str(i) for i in ids]
    bad = [i for i in ids if not re.fullmatch(r"c\d{4}s\d{4}t\d{2}", i)]
    if bad:
        raise ValueError(f"R1.2 subject ids must look like 'c0008s0028t01', got {bad[:5]}.")
    if len(set(ids)) != len(ids):
        raise ValueError(f"Duplicate R1.2 subject ids in {ids}.")
    return ids


def generate_dataset(out_dir, layout="r1.1", n_subjects=4, seed=0, t1_dtype="int16", overwrite=False, progress=False,
                     subject_ids=None):
    """Write a synthetic ATLAS-like release to ``out_dir``.

    R1.1 layout (as the real release, and as the original generator reads it)::

        ATLAS_Meta-Data_Release_1.1_standard_mni.csv   # site, id without the leading 0, " t01", ...
        Site1/031000/t01/031000_t1w_deface_stx.nii.gz
        Site1/031000/t01/031000_LesionSmooth_stx.nii.gz
        Site1/031000/t01/031000_LesionSmooth_1_stx.nii.gz   # second mask, some subjects

    R1.2 layout (the unpacked standard_MNI release; no table)::

        c0008/c0008s0028t01/c0008s0028t01_t1w_stx.nii.gz
        c0008/c0008s0028t01/c0008s0028t01_LesionSmooth_stx.nii.gz
        c0008/c0008s0028t01/c0008s0028t01_LesionSmooth_1_stx.nii.gz   # second mask, some subjects

    2.0 layout (BIDS)::

        Training/R001/sub-r001s001/ses-1/anat/
            sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz
            sub-r001s001_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz

    Args:
        out_dir: output folder. One that does not exist is written as a temporary folder
            beside it and renamed to it when complete (an interrupted run leaves nothing);
            an existing one must be empty (or hold an unfinished run of the same
            arguments, which is completed; or ``overwrite``) and is filled in place, marked
            unfinished (:data:`PARTIAL_MARKER`) until the end. One run per folder at a time
            (:func:`clci_keras.fileio.exclusive`).
        layout: "r1.1", "r1.2" or "v2".
        n_subjects: number of subjects (ignored when ``subject_ids`` is given).
        seed: dataset seed; the output depends only on (layout, n_subjects, seed).
        t1_dtype: on-disk type of the T1 images: "int16" (default; nibabel
            stores a scale factor, so the file reads back as float close to
            the generated values with 0 kept exactly) or "float32" (exact,
            slower to write).
        overwrite: allow writing into a non-empty folder.
        progress: show progress (:func:`clci_keras.fileio.progress_bar`).
        subject_ids: R1.2 only: the scan ids to write (``cSSSSsNNNNtNN``);
            default :func:`r12_subject_ids` (published SPiN test ids first).
            Subject ``i`` is generated from ``(seed, i)`` whatever its id.

    Returns:
        A list of dicts (one per subject, in CSV / generation order) with the
        subject id, site, T1 path, mask paths and lesion volumes.

    Raises:
        ValueError: unknown ``layout``, ``subject_ids`` outside r1.2 or malformed,
            ``n_subjects`` below 1 (or, for r1.2, above the known ids).
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False (naming it).
        OSError: the release cannot be written (a full disk: one line naming ``out_dir``);
            :class:`clci_keras.fileio.OutputInUseError`: another run writes ``out_dir``.
    """
    out_dir, n_subjects, r12_ids = _check_dataset_arguments(out_dir, layout, n_subjects, subject_ids)
    settings = {"layout": layout, "n_subjects": n_subjects, "seed": int(seed), "t1_dtype": str(np.dtype(t1_dtype)),
                "subject_ids": r12_ids}
    check_writable_folder(out_dir)  # one line naming it (not its lock file) where nothing can be written
    with _output_lock(out_dir):  # one run per folder, before the template is loaded
        remove_leftovers(out_dir)  # the temporary folder of a killed earlier run
        if not os.path.lexists(out_dir):
            return _generate_new(out_dir, settings, progress)
        _check_output_folder(out_dir, settings, overwrite)
        partial = os.path.join(out_dir, PARTIAL_MARKER)
        write_json(partial, settings)
        records = _generate(out_dir, settings, progress)
        os.remove(partial)
        return records


def _output_lock(out_dir):
    """:func:`~clci_keras.fileio.exclusive` on ``out_dir``: its lock file beside it, or inside an
    existing folder whose parent cannot be written."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    if os.path.isdir(out_dir) and os.path.isdir(parent) and not os.access(parent, os.W_OK | os.X_OK):
        return exclusive(out_dir, what="output folder", inside=True)
    return exclusive(out_dir, what="output folder")


def _check_output_folder(out_dir, settings, overwrite):
    """Refuse an existing ``out_dir`` unless it is a folder that is empty, an unfinished release of
    these ``settings`` (:data:`PARTIAL_MARKER`), or ``overwrite`` (FileExistsError naming it)."""
    if not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir}: exists and is not a folder")
    ignored = {LOCK_NAME.format("clci-keras"), PARTIAL_MARKER}
    if not [n for n in os.listdir(out_dir) if n not in ignored] or overwrite:
        return
    partial = os.path.join(out_dir, PARTIAL_MARKER)
    if os.path.isfile(partial):
        try:
            earlier = read_json(partial)
        except (OSError, ValueError):
            earlier = None
        if earlier == settings:
            return  # an unfinished run of this command: complete it
        said = (", ".join(f"{k} {v}" for k, v in earlier.items() if k != "subject_ids")
                if isinstance(earlier, dict) else "unreadable settings")
        raise FileExistsError(f"{out_dir}: holds an unfinished synthetic release of other settings ({said}); "
                              "run the command with those to complete it, or pass --overwrite")
    raise FileExistsError(f"{out_dir}: output folder is not empty (pass --overwrite to write into it)")


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _generate_new(out_dir, settings, progress):
    """Write the release into a temporary folder beside ``out_dir`` and rename it to ``out_dir``
    when complete; on any error (Ctrl-C, a full disk) nothing is left."""
    tmp = temporary(out_dir, folder=True)
    try:
        records = _generate(tmp, settings, progress)
        publish(tmp, out_dir)
    except BaseException as e:
        discard(tmp)
        if isinstance(e, OSError) and e.errno in _NO_SPACE:  # name the output, not a file of the temporary
            raise OSError(e.errno, f"cannot write it: {os.strerror(e.errno)}", out_dir) from e
        raise
    return [_moved(r, tmp, out_dir) for r in records]


def _moved(record, old, new):
    """``record`` with its paths under the folder ``old`` now under ``new``."""
    def move(p):
        return os.path.join(new, os.path.relpath(p, old))

    return {**record, "t1_path": move(record["t1_path"]), "mask_paths": [move(p) for p in record["mask_paths"]]}


def _generate(out_dir, settings, progress):
    """Every subject, the table and the marker of :func:`generate_dataset` into the folder ``out_dir``."""
    layout, n_subjects, seed = settings["layout"], settings["n_subjects"], settings["seed"]
    t1_dtype, r12_ids = settings["t1_dtype"], settings["subject_ids"]
    os.makedirs(out_dir, exist_ok=True)
    records = []
    bar = None
    if progress:
        from clci_keras.fileio import progress_bar

        bar = progress_bar(n_subjects, desc="synth", unit="subject")
    with bar if bar is not None else contextlib.nullcontext():
        for i in range(n_subjects):
            subj = generate_subject(seed=seed, index=i, layout=layout)
            if layout == "r1.1":
                sid, site, t1_path, mask_paths = _write_r11_subject(out_dir, i, seed, subj, t1_dtype)
            elif layout == "r1.2":
                sid, site, t1_path, mask_paths = _write_r12_subject(out_dir, r12_ids[i], subj, t1_dtype)
            else:
                sid, site, t1_path, mask_paths = _write_v2_subject(out_dir, i, subj, t1_dtype)
            records.append(
                {"index": i, "subject_id": sid, "site": site, "t1_path": t1_path,
                 "mask_paths": mask_paths, "lesion_volumes": subj.lesion_volumes,
                 "locations": subj.locations, "hemisphere": subj.hemisphere}
            )
            if bar is not None:
                bar.update(1)
    _write_tables(out_dir, layout, records)
    _write_marker(out_dir, layout, n_subjects, seed)
    return records


def _check_dataset_arguments(out_dir, layout, n_subjects, subject_ids):
    """Check :func:`generate_dataset`'s arguments (``ValueError`` naming the value).

    Returns:
        ``(out_dir, n_subjects, r12_ids)``: the folder as a ``str``, the number of
        subjects to write and, for the r1.2 layout, their scan ids (else ``None``).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}.")
    if subject_ids is not None and layout != "r1.2":
        raise ValueError(f"subject_ids is only used by the r1.2 layout, not {layout!r}.")
    r12_ids = None
    if layout == "r1.2":
        r12_ids = _check_r12_ids(subject_ids) if subject_ids is not None else r12_subject_ids(n_subjects)
        n_subjects = len(r12_ids)
    n_subjects = int(n_subjects)
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}.")
    out_dir = os.fspath(out_dir)
    if not out_dir.strip():
        raise ValueError("the output folder's name is empty")
    out_dir = os.path.normpath(out_dir)  # "out/" names the folder "out"
    return out_dir, n_subjects, r12_ids


def _save_lesion_masks(subj, folder, sid):
    """Each lesion of ``subj`` as its own mask (R1.1 / R1.2 names); returns their paths."""
    mask_paths = [
        os.path.join(folder, f"{sid}_LesionSmooth{'' if k == 0 else f'_{k}'}_stx.nii.gz")
        for k in range(len(subj.masks))
    ]
    for m, p in zip(subj.masks, mask_paths):
        save_nifti(m, subj.affine, p, np.uint8)
    return mask_paths


def _write_r11_subject(out_dir, i, seed, subj, t1_dtype):
    """Subject ``i`` in the R1.1 layout; returns ``(subject id, site, T1 path, mask paths)``."""
    site = f"Site{i % N_SITES + 1}"
    sid = r11_subject_id(i, seed)
    folder = os.path.join(out_dir, site, sid, "t01")
    os.makedirs(folder, exist_ok=True)
    t1_path = os.path.join(folder, f"{sid}_t1w_deface_stx.nii.gz")
    save_nifti(subj.t1, subj.affine, t1_path, t1_dtype)
    return sid, site, t1_path, _save_lesion_masks(subj, folder, sid)


def _write_r12_subject(out_dir, sid, subj, t1_dtype):
    """Scan ``sid`` in the R1.2 layout; returns ``(subject id, site, T1 path, mask paths)``."""
    site = sid[:5]
    folder = os.path.join(out_dir, site, sid)
    os.makedirs(folder, exist_ok=True)
    t1_path = os.path.join(folder, f"{sid}_t1w_stx.nii.gz")
    save_nifti(subj.t1, subj.affine, t1_path, t1_dtype)
    return sid, site, t1_path, _save_lesion_masks(subj, folder, sid)


def _write_v2_subject(out_dir, i, subj, t1_dtype):
    """Subject ``i`` in the 2.0 (BIDS) layout, its lesions merged into one mask;
    returns ``(subject id, cohort, T1 path, [mask path])``."""
    cohort = f"R{i % N_SITES + 1:03d}"
    sid = f"sub-r{i % N_SITES + 1:03d}s{i // N_SITES + 1:03d}"
    folder = os.path.join(out_dir, "Training", cohort, sid, "ses-1", "anat")
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, f"{sid}_ses-1_space-{V2_SPACE}")
    t1_path = stem + "_T1w.nii.gz"
    mask_paths = [stem + "_label-L_desc-T1lesion_mask.nii.gz"]
    merged = np.zeros_like(subj.masks[0])
    for m in subj.masks:
        merged |= m
    save_nifti(subj.t1, subj.affine, t1_path, t1_dtype)
    save_nifti(merged, subj.affine, mask_paths[0], np.uint8)
    return sid, cohort, t1_path, mask_paths


def _write_tables(out_dir, layout, records):
    """The release's subject table, from :func:`generate_dataset`'s records: R1.1's metadata CSV
    (:data:`R11_CSV_HEADER`; a row per subject, its id without the leading 0, its lesion count
    = its masks), 2.0's ``participants.tsv``; R1.2 has none."""
    if layout == "r1.1":
        csv_path = os.path.join(out_dir, R11_CSV_NAME)
        with atomic_text(csv_path, newline="") as f:
            w = csv.writer(f)
            w.writerow(R11_CSV_HEADER)
            w.writerows([r["site"], r["subject_id"].lstrip("0"), " t01", r["hemisphere"], " MCA", " Ischemic",
                         " " + "/".join(r["locations"]), str(len(r["mask_paths"]))] for r in records)
    elif layout == "v2":
        tsv = os.path.join(out_dir, "Training", "participants.tsv")
        with atomic_text(tsv) as f:
            f.write("participant_id\tcohort\n")
            for r in sorted(records, key=lambda r: r["subject_id"]):
                f.write(f"{r['subject_id']}\t{r['site']}\n")


def _write_marker(out_dir, layout, n_subjects, seed):
    """:data:`~clci_keras.data.constants.SYNTHETIC_MARKER`, written last: the release is complete."""
    marker = os.path.join(out_dir, SYNTHETIC_MARKER)
    write_json(marker, {"generator": "clci_keras.data.synthetic", "version": __version__,
                        "layout": layout, "n_subjects": n_subjects, "seed": int(seed)})


def plot_synthetic_slices(out_png, n_subjects=4, seed=0, layout="r1.1", dpi=110):
    """Save a figure of a few synthetic subjects (axial slice through the largest lesion,
    lesion outline in red) to ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_subjects, figsize=(2.6 * n_subjects, 3.6))
    axes = np.atleast_1d(axes)
    for i, ax in enumerate(axes):
        s = generate_subject(seed=seed, index=i, layout=layout)
        merged = np.zeros_like(s.masks[0])
        for m in s.masks:
            merged |= m
        z = int(np.argmax(merged.sum(axis=(0, 1))))
        img = s.t1[:, :, z].T  # stored-slice orientation (rows = y)
        ax.imshow(img, cmap="gray", origin="lower")
        for m, color in zip(s.masks, ("red", "orange")):
            if m[:, :, z].any():
                ax.contour(m[:, :, z].T, levels=[0.5], colors=color, linewidths=1.0, origin="lower")
        vol = sum(s.lesion_volumes) / 1000.0
        ax.set_title(f"subject {i}: z={z}\n{len(s.masks)} mask(s), {vol:.1f} cm$^3$", fontsize=8)
        ax.axis("off")
    fig.suptitle("Synthetic ATLAS-like subjects (MNI152 template): red/orange = lesion masks", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return out_png
