"""Slice selection and slice-index ``tf.data`` pipelines over the HDF5 file.

The HDF5 file (``clci-keras prep``) stores 189 axial slices per subject,
patient-major. Training reads slices by **global index** so that a run can

* use a subset of each subject's slices (``slices=`` spec, below), and
* replay exactly the same batches after a restart: the order of epoch ``e``
  is a fixed permutation drawn from ``(seed, e)``, independent of how many
  epochs this process has already run.

Slice specs (:func:`select_slices`):

``all``        every slice of every subject (the original protocol);
``brain``      the axial slices inside the MNI152 brain mask's z-range
               (155 of 189; the others are background in MNI space);
``lesion``     slices with at least one lesion voxel in the crop window;
``lesion+N``   lesion slices plus ``N`` other slices per subject drawn (seeded)
               from the brain z-range; a quick-training option (demo).
"""
from __future__ import annotations

import functools
import re

import h5py
import numpy as np

_SPEC = re.compile(r"^(all|brain|lesion)(?:\+(\d+))?$")


def parse_slice_spec(spec):
    """``'lesion+20'`` -> ``('lesion', 20)``; ``ValueError`` for anything else."""
    m = _SPEC.match(str(spec).strip().lower())
    if not m or (m.group(2) is not None and m.group(1) != "lesion"):
        raise ValueError(
            f"unknown slice selection {spec!r}; use 'all', 'brain', 'lesion' or 'lesion+N'"
        )
    return m.group(1), int(m.group(2) or 0)


@functools.lru_cache(maxsize=1)
def brain_z_range():
    """``(first, last + 1)`` axial indices covered by nilearn's MNI152 1 mm brain mask."""
    from nilearn.datasets import load_mni152_brain_mask

    mask = np.asarray(load_mni152_brain_mask(resolution=1).get_fdata()) > 0
    z = np.flatnonzero(mask.any(axis=(0, 1)))
    return int(z[0]), int(z[-1]) + 1


def subject_table(h5_path):
    """``{subject index: (offset, count)}`` of the HDF5 file (via ``read_subjects``)."""
    from clci_keras.data import read_subjects

    return {int(s["index"]): (int(s["offset"]), int(s["count"])) for s in read_subjects(h5_path)}


def _crop(crop):
    """``(row slice, col slice)`` of a named crop or of an explicit ``'r0:r1,c0:c1'`` window."""
    from clci_keras.data.slicing import get_crop

    return get_crop(crop)


def select_slices(h5_path, subjects, spec="all", crop="clci", seed=0):
    """Global slice indices (sorted) of ``subjects`` chosen by ``spec``.

    Args:
        h5_path: HDF5 file from ``clci-keras prep``.
        subjects: subject indices (file order), e.g. a split's ``"train"``.
        spec: ``all``, ``brain``, ``lesion`` or ``lesion+N`` (module docstring).
        crop: crop window name; lesion slices are judged inside it.
        seed: seed of the ``+N`` draw.
    """
    kind, extra = parse_slice_spec(spec)
    table = subject_table(h5_path)
    rows, cols = _crop(crop)
    rng = np.random.default_rng(seed)
    out = []
    with h5py.File(h5_path, "r") as f:
        for s in subjects:
            if int(s) not in table:
                raise ValueError(f"{h5_path}: no subject with index {s!r} (file has {len(table)})")
            off, count = table[int(s)]
            local = np.arange(count)
            if kind == "brain" or extra:
                z0, z1 = brain_z_range()
                brain = local[(local >= z0) & (local < min(z1, count))]
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


class SliceReader:
    """Reads cropped ``(x, y)`` batches by global slice index from the HDF5 file.

    ``x`` is float32 ``(n, H, W, 1)`` (the stored, already normalised
    intensities) and ``y`` float32 ``(n, H, W, 1)`` in {0, 1}.
    """

    def __init__(self, h5_path, crop="clci"):
        self.h5_path = str(h5_path)
        self.rows, self.cols = _crop(crop)
        self._file = None

    @property
    def file(self):
        if self._file is None:
            self._file = h5py.File(self.h5_path, "r")
            for key in ("data", "label"):
                if key not in self._file:
                    raise ValueError(f"{self.h5_path}: HDF5 file has no dataset {key!r}")
        return self._file

    @property
    def shape(self):
        r, c = self.rows, self.cols
        return (r.stop - r.start, c.stop - c.start, 1)

    def read(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        uniq, inverse = np.unique(sorted_idx, return_inverse=True)
        x = self.file["data"][uniq, self.rows, self.cols][inverse]
        y = self.file["label"][uniq, self.rows, self.cols][inverse]
        back = np.empty_like(order)
        back[order] = np.arange(order.size)
        x, y = x[back], y[back]
        return (x[..., None].astype(np.float32), (y[..., None] > 0).astype(np.float32))

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def epoch_permutation(n, seed, epoch):
    """The slice order of ``epoch``: a permutation of ``range(n)`` drawn from ``(seed, epoch)``."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def steps_for(n_slices, batch_size):
    """Batches per epoch: ``max(1, n // batch)`` (X-Net's ``steps_per_epoch``)."""
    return max(1, int(n_slices) // int(batch_size))


def train_dataset(reader, indices, batch_size, seed=0, first_epoch=0, last_epoch=1):
    """Shuffled batches for epochs ``first_epoch .. last_epoch-1``, epoch after epoch.

    Each epoch yields :func:`steps_for` full batches in the order of
    :func:`epoch_permutation`, so a resumed run sees the same batches as an
    uninterrupted one.
    """
    import tensorflow as tf

    indices = np.asarray(indices, dtype=np.int64)
    steps = steps_for(indices.size, batch_size)
    order = [
        np.resize(indices[epoch_permutation(indices.size, seed, e)], steps * batch_size)
        for e in range(first_epoch, last_epoch)
    ]
    flat = np.concatenate(order) if order else np.zeros(0, np.int64)
    return _batched(tf, reader, flat.reshape(-1, batch_size))


def eval_dataset(reader, indices, batch_size):
    """Ordered batches of ``indices`` (last one partial), one pass."""
    import tensorflow as tf

    indices = np.asarray(indices, dtype=np.int64)
    batches = [indices[i : i + batch_size] for i in range(0, indices.size, batch_size)]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(batches), output_signature=tf.TensorSpec((None,), tf.int64)
    )
    return _map_read(tf, reader, ds)


def _batched(tf, reader, batches):
    ds = tf.data.Dataset.from_tensor_slices(batches)
    return _map_read(tf, reader, ds)


def _map_read(tf, reader, ds):
    shape = reader.shape

    def read(idx):
        x, y = tf.numpy_function(reader.read, [idx], [tf.float32, tf.float32], stateful=False)
        x.set_shape((None, *shape))
        y.set_shape((None, *shape))
        return x, y

    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.map(read).prefetch(2).with_options(options)
