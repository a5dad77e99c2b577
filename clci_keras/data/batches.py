"""Training and evaluation batches for ``fit``, the same on every Keras backend.

One batch source for in-memory and streamed data. A source is random access:
``source[k]`` is batch ``k`` as ``(x, y)`` float32 arrays ``(n, H, W, 1)``, and
``len(source)`` the number of batches.

* :class:`TrainBatches` — the training walk (X-Net's wrap-around walk over a
  global shuffle, :func:`clci_keras.data.reader.iter_batches`; with a
  streaming reader, the same walk over a shuffle within windows of subjects,
  :func:`clci_keras.data.stream.iter_stream_batches`). Batch ``k`` of a run
  depends on ``(seed, first_batch + k)`` alone, so a resumed run replays the
  batches an uninterrupted run would have seen, on every backend.
* :class:`EvalBatches` — ordered batches, one pass, the last one partial.

:func:`fit_input` hands a source to ``fit`` / ``evaluate``: on the TensorFlow
backend as a ``tf.data`` pipeline (one ``numpy_function`` per batch, two
batches prefetched; measurements: benchmarks/RESULTS.md, "Data: streaming
input at scale"), on JAX and PyTorch as a :class:`SourceDataset` (a :class:`keras.utils.PyDataset`)
whose thread reads ahead. The sources use neither Keras nor TensorFlow.

``shard=(i, n)`` keeps part ``i`` of ``n`` equal parts of every batch: the
process-local part of a global batch under multi-process data parallelism
(:mod:`clci_keras.training.distribute`). ``micro_batch=m`` hands each training
batch over as ``batch_size / m`` consecutive micro-batches of ``m`` slices (the
trainer accumulates their gradients into one update per batch).
"""
from __future__ import annotations

import threading

import keras
import numpy as np

from clci_keras.data.reader import epoch_permutation, steps_for
from clci_keras.data.stream import iter_stream_batches
from clci_keras.process import keep_freed_memory


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    return int(batch_size)


def _check_micro_batch(micro_batch, batch_size):
    """The number of micro-batches per batch (1 without ``micro_batch``)."""
    if micro_batch is None:
        return 1
    if isinstance(micro_batch, bool) or int(micro_batch) < 1 or batch_size % int(micro_batch):
        raise ValueError(f"micro_batch must be a positive divisor of the batch size {batch_size}, "
                         f"got {micro_batch!r}")
    return batch_size // int(micro_batch)


def _check_shard(shard, batch_size):
    if shard is None:
        return None
    i, n = (int(v) for v in shard)
    if not 0 <= i < n or batch_size % n:
        raise ValueError(f"shard {shard!r}: part i of n needs 0 <= i < n and n dividing the batch size "
                         f"{batch_size}")
    return i, n


def _groups(reader, indices):
    """``(subjects, [their slice indices])``, subjects in order of first appearance."""
    subj = np.asarray(reader.subject_of(indices))
    subjects = list(dict.fromkeys(subj.tolist()))
    return subjects, [indices[subj == s] for s in subjects]


class TrainBatches:
    """Batches ``first_batch .. first_batch + n_batches - 1`` of the training walk.

    ``n_batches`` defaults to one epoch (:func:`clci_keras.data.reader.steps_for`).
    Epoch ``e`` of a run with ``s`` steps per epoch is batches ``e*s .. (e+1)*s - 1``.
    In memory any batch is computed directly; a streamed walk is followed in
    order (a reader loads each window of subjects ahead of use), so asking for
    an earlier batch restarts it and a later one advances it.

    With ``micro_batch`` item ``j`` is micro-batch ``j % p`` of batch ``j // p``
    (``p = batch_size / micro_batch`` items per batch, :attr:`parts`): the same
    slices in the same order, ``p`` times as many items.
    """

    def __init__(self, reader, indices, batch_size, seed=0, first_batch=0, n_batches=None, shard=None,
                 micro_batch=None):
        self.batch_size = _check_batch_size(batch_size)
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.size == 0:
            raise ValueError("no training slices to walk")
        self.reader, self.seed, self.first_batch = reader, int(seed), int(first_batch)
        self.n_batches = steps_for(self.indices.size, batch_size) if n_batches is None else int(n_batches)
        self.shard = _check_shard(shard, self.batch_size)
        share = self.batch_size // (self.shard[1] if self.shard else 1)  # this process's slices of a batch
        self.parts = _check_micro_batch(micro_batch, share)
        #: slices per item (a process's share of a batch, or of a micro-batch)
        self.rows = share // self.parts
        self.streaming = bool(getattr(reader, "streaming", False))
        self._lock = threading.RLock()  # the streamed walk's state, and a streaming reader's reads
        self._walk, self._next, self._orders = None, None, {}
        self._last = (None, None)  # (batch, its slices): a batch's micro-batches are read one by one
        if self.streaming:
            self._subjects, self._groups = _groups(reader, self.indices)

    def __len__(self):
        return self.n_batches * self.parts

    def _order(self, p):
        """The slice order of pass ``p`` (the last few kept)."""
        order = self._orders.get(p)
        if order is None:
            order = self.indices[epoch_permutation(self.indices.size, self.seed, p)]
            if len(self._orders) >= 4:
                self._orders.pop(next(iter(self._orders)), None)
            self._orders[p] = order
        return order

    def batch_indices(self, k):
        """The global slice indices of batch ``k`` (before sharding)."""
        k = int(k)
        if not 0 <= k < self.n_batches:
            raise IndexError(f"batch {k} of {self.n_batches}")
        if self.streaming:
            return self._streamed(k)
        n, b = self.indices.size, self.batch_size
        p, at = divmod((self.first_batch + k) * b, n)
        parts, need = [], b
        while need:  # a batch may straddle two (or, for tiny inputs, more) passes
            take = min(need, n - at)
            parts.append(self._order(p)[at:at + take])
            need, p, at = need - take, p + 1, 0
        return np.concatenate(parts)

    def _streamed(self, k):
        if self._next is None or k < self._next:
            self._walk = iter_stream_batches(
                self._groups, self.batch_size, self.seed, self.first_batch + k, self.reader.buffer_subjects,
                on_window=lambda m: self.reader.prefetch([self._subjects[i] for i in m]))
            self._next = k
        while self._next < k:  # skipped batches: only their windows are announced
            next(self._walk)
            self._next += 1
        self._next += 1
        return next(self._walk)

    def __getitem__(self, j):
        k, part = divmod(int(j), self.parts)
        if self.streaming:
            with self._lock:
                return self.reader.read(self._item(k, part))
        return self.reader.read(self._item(k, part))

    def _item(self, k, part):
        """The slices of micro-batch ``part`` of this process's share of batch ``k``."""
        if self.parts == 1:
            idx = self.batch_indices(k)
        else:  # a streamed walk must not be restarted for each micro-batch
            with self._lock:
                if self._last[0] != k:
                    self._last = (k, self.batch_indices(k))
                idx = self._last[1]
        if self.shard is not None:
            i, n = self.shard
            step = idx.size // n
            idx = idx[i * step:(i + 1) * step]
        return idx[part * self.rows:(part + 1) * self.rows]


class EvalBatches:
    """Ordered batches of ``indices`` (the last one partial), one pass.

    A streaming reader loads the next ``reader.buffer_subjects`` subjects
    ahead of the batch that first needs them.
    """

    def __init__(self, reader, indices, batch_size, shard=None):
        b = _check_batch_size(batch_size)
        indices = np.asarray(indices, dtype=np.int64)
        self.reader = reader
        self.batches = [indices[i:i + b] for i in range(0, indices.size, b)]
        self.shard = _check_shard(shard, b)
        if self.shard is not None and indices.size % b:
            raise ValueError(f"sharded evaluation needs whole batches: {indices.size} slices, batch {b}")
        self.streaming = bool(getattr(reader, "streaming", False))
        self._lock = threading.Lock()
        if self.streaming:
            order = list(dict.fromkeys(reader.subject_of(indices)))  # subjects in visiting order
            self._order, self._where = order, {s: k for k, s in enumerate(order)}
            self._window = max(1, int(reader.buffer_subjects))
            self._done = -1  # subjects up to this position were asked for

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        k = int(k)
        if not 0 <= k < len(self.batches):
            raise IndexError(f"batch {k} of {len(self.batches)}")
        idx = self.batches[k]
        if self.shard is not None:
            i, n = self.shard
            step = idx.size // n
            idx = idx[i * step:(i + 1) * step]
        if not self.streaming:
            return self.reader.read(idx)
        with self._lock:
            if k == 0:
                self._done = -1
            last = max(self._where[s] for s in self.reader.subject_of(self.batches[k]))
            if last + self._window > self._done:
                self.reader.prefetch(self._order[last:last + 2 * self._window])
                self._done = last + 2 * self._window - 1
            return self.reader.read(idx)


def fit_input(source, workers=2):
    """``source`` as ``fit`` / ``evaluate`` input on the current Keras backend.

    TensorFlow: a ``tf.data.Dataset`` (``range`` -> one stateful
    ``numpy_function`` per batch -> ``prefetch(2)``, auto-shard policy DATA
    for ``tf.distribute``). JAX and PyTorch: a :class:`SourceDataset` read
    ``workers`` batches ahead by one thread (``workers=1``: read in the
    training thread). Batches come in the source's order either way, from
    batch 0 at the first step.
    """
    keep_freed_memory()
    if keras.backend.backend() == "tensorflow":
        return _tf_dataset(source)
    return SourceDataset(source, workers=workers)


def _tf_dataset(source):
    import tensorflow as tf

    def read(k):
        # stateful: tf.data never runs it in parallel, so a streamed walk is followed in order
        x, y = tf.numpy_function(lambda i: source[int(i)], [k], [tf.float32, tf.float32], stateful=True)
        shape = tuple(source.reader.shape)
        fixed = getattr(source, "rows", None)  # training items have a fixed size
        x.set_shape((fixed, *shape))
        y.set_shape((fixed, *shape))
        return x, y

    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return tf.data.Dataset.range(len(source)).map(read).prefetch(2).with_options(options)


class SourceDataset(keras.utils.PyDataset):
    """A batch source as a Keras ``PyDataset``: ``ds[k]`` is ``source[k]``, read ahead by one thread.

    Batch ``k`` is always ``source[k]``, whatever was asked before. The
    read-ahead is this class's, not Keras's worker queue: before the first
    step ``fit`` reads one batch to build the model, then iterates again from
    batch 0, and Keras 3.15's queue went on serving from where the first read
    left it, so JAX and PyTorch trained on batches 1, 2, ... while TensorFlow's
    ``tf.data`` started at 0. Here a background thread reads up to
    ``workers`` batches ahead of the one asked for (``workers <= 1``: reads in
    the caller's thread), in increasing order, so that a streamed walk is
    followed as it runs. :meth:`close` stops it.
    """

    def __init__(self, source, workers=2):
        super().__init__(workers=1, use_multiprocessing=False)  # no Keras queue: see above
        self.source, self.ahead = source, max(0, int(workers))
        self._lock = threading.Lock()
        self._pending, self._pool = {}, None

    def __len__(self):
        return len(self.source)

    def __getitem__(self, k):
        k = int(k)
        if self.ahead <= 1:
            return self.source[k]
        with self._lock:
            future = self._pending.pop(k, None)
            for j in [j for j in self._pending if j < k]:
                self._pending.pop(j).cancel()
        batch = self.source[k] if future is None else future.result()
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clci-read-ahead")
            for j in range(k + 1, min(k + 1 + self.ahead, len(self.source))):
                if j not in self._pending:
                    self._pending[j] = self._pool.submit(self.source.__getitem__, j)
        return batch

    def close(self):
        """Drop the batches read ahead and stop the thread (before the reader closes)."""
        with self._lock:
            pending, pool, self._pending, self._pool = self._pending, self._pool, {}, None
        for future in pending.values():
            future.cancel()
        if pool is not None:
            pool.shutdown(wait=True)


def close_input(dataset):
    """Stop what :func:`fit_input` started for ``dataset`` (a :class:`SourceDataset`'s read-ahead)."""
    if isinstance(dataset, SourceDataset):
        dataset.close()


def train_dataset(reader, indices, batch_size, seed=0, first_batch=0, n_batches=None, shard=None, workers=2,
                  micro_batch=None):
    """:class:`TrainBatches` as ``fit`` input (:func:`fit_input`)."""
    return fit_input(TrainBatches(reader, indices, batch_size, seed, first_batch, n_batches, shard, micro_batch),
                     workers)


def eval_dataset(reader, indices, batch_size, shard=None, workers=2):
    """:class:`EvalBatches` as ``evaluate`` / validation input (:func:`fit_input`)."""
    return fit_input(EvalBatches(reader, indices, batch_size, shard), workers)
