"""Training throughput (slices/s) of a registered model, fp32 or mixed precision.

Times ``steps`` optimiser steps (Adam 1e-4, Dice loss, as the training
pipeline compiles them) on random batches after ``warmup`` untimed steps, and
optionally the forward pass (``predict_on_batch``). Each precision runs in its
own process, because Keras' dtype policy is global.

Usage::

    python benchmarks/bench_train.py                          # fp32 and bf16, 224x176, batch 8
    python benchmarks/bench_train.py --precision fp32 --jit --steps 20
    python benchmarks/bench_train.py --append                 # add a row to benchmarks/RESULTS.md

FLOP/s are estimated as 3 x the forward FLOPs per slice (76.7 GFLOP for
CLCI-Net at 224x176) times slices/s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import _harness  # puts the checkout on sys.path: runs without installing
from _harness import RESULTS, ROOT
FORWARD_GFLOP = {("clci_net", 224, 176): 76.7}


def _one(args):
    """Run one configuration in this process; print a JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import keras

    from clci_keras.precision import DTYPE_POLICIES
    from clci_keras.training.trainer import compile_model

    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(DTYPE_POLICIES[args.precision])
    from clci_keras.models import build_model

    model = build_model(args.model, input_shape=(args.height, args.width, 1))
    compile_model(model, loss="dice", learning_rate=1e-4, jit=args.jit, precision=args.precision)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, args.height, args.width, 1), dtype=np.float32)
    y = (rng.random((args.batch, args.height, args.width, 1)) > 0.95).astype("float32")
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    train_s = time.perf_counter() - t0
    train_cpu = time.process_time() - c0
    out = {
        "model": args.model,
        "shape": [args.height, args.width],
        "batch": args.batch,
        "precision": args.precision,
        "jit": bool(args.jit),
        "steps": args.steps,
        "train_slices_per_s": args.batch * args.steps / train_s,
        # CPU-seconds per slice (all threads): on a shared machine, cpu_count / this
        # estimates the slices/s of an otherwise idle machine.
        "train_cpu_s_per_slice": train_cpu / (args.batch * args.steps),
        "load_avg_1min": os.getloadavg()[0],
    }
    if args.forward_steps:
        model.predict_on_batch(x)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.forward_steps):
            model.predict_on_batch(x)
        out["forward_slices_per_s"] = args.batch * args.forward_steps / (time.perf_counter() - t0)
        out["forward_cpu_s_per_slice"] = (time.process_time() - c0) / (args.batch * args.forward_steps)
    gflop = FORWARD_GFLOP.get((args.model, args.height, args.width))
    if gflop:
        out["train_tflops"] = 3 * gflop * out["train_slices_per_s"] / 1e3
    print("RESULT " + json.dumps(out), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="clci_net")
    p.add_argument("--height", type=int, default=224)
    p.add_argument("--width", type=int, default=176)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--forward-steps", type=int, default=2)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "both"], default="both")
    p.add_argument("--jit", action="store_true", help="XLA-compile the train step")
    p.add_argument("--append", action="store_true", help=f"append the results to {RESULTS}")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        _one(args)
        return 0
    machine_line = _harness.machine_line()
    print(f"machine: {machine_line}", flush=True)
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    rows = []
    for prec in precisions:
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", "--precision", prec]
        for k in ("model", "height", "width", "batch", "steps", "warmup", "forward_steps"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        if args.jit:
            cmd.append("--jit")
        res = subprocess.run(cmd, capture_output=True, text=True,
                             cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
        if res.returncode or not line:
            print(res.stdout[-3000:], res.stderr[-3000:], file=sys.stderr)
            return 1
        row = json.loads(line[0][7:])
        rows.append(row)
        print(json.dumps(row))
    if args.append:
        _append(rows, machine_line)
    return 0


def _append(rows, machine_line):
    """Add ``rows`` to the training-throughput table of RESULTS.md (created after the last section if absent)."""
    date = _harness.today()
    lines = []
    for r in rows:
        fwd = r.get("forward_slices_per_s")
        lines.append(
            f"| {date} | {machine_line} | {r['model']} {r['shape'][0]}x{r['shape'][1]} | {r['batch']} | "
            f"{r['precision']}{' + XLA' if r['jit'] else ''} | {r['train_slices_per_s']:.2f} | "
            f"{(1 / r['train_slices_per_s']):.2f} | {('%.2f' % fwd) if fwd else '-'} | "
            f"{('%.2f' % r['train_tflops']) if 'train_tflops' in r else '-'} | "
            f"{r['train_cpu_s_per_slice']:.2f} | {r['load_avg_1min']:.1f} |"
        )
    header = (
        "\n## Training throughput (benchmarks/bench_train.py)\n\n"
        "Adam + Dice loss train steps on random batches (after warm-up steps); forward = "
        "`predict_on_batch`. TFLOP/s = 3 x forward FLOPs x slices/s. CPU s/slice = process CPU time "
        "(all threads) per training slice: on a shared machine (see the load average) "
        "cores / (CPU s/slice) estimates the idle machine's slices/s.\n\n"
        "| date | machine | model | batch | precision | train slices/s | s/slice | forward slices/s "
        "| train TFLOP/s | train CPU s/slice | load avg |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    text = _harness.read_text(RESULTS, default="# Benchmarks\n")
    marker = "## Training throughput (benchmarks/bench_train.py)"
    if marker not in text:
        text = text.rstrip("\n") + "\n" + header
    # insert after the last row of this section's table
    head, _, tail = text.partition(marker)
    sec_lines = (marker + tail).splitlines()
    end = next((i for i, l in enumerate(sec_lines) if i and l.startswith("#")), len(sec_lines))  # next heading
    last_row = max(i for i, l in enumerate(sec_lines[:end]) if l.startswith("|"))
    rest = sec_lines[last_row + 1:]
    sec_lines = sec_lines[: last_row + 1] + lines + rest
    _harness.write_atomic(RESULTS, head + "\n".join(sec_lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
