"""TensorFlow, JAX and PyTorch side by side on this CPU: CLCI-Net training steps and per-volume predict.

Issue 21, item 3. Each backend runs in its own persistent subprocess with
``KERAS_BACKEND`` set; the JAX and PyTorch ones have ``tests/without_tensorflow``
first on ``PYTHONPATH`` (its ``sitecustomize.py`` makes TensorFlow
unimportable, so they prove that no TensorFlow is needed; each child also
reports whether ``tensorflow`` ended up in ``sys.modules``). The parent sends
the children one command at a time, round by round (step 1 of every
contestant, then step 2 of every contestant, ...), so that all contestants
are measured under the same load, interleaved; ratios to TensorFlow are the
figures to read on a shared machine.

Measured:

1. **Training** (as the issue measured it): ``build_model("clci_net",
   input_shape=(64, 64, 1))``, :func:`clci_keras.training.trainer.compile_model`
   (Adam 1e-4, Dice loss, Dice metric), ``model.train_on_batch`` on one random
   batch of 4. First step (tracing + compiling) and the fastest of the timed
   steps after it, then the forward pass (``predict_on_batch``) of the same
   batch. Contestants: TensorFlow, JAX and PyTorch as ``compile_model``
   compiles them, plus the probes of the JAX step time:
   ``jax nojit`` (``jit_compile=False``: Keras runs the JAX train step op by
   op, as ``compile_model`` did before issue 21), ``jax unroll`` and
   ``tensorflow unroll`` (the four ``ConvLSTM2D`` layers with ``unroll=True``:
   two Python-level time steps instead of a ``lax.scan`` / ``tf.while_loop``;
   same weights, same maths) and ``jax no-ConvLSTM`` (the ``clci_aspp_clf``
   ablation: CLCI-Net without its context-inference ConvLSTMs).
   ``--no-probes`` leaves the probes out.
2. **Prediction** at full size (224 x 176): the library's inference path
   (:func:`clci_keras.inference.build_inference_model`, i.e. the optimised
   fp32 model with the zero-state ConvLSTM, and
   :func:`clci_keras.inference.predict_slices`, which
   :func:`~clci_keras.inference.predict_atlas_volume` runs on a volume's brain
   slices) on a bounded set of ``--slices`` brain slices of one synthetic
   ATLAS-grid volume, batch ``--predict-batch``. Same weights everywhere: the
   TensorFlow child builds CLCI-Net (seeded random initialisation unless
   ``--weights`` is given) and writes them with
   :func:`clci_keras.models.save_weights_legacy`; every child loads them with
   :func:`clci_keras.models.load_weights` (through ``build_inference_model``).
   Parity: max and mean |p - p_TF| and Dice of the masks against TensorFlow's,
   at 0.5 and at the threshold giving TensorFlow's mask 5 % of the voxels
   (random weights put many probabilities near 0.5: a stress test).

Usage::

    python benchmarks/bench_backends.py              # print the Markdown section
    python benchmarks/bench_backends.py --append     # ... and add it to benchmarks/RESULTS.md
    python benchmarks/bench_backends.py --steps 3 --slices 16 --no-probes

Run time on the 2-core development machine: about 12 minutes with
``--no-probes`` and 38 minutes with the probes, both at a load average of 6-9
(other jobs on the 2 cores); the first steps (tracing and compiling: 1-5
minutes each under that load) and the JAX steps that run the ConvLSTMs inside
``lax.scan`` dominate. ``--report-from FILE`` rewrites the Markdown section
from the JSON that every run leaves in the temporary folder
(``bench_backends_last.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import _harness  # puts the checkout on sys.path: runs without installing
from _harness import RESULTS, ROOT

NO_TF = os.path.join(ROOT, "tests", "without_tensorflow")

#: Training contestants: (id, backend, model, how it is compiled, ConvLSTM unrolled, description).
#: ``library``: :func:`compile_model` as it is; ``nojit``: the same, then compiled again with
#: ``jit_compile=False``.
TRAIN_MAIN = [
    ("tensorflow", "tensorflow", "clci_net", "library", False, "TensorFlow, `compile_model` (graph, no XLA)"),
    ("jax", "jax", "clci_net", "library", False, "JAX, `compile_model` (`jit_compile=True`)"),
    ("torch", "torch", "clci_net", "library", False, "PyTorch, `compile_model` (eager)"),
]
TRAIN_PROBES = [
    ("jax_nojit", "jax", "clci_net", "nojit", False, "JAX, `jit_compile=False` (op by op, before issue 21)"),
    ("jax_unroll", "jax", "clci_net", "library", True, "JAX, jitted, ConvLSTM `unroll=True`"),
    ("jax_noconvlstm", "jax", "clci_aspp_clf", "library", False,
     "JAX, jitted, `clci_aspp_clf` (CLCI-Net without ConvLSTM)"),
    ("tensorflow_unroll", "tensorflow", "clci_net", "library", True, "TensorFlow, ConvLSTM `unroll=True`"),
]
PREDICT = ["tensorflow", "jax", "torch"]


# --------------------------------------------------------------------------
# Child: one backend, commands on stdin, one RESULT line per command
# --------------------------------------------------------------------------
class _Child:
    def __init__(self):
        import numpy as np

        self.np = np
        self.model = None

    def info(self, _):
        import keras

        backend = keras.backend.backend()
        lib = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
        mod = __import__(lib)
        return {
            "backend": backend,
            "keras": keras.__version__,
            "lib_version": mod.__version__,
            "tensorflow_importable": _importable("tensorflow"),
        }

    # -- training ----------------------------------------------------------
    def train_setup(self, cmd):
        import keras

        from clci_keras.models import build_model
        from clci_keras.models.losses import dice_coef, get_loss
        from clci_keras.training.trainer import compile_model

        keras.utils.set_random_seed(0)
        t = time.perf_counter()
        model = build_model(cmd["model"], input_shape=(cmd["size"], cmd["size"], 1))
        n_convlstm = 0
        for layer in model.layers:
            if isinstance(layer, keras.layers.ConvLSTM2D):
                n_convlstm += 1
                if cmd["unroll"]:
                    layer.unroll = True  # before the first trace: two time steps in Python
        compile_model(model, loss="dice", learning_rate=1e-4)
        if cmd["compile"] == "nojit":
            model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-4), loss=get_loss("dice"),
                          metrics=[dice_coef], jit_compile=False)
        build_s = time.perf_counter() - t
        rng = self.np.random.default_rng(0)
        b, s = cmd["batch"], cmd["size"]
        self.x = rng.random((b, s, s, 1), dtype=self.np.float32)
        self.y = (rng.random((b, s, s, 1)) > 0.95).astype("float32")
        self.model = model
        return {"build_s": build_s, "jit_compile": str(model.jit_compile), "convlstm_layers": n_convlstm,
                "params": int(model.count_params())}

    def train_step(self, _):
        t, c = time.perf_counter(), time.process_time()
        logs = self.model.train_on_batch(self.x, self.y, return_dict=True)
        return {"s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                "loss": float(logs["loss"]), "load": os.getloadavg()[0]}

    def forward(self, _):
        t = time.perf_counter()
        self.model.predict_on_batch(self.x)
        first = time.perf_counter() - t
        t = time.perf_counter()
        self.model.predict_on_batch(self.x)
        return {"first_s": first, "s": time.perf_counter() - t}

    def free(self, _):
        import gc

        import keras

        self.model = None
        keras.backend.clear_session()
        gc.collect()
        return {}

    # -- prediction --------------------------------------------------------
    def prepare(self, cmd):
        """Weights (given or seeded random CLCI-Net at 224x176) and ``cmd['slices']`` brain slices."""
        import keras

        from clci_keras.data.constants import ATLAS_SHAPE
        from clci_keras.data.intensity import normalize_intensity
        from clci_keras.data.slicing import crop_slices, volume_to_slices
        from clci_keras.data.synthetic import generate_subject
        from clci_keras.inference import brain_slice_indices
        from clci_keras.models import build_model, save_weights_legacy

        np = self.np
        keras.utils.set_random_seed(0)
        model = build_model("clci_net", input_shape=(224, 176, 1))
        if cmd.get("weights"):  # given weights in any format: rewritten in the legacy format
            from clci_keras.models import load_weights

            load_weights(model, cmd["weights"])
        save_weights_legacy(model, cmd["weights_out"])
        del model
        keras.backend.clear_session()
        subj = generate_subject(seed=0, index=7, layout="r1.1")
        label = np.zeros(ATLAS_SHAPE, np.uint8)
        for m in subj.masks:
            label |= m
        x = crop_slices(volume_to_slices(normalize_intensity(subj.t1, "r1.1")), "clci")
        y = crop_slices(volume_to_slices(label), "clci")
        brain = np.asarray(brain_slice_indices())
        # the brain slices with the most lesion voxels, in slice order
        n = min(cmd["slices"], len(brain))
        start = int(np.argmax(np.convolve(y[brain].sum(axis=(1, 2)), np.ones(n), mode="valid")))
        idx = brain[start : start + n]
        np.save(cmd["slices_out"], x[idx].astype(np.float32))
        return {"slice_range": [int(idx[0]), int(idx[-1])], "lesion_voxels": int(y[idx].sum())}

    def predict_setup(self, cmd):
        from clci_keras.inference import build_inference_model

        t = time.perf_counter()
        self.model = build_inference_model("clci_net", cmd["weights"])
        build_s = time.perf_counter() - t
        self.slices = self.np.load(cmd["slices"])
        return {"build_s": build_s}

    def predict(self, cmd):
        from clci_keras.inference import predict_slices

        b = cmd["batch"]
        x = self.slices if cmd.get("all") else self.slices[:b]
        t, c = time.perf_counter(), time.process_time()
        p = predict_slices(self.model, x, batch_size=b)
        out = {"s": time.perf_counter() - t, "cpu_s": time.process_time() - c, "n": len(x),
               "load": os.getloadavg()[0]}
        if cmd.get("save"):
            self.np.save(cmd["save"], p)
        return out


def _importable(name):
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except Exception:
        return False


def child_main():
    """Serve JSON commands from stdin; answer each with one ``RESULT`` line on stdout."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    server = _Child()
    print("READY", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        try:
            res = getattr(server, cmd["cmd"])(cmd)
            res["tensorflow_loaded"] = "tensorflow" in sys.modules
        except Exception as e:  # report it, keep serving
            import traceback

            res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        print("RESULT " + json.dumps(res), flush=True)


# --------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------
class Worker:
    """One child process of one backend."""

    def __init__(self, name, backend, log):
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        path = [ROOT] if backend == "tensorflow" else [NO_TF, ROOT]  # sitecustomize.py must come first
        env["PYTHONPATH"] = os.pathsep.join(path + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self.name, self.backend, self.log = name, backend, log
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--_child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True, cwd=ROOT, env=env,
        )
        self.ready = False

    def wait_ready(self):
        if not self.ready:
            self._expect("READY")
            self.ready = True
        return self

    def _expect(self, prefix):
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        self.err.seek(0)
        raise RuntimeError(f"{self.name}: child exited ({self.proc.wait()}):\n{self.err.read()[-3000:]}")

    def __call__(self, cmd, **kw):
        self.wait_ready()
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        res = json.loads(self._expect("RESULT "))
        if "error" in res:
            raise RuntimeError(f"{self.name} {cmd}: {res['error']}\n{res['traceback']}")
        return res

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def measure_training(args, log):
    specs = TRAIN_MAIN + ([] if args.no_probes else TRAIN_PROBES)
    workers, rows = {}, {}
    try:
        for sid, backend, *_ in specs:  # start-up (imports, in parallel) is not timed
            workers[sid] = Worker(sid, backend, log)
        for sid, backend, model, comp, unroll, desc in specs:
            w = workers[sid]
            rows[sid] = dict(id=sid, backend=backend, model=model, desc=desc, info=w("info"),
                             **w("train_setup", model=model, size=args.size, batch=args.batch,
                                 compile=comp, unroll=unroll))
            rows[sid]["steps"] = []
        for k in range(args.steps + 1):  # round k: step k of every contestant, in turn
            for sid, w in workers.items():
                r = rows[sid]
                if k > 1 and sum(r["steps"][1:]) > args.step_budget:
                    continue  # slow contestant: enough steady steps
                res = w("train_step")
                r["steps"].append(res["s"])
                r.setdefault("cpu", []).append(res["cpu_s"])
                r.setdefault("loads", []).append(res["load"])
                r["tensorflow_loaded"] = res["tensorflow_loaded"]
                log(f"train {sid:18s} step {k}: {res['s']:7.2f} s (CPU {res['cpu_s']:.2f} s, "
                    f"loss {res['loss']:.4f}, load {res['load']:.1f})")
        for sid, w in workers.items():
            res = w("forward")
            rows[sid]["forward_s"], rows[sid]["forward_first_s"] = res["s"], res["first_s"]
            log(f"train {sid:18s} forward {res['s']:.3f} s (first {res['first_s']:.2f} s)")
    finally:
        for w in workers.values():
            w.close()
    for r in rows.values():
        r["first_s"] = r["steps"][0]
        r["step_s"] = min(r["steps"][1:])
        r["step_cpu_s"] = min(r["cpu"][1:])
    return [rows[s[0]] for s in specs]


def measure_predict(args, work, log):
    import numpy as np

    weights = os.path.join(work, "clci_net_shared.h5")
    slices = os.path.join(work, "slices.npy")
    workers, rows = {}, {}
    try:
        for b in PREDICT:
            workers[b] = Worker(b, b, log)
        prep = workers["tensorflow"]("prepare", weights=args.weights, weights_out=weights,
                                     slices=args.slices, slices_out=slices)
        log(f"predict: weights {weights}; slices {prep}")
        for b, w in workers.items():
            rows[b] = dict(backend=b, info=w("info"), **w("predict_setup", weights=weights, slices=slices))
            rows[b]["runs"] = []
        for b, w in workers.items():  # first batch: tracing / compiling
            res = w("predict", batch=args.predict_batch)
            rows[b]["first_batch_s"] = res["s"]
            log(f"predict {b:10s} first batch of {res['n']}: {res['s']:.2f} s")
        for k in range(args.predict_repeats):
            for b, w in workers.items():
                res = w("predict", batch=args.predict_batch, all=True,
                        save=os.path.join(work, f"p_{b}.npy") if k == 0 else None)
                rows[b]["runs"].append(res["s"] / res["n"])
                rows[b].setdefault("cpu", []).append(res["cpu_s"] / res["n"])
                rows[b]["tensorflow_loaded"] = res["tensorflow_loaded"]
                log(f"predict {b:10s} {res['n']} slices: {res['s']:.1f} s = {res['s'] / res['n']:.3f} s/slice "
                    f"(CPU {res['cpu_s'] / res['n']:.3f}, load {res['load']:.1f})")
    finally:
        for w in workers.values():
            w.close()
    ref = np.load(os.path.join(work, "p_tensorflow.npy"))
    t95 = float(np.quantile(ref, 0.95))
    for b, r in rows.items():
        p = np.load(os.path.join(work, f"p_{b}.npy"))
        d = np.abs(p.astype(np.float64) - ref)
        r.update(s_per_slice=min(r["runs"]), cpu_per_slice=min(r["cpu"]), max_diff=float(d.max()),
                 mean_diff=float(d.mean()), dice05=_dice(p > 0.5, ref > 0.5), dice95=_dice(p > t95, ref > t95),
                 pos05=int((p > 0.5).sum()))
    return dict(rows=[rows[b] for b in PREDICT], prep=prep, t95=t95, p_range=[float(ref.min()), float(ref.max())],
                n_voxels=int(ref.size))


def _dice(a, b):
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
def report(args, train, pred, machine, load0, load1, seconds):
    by = {r["id"]: r for r in train}
    tf = by["tensorflow"]
    versions = {r["backend"]: r["info"]["lib_version"] for r in train}
    keras_v = train[0]["info"]["keras"]
    no_tf = all(not r["tensorflow_loaded"] and not r["info"]["tensorflow_importable"]
                for r in train + pred["rows"] if r["backend"] != "tensorflow")
    lines = [
        "## Backends side by side (issue 21) (`benchmarks/bench_backends.py`)",
        "",
        f"Machine: {machine}. Date: {args.date} (UTC). Keras {keras_v}; TensorFlow {versions.get('tensorflow')}, "
        f"JAX {versions.get('jax')}, PyTorch {versions.get('torch')} (CPU builds), Python {sys.version.split()[0]}. "
        f"Load average (1 min) at start / end: {load0:.1f} / {load1:.1f}: the 2 cores were shared with another "
        "developer's test runs, so absolute times are inflated; **compare within this run** (every backend in "
        "its own persistent process, the contestants' steps interleaved round by round, so all saw the same load). "
        f"JAX and PyTorch ran with `tests/without_tensorflow` first on `PYTHONPATH`: TensorFlow unimportable "
        f"and never loaded in those processes: {'yes' if no_tf else 'NO'}. Whole benchmark: {seconds:.0f} s.",
        "",
        f"**Training**: CLCI-Net {args.size}x{args.size}x1, batch {args.batch}, `compile_model` (Adam 1e-4, Dice "
        f"loss, Dice metric), `train_on_batch` on one random batch. First step = tracing/compiling + one step; "
        f"step = fastest of up to {args.steps} steps after it (contestants slower than {args.step_budget:.0f} s "
        "per step get fewer); forward = `predict_on_batch` of the same batch (traced before).",
        "",
        "| contestant | `jit_compile` | first step s | step s | step vs TF | step CPU s | forward s | steps timed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in train:
        lines.append(
            f"| {r['desc']} | {r['jit_compile']} | {r['first_s']:.1f} | {r['step_s']:.2f} | "
            f"{r['step_s'] / tf['step_s']:.2f}x | {r['step_cpu_s']:.2f} | {r['forward_s']:.3f} | {len(r['steps']) - 1} |"
        )
    lines += [""]
    if "jax_nojit" in by:
        j, jn, ju, jc = by["jax"], by["jax_nojit"], by["jax_unroll"], by["jax_noconvlstm"]
        lines += [
            f"- JAX, jitted vs `jit_compile=False`: step {j['step_s']:.2f} vs {jn['step_s']:.2f} s "
            f"({jn['step_s'] / j['step_s']:.2f}x), first step {j['first_s']:.0f} vs {jn['first_s']:.0f} s.",
            f"- JAX, ConvLSTM as `lax.scan` vs unrolled (`unroll=True`): step {j['step_s']:.2f} vs "
            f"{ju['step_s']:.2f} s ({j['step_s'] / ju['step_s']:.1f}x), forward {j['forward_s']:.3f} vs "
            f"{ju['forward_s']:.3f} s; unrolled JAX vs TensorFlow: {ju['step_s'] / tf['step_s']:.2f}x. "
            f"Without the ConvLSTMs (`clci_aspp_clf`): {jc['step_s']:.2f} s.",
        ]
    lines += [
        "",
        f"**Prediction** at 224x176: `build_inference_model(\"clci_net\", weights)` (optimised fp32, zero-state "
        f"ConvLSTM) + `predict_slices` (the loop of `predict_atlas_volume`), batch {args.predict_batch}, "
        f"{pred['prep']['slice_range'][1] - pred['prep']['slice_range'][0] + 1} brain slices "
        f"(z = {pred['prep']['slice_range'][0]}..{pred['prep']['slice_range'][1]}) of one synthetic R1.1 "
        f"volume; s/slice = fastest of {args.predict_repeats} interleaved passes; first batch = tracing/compiling "
        f"+ one batch. Same weights: {'given ' + args.weights if args.weights else 'seeded random CLCI-Net'} "
        "built on TensorFlow, written by `save_weights_legacy`, read by `load_weights` in every backend. "
        f"Parity vs TensorFlow over {pred['n_voxels']:,} voxels (TF probabilities in "
        f"[{pred['p_range'][0]:.3f}, {pred['p_range'][1]:.3f}]); Dice at 0.5 and at {pred['t95']:.4f} "
        "(TF's 95th percentile: masks of 5 % of the voxels).",
        "",
        "| backend | build + load weights s | first batch s | s/slice | vs TF | CPU s/slice | max abs p diff "
        "| mean abs p diff | Dice p>0.5 | Dice top 5 % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ptf = pred["rows"][0]
    for r in pred["rows"]:
        lines.append(
            f"| {r['backend']} | {r['build_s']:.0f} | {r['first_batch_s']:.1f} | {r['s_per_slice']:.3f} | "
            f"{r['s_per_slice'] / ptf['s_per_slice']:.2f}x | {r['cpu_per_slice']:.3f} | {r['max_diff']:.2g} | "
            f"{r['mean_diff']:.2g} | {r['dice05']:.4f} ({r['pos05']} vox) | {r['dice95']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="training input size (square)")
    p.add_argument("--batch", type=int, default=4, help="training batch")
    p.add_argument("--steps", type=int, default=2, help="timed training steps after the first")
    p.add_argument("--step-budget", type=float, default=40.0,
                   help="stop timing a contestant's steps once they add up to this many seconds")
    p.add_argument("--no-probes", action="store_true", help="only the three backends as compile_model compiles them")
    p.add_argument("--slices", type=int, default=16, help="brain slices predicted per backend")
    p.add_argument("--predict-batch", type=int, default=4)
    p.add_argument("--predict-repeats", type=int, default=1)
    p.add_argument("--weights", help="CLCI-Net weights to predict with (default: seeded random initialisation)")
    p.add_argument("--date", default=None, help="date of the RESULTS.md section (default: today, UTC)")
    p.add_argument("--append", action="store_true", help=f"append the section to {RESULTS}")
    p.add_argument("--report-from", metavar="JSON", help="only write the report of a saved run")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        child_main()
        return 0
    if args.report_from:
        with open(args.report_from) as f:
            saved = json.load(f)
        append = args.append
        args = argparse.Namespace(**saved["args"])
        text = report(args, saved["train"], saved["predict"], saved["machine"], saved["load0"], saved["load1"],
                      saved["seconds"])
        print(text)
        if append:
            _harness.append_atomic(RESULTS, text)
        return 0
    args.date = args.date or _harness.today()
    log = lambda s: print(s, flush=True)  # noqa: E731
    machine = _harness.machine_line()
    log(f"machine: {machine}")
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_backends_") as work:
        train = measure_training(args, log)
        pred = measure_predict(args, work, log)
    saved = {"args": vars(args), "train": train, "predict": pred, "machine": machine, "load0": load0,
             "load1": os.getloadavg()[0], "seconds": time.perf_counter() - t0}
    with open(os.path.join(tempfile.gettempdir(), "bench_backends_last.json"), "w") as f:
        json.dump(saved, f, indent=1, default=str)
    text = report(args, train, pred, machine, saved["load0"], saved["load1"], saved["seconds"])
    print(text)
    if args.append:
        _harness.append_atomic(RESULTS, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
