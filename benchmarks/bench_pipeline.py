"""Input-pipeline benchmark: slices/s of the HDF5 reader's tf.data batches (clci_keras.data.reader).

Builds (or reuses) a synthetic R1.1 HDF5 file of --subjects subjects, then
times, after one untimed warm-up pass:

* training batches from a ``SliceReader(in_memory=True)``: shuffled 224 x 176
  batches of 8, ``--epochs`` epochs after one warm-up epoch;
* training batches from a streamed ``SliceReader`` (one h5py read per batch);
* evaluation batches (slices in order) from the streamed reader;

plus the one-off cost of reading the subjects into memory.  Pin to two cores
with ``taskset -c 0,1`` where the machine has more.

Usage::

    python benchmarks/bench_pipeline.py --subjects 8 --append
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import _harness
from _harness import RESULTS


def _rate(ds, max_slices=None):
    n, t = 0, time.perf_counter()
    for x, _ in ds:
        n += int(x.shape[0])
        if max_slices and n >= max_slices:
            break
    return n / (time.perf_counter() - t), n


def _take(it, n):
    for _ in range(n):
        yield next(it)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3, help="timed passes in train mode")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "clci_bench_pipeline"))
    p.add_argument("--append", action="store_true")
    args = p.parse_args(argv)
    machine = _harness.machine_summary()  # before the run: its load average is reported
    print(f"machine: {_harness.machine_line(machine)}", flush=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from clci_keras.data import generate_dataset, prepare_h5
    from clci_keras.data import reader as R

    os.makedirs(args.work, exist_ok=True)
    src = os.path.join(args.work, f"r11_{args.subjects}")
    h5 = os.path.join(args.work, f"r11_{args.subjects}.h5")
    if not os.path.exists(h5):
        generate_dataset(src, n_subjects=args.subjects, seed=0, overwrite=True)
        prepare_h5(src, h5, progress=False, overwrite=True)
    import tensorflow as tf

    subjects = list(range(args.subjects))
    idx = R.select_slices(h5, subjects, "all")
    rows = []
    t = time.perf_counter()
    memory = R.SliceReader(h5, "clci", in_memory=True)
    load_s = (time.perf_counter() - t) / args.subjects
    rows.append(("read subjects into memory (clci crop)", f"{load_s:.3f} s/subject", ""))

    steps = R.steps_for(idx.size, args.batch_size)
    ds = R.train_dataset(memory, idx, args.batch_size, seed=0, n_batches=(args.epochs + 1) * steps)
    it = iter(ds)
    _rate(_take(it, steps))  # warm-up: the first epoch
    rate, n = _rate(it)
    rows.append((f"train, SliceReader(in_memory=True), shuffled epochs, batch {args.batch_size}",
                 f"{rate:,.0f} slices/s", f"{n} slices"))

    streamed = R.SliceReader(h5, "clci")
    ds = R.train_dataset(streamed, idx, args.batch_size, seed=0)
    rate, n = _rate(ds, 1500)
    rows.append((f"train, SliceReader streamed (h5py reads per batch), batch {args.batch_size}",
                 f"{rate:,.0f} slices/s", f"{n} slices"))

    rate, n = _rate(R.eval_dataset(streamed, idx, args.batch_size))
    rows.append((f"eval, SliceReader streamed, in order, batch {args.batch_size}",
                 f"{rate:,.0f} slices/s", f"{n} slices"))

    table = "| configuration | throughput | measured over |\n|---|---|---|\n" + "\n".join(
        f"| {a} | {b} | {c} |" for a, b, c in rows
    )
    print(f"TensorFlow {tf.__version__}, {args.subjects} subjects, cores available: {len(os.sched_getaffinity(0))}")
    print(table)
    if args.append:
        _harness.append_atomic(
            RESULTS,
            f"\n### Data: input pipeline (`benchmarks/bench_pipeline.py`)\n\n"
            f"Machine: {_harness.machine_line(machine)}. Date: {_harness.today()} (UTC). "
            f"Load average before the run: {machine['load_avg_1min']:.1f}. "
            f"TensorFlow {tf.__version__}; synthetic R1.1 file of {args.subjects} subjects "
            f"({args.subjects * 189} slices); {_harness.cores(machine)} cores.\n\n" + table + "\n",
        )


if __name__ == "__main__":
    main()
