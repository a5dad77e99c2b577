"""Peak RSS, wall and CPU seconds of ``clci-keras predict`` per Keras backend, on CPU.

Issue 34, item 2. One synthetic 1-mm T1 scan, one CLCI-Net network (fp32, ``--tta none``; the
weights and the scan of :func:`bench_peers.prepare`), each figure one fresh process run through
bench_peers' wrapper (peak RSS: ``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Per backend two
variants: ``lean`` (``--no-qc --no-lesions``) and ``default`` (QC picture and lesion tables
written). JAX and PyTorch run without TensorFlow, as in tests/test_backends.py; no ``--threads``
and no ``OMP_NUM_THREADS``: each backend's default threads. The figures alternate backends
(variant by variant) so that the machine's load falls on all alike::

    python benchmarks/bench_predict_memory.py --work /tmp/clci_predict_memory

The record goes to ``benchmarks/results/predict_memory_<date>.json``, rewritten after each figure.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import subprocess
import sys

import _harness  # noqa: E402  (puts the checkout on sys.path)
import bench_peers

from clci_keras.fileio import write_json

BACKENDS = ("tensorflow", "jax", "torch")
VARIANTS = ("lean", "default")  # lean: --no-qc --no-lesions


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS, metavar="NAME",
                   help=f"Keras backends, in this order (default: {' '.join(BACKENDS)})")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, metavar="NAME",
                   help="lean (--no-qc --no-lesions) and/or default (default: both)")
    p.add_argument("--work", default=os.path.join("/tmp", "clci_predict_memory"), metavar="DIR",
                   help="scratch folder for the scan, the weights and the outputs (kept and reused)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="the record (default: benchmarks/results/predict_memory_<date>.json)")
    return p.parse_args(argv)


def table(rows):
    """Markdown table of the measured rows."""
    lines = ["| backend | variant | peak RSS, MiB | wall s | CPU s | predict s | load |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "peak_rss_mib" in r:
            lines.append(f"| {r['backend']} | {r['variant']} | {r['peak_rss_mib']:.0f} | {r['wall_s']:.1f} | "
                         f"{r['cpu_s']:.1f} | {r['predict_s']:.1f} | {'-'.join(f'{x:.1f}' for x in r['load_avg'])} |")
        else:
            lines.append(f"| {r['backend']} | {r['variant']} | failed: {r['failed']} | | | | |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    inputs = bench_peers.prepare(work, None, subjects=1, need_nnunet=False)
    date = _harness.today()
    commit = subprocess.run(["git", "-C", _harness.ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    versions = bench_peers.versions()
    for name in ("jax", "jaxlib", "torch"):
        versions[name] = md.version(name)
    record = {"benchmark": "bench_predict_memory", "date": date, "machine": _harness.machine_line(),
              "commit": commit, "command": "python benchmarks/bench_predict_memory.py " + " ".join(sys.argv[1:]),
              "scan": os.path.basename(inputs["scan"]), "weights": "draw_initial_state seed 0",
              "precision": "fp32", "tta": "none", "versions": versions, "rows": []}
    out = args.out or os.path.join(_harness.HERE, "results", f"predict_memory_{date}.json")
    for variant in args.variants:
        for backend in args.backends:
            name = f"{backend}-{variant}"
            folder = os.path.join(work, "out", name)
            os.makedirs(folder, exist_ok=True)
            cmd = bench_peers.clci_command(inputs, folder, side_outputs=variant == "default")
            env = bench_peers.child_env(work, backend)
            env.pop("OMP_NUM_THREADS", None)
            try:
                row = bench_peers.run_wrapped(name, cmd, env)
                row["wall_s"] = row.pop("process_s")
            except RuntimeError as e:  # one failing figure does not lose the others
                print(f"FAILED {e}", file=sys.stderr, flush=True)
                row = {"failed": str(e).splitlines()[0]}
            record["rows"].append({"backend": backend, "variant": variant, **row})
            write_json(out, record, indent=1)
            print(name, {k: row.get(k) for k in ("peak_rss_mib", "wall_s", "cpu_s", "predict_s")}, flush=True)
    print(f"{table(record['rows'])}\n{out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
