"""Parameters, GFLOP per slice and CPU inference speed of every registered model.

Usage::

    python benchmarks/bench_models.py                 # all models, 224x176x1
    python benchmarks/bench_models.py --models fcn8s pspnet --slices 16
    python benchmarks/bench_models.py --append benchmarks/RESULTS.md

GFLOP are counted analytically from the built graph: multiply-accumulates of
every Conv2D, Conv2DTranspose, Dense and ConvLSTM2D (both its input and its
recurrent convolution, per time step), with 1 MAC = 2 FLOP, for one slice of
the given size. Biases, BatchNorm, activations, pooling, resizing and
element-wise ops are not counted (they add well under 1 %).
``--profiler`` also reports TensorFlow's own count
(``tf.compat.v1.profiler`` ``float_ops`` on the traced graph) as a cross-check.

Speed: ``model.predict`` on random slices with ``--batch`` slices per batch,
after one warm-up call; the best of ``--repeats`` runs is reported as
slices/s (inference mode, float32).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _harness  # noqa: E402  (puts the checkout on sys.path)


def _prod(values):
    out = 1
    for v in values:
        out *= int(v)
    return out


def layer_macs(layer):
    """Multiply-accumulates of one call of ``layer`` for batch size 1 (0 if not counted)."""
    from keras import layers

    kind = type(layer).__name__
    if isinstance(layer, layers.ConvLSTM2D):
        _, steps, _, _, cin = layer.input.shape
        out = layer.output.shape  # (batch, H, W, F) or with time axis
        h, w, f = out[-3], out[-2], out[-1]
        k = _prod(layer.kernel_size)
        return int(steps) * h * w * k * 4 * f * (cin + f)
    if isinstance(layer, layers.Conv2DTranspose):
        _, h, w, cin = layer.input.shape
        return h * w * cin * _prod(layer.kernel_size) * layer.filters
    if isinstance(layer, (layers.SeparableConv2D, layers.DepthwiseConv2D)):
        raise NotImplementedError(f"no MAC rule for {kind} layer {layer.name!r}")
    if isinstance(layer, layers.Conv2D):
        cin = layer.input.shape[-1]
        _, h, w, cout = layer.output.shape
        return h * w * cout * _prod(layer.kernel_size) * cin // layer.groups
    if isinstance(layer, layers.Dense):
        cin = layer.input.shape[-1]
        positions = _prod(layer.output.shape[1:-1])
        return positions * cin * layer.units
    return 0


def analytic_gflop(model):
    return 2 * sum(layer_macs(l) for l in model.layers) / 1e9


def profiler_gflop(model, shape):
    """TensorFlow profiler's float_ops of one forward pass of one slice."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec((1, *shape), tf.float32)).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph, options=opts)
    return info.total_float_ops / 1e9


def inference_speed(model, shape, slices, batch, repeats):
    import numpy as np

    x = np.random.default_rng(0).normal(size=(slices, *shape)).astype("float32")
    model.predict(x[:batch], batch_size=batch, verbose=0)  # trace + warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict(x, batch_size=batch, verbose=0)
        best = min(best, time.perf_counter() - t0)
    return slices / best


def run(names, shape, slices, batch, repeats, profiler):
    import keras

    from clci_keras.models import build_model, get_model_spec

    rows = []
    for name in names:
        keras.backend.clear_session()
        t0 = time.perf_counter()
        model = build_model(name, input_shape=shape)
        build_s = time.perf_counter() - t0
        row = dict(
            name=name,
            reference=get_model_spec(name).reference,
            params=model.count_params(),
            gflop=analytic_gflop(model),
            build_s=build_s,
        )
        if profiler:
            row["tf_gflop"] = profiler_gflop(model, shape)
        row["slices_per_s"] = inference_speed(model, shape, slices, batch, repeats)
        rows.append(row)
        print(
            f"{name:15s} params={row['params']:>12,d}  GFLOP/slice={row['gflop']:7.2f}"
            + (f"  (tf profiler {row['tf_gflop']:.2f})" if profiler else "")
            + f"  {row['slices_per_s']:6.2f} slices/s  build {build_s:.1f}s",
            flush=True,
        )
    return rows


def markdown(rows, shape, slices, batch, repeats, profiler):
    machine = _harness.machine_summary()  # after run(): records the TensorFlow/Keras versions used
    lines = [
        "## Models: parameters, GFLOP and CPU inference (bench_models.py)",
        "",
        f"- date: {_harness.today()}; machine: {_harness.machine_line(machine)}; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"TensorFlow {machine['tensorflow']}, Keras {machine['keras']}",
        f"- input {shape[0]}x{shape[1]}x{shape[2]}, float32, inference mode; speed = best of "
        f"{repeats} `model.predict` runs over {slices} slices in batches of {batch}",
        f"- 1-min load average at the end: {machine['load_avg_1min']:.1f} on {_harness.cores(machine)} CPUs "
        "(other jobs share the CPUs; speed scales down with load)",
        "- GFLOP: analytic conv/transposed-conv/dense/ConvLSTM MACs per slice, 1 MAC = 2 FLOP"
        + ("; `tf profiler` = tf.compat.v1.profiler float_ops of the traced forward pass" if profiler else ""),
        "",
        "| model | parameters | GFLOP/slice |"
        + (" tf profiler GFLOP |" if profiler else "")
        + " slices/s (CPU) |",
        "|---|---:|---:|" + ("---:|" if profiler else "") + "---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['gflop']:.1f} |"
            + (f" {r['tf_gflop']:.1f} |" if profiler else "")
            + f" {r['slices_per_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", help="names (default: every registered model)")
    parser.add_argument("--shape", type=int, nargs=3, default=(224, 176, 1), metavar=("H", "W", "C"))
    parser.add_argument("--slices", type=int, default=16, help="slices per timed run")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profiler", action="store_true", help="also report tf profiler float_ops")
    parser.add_argument("--append", metavar="MD", help="append a results table to this file")
    args = parser.parse_args(argv)

    from clci_keras.models import list_models

    names = args.models or list_models()
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(list_models())}")
    shape = tuple(args.shape)
    rows = run(names, shape, args.slices, args.batch, args.repeats, args.profiler)
    text = markdown(rows, shape, args.slices, args.batch, args.repeats, args.profiler)
    print()
    print(text)
    if args.append:
        _harness.append_atomic(args.append, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
