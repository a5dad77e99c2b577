"""Start-up time: process start to CLCI-Net built with its weights, and to the first predicted slice.

Issue 34, item 1. Each measurement is one fresh process (``KERAS_BACKEND`` set; no JAX compilation
cache, as a user's first run), timed from just before the parent starts it to the moment the child
reports; the backends and both variants run side by side in one run, interleaved, so that their
ratios share the machine's load:

* **build** ``before``: ``build_model("clci_net", (224, 176, 1))`` then ``load_weights`` (what
  :func:`clci_keras.models.build_with_weights` does today); ``after``: the same build under
  :func:`clci_keras.models.seeding.deferred_initializers` (no Keras initialiser runs), then the
  same load. The child also reports its import, build and load phases.
* **predict** (``--predict``): ``clci-keras predict`` of one synthetic T1 scan (in-process
  ``clci_keras.cli.main``), timed to the return of the first ``predict_on_batch`` (the first
  predicted slices), after which the child exits. ``before`` replaces ``deferred_initializers``
  by a no-op (so ``optimize_for_inference``'s rebuild runs Keras's initialisers again, as before
  issue 34); ``after`` also wraps ``clci_keras.models.weights.build_with_weights`` in
  ``deferred_initializers()`` from the benchmark (what the one-line change there does; nested
  scopes are harmless once the package does it itself).

The weights are drawn once (TensorFlow, ``draw_initial_state`` seed 0) and saved as
``.weights.h5``. Writes ``benchmarks/results/startup_<date>.json`` and prints a Markdown table
(``--append`` adds it to RESULTS.md).

    python benchmarks/bench_startup.py --predict --append
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import _harness  # noqa: E402  (puts the checkout on sys.path)

BACKENDS = ("tensorflow", "jax", "torch")
SHAPE = (224, 176, 1)

_CHILD = r'''
import json, os, sys, time
t_start = float(sys.argv[1]); what, variant, weights = sys.argv[2:5]
def report(**kw):
    print("RESULT " + json.dumps(dict(kw, t=time.time())), flush=True)
import keras
from clci_keras.models import build_model, load_weights
from clci_keras.models.seeding import deferred_initializers
t_import = time.time()
if what == "build":
    if variant == "after":
        with deferred_initializers():
            model = build_model("clci_net", input_shape=(224, 176, 1))
    else:
        model = build_model("clci_net", input_shape=(224, 176, 1))
    t_build = time.time()
    load_weights(model, weights)
    t_load = time.time()
    report(import_s=t_import - t_start, build_s=t_build - t_import, load_s=t_load - t_build,
           backend=keras.backend.backend())
else:
    import contextlib
    import clci_keras.models.seeding as S
    import clci_keras.models.weights as W
    from clci_keras.cli import main
    if variant == "before":  # today's code: no deferred build anywhere (optimize_for_inference's rebuild)
        S.deferred_initializers = lambda: contextlib.nullcontext(S.DeferredWeights())
    original, marks = W.build_with_weights, {}
    def timed(*args, **kwargs):
        t0 = time.time()
        if variant == "after":
            with deferred_initializers():  # nested if build_with_weights already opens one: harmless
                model = original(*args, **kwargs)
        else:
            model = original(*args, **kwargs)
        marks["built_s"] = time.time() - t_start
        marks["build_with_weights_s"] = time.time() - t0
        return model
    W.build_with_weights = timed
    first = keras.Model.predict_on_batch
    def predict_on_batch(self, x):
        y = first(self, x)
        report(import_s=t_import - t_start, backend=keras.backend.backend(), batch=int(len(x)), **marks)
        os._exit(0)
    keras.Model.predict_on_batch = predict_on_batch
    sys.exit(main(["predict", sys.argv[5], "-o", sys.argv[6], "--weights", weights, "--quiet",
                   "--no-qc", "--no-lesions", "--overwrite"]))
'''


def child_env(backend):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "JAX_COMPILATION_CACHE"))}
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([_harness.ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def run_child(backend, what, variant, weights, *extra):
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", _CHILD, repr(t0), what, variant, weights, *extra],
                         capture_output=True, text=True, env=child_env(backend), timeout=1800)
    lines = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{backend} {what} {variant}: exit {res.returncode}\n{res.stdout[-2000:]}\n"
                           f"{res.stderr[-4000:]}")
    out = json.loads(lines[-1][len("RESULT "):])
    out.update(total_s=out.pop("t") - t0, what=what, variant=variant)
    return out


def make_inputs(tmp, predict):
    """The seeded CLCI-Net weights (TensorFlow) and, with ``predict``, one synthetic T1 scan."""
    weights = os.path.join(tmp, "clci_net_seed0.weights.h5")
    code = ("import sys; from clci_keras.models import build_model; "
            "from clci_keras.models.seeding import draw_initial_state; "
            "m = build_model('clci_net', input_shape=(224, 176, 1)); draw_initial_state(m, 0); "
            "m.save_weights(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, weights], check=True, env=child_env("tensorflow"),
                   capture_output=True)
    scan = None
    if predict:
        from clci_keras.data.synthetic import generate_dataset

        root = os.path.join(tmp, "synthetic")
        generate_dataset(root, layout="r1.1", n_subjects=1, seed=0)
        scans = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                       if "t1w" in f.lower() and f.endswith((".nii", ".nii.gz")))
        scan = scans[0]
    return weights, scan


def table(rows, backends):
    def get(b, what, variant, key="total_s"):
        r = [x for x in rows if x["backend"] == b and x["what"] == what and x["variant"] == variant]
        return min(x[key] for x in r) if r else None

    lines = ["| backend | built with weights: before | after | after: import / build / load | "
             "first predicted slice: before | after |", "|---|---|---|---|---|---|"]
    for b in backends:
        bb, ba = get(b, "build", "before"), get(b, "build", "after")
        phases = "/".join(f"{get(b, 'build', 'after', k):.1f}" for k in ("import_s", "build_s", "load_s"))
        pb, pa = get(b, "predict", "before"), get(b, "predict", "after")
        fmt = lambda v: "" if v is None else f"{v:.1f} s"
        lines.append(f"| {b} | {fmt(bb)} | **{fmt(ba)}** | {phases} s | {fmt(pb)} | {fmt(pa)} |")
    tf = {v: get("tensorflow", "build", v) for v in ("before", "after")}
    jx = {v: get("jax", "build", v) for v in ("before", "after")}
    if all(tf.values()) and all(jx.values()):
        lines.append("")
        lines.append(f"JAX / TensorFlow, process start to CLCI-Net built with its weights: before "
                     f"**{jx['before'] / tf['before']:.2f}x**, after **{jx['after'] / tf['after']:.2f}x** "
                     f"(JAX after / TensorFlow before: {jx['after'] / tf['before']:.2f}x).")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--repeats", type=int, default=1, help="runs of each measurement (the minimum is shown)")
    p.add_argument("--predict", action="store_true", help="also time clci-keras predict to its first slices")
    p.add_argument("--append", action="store_true", help="append the section to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    summary = _harness.machine_summary()
    rows = []
    with tempfile.TemporaryDirectory(prefix="clci_startup_") as tmp:
        weights, scan = make_inputs(tmp, args.predict)
        for rep in range(args.repeats):
            for backend in args.backends:
                for variant in ("before", "after"):
                    row = run_child(backend, "build", variant, weights)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                if args.predict:
                    for variant in ("before", "after"):
                        row = run_child(backend, "predict", variant, weights, scan, os.path.join(tmp, "out"))
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    date = _harness.today()
    record = {"benchmark": "bench_startup", "date": date, "machine": _harness.machine_line(summary),
              "cpu_flags_avx512": "avx512f" in summary["cpu"]["flags"], "repeats": args.repeats, "rows": rows}
    os.makedirs(os.path.join(_harness.HERE, "results"), exist_ok=True)
    out = os.path.join(_harness.HERE, "results", f"startup_{date}.json")
    _harness.write_atomic(out, json.dumps(record, indent=1) + "\n")
    text = table(rows, args.backends)
    print(f"\n{_harness.machine_line(summary)}, {date}\n\n{text}\n\n{out}")
    if args.append:
        _harness.append_atomic(_harness.RESULTS, f"\n## Start-up: CLCI-Net built with its weights (issue 34), {date}\n\n"
                               f"{_harness.machine_line(summary)}; `python benchmarks/bench_startup.py`"
                               f"{' --predict' if args.predict else ''}, one fresh process per figure "
                               f"(minimum of {args.repeats}).\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
