"""ATLAS source tree -> HDF5 slice file (``clci-keras prep``).

Content (R1.1, faithful to Andrewsher/ATLAS-dataset-generate-h5file):
dataset ``data`` holds, subject after subject in the table's order, each T1
volume transposed to 189 slices of 233 x 197 and divided by 100, stored as
float32 (the original keeps the dtype of ``get_data() / 100``: float64 for
integer images); dataset ``label`` holds the subject's lesion masks merged
into one uint8 0/1 mask (``int(value) > 0`` for each mask, then OR).

R1.2 (the SPiN authors' generator, ``external_src/generate_h5/generate_h5.py``
of alexklwong/subpixel-embedding-segmentation) stores the same content per
scan: ``transpose(2, 1, 0) / 100`` and the masks' ``int64 > 0`` summed and
clipped to 1; only the subject order differs (theirs: unsorted ``glob``
order, recorded in their ``data_order.txt``; ours: sorted by site and scan
folder, with the scan folder name as subject id).

Beyond the original: one subject in memory at a time per process; one HDF5
chunk per slice, byte-shuffled and deflated (level 1, RLE strategy, by
default) by the workers themselves and written with ``write_direct_chunk``, so K workers
compress in parallel; per-subject metadata (group ``subjects``) and file
attributes; a progress bar (plain lines when stderr is not a terminal); the
file is written to a temporary name in the output folder and renamed at the
end, so an interrupted run never leaves a file at the output path, and a rerun
removes the temporaries of killed runs; pool workers end with their parent.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone

import h5py
import numpy as np

from clci_keras.data.atlas import NonBinaryMaskWarning, discover_subjects, load_subject
from clci_keras.data.constants import (
    ATLAS_SHAPE,
    CROPS,
    DEFAULT_CROP,
    H5_FORMAT_VERSION,
    LAYOUT_INTENSITY,
    R11_SCALE,
    SYNTHETIC_MARKER,
    SLICE_SHAPE,
    SLICES_PER_SUBJECT,
)
from clci_keras.data.h5links import check_self_contained
from clci_keras.data.intensity import normalize_slice, v2_reference
from clci_keras.fileio import atomic_path, check_writable_folder, exclusive, progress_bar, remove_dead_temporaries
from clci_keras.process import PARENT_POLL_SECONDS, die_with_parent  # noqa: F401  (re-exported)
from clci_keras.version import __version__

CHUNK = (1,) + SLICE_SHAPE


class StaleTemporaryWarning(UserWarning):
    """A temporary file that a killed earlier run left next to the output was removed."""


def _shuffle_bytes(a):
    """HDF5 shuffle filter: byte k of every element, for k = 0..itemsize-1."""
    if a.itemsize == 1:
        return a.tobytes()
    return a.view(np.uint8).reshape(-1, a.itemsize).T.tobytes()


def _deflate(buf, level):
    """zlib stream (what HDF5's deflate filter reads); the RLE strategy is
    faster than the default and smaller on byte-shuffled floats."""
    c = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return c.compress(buf) + c.flush()


def process_subject(record, scheme, level=1, affine_atol=1e-3):
    """Load, validate, slice, normalise and compress one subject (runs in workers).

    Returns a dict of metadata plus ``data_chunks`` / ``label_chunks``: one
    deflated (and, for data, byte-shuffled) chunk per slice.
    """
    sub = load_subject(record, atol=affine_atol)
    t1 = sub.pop("t1")
    label = sub.pop("label")
    ref = v2_reference(t1) if scheme == "v2" else (R11_SCALE if scheme == "r1.1" else 1.0)
    data_chunks, label_chunks = [], []
    zero = {}  # all-zero slices (most label slices, slices outside the head) compress once
    for z in range(t1.shape[2]):
        s = np.ascontiguousarray(normalize_slice(t1[:, :, z].T, scheme, reference=ref), dtype="<f4")
        m = np.ascontiguousarray(label[:, :, z].T)
        for arr, out, key in ((s, data_chunks, "f4"), (m, label_chunks, "u1")):
            if not arr.any():
                if key not in zero:
                    zero[key] = _deflate(_shuffle_bytes(arr), level)
                out.append(zero[key])
            else:
                out.append(_deflate(_shuffle_bytes(arr), level))
    sub.update(data_chunks=data_chunks, label_chunks=label_chunks, intensity_reference=float(ref))
    return sub


def remove_stale_temporaries(out_h5):
    """Remove temporaries that killed runs of :func:`prepare_h5` left for ``out_h5``.

    :func:`prepare_h5` writes through a temporary named for its process
    (:func:`clci_keras.fileio.atomic_path` with ``per_process=True``, next to
    ``OUT.h5``); only those whose process is no longer running are removed
    (:func:`clci_keras.fileio.remove_dead_temporaries`): a run still writing, and
    every other file of the folder, is left alone. Returns the removed paths.
    """
    return remove_dead_temporaries(out_h5)


def _iter_results(records, scheme, level, workers, affine_atol):
    """Yield (record, result) in order; at most ``2 * workers`` subjects in flight."""
    if workers <= 1:
        for r in records:
            yield r, process_subject(r, scheme, level, affine_atol)
        return

    # "fork" is cheap; once TensorFlow (multi-threaded) is loaded, forking is
    # unsafe, so fall back to "spawn".
    method = "spawn" if "tensorflow" in sys.modules or sys.platform != "linux" else "fork"
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as ex:
        pending = {}
        nxt = 0
        try:
            for i, r in enumerate(records):
                while nxt < len(records) and nxt < i + 2 * workers:
                    pending[nxt] = ex.submit(process_subject, records[nxt].to_dict(), scheme, level, affine_atol)
                    nxt += 1
                yield r, pending.pop(i).result()
        finally:
            for f in pending.values():
                f.cancel()


def prepare_h5(
    src,
    out_h5,
    layout="auto",
    workers=1,
    overwrite=False,
    intensity=None,
    compression_level=1,
    progress=True,
    max_subjects=None,
    affine_atol=1e-3,
):
    """Convert an ATLAS R1.1, R1.2 or 2.0 tree into the HDF5 slice file.

    Args:
        src: release root (R1.1: folder with the metadata table; R1.2: the
            folder holding the site folders ``c0001/``, ... of the unpacked
            standard_MNI release; 2.0: the folder containing ``Training/`` or
            the ``Training`` folder).
        out_h5: output path; refused if it exists unless ``overwrite``.
        layout: "auto", "r1.1", "r1.2" or "v2".
        workers: processes that read and compress subjects (1 = in-process).
        overwrite: replace an existing output file.
        intensity: intensity scheme; default "r1.1" (/100) for R1.1 and R1.2, "v2" for 2.0.
        compression_level: deflate level 0-9 of the chunks.
        progress: show progress on stderr (:func:`clci_keras.fileio.progress_bar`: a
            tqdm bar on a terminal, plain lines in a log file).
        max_subjects: only convert the first N subjects (N >= 1; for quick tries).
        affine_atol: largest allowed difference between a mask's and its
            T1's affine entries.

    Returns:
        A dict with ``path``, ``n_subjects``, ``n_slices``, ``seconds``, ``bytes`` and
        ``removed_temporaries`` (temporaries of killed earlier runs for the same
        output, removed with a :class:`StaleTemporaryWarning` each).

    Raises:
        ValueError: ``workers``, ``compression_level`` or ``max_subjects`` out of range.
        FileExistsError: output exists and ``overwrite`` is False.
        clci_keras.fileio.OutputInUseError: another run writes the same output (named, with its PID).
        FileNotFoundError, NotADirectoryError, PermissionError: the output
            folder is missing, a file, or not writable (checked before any work).
        AtlasDataError: any problem with the inputs (message names the file).
    """
    out_h5 = os.fspath(out_h5)
    workers = int(workers)
    _check_prepare_arguments(out_h5, workers, compression_level, max_subjects)
    # One run per output: the second of two runs started together fails at once, naming the first.
    with exclusive(out_h5, what="HDF5 output"):
        if os.path.exists(out_h5) and not overwrite:
            raise FileExistsError(f"{out_h5}: output exists; pass --overwrite to replace it.")
        return _prepare(src, out_h5, layout, workers, intensity, compression_level, progress, max_subjects,
                        affine_atol)


def _prepare(src, out_h5, layout, workers, intensity, compression_level, progress, max_subjects, affine_atol):
    """:func:`prepare_h5` once its output is checked and locked."""
    stale = _remove_stale_temporaries_warning(out_h5)
    layout, records = discover_subjects(src, layout)
    if max_subjects is not None:
        records = records[: int(max_subjects)]
    scheme = intensity or LAYOUT_INTENSITY[layout]
    n = len(records)
    t0 = time.perf_counter()
    bar = None
    if progress:
        bar = progress_bar(n, desc=f"prep {layout}", unit="subject", file=sys.stderr)
    try:
        with atomic_path(out_h5, per_process=True) as tmp, h5py.File(tmp, "w") as f:
            results = _iter_results(records, scheme, int(compression_level), workers, float(affine_atol))
            meta = _write_slices(f, n, results, int(compression_level), bar)
            _write_subject_table(f, records, meta)
            f.attrs.update(_file_attributes(src, layout, scheme, n))
    finally:
        if bar is not None:
            bar.close()
    return {
        "path": out_h5,
        "layout": layout,
        "n_subjects": n,
        "n_slices": n * SLICES_PER_SUBJECT,
        "seconds": time.perf_counter() - t0,
        "bytes": os.path.getsize(out_h5),
        "removed_temporaries": stale,
    }


def _check_prepare_arguments(out_h5, workers, compression_level, max_subjects):
    """Refuse bad arguments and an unusable output of :func:`prepare_h5` before any work (its Raises)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    if not 0 <= int(compression_level) <= 9:
        raise ValueError(f"compression_level must be in 0..9, got {compression_level}.")
    if max_subjects is not None and (isinstance(max_subjects, bool) or int(max_subjects) != max_subjects
                                     or max_subjects < 1):
        raise ValueError(f"max_subjects must be a positive integer or None, got {max_subjects!r}.")
    out_dir = os.path.dirname(os.path.abspath(out_h5))
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"{out_h5}: output folder {out_dir} is a file, not a folder.")
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"{out_h5}: output folder {out_dir} does not exist.")
    check_writable_folder(out_dir)


def _remove_stale_temporaries_warning(out_h5):
    """:func:`remove_stale_temporaries`, with a :class:`StaleTemporaryWarning` (to the caller of
    :func:`prepare_h5`) for each removed path; returns the paths."""
    stale = remove_stale_temporaries(out_h5)
    for path in stale:
        warnings.warn(f"{path}: removed the temporary file of an interrupted earlier run", StaleTemporaryWarning,
                      stacklevel=4)
    return stale


def _write_slices(f, n, results, level, bar):
    """Datasets ``data`` and ``label`` of the open file ``f`` from the ``(record, result)`` pairs of
    :func:`_iter_results` (``n`` subjects); warns of each subject's non-binary masks.

    Returns the per-subject metadata as lists: ``affine``, ``lesion_voxels``,
    ``intensity_reference`` and ``warnings`` (one string per subject).
    """
    kw = dict(chunks=CHUNK, compression="gzip", compression_opts=level)
    data = f.create_dataset("data", (n * SLICES_PER_SUBJECT,) + SLICE_SHAPE, dtype="<f4", shuffle=True, **kw)
    label = f.create_dataset("label", (n * SLICES_PER_SUBJECT,) + SLICE_SHAPE, dtype="u1", **kw)
    meta = {k: [] for k in ("affine", "lesion_voxels", "intensity_reference", "warnings")}
    for i, (_, res) in enumerate(results):
        base = i * SLICES_PER_SUBJECT
        for z, (dc, lc) in enumerate(zip(res["data_chunks"], res["label_chunks"])):
            data.id.write_direct_chunk((base + z, 0, 0), dc)
            label.id.write_direct_chunk((base + z, 0, 0), lc)
        for w in res["warnings"]:
            warnings.warn(w, NonBinaryMaskWarning, stacklevel=4)  # the caller of prepare_h5
        meta["affine"].append(res["affine"])
        meta["lesion_voxels"].append(res["lesion_voxels"])
        meta["intensity_reference"].append(res["intensity_reference"])
        meta["warnings"].append(" | ".join(res["warnings"]))
        if bar is not None:
            bar.update(1)
    return meta


def _write_subject_table(f, records, meta):
    """Group ``subjects`` of the open file ``f``: one entry per record, ``meta`` from :func:`_write_slices`."""
    n = len(records)
    g = f.create_group("subjects")
    st = h5py.string_dtype()
    g.create_dataset("subject_id", data=[r.subject_id for r in records], dtype=st)
    g.create_dataset("site", data=[r.site for r in records], dtype=st)
    g.create_dataset("session", data=[r.session for r in records], dtype=st)
    g.create_dataset("offset", data=np.arange(n, dtype=np.int64) * SLICES_PER_SUBJECT)
    g.create_dataset("count", data=np.full(n, SLICES_PER_SUBJECT, dtype=np.int64))
    g.create_dataset("affine", data=np.asarray(meta["affine"], dtype=np.float64).reshape(n, 4, 4))
    g.create_dataset("lesion_voxels", data=np.asarray(meta["lesion_voxels"], dtype=np.int64))
    g.create_dataset("intensity_reference", data=np.asarray(meta["intensity_reference"], np.float64))
    g.create_dataset("t1_path", data=[os.path.abspath(r.t1_path) for r in records], dtype=st)
    mask_json = [json.dumps([os.path.abspath(p) for p in r.mask_paths]) for r in records]
    g.create_dataset("mask_paths", data=mask_json, dtype=st)
    g.create_dataset("csv_row", data=np.asarray([r.csv_row for r in records], dtype=np.int64))
    g.create_dataset("warnings", data=meta["warnings"], dtype=st)


def _file_attributes(src, layout, scheme, n):
    """The file attributes of an HDF5 slice file of ``n`` subjects converted from ``src``."""
    return {
        "format": "clci_keras ATLAS slices",
        "format_version": H5_FORMAT_VERSION,
        "layout": layout,
        "intensity_scheme": scheme,
        "intensity_divisor": R11_SCALE if scheme == "r1.1" else -1.0,
        "n_subjects": n,
        "slices_per_subject": SLICES_PER_SUBJECT,
        "atlas_shape": ATLAS_SHAPE,
        "slice_shape": SLICE_SHAPE,
        "slicing": "slices = volume.transpose(2, 1, 0); slice i = volume[:, :, i].T",
        "label_rule": "OR over masks of (int(value) > 0)",
        "crops": json.dumps({k: [[r.start, r.stop], [c.start, c.stop]] for k, (r, c) in CROPS.items()}),
        "default_crop": DEFAULT_CROP,
        "source": os.path.abspath(os.fspath(src)),
        "synthetic": os.path.isfile(os.path.join(os.fspath(src), SYNTHETIC_MARKER)),
        "clci_keras_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def read_subjects(h5_path):
    """Per-subject metadata of an HDF5 slice file, in file order.

    Returns a list of dicts with ``index``, ``subject_id``, ``site``,
    ``session``, ``offset``, ``count``, ``affine`` (4x4), ``lesion_voxels``,
    ``t1_path``, ``mask_paths``.  Files without a ``subjects`` group (e.g. the
    original generator's output) get ids "0", "1", ... from ``len(data) // 189``.
    """
    if not os.path.isfile(h5_path):
        raise FileNotFoundError(f"{h5_path}: HDF5 slice file not found" +
                                (" (it is a folder)" if os.path.isdir(h5_path) else ""))
    try:
        f = h5py.File(h5_path, "r")
    except OSError as e:
        reason = " ".join(str(e).split())
        raise ValueError(f"{h5_path}: not a readable HDF5 file ({reason}); expected the output of "
                         "`clci-keras prep`") from e
    with f:
        check_self_contained(f, h5_path)  # no data read from other files without a word
        if "data" not in f:
            raise ValueError(f"{h5_path}: no 'data' dataset; not an ATLAS slice file.")
        if "subjects" not in f:
            n_slices = f["data"].shape[0]
            if n_slices % SLICES_PER_SUBJECT:
                raise ValueError(f"{h5_path}: {n_slices} slices is not a multiple of {SLICES_PER_SUBJECT}.")
            return [
                {"index": i, "subject_id": str(i), "site": "", "session": "", "offset": i * SLICES_PER_SUBJECT,
                 "count": SLICES_PER_SUBJECT}
                for i in range(n_slices // SLICES_PER_SUBJECT)
            ]
        g = f["subjects"]

        def strs(name):
            return [s.decode() if isinstance(s, bytes) else str(s) for s in g[name][()]] if name in g else None

        ids, sites, sessions = strs("subject_id"), strs("site"), strs("session")
        t1p, mp = strs("t1_path"), strs("mask_paths")
        offset, count = g["offset"][()], g["count"][()]
        aff = g["affine"][()] if "affine" in g else None
        les = g["lesion_voxels"][()] if "lesion_voxels" in g else None
    out = []
    for i, sid in enumerate(ids):
        d = {"index": i, "subject_id": sid, "site": sites[i] if sites else "",
             "session": sessions[i] if sessions else "", "offset": int(offset[i]), "count": int(count[i])}
        if aff is not None:
            d["affine"] = aff[i]
        if les is not None:
            d["lesion_voxels"] = int(les[i])
        if t1p is not None:
            d["t1_path"] = t1p[i]
        if mp is not None:
            d["mask_paths"] = json.loads(mp[i])
        out.append(d)
    return out


def subject_table(h5_path):
    """``{subject index: (offset, count)}`` of the HDF5 file, in file order (from :func:`read_subjects`)."""
    return {int(s["index"]): (int(s["offset"]), int(s["count"])) for s in read_subjects(h5_path)}
