"""Streaming input: whole-subject reads in worker processes, a buffer of subjects in shared memory.

For data that does not fit the memory budget (ATLAS 2.0: 655 subjects,
123,795 slices, ~19.5 GB as float32), :class:`StreamingReader` keeps only a
cache of whole subjects. Each subject is loaded by a worker process in one
contiguous read and decoded on that worker's core:

* ``clci-keras prep`` writes one HDF5 chunk per slice, data and label chunks
  of slice ``i`` next to each other, slices in file order, so a subject's 189
  slices are one contiguous byte range of the file. A worker finds that range
  from the chunk index (read once, :func:`chunk_index`), reads it with one
  ``pread``, inflates each chunk (libdeflate through the ``deflate`` package
  when installed, zlib otherwise), undoes HDF5's byte shuffle and crops on
  the fly straight into a shared-memory slot. Files of another layout
  (contiguous, other filters, e.g. the original generator's output) are read
  by h5py in the worker instead: slower, same values.
* The slot pool holds ``cache_subjects`` subjects; batches are gathered
  from it by the parent. :meth:`StreamingReader.prefetch` starts loading
  subjects ahead of their use; least-recently-used subjects outside the
  protected (current and next) window are evicted.

The training order that goes with it, :func:`iter_stream_batches`, shuffles
within a *buffer* of subjects: pass ``p`` visits the subjects in a seeded
random order, ``buffer_subjects`` at a time, and shuffles the slices of each
window. Like :func:`clci_keras.data.reader.iter_batches` it walks without
end, wraps into the next pass (no slice dropped) and batch ``k`` depends on
``(seed, k, buffer_subjects)`` only, so a resumed run replays exactly: both
are :func:`wrap_around_batches` over their own pass orders. It is
*not* X-Net's order (a global shuffle of every slice, which in-memory
training keeps): a subject's slices are spread over one window of the pass,
not over the whole pass.
"""
from __future__ import annotations

import collections
import multiprocessing as mp
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import shared_memory

import h5py
import numpy as np

from clci_keras.data.constants import CACHED_PIXEL_BYTES, DEFAULT_CROP
from clci_keras.data.h5links import check_self_contained
from clci_keras.data.preprocess import subject_table
from clci_keras.data.slicing import get_crop
from clci_keras.process import die_with_parent, keep_freed_memory

_SHM_PREFIX = "clci_stream_"


# ---------------------------------------------------------------------------
# The walk: batches over endless passes
# ---------------------------------------------------------------------------
def wrap_around_batches(n, batch_size, first_batch, order_of):
    """Batches of ``batch_size`` slices over endless passes of ``n`` slices, from batch ``first_batch`` on.

    The walk of both training orders (:func:`clci_keras.data.reader.iter_batches`,
    X-Net's global shuffle, and :func:`iter_stream_batches`): pass ``p``
    visits ``order_of(p)`` (``n`` global slice indices); at its end the walk
    wraps around into pass ``p + 1``, so a batch can straddle two passes and
    no slice is dropped at a pass boundary (X-Net's ``train_data_generator``).
    Batch ``k`` starts at position ``k * batch_size`` of the passes laid end
    to end, so it depends on ``order_of`` and ``k`` alone and a resumed run
    replays exactly. ``order_of`` is called once per pass, when the walk
    enters it (the first one on the first ``next``).

    Args:
        n: slices per pass (>= 1).
        batch_size: slices per batch (>= 1).
        first_batch: index of the first batch yielded.
        order_of: ``p -> `` the 1-D integer array of pass ``p``'s slices in visiting order.

    Yields:
        ``(indices, at)``: the batch's slice indices and the position in the
        current pass after it (0 when the batch ended a pass: the next pass
        has then been entered).
    """
    b = int(batch_size)
    p, at = divmod(int(first_batch) * b, int(n))
    order = order_of(p)
    while True:
        parts, need = [], b
        while need:
            take = min(need, n - at)
            parts.append(order[at:at + take])
            at, need = at + take, need - take
            if at == n:
                p, at = p + 1, 0
                order = order_of(p)
        yield np.concatenate(parts), at


# ---------------------------------------------------------------------------
# The order: shuffled within windows of subjects
# ---------------------------------------------------------------------------
def stream_windows(groups, seed, p, buffer_subjects, shuffle=True):
    """Pass ``p`` as windows: a list of ``(subject positions, slice indices in visiting order)``.

    ``groups`` is a list of 1-D arrays of global slice indices, one per
    subject. With ``shuffle=False`` (evaluation) subjects and slices keep
    their order.
    """
    b = int(buffer_subjects)
    if b < 1:
        raise ValueError(f"buffer_subjects must be >= 1, got {buffer_subjects!r}")
    n = len(groups)
    order = np.random.default_rng([int(seed), int(p), 7]).permutation(n) if shuffle else np.arange(n)
    out = []
    for w, start in enumerate(range(0, n, b)):
        members = order[start:start + b]
        idx = np.concatenate([groups[i] for i in members]) if members.size else np.zeros(0, np.int64)
        if shuffle:
            idx = idx[np.random.default_rng([int(seed), int(p), 11, w]).permutation(idx.size)]
        out.append((members, idx.astype(np.int64)))
    return out


def iter_stream_batches(groups, batch_size, seed=0, first_batch=0, buffer_subjects=8, on_window=None,
                        shuffle=True):
    """Batches of the buffered-shuffle walk from batch ``first_batch`` on, without end.

    ``on_window(members)`` is called with the subject positions of the *next*
    window whenever the walk enters a window (and with the first two windows
    at the start), so that a reader can load them ahead of use.
    """
    b = int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    n = int(sum(len(g) for g in groups))
    if n == 0:
        raise ValueError("no slices to walk")

    def windows_of(p):
        ws = stream_windows(groups, seed, p, buffer_subjects, shuffle)
        ws = [w for w in ws if w[1].size]
        starts = np.cumsum([0] + [w[1].size for w in ws])
        return ws, starts

    p, at = divmod(int(first_batch) * b, n)
    ws, starts = windows_of(p)
    ws_pass = p  # the pass whose windows ws / starts are
    upcoming = (p, ws, starts)  # pass of the window after the current one, cached

    def next_window(p, wi, ws):
        """``(members)`` of the window after window ``wi`` of pass ``p``."""
        nonlocal upcoming
        if wi + 1 < len(ws):
            return ws[wi + 1][0]
        if upcoming[0] != p + 1:
            upcoming = (p + 1, *windows_of(p + 1))
        return upcoming[1][0][0]

    def order_of(q):
        """Pass ``q``'s slices in visiting order; entering a new pass resets the current window."""
        nonlocal ws, starts, ws_pass, current
        if q != ws_pass:
            ws, starts = (upcoming[1], upcoming[2]) if upcoming[0] == q else windows_of(q)
            ws_pass, current = q, -1
        return np.concatenate([w[1] for w in ws])

    current = int(np.searchsorted(starts, at, side="right") - 1)
    if on_window is not None:
        on_window(ws[current][0])
        on_window(next_window(p, current, ws))
    for batch, at in wrap_around_batches(n, b, first_batch, order_of):
        wi = int(np.searchsorted(starts, at, side="right") - 1)
        if wi != current:
            current = wi
            if on_window is not None:
                on_window(next_window(ws_pass, wi, ws))
        yield batch


# ---------------------------------------------------------------------------
# Worker side: one subject into one shared-memory slot
# ---------------------------------------------------------------------------
_W = {}  # per worker process: file, datasets, shared memory, geometry


def _inflate():
    try:
        import deflate

        return lambda raw, size: deflate.zlib_decompress(raw, size)
    except ImportError:  # optional accelerator missing: the standard library
        import zlib

        return lambda raw, size: zlib.decompress(raw)


def _worker_init(h5_path, shm_name, geometry, parent_pid):
    keep_freed_memory()  # each subject's read and inflated chunks reuse freed memory, no page faults

    # Exit when the training process is gone (killed): polling, not PR_SET_PDEATHSIG, whose
    # signal follows the *thread* that started the worker, and tf.data's threads come and go.
    die_with_parent(parent_pid, use_prctl=False)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    f = h5py.File(h5_path, "r")
    shm = shared_memory.SharedMemory(name=shm_name)
    _W.update(file=f, data=f["data"], label=f["label"], shm=shm, geometry=geometry,
              fd=os.open(h5_path, os.O_RDONLY), inflate=_inflate(),
              layouts=(_layout(f["data"]), _layout(f["label"])))


def _slot_views(buf, geometry, slot):
    slots, max_count, h, w = geometry
    xs = np.ndarray((slots, max_count, h, w), np.float32, buf, 0)
    ys = np.ndarray((slots, max_count, h, w), np.uint8, buf, xs.nbytes)
    return xs[slot], ys[slot]


def _layout(ds):
    """``(deflated, byte-shuffled)`` for prep's layout (one chunk per slice, deflate and/or
    shuffle only, little-endian float32 or 1-byte data); None for any other layout."""
    full = tuple(ds.shape[1:])
    if ds.chunks != (1, *full) or ds.scaleoffset is not None or ds.fletcher32:
        return None
    if ds.compression not in (None, "gzip") or ds.dtype not in (np.dtype("<f4"), np.dtype("u1")):
        return None
    return ds.compression == "gzip", bool(ds.shuffle) and ds.dtype.itemsize > 1


def chunk_index(ds):
    """``(byte offsets, sizes)`` of every slice's chunk (int64 arrays in slice order), from one
    pass over HDF5's chunk index (``chunk_iter``, not ``get_chunk_info_by_coord`` per chunk);
    None when the layout is not prep's or a chunk is missing or had a filter skipped (then h5py decodes)."""
    if _layout(ds) is None or not hasattr(ds.id, "chunk_iter"):
        return None
    n = ds.shape[0]
    offsets, sizes = np.full(n, -1, np.int64), np.zeros(n, np.int64)
    bad = []

    def visit(info):
        i = info.chunk_offset[0]
        offsets[i], sizes[i] = info.byte_offset, info.size
        if info.filter_mask:
            bad.append(i)

    ds.id.chunk_iter(visit)
    if bad or (offsets < 0).any():
        return None
    return offsets, sizes


def _read_range(start, size):
    """Bytes ``start .. start+size`` of the file, read into the worker's reused buffer."""
    buf = _W.get("buf")
    if buf is None or len(buf) < size:
        buf = _W["buf"] = bytearray(max(size, 2 * len(buf or b"")))
    view = memoryview(buf)[:size]
    got = 0
    while got < size:  # preadv may return short reads
        n = os.preadv(_W["fd"], [view[got:]], start + got)
        if n <= 0:
            raise OSError(f"{_W['file'].filename}: unexpected end of file at byte {start + got}")
        got += n
    return view


def _worker_load(slot, off, count, rows, cols, ranges=None):
    """Load slices ``off .. off+count-1`` cropped into ``slot``; returns the path taken.

    ``ranges``: ``(data ranges, label ranges)``, each ``[(byte offset, size)]`` per slice
    (:func:`chunk_index`), or None to let h5py decode.

    Raises:
        OSError: a failed read or a chunk that does not decode (a damaged file),
            naming the file and the slices.
    """
    try:
        return _load_slices(slot, off, count, rows, cols, ranges)
    except Exception as e:  # noqa: BLE001 - h5py, zlib and libdeflate each raise their own errors
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise OSError(f"{_W['file'].filename}: cannot read slices {off}..{off + count - 1} ({reason}); "
                      "the file is damaged: run `clci-keras prep` again") from None


def _load_slices(slot, off, count, rows, cols, ranges):
    """:func:`_worker_load`'s work."""
    x_slot, y_slot = _slot_views(_W["shm"].buf, _W["geometry"], slot)
    data, label = _W["data"], _W["label"]
    (r0, r1), (c0, c1) = rows, cols
    big_h, big_w = data.shape[1:]
    dl, ll = _W["layouts"]
    if ranges is None or dl is None or ll is None:  # any other layout: h5py decodes (same values, slower)
        x_slot[:count] = data[off:off + count, r0:r1, c0:c1]
        y_slot[:count] = label[off:off + count, r0:r1, c0:c1] > 0
        return "h5py"
    dr, lr = ranges
    start = min(dr[0][0], lr[0][0])
    end = max(max(o + n for o, n in dr), max(o + n for o, n in lr))
    view = _read_range(start, end - start)  # the subject: one contiguous read
    inflate, k = _W["inflate"], data.dtype.itemsize
    xb = x_slot.view(np.uint8).reshape(x_slot.shape[0], r1 - r0, c1 - c0, k)
    yb = y_slot.view(bool)
    for i in range(count):  # slice by slice: each inflated chunk is read once, while in cache
        (o, n), (lo, ln) = dr[i], lr[i]
        raw = view[o - start:o - start + n]
        a = np.frombuffer(inflate(raw, big_h * big_w * k) if dl[0] else raw, np.uint8)
        if dl[1]:  # undo the byte shuffle: byte plane j of a chunk holds byte j of every value
            planes = a.reshape(k, big_h, big_w)
            for j in range(k):
                xb[i, :, :, j] = planes[j, r0:r1, c0:c1]
        else:
            x_slot[i] = a.view(data.dtype).reshape(big_h, big_w)[r0:r1, c0:c1]
        raw = view[lo - start:lo - start + ln]
        lab = np.frombuffer(inflate(raw, big_h * big_w) if ll[0] else raw, np.uint8).reshape(big_h, big_w)
        np.greater(lab[r0:r1, c0:c1], 0, out=yb[i])
    return "chunks"


# ---------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------
def _aligned(shape, dtype=np.float32, align=64):
    """An empty array whose data starts on an ``align``-byte boundary: ``tf.numpy_function``
    wraps such arrays without copying them (TensorFlow copies misaligned ones)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.empty(n + align, np.uint8)
    start = -buf.ctypes.data % align
    return buf[start:start + n].view(dtype).reshape(shape)


class StreamingReader:
    """Cropped ``(x, y)`` slices by global index from a cache of whole subjects.

    Same :meth:`read` contract as :class:`clci_keras.data.reader.SliceReader`
    (float32 ``(n, H, W, 1)`` image and {0, 1} label); subjects are loaded by
    ``workers`` processes into ``cache_subjects`` shared-memory slots.

    Args:
        h5_path: HDF5 file from ``clci-keras prep``.
        crop: crop window (see :func:`clci_keras.data.slicing.get_crop`).
        buffer_subjects: subjects of one shuffling window (training) or one
            read-ahead window (evaluation).
        cache_subjects: slots in the cache (default: three windows, the
            one being read, the next one and the previous one's stragglers);
            memory ~ slots x 189 x H x W x :data:`~clci_keras.data.constants.CACHED_PIXEL_BYTES`.
        workers: reader processes (>= 1).
    """

    in_memory = False
    streaming = True

    def __init__(self, h5_path, crop=DEFAULT_CROP, buffer_subjects=8, cache_subjects=None, workers=2):
        self.h5_path = os.fspath(h5_path)
        if cache_subjects is None:
            cache_subjects = 3 * buffer_subjects if isinstance(buffer_subjects, (int, np.integer)) else 0
        for name, v in (("buffer_subjects", buffer_subjects), ("cache_subjects", cache_subjects),
                        ("workers", workers)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.rows, self.cols = get_crop(crop)
        self.table = subject_table(self.h5_path)
        self._offsets = np.array(sorted(off for off, _ in self.table.values()), np.int64)
        self._by_offset = {off: (s, count) for s, (off, count) in self.table.items()}
        h, w, _ = self.shape
        max_count = max(count for _, count in self.table.values())
        self.buffer_subjects = int(buffer_subjects)
        self.cache_subjects = int(min(cache_subjects, len(self.table)))
        self.geometry = (self.cache_subjects, max_count, h, w)
        nbytes = self.cache_subjects * max_count * h * w * CACHED_PIXEL_BYTES
        self._shm = shared_memory.SharedMemory(create=True, size=max(nbytes, 1),
                                               name=f"{_SHM_PREFIX}{os.getpid()}_{id(self):x}")
        self._x, self._y = (np.ndarray((self.cache_subjects, max_count, h, w), t, self._shm.buf, o)
                            for t, o in ((np.float32, 0), (np.uint8, self.cache_subjects * max_count * h * w * 4)))

        with h5py.File(self.h5_path, "r") as f:
            check_self_contained(f, self.h5_path)
            data_index, label_index = chunk_index(f["data"]), chunk_index(f["label"])
        self._chunks = (data_index, label_index) if data_index and label_index else None
        self._pool = ProcessPoolExecutor(
            int(workers), mp_context=mp.get_context("spawn"), initializer=_worker_init,
            initargs=(self.h5_path, self._shm.name, self.geometry, os.getpid()))
        self._lock = threading.Lock()
        self._slot = collections.OrderedDict()  # subject -> slot, least recently used first
        self._pending = {}  # subject -> Future
        self._free = list(range(self.cache_subjects))
        self._protected = set()
        self._pinned = collections.Counter()  # subjects being copied out by read()
        self.loads = collections.Counter()  # subject -> times loaded (tests, diagnostics)

    # geometry -------------------------------------------------------------
    @property
    def shape(self):
        return (self.rows.stop - self.rows.start, self.cols.stop - self.cols.start, 1)

    def subject_of(self, indices):
        """Subject index of each global slice index."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        pos = np.searchsorted(self._offsets, idx, side="right") - 1
        subj = []
        for i, p in zip(idx, pos):
            s, count = self._by_offset[int(self._offsets[max(p, 0)])]
            if p < 0 or i >= self._offsets[p] + count:
                raise ValueError(f"{self.h5_path}: slice index {int(i)} is outside every subject")
            subj.append(s)
        return subj

    # cache ----------------------------------------------------------------
    def _start(self, s):
        """Begin loading subject ``s`` (lock held); False when no slot can be freed."""
        if s in self._slot or s in self._pending:
            return True
        for t, fut in list(self._pending.items()):  # finished loads become cache entries
            if fut.done() and fut.exception() is None:
                del self._pending[t]
                self._slot[t] = fut.slot
        if not self._free:
            victim = next((v for v in self._slot if v not in self._protected and v not in self._pinned), None)
            if victim is None:
                return False
            self._free.append(self._slot.pop(victim))
        slot = self._free.pop()
        off, count = self.table[s]
        ranges = None
        if self._chunks is not None:
            (do, ds), (lo, ls) = self._chunks
            part = slice(off, off + count)
            ranges = (list(zip(do[part].tolist(), ds[part].tolist())), list(zip(lo[part].tolist(), ls[part].tolist())))
        fut = self._pool.submit(_worker_load, slot, off, count,
                                (self.rows.start, self.rows.stop), (self.cols.start, self.cols.stop), ranges)
        fut.slot = slot
        self._pending[s] = fut
        self.loads[s] += 1
        return True

    def _land(self):
        """Move finished loads from pending to the cache (as most recently used)."""
        with self._lock:
            for s, fut in list(self._pending.items()):
                if fut.done() and fut.exception() is None:
                    del self._pending[s]
                    self._slot[s] = fut.slot

    def prefetch(self, subjects):
        """Start loading ``subjects`` (protected from eviction until the next call)."""
        subjects = [int(s) for s in subjects]
        with self._lock:
            self._protected = set(subjects) | set(self._pending)
            for s in subjects:
                if not self._start(s):
                    break

    def _ready(self, s):
        """Slot of subject ``s``, loading it now if needed; the subject is pinned (not evicted)
        until the caller unpins it."""
        while True:
            with self._lock:
                if s in self._slot:
                    self._slot.move_to_end(s)
                    self._pinned[s] += 1
                    return self._slot[s]
                if not self._start(s):
                    self._protected = set()  # read-ahead must not starve a read
                    self._start(s)
                fut = self._pending.get(s) or next(iter(self._pending.values()), None)
            if fut is None:  # no slot can be freed: every one is pinned by concurrent reads
                raise RuntimeError(f"streaming cache of {self.cache_subjects} subjects is too small "
                                   "for the concurrent reads")
            fut.result()  # a worker's error (a bad file) surfaces here
            self._land()

    def read(self, indices):
        """Slices ``indices`` (global, any order, repeats allowed) as ``(x, y)`` float32 ``(n, H, W, 1)``."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        subj = self.subject_of(idx)
        h, w, _ = self.shape
        x, y = _aligned((idx.size, h, w, 1)), _aligned((idx.size, h, w, 1))
        for s in dict.fromkeys(subj):
            slot = self._ready(s)  # pinned: not evicted until copied
            try:
                xs, ys, off = self._x[slot], self._y[slot], self.table[s][0]
                for k, t in enumerate(subj):  # slice by slice: one copy each, no temporaries
                    if t == s:
                        x[k, ..., 0] = xs[idx[k] - off]
                        y[k, ..., 0] = ys[idx[k] - off]
            finally:
                with self._lock:
                    self._pinned[s] -= 1
                    if not self._pinned[s]:
                        del self._pinned[s]
        return x, y

    def read_subject(self, index):
        off, count = self.table[int(index)]
        return self.read(np.arange(off, off + count))

    # lifetime -------------------------------------------------------------
    def close(self):
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        shm, self._shm = getattr(self, "_shm", None), None
        if shm is not None:
            self._x = self._y = None
            try:
                shm.close()
            except BufferError:  # a caller still holds a view; unlink anyway
                pass
            try:
                shm.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
