"""Streaming input benchmark: slices/s and peak memory of training batches read from a large HDF5 file.

Times ``train_dataset`` over a :class:`clci_keras.data.stream.StreamingReader`
(the plan ``clci-keras train`` makes for data that does not fit
``--max-memory-gb``): 224 x 176 batches of 8, shuffled within windows of
subjects, after a warm-up of ``--warmup`` slices. In the same run, for a
ratio, the per-batch h5py reader (``SliceReader`` streamed, a global
shuffle) over ``--baseline-slices`` slices. Memory: peak RSS of the
training process and of each reader process, and the peak of their summed
PSS (shared-memory pages counted once), sampled every 50 ms (PSS every 0.5 s) from /proc.

Usage (ATLAS 2.0 scale: ``clci-keras synth --layout v2 --subjects 655`` then ``prep``)::

    python benchmarks/bench_stream.py --h5 v2.h5 --max-memory-gb 2 --append
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import _harness
from _harness import RESULTS


def _status_mb(pid, field, path="status"):
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _rss_mb(pid):
    return _status_mb(pid, "VmRSS")


def _is_tracker(pid):
    """multiprocessing's resource tracker (not a reader)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"resource_tracker" in f.read()
    except OSError:
        return True


def _pss_mb(pid):
    """Proportional set size: shared pages split among the processes that map them."""
    return _status_mb(pid, "Pss", "smaps_rollup")


def _children(pid):
    """Child processes of every thread of ``pid`` (pool workers are children of the thread that
    started them)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


class PeakRSS(threading.Thread):
    """Peak RSS (MB) of this process and of each child, and peak PSS summed over them (the
    memory the run takes, shared pages counted once), sampled every 50 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.parent, self.children, self.pss, self._halt = 0.0, {}, 0.0, threading.Event()

    def run(self):
        me, tick = os.getpid(), 0
        while not self._halt.wait(0.05):
            self.parent = max(self.parent, _rss_mb(me))
            kids = [c for c in _children(me) if not _is_tracker(c)]
            for c in kids:
                self.children[c] = max(self.children.get(c, 0.0), _rss_mb(c))
            tick += 1
            if tick % 10 == 0:  # smaps_rollup walks the page tables: every 0.5 s
                self.pss = max(self.pss, _pss_mb(me) + sum(_pss_mb(c) for c in kids))

    def stop(self):
        self._halt.set()
        self.join()


def _rate(ds, slices):
    n, t = 0, time.perf_counter()
    for x, _ in ds:
        n += int(x.shape[0])
        if n >= slices:
            break
    return n / (time.perf_counter() - t), n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--h5", required=True, help="HDF5 slice file (clci-keras prep)")
    p.add_argument("--max-memory-gb", type=float, default=2.0)
    p.add_argument("--workers", type=int, default=None, help="reader processes (default: as training)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--slices", type=int, default=30000, help="timed slices")
    p.add_argument("--warmup", type=int, default=3000)
    p.add_argument("--baseline-slices", type=int, default=2000)
    p.add_argument("--append", action="store_true")
    args = p.parse_args(argv)
    machine = _harness.machine_summary()
    print(f"machine: {_harness.machine_line(machine)}", flush=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from clci_keras.data import reader as R

    table = R.subject_table(args.h5)
    subjects = list(table)
    idx = R.select_slices(args.h5, subjects, "all")
    plan = R.plan_input(args.h5, subjects, "clci", "auto", args.max_memory_gb)
    print(f"{len(subjects)} subjects, {idx.size} slices; plan: {plan}", flush=True)
    if plan["mode"] != "stream":
        raise SystemExit("the data fits the budget: nothing to stream (lower --max-memory-gb)")
    rss = PeakRSS()
    rss.start()
    t0 = time.perf_counter()
    reader = R.open_reader(args.h5, "clci", subjects, plan, workers=args.workers)
    ds = R.train_dataset(reader, idx, args.batch_size, seed=0)
    it = iter(ds)
    _rate(it, args.warmup)
    first_s = time.perf_counter() - t0
    cpu0 = os.times()
    rate, n = _rate(it, args.slices)
    cpu1 = os.times()
    loads = sum(reader.loads.values())
    rss.stop()
    reader.close()
    workers_mb = sorted(rss.children.values(), reverse=True)
    base = R.SliceReader(args.h5, "clci")
    base_rate, base_n = _rate(R.train_dataset(base, idx, args.batch_size, seed=0), args.baseline_slices)
    base.close()
    parent_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    rows = [
        (f"streamed: {len(workers_mb)} reader processes, windows of {plan['buffer_subjects']} subjects "
         f"(cache {3 * plan['buffer_subjects']}), batch {args.batch_size}",
         f"{rate:,.0f} slices/s", f"{n} slices after {args.warmup} warm-up; {loads} subject loads"),
        ("per-batch h5py reads (SliceReader streamed, global shuffle), same file",
         f"{base_rate:,.0f} slices/s", f"{base_n} slices"),
        ("ratio streamed / per-batch", f"{rate / base_rate:.1f}x", "same run"),
        ("peak RSS, training process", f"{rss.parent:,.0f} MB", ""),
        ("peak RSS, reader processes", ", ".join(f"{m:,.0f} MB" for m in workers_mb), "shared cache pages included"),
        ("peak PSS, all processes", f"{rss.pss:,.0f} MB", "shared pages counted once: the run's memory"),
        ("training-process CPU per slice (gather + tf.data)", f"{1e3 * parent_cpu / n:.2f} ms", ""),
        ("start to end of warm-up", f"{first_s:.1f} s", "workers' start and first windows"),
    ]
    text = "| quantity | value | note |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    print(text)
    print(f"malloc tuned for the pipeline: {R.keep_freed_memory()}")
    if args.append:
        _harness.append_atomic(
            RESULTS,
            f"\n### Data: streaming input at scale (`benchmarks/bench_stream.py`)\n\n"
            f"Machine: {_harness.machine_line(machine)}. Date: {_harness.today()} (UTC). "
            f"Load average before the run: {machine['load_avg_1min']:.1f}. TensorFlow {tf.__version__}; "
            f"{os.path.basename(args.h5)}: {len(subjects)} subjects, {idx.size} slices, "
            f"{os.path.getsize(args.h5) / 1024**3:.1f} GiB on disk; --max-memory-gb {args.max_memory_gb:g} "
            f"(in memory these subjects would take {plan['bytes'] / 1024**3:.1f} GiB); "
            f"{_harness.cores(machine)} cores.\n\n" + text + "\n",
        )


if __name__ == "__main__":
    main()
    os._exit(0)  # an endless tf.data generator can hold up interpreter shutdown
