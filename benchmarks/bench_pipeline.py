"""Input-pipeline benchmark: slices/s of ``make_dataset`` (crop + shuffle + batch).

Builds (or reuses) a synthetic R1.1 HDF5 file of --subjects subjects, then
times, after one untimed warm-up pass:

* train mode, in memory (the default): shuffled 224 x 176 batches of 8;
* train mode, ``in_memory=False`` (per-slice HDF5 reads, like X-Net);
* eval mode (whole patients in order, streamed subject by subject);

plus the one-off cost of reading the subjects into memory.  Pin to two cores
with ``taskset -c 0,1`` where the machine has more.

Usage::

    python benchmarks/bench_pipeline.py --subjects 8 --append
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
RESULTS = os.path.join(HERE, "RESULTS.md")
MACHINE = "2-core x86-64 CPU (AVX-512 BF16), 24 GiB, no GPU"


def _rate(ds, max_slices=None):
    n, t = 0, time.perf_counter()
    for x, _ in ds:
        n += int(x.shape[0])
        if max_slices and n >= max_slices:
            break
    return n / (time.perf_counter() - t), n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3, help="timed passes in train mode")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "clci_bench_pipeline"))
    p.add_argument("--append", action="store_true")
    args = p.parse_args(argv)
    load0 = os.getloadavg()[0]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from clci_keras.data import generate_dataset, make_dataset, prepare_h5
    from clci_keras.data.pipeline import load_slices

    os.makedirs(args.work, exist_ok=True)
    src = os.path.join(args.work, f"r11_{args.subjects}")
    h5 = os.path.join(args.work, f"r11_{args.subjects}.h5")
    if not os.path.exists(h5):
        generate_dataset(src, n_subjects=args.subjects, seed=0, overwrite=True)
        prepare_h5(src, h5, progress=False, overwrite=True)
    import tensorflow as tf

    rows = []
    t = time.perf_counter()
    load_slices(h5, None, "clci")
    load_s = (time.perf_counter() - t) / args.subjects
    rows.append(("read subjects into memory (clci crop)", f"{load_s:.3f} s/subject", ""))

    ds = make_dataset(h5, mode="train", batch_size=args.batch_size, seed=0, repeat=True)
    _rate(ds, 2000)  # warm-up
    rate, n = _rate(ds, args.epochs * args.subjects * 189)
    rows.append((f"train, in memory, crop+shuffle+batch {args.batch_size}", f"{rate:,.0f} slices/s", f"{n} slices"))

    ds = make_dataset(h5, mode="train", batch_size=args.batch_size, seed=0, in_memory=False)
    rate, n = _rate(ds, 1500)
    label = f"train, in_memory=False (per-slice h5py reads), batch {args.batch_size}"
    rows.append((label, f"{rate:,.0f} slices/s", f"{n} slices"))

    ds = make_dataset(h5, mode="eval", batch_size=args.batch_size, in_memory=False)
    rate, n = _rate(ds)
    rows.append((f"eval, streamed per subject, batch {args.batch_size}", f"{rate:,.0f} slices/s", f"{n} slices"))

    table = "| configuration | throughput | measured over |\n|---|---|---|\n" + "\n".join(
        f"| {a} | {b} | {c} |" for a, b, c in rows
    )
    print(f"TensorFlow {tf.__version__}, {args.subjects} subjects, cores available: {len(os.sched_getaffinity(0))}")
    print(table)
    if args.append:
        with open(RESULTS, "a") as f:
            f.write(
                f"\n### Data: input pipeline (`benchmarks/bench_pipeline.py`)\n\n"
                f"Machine: {MACHINE}. Date: {datetime.datetime.now(datetime.timezone.utc).date().isoformat()} (UTC). "
                f"Load average before the run: {load0:.1f} (the 2 cores were shared with other jobs). "
                f"TensorFlow {tf.__version__}; synthetic R1.1 file of {args.subjects} subjects "
                f"({args.subjects * 189} slices); {len(os.sched_getaffinity(0))} cores.\n\n" + table + "\n"
            )


if __name__ == "__main__":
    main()
