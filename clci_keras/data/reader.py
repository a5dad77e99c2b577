"""Reading the HDF5 slice file: subjects, slice selection, crop, batches, the input plan.

The HDF5 file (``clci-keras prep``) stores 189 axial slices per subject,
patient-major. It has two readers with one ``read`` contract (cropped
float32 ``(x, y)`` by global slice index): :class:`SliceReader` here (per-batch
reads or subjects in memory) and :class:`clci_keras.data.stream.StreamingReader`
(a cache of whole subjects loaded by worker processes, for data beyond the
memory budget); :func:`plan_input` and :func:`open_reader` choose between them.
This module holds:

* :func:`subject_table` — ``{subject index: (offset, count)}``;
* :func:`select_slices` — global slice indices of subjects chosen by a slice
  spec (below);
* :class:`SliceReader` — cropped ``(x, y)`` arrays by global slice index,
  streamed from the file (default) or from memory (``in_memory=True``: the
  selected subjects are read once, each as one contiguous block);
* :func:`iter_batches` — the training walk over shuffled passes whose order
  depends only on ``(seed, pass)``, so a resumed run replays exactly the
  batches an uninterrupted run would see (the ``fit`` input over a reader is
  :mod:`clci_keras.data.batches`, on every backend);
* :func:`load_subject_slices` — one patient's slices as numpy arrays;
* :func:`dataset_info` — the file's provenance (attributes, synthetic flag);
* :func:`plan_input` / :func:`open_reader` — in memory or streamed, and the reader of that plan.

Slice specs (:func:`select_slices`):

``all``        every slice of every subject (the original protocol);
``brain``      the axial slices inside the MNI152 brain mask's z-range
               (:func:`brain_slice_indices`: 155 of 189; the others are
               background in MNI space);
``lesion``     slices with at least one lesion voxel in the crop window;
``lesion+N``   lesion slices plus ``N`` other slices per subject drawn (seeded)
               from the brain z-range; a quick-training option (demo).

Neither Keras nor TensorFlow is imported.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re

import h5py
import numpy as np

from clci_keras.data.constants import ATLAS_SHAPE, CACHED_PIXEL_BYTES, DEFAULT_CROP, SLICES_PER_SUBJECT
from clci_keras.data.h5links import check_self_contained
from clci_keras.data.preprocess import read_subjects, subject_table  # subject_table: re-exported here
from clci_keras.data.slicing import get_crop
from clci_keras.data.stream import StreamingReader, wrap_around_batches
from clci_keras.hardware import memory_total_bytes
from clci_keras.process import keep_freed_memory  # noqa: F401  (re-exported: training, tests)

_SPEC = re.compile(r"^(all|brain|lesion)(?:\+(\d+))?$")

#: The memory budget where the machine's physical memory is unknown
#: (:func:`default_memory_budget`): 2 GiB, ~55 subjects at 224 x 176.
MEMORY_BUDGET = 2 * 1024**3


# ---------------------------------------------------------------------------
# The file's table of contents (subject_table: clci_keras.data.preprocess, re-exported)
# ---------------------------------------------------------------------------
def dataset_info(h5_path):
    """Provenance of the HDF5 file: its attributes, slice count and a ``synthetic`` flag."""
    info = {"h5": os.path.abspath(h5_path)}
    with h5py.File(h5_path, "r") as f:
        check_self_contained(f, h5_path)
        for k, v in f.attrs.items():
            if isinstance(v, bytes):
                v = v.decode("utf8", "replace")
            elif isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, np.generic):
                v = v.item()
            info[k] = v
        if "data" in f:
            info["slices"] = int(f["data"].shape[0])
    synthetic = info.get("synthetic")
    if synthetic is None:  # files written before the attribute existed
        text = " ".join(str(info.get(k, "")) for k in ("source", "dataset", "layout", "description"))
        synthetic = "synthetic" in text.lower()
    info["synthetic"] = bool(synthetic)
    return info


@functools.lru_cache(maxsize=1)
def _brain_z():
    from nilearn.datasets import load_mni152_brain_mask

    mask = np.asarray(load_mni152_brain_mask(resolution=1).get_fdata()) > 0
    if mask.shape != ATLAS_SHAPE:
        raise ValueError(f"nilearn's MNI152 1 mm brain mask has shape {mask.shape}, not {ATLAS_SHAPE}")
    return tuple(int(z) for z in np.flatnonzero(mask.any(axis=(0, 1))))


def brain_slice_indices(count=SLICES_PER_SUBJECT):
    """Axial slice indices (z, below ``count``) that contain brain on the ATLAS grid: 155 of 189.

    From the MNI152 1 mm brain mask shipped with nilearn (no download), not
    from the image: ATLAS T1 images keep the skull, so their non-zero voxels
    cover almost every slice.
    """
    return tuple(z for z in _brain_z() if z < int(count))


def brain_z_range():
    """``(first, last + 1)`` of :func:`brain_slice_indices` (a contiguous range)."""
    z = _brain_z()
    return z[0], z[-1] + 1


# ---------------------------------------------------------------------------
# Slice selection
# ---------------------------------------------------------------------------
def parse_slice_spec(spec):
    """``'lesion+20'`` -> ``('lesion', 20)``; ``ValueError`` for anything else."""
    m = _SPEC.match(str(spec).strip().lower())
    if not m or (m.group(2) is not None and m.group(1) != "lesion"):
        raise ValueError(
            f"unknown slice selection {spec!r}; use 'all', 'brain', 'lesion' or 'lesion+N'"
        )
    return m.group(1), int(m.group(2) or 0)


def select_slices(h5_path, subjects, spec="all", crop=DEFAULT_CROP, seed=0):
    """Global slice indices (sorted per subject, subjects in the given order).

    Args:
        h5_path: HDF5 file from ``clci-keras prep``.
        subjects: subject indices (file order), e.g. a split's ``"train"``.
        spec: ``all``, ``brain``, ``lesion`` or ``lesion+N`` (module docstring).
        crop: crop window; lesion slices are judged inside it.
        seed: seed of the ``+N`` draw.
    """
    kind, extra = parse_slice_spec(spec)
    table = subject_table(h5_path)
    rows, cols = get_crop(crop)
    rng = np.random.default_rng(seed)
    out = []
    with h5py.File(h5_path, "r") as f:
        check_self_contained(f, h5_path)
        for s in subjects:
            off, count = _lookup(table, s, h5_path)
            local = np.arange(count)
            if kind == "brain" or extra:
                brain = np.asarray(brain_slice_indices(count), dtype=int)
            if kind == "brain":
                local = brain
            elif kind == "lesion":
                lab = f["label"][off : off + count, rows, cols]
                lesion = np.flatnonzero(lab.reshape(count, -1).any(axis=1))
                others = np.setdiff1d(brain, lesion) if extra else np.array([], int)
                pick = rng.choice(others, size=min(extra, others.size), replace=False) if extra else []
                local = np.union1d(lesion, np.asarray(pick, dtype=int))
            out.append(off + local)
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def _lookup(table, s, h5_path):
    if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
        raise ValueError(f"subjects must be integer subject indices, got {s!r}")
    if int(s) not in table:
        raise ValueError(f"{h5_path}: no subject with index {s!r} (the file has {len(table)})")
    return table[int(s)]


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------
class SliceReader:
    """Cropped ``(x, y)`` slices of the HDF5 file by global slice index.

    ``x`` is float32 ``(n, H, W, 1)`` (the stored, already normalised
    intensities) and ``y`` float32 ``(n, H, W, 1)`` in {0, 1}.

    Args:
        h5_path: HDF5 file from ``clci-keras prep``.
        crop: crop window (``"clci"``, ``"xnet"``, ``"r0:r1,c0:c1"`` or ``None``).
        in_memory: ``False`` reads every batch from the file (low memory);
            ``True`` reads ``subjects`` into memory once, one contiguous block
            per subject; ``"auto"`` does so when they fit the memory budget
            (:func:`fits_in_memory`: half the physical memory, the rule of
            :func:`plan_input`).
        subjects: the subjects kept in memory (default: all); reading a slice
            of another subject is an error in memory mode.
    """

    def __init__(self, h5_path, crop=DEFAULT_CROP, in_memory=False, subjects=None):
        self.h5_path = os.fspath(h5_path)
        self.rows, self.cols = get_crop(crop)
        self._file = None
        self._mem = None
        if in_memory not in (True, False, "auto"):
            raise ValueError(f"in_memory must be True, False or 'auto', got {in_memory!r}")
        if in_memory:
            table = subject_table(self.h5_path)
            chosen = list(table) if subjects is None else [int(s) for s in subjects]
            blocks = [_lookup(table, s, self.h5_path) for s in chosen]
            h, w, _ = self.shape
            nbytes = sum(c for _, c in blocks) * h * w * CACHED_PIXEL_BYTES
            if in_memory is True or fits_in_memory(nbytes):
                self._load(blocks)

    @property
    def in_memory(self):
        return self._mem is not None

    @property
    def file(self):
        if self._file is None:
            import h5py

            f = h5py.File(self.h5_path, "r")
            try:
                check_self_contained(f, self.h5_path)
            except BaseException:
                f.close()
                raise
            self._file = f
            for key in ("data", "label"):
                if key not in self._file:
                    raise ValueError(f"{self.h5_path}: HDF5 file has no dataset {key!r}")
        return self._file

    @property
    def shape(self):
        """``(H, W, 1)`` of the slices this reader returns."""
        return (self.rows.stop - self.rows.start, self.cols.stop - self.cols.start, 1)

    def _load(self, blocks):
        h, w, _ = self.shape
        total = sum(c for _, c in blocks)
        x = np.empty((total, h, w), np.float32)
        y = np.empty((total, h, w), np.uint8)
        position = {}  # global slice index -> row in memory
        pos = 0
        for off, count in blocks:
            with self._naming(np.arange(off, off + count)):
                x[pos : pos + count] = self.file["data"][off : off + count, self.rows, self.cols]
                y[pos : pos + count] = self.file["label"][off : off + count, self.rows, self.cols] > 0
            position.update(zip(range(off, off + count), range(pos, pos + count)))
            pos += count
        self._mem = (x, y, position)
        self.close()

    def read(self, indices):
        """Slices ``indices`` (global, any order, repeats allowed) as ``(x, y)``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self._mem is not None:
            x_mem, y_mem, position = self._mem
            try:
                rows = np.fromiter((position[int(i)] for i in idx), np.int64, idx.size)
            except KeyError as e:
                raise ValueError(f"{self.h5_path}: slice {e.args[0]} is not among the subjects "
                                 f"read into memory") from None
            x, y = x_mem[rows], y_mem[rows]
        else:
            # h5py wants increasing, unique indices: read those, then restore the order.
            uniq, inverse = np.unique(idx, return_inverse=True)
            with self._naming(uniq):
                x = self.file["data"][uniq, self.rows, self.cols][inverse]
                y = self.file["label"][uniq, self.rows, self.cols][inverse]
        return x[..., None].astype(np.float32), (y[..., None] > 0).astype(np.float32)

    @contextlib.contextmanager
    def _naming(self, indices):
        """Re-raise a failed read of the file (a corrupt chunk) naming the file, subjects and slices."""
        try:
            yield
        except OSError as e:
            reason = " ".join(str(e).split())
            raise OSError(f"{self.h5_path}: cannot read {describe_slices(self.h5_path, indices)} ({reason}); "
                          "the file is damaged: run `clci-keras prep` again") from e

    def read_subject(self, index):
        """All slices of subject ``index``: ``(x, y)`` of shape ``(count, H, W, 1)``."""
        off, count = _lookup(subject_table(self.h5_path), index, self.h5_path)
        return self.read(np.arange(off, off + count))

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def describe_slices(h5_path, indices):
    """``"subject ID (index I) slices A..B; ..."`` for the subjects that hold global slice ``indices``."""
    idx = np.unique(np.asarray(indices, dtype=np.int64))
    parts = []
    for s in read_subjects(h5_path):
        off, count = int(s["offset"]), int(s["count"])
        mine = idx[(idx >= off) & (idx < off + count)] - off
        if mine.size:
            parts.append(f"subject {s['subject_id']} (index {s['index']}) slices {mine.min()}..{mine.max()}")
    return "; ".join(parts) or f"slices {idx.min()}..{idx.max()}"


def load_subject_slices(h5_path, index, crop=DEFAULT_CROP, channel_axis=True):
    """All slices of one patient: ``(x, y)`` float32, ``y`` in {0, 1}.

    Shape ``(189, 224, 176, 1)`` for the "clci" crop; no channel axis if
    ``channel_axis`` is False; ``crop=None`` gives the full 233 x 197 slices.
    """
    with SliceReader(h5_path, crop) as reader:
        x, y = reader.read_subject(index)
    if not channel_axis:
        x, y = x[..., 0], y[..., 0]
    return x, y


# ---------------------------------------------------------------------------
# Epochs: the training walk
# ---------------------------------------------------------------------------
def epoch_permutation(n, seed, epoch):
    """The slice order of pass ``epoch`` over the slices: a permutation of ``range(n)`` drawn from ``(seed, epoch)``."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def steps_for(n_slices, batch_size):
    """Batches per epoch: ``max(1, n // batch)`` (X-Net's ``steps_per_epoch``)."""
    return max(1, int(n_slices) // int(batch_size))


def iter_batches(indices, batch_size, seed=0, first_batch=0):
    """X-Net's training walk, from batch ``first_batch`` on, without end.

    The slices are walked in a shuffled order; at the end of the list the walk
    wraps around to a fresh shuffle, so a batch can straddle two passes and no
    slice is dropped at an epoch boundary (X-Net's ``train_data_generator``).
    Pass ``p``'s order is :func:`epoch_permutation` ``(n, seed, p)``, so batch
    ``k`` depends on ``(seed, k)`` alone and a resumed run replays exactly.
    (The walk itself is :func:`clci_keras.data.stream.wrap_around_batches`,
    shared with the streamed order.)
    """
    indices = np.asarray(indices, dtype=np.int64)
    n, b = indices.size, int(batch_size)
    if n == 0:
        raise ValueError("no training slices to walk")
    if b < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    for batch, _ in wrap_around_batches(n, b, first_batch, lambda p: indices[epoch_permutation(n, seed, p)]):
        yield batch


def batch_indices(indices, batch_size, seed=0, first_batch=0, n_batches=1):
    """Batches ``first_batch .. first_batch + n_batches - 1`` of :func:`iter_batches`, as a 2-D array."""
    it = iter_batches(indices, batch_size, seed, first_batch)
    return np.stack([next(it) for _ in range(int(n_batches))]) if n_batches else np.zeros((0, int(batch_size)), np.int64)


# ---------------------------------------------------------------------------
# In memory or streamed: the input plan
# ---------------------------------------------------------------------------
#: most subjects a streaming window shuffles across (memory: 3 windows are cached)
MAX_BUFFER_SUBJECTS = 32
INPUT_MODES = ("auto", "memory", "stream")


def default_memory_budget():
    """The memory budget of every ``"auto"`` choice, in bytes: half the machine's physical memory.

    :func:`clci_keras.hardware.memory_total_bytes` halved; :data:`MEMORY_BUDGET`
    where it is unknown. :func:`plan_input` (``max_memory_gb=None``) and
    ``SliceReader(in_memory="auto")`` both use it (:func:`fits_in_memory`).
    """
    total = memory_total_bytes()
    return total // 2 if total else MEMORY_BUDGET


def fits_in_memory(nbytes, budget=None):
    """Whether ``nbytes`` of slices are held in memory: at most ``budget`` (default
    :func:`default_memory_budget`). The one ``"auto"`` rule of :func:`plan_input`
    and :class:`SliceReader`."""
    return int(nbytes) <= (default_memory_budget() if budget is None else int(budget))


def plan_input(h5_path, subjects, crop=DEFAULT_CROP, mode="auto", max_memory_gb=None, buffer_subjects=None):
    """How training reads ``subjects``: in memory (X-Net's global shuffle) or streamed.

    ``mode="auto"`` keeps the subjects in memory when they fit the budget
    (``max_memory_gb``; default: half the physical memory) and streams them
    otherwise. Streaming caches three windows of ``buffer_subjects``
    subjects; by default the largest window (at most
    :data:`MAX_BUFFER_SUBJECTS`) whose cache takes half the budget.

    Returns a JSON-able dict: ``mode`` (``memory`` or ``stream``), ``bytes``
    (the subjects in memory), ``budget_bytes``, ``subject_bytes``,
    ``buffer_subjects`` (stream only).
    """
    if mode not in INPUT_MODES:
        raise ValueError(f"input mode must be one of {INPUT_MODES}, got {mode!r}")
    if max_memory_gb is not None and not float(max_memory_gb) > 0:
        raise ValueError(f"max_memory_gb must be > 0, got {max_memory_gb!r}")
    if buffer_subjects is not None and (isinstance(buffer_subjects, bool) or int(buffer_subjects) < 1):
        raise ValueError(f"buffer_subjects must be >= 1, got {buffer_subjects!r}")
    table = subject_table(h5_path)
    rows, cols = get_crop(crop)
    pixel_bytes = (rows.stop - rows.start) * (cols.stop - cols.start) * CACHED_PIXEL_BYTES
    counts = [_lookup(table, int(s), h5_path)[1] for s in subjects]
    subject_bytes = max(counts, default=SLICES_PER_SUBJECT) * pixel_bytes
    need = sum(counts) * pixel_bytes
    budget = int(float(max_memory_gb) * 1024**3) if max_memory_gb is not None else default_memory_budget()
    plan = {"mode": mode, "bytes": int(need), "budget_bytes": budget, "subject_bytes": int(subject_bytes)}
    if mode == "auto":
        plan["mode"] = "memory" if fits_in_memory(need, budget) else "stream"
    if plan["mode"] == "stream":
        fit = budget // 2 // (3 * subject_bytes)
        plan["buffer_subjects"] = int(buffer_subjects or max(1, min(MAX_BUFFER_SUBJECTS, fit)))
    return plan


def open_reader(h5_path, crop, subjects, plan, workers=None):
    """The reader of an input plan (:func:`plan_input`): a :class:`SliceReader` with
    ``subjects`` in memory, or a :class:`clci_keras.data.stream.StreamingReader`."""
    if plan["mode"] == "memory":
        return SliceReader(h5_path, crop, in_memory=True, subjects=subjects)

    if workers is None:
        workers = max(1, min(4, os.cpu_count() or 1))
    b = int(plan["buffer_subjects"])
    return StreamingReader(h5_path, crop, buffer_subjects=b, workers=workers)
