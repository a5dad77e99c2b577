"""GPU training throughput and MFU of the registered models (Keras 3, JAX backend).

The lent GPU machines carry JAX (CUDA) but no TensorFlow, and a CUDA
TensorFlow wheel is far above what can be carried there, so this benchmark
runs Keras 3 on its JAX backend: the same model code, every train step
XLA-compiled (``jit_compile=True``; JAX has no eager-graph middle ground).
Each configuration (model, precision, batch) times ``--steps`` Adam + Dice
train steps on random batches at 224x176 after ``--warmup`` untimed steps
(the first one includes XLA compilation, reported separately).

MFU = 3 x analytic forward FLOPs per slice x slices/s / peak, against the
datasheet dense peaks of an H100/H200 SXM (bf16 989 TFLOP/s; fp32 convs run
as TF32 under JAX's default precision, 494 TFLOP/s) and against a bf16
matrix product measured in the same run.

Usage (on the GPU machine, after installing keras into the image's Python)::

    KERAS_BACKEND=jax python3 benchmarks/bench_gpu_train.py --out results.jsonl --budget-s 420
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _harness  # noqa: E402  (puts the checkout on sys.path)
from clci_keras.models.paper import TABLE1_MODELS, TABLE2_MODELS  # noqa: E402  (imports nothing)

PEAK_TFLOPS = {"bf16": 989.4, "fp32": 494.7}  # dense datasheet peaks (fp32 as TF32)
#: The paper's model (the last row of Tables 1 and 2) and its Baseline (Table 2's first row).
PAPER_MODEL, BASELINE = TABLE1_MODELS[-1], TABLE2_MODELS[0]
#: Table 1's other methods and Table 2's intermediate variants, in table order.
TABLE1_OTHERS = tuple(m for m in TABLE1_MODELS if m not in (PAPER_MODEL, BASELINE))
ABLATION_VARIANTS = tuple(m for m in TABLE2_MODELS if m not in (PAPER_MODEL, BASELINE))
DEFAULT_CONFIGS = (
    # the paper's model first, then each comparator; batch 8 is the protocol's
    [f"{PAPER_MODEL}:bf16:8", f"{PAPER_MODEL}:fp32:8", f"{PAPER_MODEL}:bf16:32"]
    + [f"{m}:bf16:8" for m in (BASELINE, *TABLE1_OTHERS, *ABLATION_VARIANTS)]
    + [f"{m}:fp32:8" for m in (BASELINE, *TABLE1_OTHERS)]
)


def machine():
    """The machine (CPU, GPUs, memory, load: see benchmarks/_harness.py) and the JAX/Keras set-up."""
    import jax
    import keras

    summary = _harness.machine_summary()  # after importing jax and keras: records their versions
    return {
        "date": _harness.today(),
        "description": _harness.machine_line(summary),
        "python": summary["python"],
        "gpu": "; ".join(summary["gpus"]) or "none found by nvidia-smi",
        "cpu": summary["cpu"],
        "memory_total_bytes": summary["memory_total_bytes"],
        "load_avg_1min": summary["load_avg_1min"],
        "jax": summary["jax"],
        "keras": summary["keras"],
        "backend": keras.backend.backend(),
        "devices": [str(d) for d in jax.devices()],
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
    }


def matmul_tflops(n=8192, reps=10):
    """A bf16 n^3 matrix product's rate: the measured ceiling for MFU."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    for _ in range(3):
        f(a, b).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(a, b)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def one(name, precision, batch, steps, warmup, shape=(224, 176)):
    import numpy as np
    import keras

    from bench_models import analytic_gflop
    from clci_keras.models import build_model
    from clci_keras.precision import DTYPE_POLICIES
    from clci_keras.training.trainer import compile_model

    keras.config.set_dtype_policy(DTYPE_POLICIES[precision])
    keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    model = build_model(name, input_shape=(*shape, 1))
    build_s = time.perf_counter() - t0
    gflop = analytic_gflop(model)
    compile_model(model, loss="dice", learning_rate=1e-4, jit=True, precision=precision)
    rng = np.random.default_rng(0)
    xs = [rng.random((batch, *shape, 1), dtype=np.float32) for _ in range(2)]
    ys = [(rng.random((batch, *shape, 1)) > 0.95).astype("float32") for _ in range(2)]
    t0 = time.perf_counter()
    model.train_on_batch(xs[0], ys[0])  # traces and compiles
    first_s = time.perf_counter() - t0
    for i in range(warmup):
        model.train_on_batch(xs[i % 2], ys[i % 2])
    t0 = time.perf_counter()
    for i in range(steps):
        logs = model.train_on_batch(xs[i % 2], ys[i % 2])  # returns host values: synchronises
    dt = time.perf_counter() - t0
    sps = batch * steps / dt
    tflops = 3 * gflop * sps / 1e3
    keras.backend.clear_session()
    return {
        "model": name, "precision": precision, "batch": batch, "shape": list(shape),
        "params": int(model.count_params()), "fwd_gflop_per_slice": round(gflop, 2),
        "build_s": round(build_s, 1), "first_step_s": round(first_s, 1),
        "steps": steps, "step_ms": round(1e3 * dt / steps, 2),
        "train_slices_per_s": round(sps, 1), "train_tflops": round(tflops, 1),
        "mfu_datasheet": round(tflops / PEAK_TFLOPS[precision], 4),
        "loss_finite": bool(np.isfinite(np.asarray(logs[0] if isinstance(logs, list) else logs)).all()),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS, help="model:precision:batch")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=420, help="start no new config after this")
    p.add_argument("--shape", type=int, nargs=2, default=(224, 176), metavar=("H", "W"))
    p.add_argument("--no-matmul", action="store_true", help="skip the bf16 matmul ceiling")
    p.add_argument("--out", default="gpu_train.jsonl")
    args = p.parse_args(argv)
    start = time.perf_counter()
    info = machine()
    info["matmul_bf16_tflops"] = None if args.no_matmul else round(matmul_tflops(), 1)
    print(json.dumps(info), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps({"machine": info}) + "\n")
    rows = []
    for cfg in args.configs:
        if time.perf_counter() - start > args.budget_s:
            print(f"budget reached; skipped {cfg}", flush=True)
            continue
        name, prec, batch = cfg.split(":")
        try:
            row = one(name, prec, int(batch), args.steps, args.warmup, tuple(args.shape))
            if info["matmul_bf16_tflops"]:
                row["mfu_measured_bf16_matmul"] = round(
                    row["train_tflops"] / info["matmul_bf16_tflops"], 4)
        except Exception as exc:  # one failing model must not lose the others' figures
            row = {"model": name, "precision": prec, "batch": int(batch),
                   "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    print("\n| model | precision | batch | slices/s | step ms | TFLOP/s | MFU (datasheet) | first step s |")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['precision']} | {r['batch']} | error: {r['error'][:80]} |")
        else:
            print(f"| {r['model']} | {r['precision']} | {r['batch']} | {r['train_slices_per_s']} | "
                  f"{r['step_ms']} | {r['train_tflops']} | {100 * r['mfu_datasheet']:.1f} % | "
                  f"{r['first_step_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
