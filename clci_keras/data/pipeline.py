"""tf.data input pipeline over the HDF5 slice file.

TensorFlow is imported inside the functions, so ``import clci_keras.data``
stays light.

Training mode reads the selected subjects into memory once (subject by
subject, each as one contiguous block of 189 slices, cropped on the way in):
``x`` float32 and ``y`` uint8, i.e. 189 * 224 * 176 * 5 B = 37 MB per subject
for the "clci" crop (41 MB for "xnet"); the 183 training subjects of a
5-fold split of ATLAS R1.1 take about 6.8 GB.  Batches are gathered from
these arrays by a shuffled index stream (``tf.data`` shuffle over all slices
of all selected subjects, reshuffled each epoch, seeded), which is how
X-Net's generator samples (global slice shuffle) but without one HDF5 read
per slice.  ``in_memory=False`` reads slices from the file instead (low
memory, much slower).

Evaluation mode yields whole patients in the given order (189 slices each,
no shuffle): from memory when the subjects fit in :data:`EVAL_MEMORY_BUDGET`
(read once, so repeated validation passes are fast), otherwise streamed one
subject at a time.

Shuffling is seeded (``seed`` is the shuffle op's seed), so a given seed
gives the same batches in every run with the same TensorFlow global-seed
state (``keras.utils.set_random_seed`` changes the stream, deterministically).
"""
from __future__ import annotations

import numpy as np

from clci_keras.data.constants import DEFAULT_CROP, SLICES_PER_SUBJECT
from clci_keras.data.slicing import crop_shape, get_crop

MODES = ("train", "eval")

#: In "eval" mode with ``in_memory=None``, subjects are cached in memory when
#: they take at most this many bytes (about 55 subjects at 224 x 176), else streamed.
EVAL_MEMORY_BUDGET = 2 * 1024**3


def _subject_table(h5_path, subjects):
    """[(index, offset, count)] for the selected subject indices (file order if None)."""
    from clci_keras.data.preprocess import read_subjects

    table = read_subjects(h5_path)
    if subjects is None:
        return [(s["index"], s["offset"], s["count"]) for s in table]
    if isinstance(subjects, (int, np.integer)):
        subjects = [subjects]
    out = []
    for i in subjects:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise ValueError(f"subjects must be integer subject indices, got {i!r}.")
        if not 0 <= int(i) < len(table):
            raise ValueError(f"Subject index {i} out of range: {h5_path} has {len(table)} subjects.")
        s = table[int(i)]
        out.append((s["index"], s["offset"], s["count"]))
    return out


def _read_block(f, offset, count, crop):
    rows, cols = get_crop(crop)
    x = f["data"][offset : offset + count, rows, cols]
    y = f["label"][offset : offset + count, rows, cols]
    return np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.uint8)


def load_subject_slices(h5_path, index, crop=DEFAULT_CROP, channel_axis=True):
    """All slices of one patient: ``(x, y)`` float32 arrays of shape
    (189, 224, 176, 1) for the "clci" crop (no channel axis if ``channel_axis``
    is False; ``crop=None`` gives full 233 x 197 slices).  ``y`` is 0/1."""
    import h5py

    (_, offset, count), = _subject_table(h5_path, [index])
    with h5py.File(h5_path, "r") as f:
        x, y = _read_block(f, offset, count, crop)
    y = y.astype(np.float32)
    if channel_axis:
        x, y = x[..., None], y[..., None]
    return x, y


def load_slices(h5_path, subjects=None, crop=DEFAULT_CROP):
    """Read the selected subjects into memory: x float32 (N, h, w), y uint8 (N, h, w)."""
    import h5py

    table = _subject_table(h5_path, subjects)
    h, w = crop_shape(crop)
    total = sum(c for _, _, c in table)
    x = np.empty((total, h, w), np.float32)
    y = np.empty((total, h, w), np.uint8)
    pos = 0
    with h5py.File(h5_path, "r") as f:
        for _, offset, count in table:
            x[pos : pos + count], y[pos : pos + count] = _read_block(f, offset, count, crop)
            pos += count
    return x, y


def num_batches(n_subjects, batch_size=8, drop_remainder=False, slices_per_subject=SLICES_PER_SUBJECT):
    """Batches in one pass over ``n_subjects`` subjects (or a list of them)."""
    if not isinstance(n_subjects, (int, np.integer)):
        n_subjects = len(n_subjects)
    n = int(n_subjects) * slices_per_subject
    return n // batch_size if drop_remainder else -(-n // batch_size)


def make_dataset(
    h5_path,
    subjects=None,
    mode="train",
    batch_size=8,
    crop=DEFAULT_CROP,
    seed=0,
    shuffle=None,
    repeat=False,
    in_memory=None,
    drop_remainder=False,
    prefetch=True,
):
    """``tf.data.Dataset`` of ``(x, y)`` batches from an HDF5 slice file.

    Args:
        h5_path: file written by :func:`clci_keras.data.prepare_h5` (or the
            original generator: then subjects are consecutive blocks of 189).
        subjects: subject indices (file order) to use; None = all.
        mode: "train" (shuffled slices) or "eval" (whole patients in order,
            189 slices each, never shuffled).
        batch_size: slices per batch.
        crop: "clci" (224 x 176), "xnet" (224 x 192), two slices, or None.
        seed: shuffle seed; the same seed gives the same batches.
        shuffle: shuffle slices; default True in "train", always False in "eval".
        repeat: repeat forever (then ``steps_per_epoch`` is needed).
        in_memory: read the selected subjects into memory first. Default:
            always for "train"; for "eval" when they need at most
            :data:`EVAL_MEMORY_BUDGET` (2 GiB, ~55 subjects), else they are
            streamed one subject at a time. See the module docstring.
        drop_remainder: drop the last incomplete batch.
        prefetch: add ``prefetch(AUTOTUNE)``.

    Returns:
        A dataset of ``x`` float32 (B, h, w, 1) and ``y`` float32 0/1 (B, h, w, 1).
    """
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}.")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    batch_size = int(batch_size)
    if shuffle is None:
        shuffle = mode == "train"
    if mode == "eval":
        shuffle = False
    h, w = crop_shape(crop)
    table = _subject_table(h5_path, subjects)
    if not table:
        raise ValueError(f"No subjects selected from {h5_path}.")
    if in_memory is None:
        needed = sum(c for _, _, c in table) * h * w * 5  # float32 image + uint8 label
        in_memory = mode == "train" or needed <= EVAL_MEMORY_BUDGET
    spec = (tf.TensorSpec((None, h, w, 1), tf.float32), tf.TensorSpec((None, h, w, 1), tf.float32))

    if in_memory:
        x_mem, y_mem = load_slices(h5_path, [t[0] for t in table], crop)
        n = len(x_mem)

        def gather(idx):
            return x_mem[idx][..., None], y_mem[idx][..., None].astype(np.float32)

        ds = tf.data.Dataset.range(n)
        if shuffle:
            ds = ds.shuffle(n, seed=int(seed), reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)

        def fetch(idx):
            x, y = tf.numpy_function(gather, [idx], (tf.float32, tf.float32), stateful=False)
            x.set_shape((None, h, w, 1))
            y.set_shape((None, h, w, 1))
            return x, y

        ds = ds.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    elif not shuffle:
        import h5py

        def subjects_gen():
            with h5py.File(h5_path, "r") as f:
                for _, offset, count in table:
                    x, y = _read_block(f, offset, count, crop)
                    yield x[..., None], y[..., None].astype(np.float32)

        ds = tf.data.Dataset.from_generator(subjects_gen, output_signature=spec)
        ds = ds.unbatch()
        if repeat:
            ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    else:  # shuffled slices read one by one from the file (low memory)
        import h5py

        index = np.concatenate([np.arange(o, o + c) for _, o, c in table]).astype(np.int64)
        rows, cols = get_crop(crop)
        state = {"epoch": 0}

        def slices_gen():
            perm = np.random.default_rng([int(seed), state["epoch"]]).permutation(index)
            state["epoch"] += 1
            with h5py.File(h5_path, "r") as f:
                dx, dy = f["data"], f["label"]
                for j in perm:
                    yield (dx[j, rows, cols][..., None].astype(np.float32),
                           dy[j, rows, cols][..., None].astype(np.float32))

        one = (tf.TensorSpec((h, w, 1), tf.float32), tf.TensorSpec((h, w, 1), tf.float32))
        ds = tf.data.Dataset.from_generator(slices_gen, output_signature=one)
        if repeat:
            ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if prefetch:
        ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds
