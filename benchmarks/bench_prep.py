"""Preprocessing benchmark: seconds per subject, peak RSS and bytes per subject.

Generates synthetic R1.1 releases of 8 and 32 subjects (cached in --work),
then converts each with ``prepare_h5`` at 1 and 2 workers, every run in a
fresh process.  Reported: the main process's peak RSS (``VmHWM``; not
``ru_maxrss``, which Linux carries over from the parent across exec), the
largest worker's peak (``RUSAGE_CHILDREN``), and their sum bound
(main + workers x worker peak).  ``--original`` also times
an in-memory conversion that follows the original generator
(Andrewsher/ATLAS-dataset-generate-h5file: every volume kept as float64,
slices gathered into one array, written uncompressed) at the smallest size.

Usage::

    python benchmarks/bench_prep.py                      # 8 and 32 subjects, 1 and 2 workers
    python benchmarks/bench_prep.py --sizes 8 --original --append
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import _harness
from _harness import RESULTS, ROOT

_RUN = r"""
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
from clci_keras.data.preprocess import prepare_h5
t = time.perf_counter()
out = prepare_h5({src!r}, {dst!r}, workers={workers}, overwrite=True, progress=False)
dt = time.perf_counter() - t
print(json.dumps(dict(seconds=dt, bytes=out["bytes"], n=out["n_subjects"],
    rss_main=int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024,
    rss_worker=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if {workers} > 1 else 0.0)))
"""

_ORIG = r"""
import csv, json, os, resource, sys, time
import h5py, nibabel as nib, numpy as np
root, dst = {src!r}, {dst!r}
t = time.perf_counter()
with open(os.path.join(root, "ATLAS_Meta-Data_Release_1.1_standard_mni.csv")) as f:
    rows = list(csv.reader(f))[1:]
vols, segs = [], []
for site, sid, ses, *_ in rows:
    d = os.path.join(root, site, "0" + sid, ses[1:])
    masks = []
    for name in sorted(os.listdir(d)):
        a = np.asanyarray(nib.load(os.path.join(d, name)).dataobj).transpose(2, 1, 0)
        if name.split("_")[-2] == "deface":
            vols.append(a / 100)
        elif name.split("_")[1] == "LesionSmooth":
            m = a.astype(np.int64); m[m > 0] = 1; masks.append(m)
    s = np.sum(masks, axis=0); s[s > 1] = 1; segs.append(s)
vols = np.array(vols)
xs, ys = [], []
for v, s in zip(vols, segs):
    for k in range(len(s)):
        xs.append(v[k]); ys.append(s[k])
with h5py.File(dst, "w") as f:
    f.create_dataset("data", data=np.array(xs))
    f.create_dataset("label", data=np.array(ys))
dt = time.perf_counter() - t
print(json.dumps(dict(seconds=dt, bytes=os.path.getsize(dst), n=len(rows),
    rss_main=int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024, rss_worker=0.0)))
"""


def _synth(work, n):
    src = os.path.join(work, f"synth_r11_{n}")
    if not os.path.isdir(src):
        from clci_keras.data.synthetic import generate_dataset

        generate_dataset(src, layout="r1.1", n_subjects=n, seed=0, progress=True)
    return src


def _run(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "clci_bench_prep"))
    p.add_argument("--original", action="store_true", help="also time the original-style conversion")
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    machine = _harness.machine_summary()  # before the run: its load average is reported
    print(f"machine: {_harness.machine_line(machine)}", flush=True)
    os.makedirs(args.work, exist_ok=True)
    rows = []
    for n in args.sizes:
        src = _synth(args.work, n)
        dst = os.path.join(args.work, f"out_{n}.h5")
        for w in args.workers:
            r = _run(_RUN.format(root=ROOT, src=src, dst=dst, workers=w))
            r.update(N=n, method=f"prepare_h5, {w} worker{'s' if w > 1 else ''}", workers=w)
            rows.append(r)
            print(json.dumps(r), flush=True)
        if args.original and n == min(args.sizes):
            r = _run(_ORIG.format(src=src, dst=dst))
            r.update(N=n, method="original-style (float64, in memory, uncompressed)", workers=0)
            rows.append(r)
            print(json.dumps(r), flush=True)
        os.remove(dst)
    lines = [
        "| N subjects | method | s/subject | peak RSS main (MB) | peak RSS per worker (MB) "
        "| total bound (MB) | MB/subject in .h5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        total = r["rss_main"] + r["workers"] * r["rss_worker"] if r["workers"] > 1 else r["rss_main"]
        lines.append(
            f"| {r['N']} | {r['method']} | {r['seconds'] / r['n']:.3f} | {r['rss_main']:.0f} | "
            f"{r['rss_worker']:.0f} | {total:.0f} | {r['bytes'] / r['n'] / 1e6:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.append:
        _harness.append_atomic(
            RESULTS,
            f"### Data: preprocessing (`benchmarks/bench_prep.py`)\n\n"
            f"Machine: {_harness.machine_line(machine)}. Date: {_harness.today()} (UTC). "
            f"Load average before the run: {machine['load_avg_1min']:.1f} "
            f"(the {_harness.cores(machine)} cores were shared with other jobs). "
            "Synthetic R1.1 subjects (int16 T1 on disk), deflate level 1 + shuffle, one chunk per slice.\n\n"
            + table + "\n",
        )


if __name__ == "__main__":
    main()
