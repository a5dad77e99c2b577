"""Python helper of ``benchmarks/gpu_check.sh``: the pipeline, per-step timing, MFU and the JSONL rows.

``gpu_check.sh`` installs the wheels and sets the environment; this script
does the rest. Sub-commands:

``run``        the whole check: ``clci-keras synth -> prep -> split``, then for each
               configuration (backend:precision:batch) one training process
               (``train-one``), and ``clci-keras evaluate -> predict`` on the weights
               of the first configuration of each backend (``--eval first``, default).
               One JSON row per configuration goes to
               ``OUT/gpu_check_<host>_<date>.jsonl`` and a Markdown summary to
               ``OUT/gpu_check_<host>_<date>.md`` (also printed).
``train-one``  one training configuration in this process (``KERAS_BACKEND`` set by
               ``run``). **It calls** :func:`clci_keras.training.train` **directly**
               instead of ``clci-keras train``, because the command line cannot take
               the Keras callback that times every step. The options are the ones the
               CLI would pass for ``clci-keras train --model M --h5 DATA --split SPLIT
               --out RUN --crop C --batch-size B --max-steps N [--precision bf16]
               --no-manifest`` (log lines, not progress bars: ``verbose=2``); bf16 goes
               through :func:`clci_keras.precision.resolve_precision` as in train().
``cli``        ``clci_keras.cli.main(ARGS)`` with the dry run's stand-in model
               ``gpu_check_tiny`` registered (the CLI cannot import it otherwise).

Every other step goes through the command line (``python -m clci_keras``, the
same ``main`` as the ``clci-keras`` console script, which the GPU image lacks
because the checkout is only put on ``PYTHONPATH`` there).

Measures per configuration (rows with ``"kind": "train"``):

* ``slices_per_s``: steady state, ``batch x (steps - 1) / (end of last step -
  end of first step)``: the first step (tracing, XLA compilation, cuDNN
  autotuning) is excluded. Each step's end is taken after its loss reached the
  host (``float(logs["loss"])``), so asynchronous dispatch cannot hide work. The
  input pipeline is the trainer's own (in-memory slices, ``PyDataset``) and counts.
* ``first_step_s`` (the first step alone) and ``time_to_first_step_s`` (from the
  process spawn to the end of the first step: interpreter, imports, data, model
  build, compilation).
* ``train_tflops`` = 3 x forward GFLOP/slice x slices/s; the forward FLOPs are
  :func:`bench_models.analytic_gflop` of the model at the trained crop (CLCI-Net at
  224x176: 76.7 GFLOP, ``bench_train.FORWARD_GFLOP``). ``mfu`` is against the bf16
  dense datasheet peak of an H100/H200 SXM (989.4 TFLOP/s) for every precision;
  fp32 rows also give ``mfu_vs_tf32_peak`` (494.7 TFLOP/s: JAX and cuDNN run fp32
  convolutions as TF32 by default). On a CPU (``--dry``) they are computed all the
  same and mean nothing (``device`` is ``"cpu"``).
* ``peak_gpu_bytes``: ``torch.cuda.max_memory_allocated()`` or JAX's
  ``memory_stats()["peak_bytes_in_use"]`` of the process (None on a CPU);
  ``peak_rss_bytes`` the process's peak resident memory.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (HERE, ROOT):  # run from a checkout without installing; bench_models for the FLOPs
    if _p not in sys.path:
        sys.path.insert(0, _p)

PEAK_BF16_TFLOPS = 989.4  # H100 / H200 SXM, dense bf16 datasheet peak
PEAK_TF32_TFLOPS = 494.7  # dense TF32 datasheet peak
STANDIN = "gpu_check_tiny"

GPU_DEFAULTS = dict(
    model="clci_net", subjects=6, crop="clci", steps=25,
    # both backends early, so that a cut budget still measures each
    configs="torch:bf16:8 jax:bf16:8 torch:fp32:8 jax:fp32:8 torch:bf16:32 jax:bf16:32 torch:fp32:32 jax:fp32:32",
    eval_slices=None, eval_batch=None, predict_batch=None, prep_workers=4, budget_s=400.0,
)
DRY_DEFAULTS = dict(
    model=STANDIN, subjects=3, crop="96:128,80:112", steps=3,
    configs="torch:fp32:2 jax:fp32:2 torch:bf16:2 jax:bf16:2",
    eval_slices="90:93", eval_batch=2, predict_batch=8, prep_workers=1, budget_s=0.0,
)


# --------------------------------------------------------------------------
# The dry run's stand-in model
# --------------------------------------------------------------------------
def tiny_model(input_shape=(224, 176, 1), num_class=1, name=STANDIN):
    """A two-level conv-BN-ReLU net (~3 k parameters): the dry run's stand-in for CLCI-Net.

    CLCI-Net costs 76.7 GFLOP per 224x176 slice: `clci-keras predict` of one
    volume (155 slices) takes minutes on two CPU cores, and building it on
    JAX's CPU backend compiles one XLA program per weight initialiser (~1 min).
    The stand-in uses the library's BatchNormalization (Keras-2 moving update),
    so the trainer's ``bn_update`` path runs as for CLCI-Net.
    """
    import keras
    from keras import layers

    from clci_keras.models.layers import BatchNormalization

    def block(x, filters, tag):
        x = layers.Conv2D(filters, 3, padding="same", name=f"{tag}_conv")(x)
        x = BatchNormalization(name=f"{tag}_bn")(x)
        return layers.Activation("relu", name=f"{tag}_relu")(x)

    inputs = keras.Input(input_shape, name="image")
    e1 = block(inputs, 8, "enc1")
    e2 = block(layers.MaxPooling2D(2, name="pool1")(e1), 16, "enc2")
    up = layers.UpSampling2D(2, name="up1")(e2)
    d1 = block(layers.Concatenate(name="cat1")([up, e1]), 8, "dec1")
    act = "sigmoid" if num_class == 1 else "softmax"
    outputs = layers.Conv2D(num_class, 1, activation=act, dtype="float32", name="output")(d1)
    return keras.Model(inputs, outputs, name=name)


def register_standin():
    from clci_keras.models import register_model

    register_model(STANDIN, tiny_model, description="gpu_check.sh --dry stand-in (not CLCI-Net)",
                   reference="benchmarks/gpu_check.py")


# --------------------------------------------------------------------------
# train-one: one configuration in this process
# --------------------------------------------------------------------------
def _backend_device(backend):
    """``("gpu" | "cpu", name, backend version)`` of this process."""
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return "gpu", torch.cuda.get_device_name(0), torch.__version__
        return "cpu", "cpu", torch.__version__
    if backend == "jax":
        import jax

        dev = jax.local_devices()[0]
        return ("gpu" if dev.platform == "gpu" else "cpu"), str(dev.device_kind), jax.__version__
    import keras

    return "cpu", "unknown", keras.__version__


def _peak_gpu_bytes(backend):
    try:
        if backend == "torch":
            import torch

            return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
        if backend == "jax":
            import jax

            dev = jax.local_devices()[0]
            if dev.platform != "gpu":
                return None
            stats = dev.memory_stats() or {}
            return int(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else None
    except Exception as exc:  # a missing statistic must not lose the row
        print(f"peak GPU memory not read: {type(exc).__name__}: {exc}", flush=True)
    return None


def _peak_rss_bytes():
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def _finite(x):
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def train_one(args):
    spawn = float(os.environ.get("GPU_CHECK_SPAWN_WALL") or time.time())
    t_imp = time.perf_counter()
    import keras
    import numpy as np

    from clci_keras.precision import resolve_precision
    from clci_keras.training import train

    register_standin()
    import_s = time.perf_counter() - t_imp
    backend = keras.backend.backend()
    device, device_name, backend_version = _backend_device(backend)

    class StepTimer(keras.callbacks.Callback):
        """Times each training step; its end waits for the step's loss on the host."""

        def __init__(self):
            super().__init__()
            self.begin, self.end, self.losses = [], [], []
            self.first_end_wall = None
            self.gflop = None

        def on_train_begin(self, logs=None):
            try:
                from bench_models import analytic_gflop

                self.gflop = float(analytic_gflop(self.model))
            except Exception as exc:
                print(f"analytic FLOPs not computed: {type(exc).__name__}: {exc}", flush=True)

        def on_train_batch_begin(self, batch, logs=None):
            self.begin.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            loss = None if loss is None else float(np.asarray(keras.ops.convert_to_numpy(loss)).item())
            self.end.append(time.perf_counter())
            self.losses.append(loss)
            if self.first_end_wall is None:
                self.first_end_wall = time.time()

    precision_run = args.precision
    if args.precision == "bf16":
        precision_run = resolve_precision("bf16")  # as train() (`clci-keras train --precision bf16`) does
    timer = StepTimer()
    overrides = dict(crop=args.crop, batch_size=args.batch, max_steps=args.steps, manifest=None, verbose=2,
                     precision=precision_run)
    if args.no_deterministic:
        overrides["deterministic"] = False
    t0 = time.perf_counter()
    result = train(args.model, args.h5, args.split, args.run_dir, callbacks=[timer], overwrite=True, **overrides)
    train_call_s = time.perf_counter() - t0

    steps = len(timer.end)
    row = {
        "backend": backend, "backend_version": backend_version, "keras": keras.__version__,
        "device": device, "device_name": device_name,
        "precision_run": precision_run, "steps_run": steps,
        "import_s": round(import_s, 2), "train_call_s": round(train_call_s, 2),
        "deterministic": not args.no_deterministic,
    }
    if steps:
        row["first_step_s"] = round(timer.end[0] - timer.begin[0], 3)
        row["time_to_first_step_s"] = round(timer.first_end_wall - spawn, 2)
    if steps >= 2:
        durations = [b - a for a, b in zip(timer.end, timer.end[1:])]
        sps = args.batch * (steps - 1) / (timer.end[-1] - timer.end[0])
        row.update(slices_per_s=round(sps, 3), step_ms_median=round(1e3 * statistics.median(durations), 2),
                   step_ms_mean=round(1e3 * statistics.fmean(durations), 2))
        if timer.gflop:
            tflops = 3 * timer.gflop * sps / 1e3
            row.update(train_tflops=round(tflops, 4), mfu=round(tflops / PEAK_BF16_TFLOPS, 5))
            if precision_run == "fp32":
                row["mfu_vs_tf32_peak"] = round(tflops / PEAK_TF32_TFLOPS, 5)
    row.update(
        fwd_gflop_per_slice=None if timer.gflop is None else round(timer.gflop, 3),
        peak_tflops_bf16=PEAK_BF16_TFLOPS,
        peak_gpu_bytes=_peak_gpu_bytes(backend),
        peak_rss_bytes=_peak_rss_bytes(),
        loss_first=timer.losses[0] if timer.losses else None,
        loss_last=timer.losses[-1] if timer.losses else None,
    )
    final = result.get("final") or {}
    row["loss_finite"] = bool(timer.losses) and all(_finite(v) for v in timer.losses)
    row["val_loss"] = final.get("val_loss")
    row["weights"] = os.path.join(result["run_dir"], result["weights"])
    row["result"] = {k: result.get(k) for k in ("epochs_run", "optimizer_iterations", "train_slices", "val_slices",
                                                 "validation_batches_per_epoch", "params", "final", "dry_run")}
    with open(args.row_out, "w") as f:
        json.dump(row, f)
    print(f"train-one: {json.dumps(row)}", flush=True)
    return 0


# --------------------------------------------------------------------------
# run: the whole check
# --------------------------------------------------------------------------
class Runner:
    def __init__(self, args):
        self.args = args
        self.start = float(os.environ.get("GPU_CHECK_START") or time.time())
        self.py = sys.executable
        self.logs = os.path.join(args.work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        if args.model == STANDIN:  # the stand-in exists only where this script registers it
            self.cli = [self.py, os.path.abspath(__file__), "cli"]
        else:
            self.cli = [self.py, "-m", "clci_keras"]

    def elapsed(self):
        return time.time() - self.start

    def remaining(self):
        return None if not self.args.budget_s else self.args.budget_s - self.elapsed()

    def timeout(self):
        rem = self.remaining()
        return None if rem is None else max(30.0, rem + self.args.grace_s)

    def call(self, name, cmd, backend=None):
        """Run ``cmd`` with its output in logs/NAME.log; returns (rc, seconds). rc 124: timed out."""
        env = dict(os.environ)
        if backend:
            env["KERAS_BACKEND"] = backend
        env["GPU_CHECK_SPAWN_WALL"] = repr(time.time())
        log = os.path.join(self.logs, f"{name}.log")
        t0 = time.perf_counter()
        with open(log, "w") as f:
            f.write(f"$ {' '.join(shlex.quote(c) for c in cmd)}\n")
            f.flush()
            try:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=self.args.work,
                                    timeout=self.timeout()).returncode
            except subprocess.TimeoutExpired:
                rc = 124
        dt = time.perf_counter() - t0
        print(f"[{self.elapsed():6.0f} s] {name}: {'ok' if rc == 0 else f'FAILED (rc {rc})'} in {dt:.1f} s"
              + ("" if rc == 0 else f"; log {log}"), flush=True)
        if rc:
            print(tail(log), flush=True)
        return rc, round(dt, 2)

    # ----------------------------------------------------------------------
    def prepare_data(self):
        a, w = self.args, self.args.work
        atlas, h5, split = (os.path.join(w, n) for n in ("atlas", "data.h5", "split.json"))
        if os.path.isdir(atlas):
            import shutil

            shutil.rmtree(atlas)
        steps = {}
        backend = a.data_backend
        rc, steps["synth_s"] = self.call("synth", self.cli + ["synth", "--subjects", str(a.subjects), "--seed", "0",
                                                             "--quiet", atlas], backend)
        if not rc:
            rc, steps["prep_s"] = self.call("prep", self.cli + ["prep", atlas, "-o", h5, "--workers",
                                                               str(a.prep_workers), "--overwrite", "--quiet"], backend)
        if not rc:
            frac = f"{1 / a.subjects:.4f}"  # one validation and one test subject (rounded counts, at least 1)
            rc, steps["split_s"] = self.call("split", self.cli + ["split", h5, "-o", split, "--val", frac,
                                                                 "--test", frac, "--overwrite"], backend)
        if rc:
            return None, steps
        with open(split) as f:
            s = json.load(f)
        steps["subjects"] = {k: len(s.get(k) or []) for k in ("train", "val", "test")}
        test_id = s["subject_ids"][s["test"][0]]
        steps["test_subject"] = test_id
        steps["test_t1"] = find_t1(atlas, test_id)
        return dict(atlas=atlas, h5=h5, split=split, test_id=test_id, test_t1=steps["test_t1"]), steps

    def evaluate_predict(self, tag, backend, precision, weights, data):
        a = self.args
        out = {}
        ev_dir = os.path.join(a.work, "runs", tag, "evaluate")
        cmd = self.cli + ["evaluate", "--weights", weights, "--model", a.model, "--h5", data["h5"], "--split",
                          data["split"], "--part", "test", "--crop", a.crop, "--out", ev_dir, "--quiet"]
        if a.eval_slices:
            cmd += ["--slices", a.eval_slices]
        if a.eval_batch:
            cmd += ["--batch-size", str(a.eval_batch)]
        if self.remaining() is not None and self.remaining() <= 0:
            return {"evaluate_skipped": "budget", "predict_skipped": "budget"}
        rc, out["evaluate_s"] = self.call(f"{tag}_evaluate", cmd, backend)
        out["evaluate_rc"] = rc
        if rc:
            out["evaluate_log"] = os.path.join(self.logs, f"{tag}_evaluate.log")
        summary = os.path.join(ev_dir, "summary_test.json")
        if not rc and os.path.exists(summary):
            with open(summary) as f:
                scores = json.load(f).get("scores", {})
            out["test_dice"] = (scores.get("dsc") or {}).get("mean")
            out["evaluate_summary"] = summary
        if self.remaining() is not None and self.remaining() <= 0:
            out["predict_skipped"] = "budget"
            return out
        mask = os.path.join(a.work, "runs", tag, "predict", f"{data['test_id']}_mask.nii.gz")
        cmd = self.cli + ["predict", data["test_t1"], "-o", mask, "--weights", weights, "--model", a.model,
                          "--precision", precision, "--no-qc", "--no-lesions", "--overwrite", "--quiet"]
        # the segmentation's time: no QC picture, no lesion tables (their atlases load on the CPU)
        if a.predict_batch:
            cmd += ["--batch-size", str(a.predict_batch)]
        rc, out["predict_s"] = self.call(f"{tag}_predict", cmd, backend)
        out["predict_rc"] = rc
        if rc:
            out["predict_log"] = os.path.join(self.logs, f"{tag}_predict.log")
        if not rc and os.path.exists(mask):
            import nibabel as nib
            import numpy as np

            img = nib.load(mask)
            out["predict_mask"] = mask
            out["predict_mask_shape"] = list(img.shape)
            out["predict_lesion_voxels"] = int(np.count_nonzero(np.asanyarray(img.dataobj)))
        return out

    # ----------------------------------------------------------------------
    def run(self):
        a = self.args
        import importlib.util

        from clci_keras.hardware import machine_summary

        run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        base = dict(run_id=run_id, date=today(), host=host(), dry=a.dry, model=a.model, crop=a.crop)
        os.makedirs(a.out, exist_ok=True)
        stem = os.path.join(a.out, f"gpu_check_{host()}_{today()}")
        jsonl, md = stem + ".jsonl", stem + ".md"
        machine = machine_summary()
        head = dict(base, kind="machine", machine=machine, work=a.work, budget_s=a.budget_s or None,
                    python=sys.version.split()[0], argv=sys.argv[1:],
                    env={k: os.environ.get(k) for k in ("XLA_PYTHON_CLIENT_PREALLOCATE", "JAX_COMPILATION_CACHE_DIR",
                                                        "XLA_FLAGS", "OMP_NUM_THREADS", "PYTHONPATH")})
        print(f"gpu_check: {'DRY (CPU, tiny sizes) ' if a.dry else ''}model {a.model}, crop {a.crop}, "
              f"{a.steps} steps per configuration; rows -> {jsonl}", flush=True)
        data, steps = self.prepare_data()
        head["pipeline"] = steps
        append(jsonl, head)
        if data is None:
            print("data preparation failed; no training", flush=True)
            return 1
        rows, evaluated = [], set()
        for cfg in a.configs:
            backend, precision, batch = parse_config(cfg)
            tag = f"{backend}_{precision}_b{batch}"
            row = dict(base, kind="train", config=cfg, backend=backend, precision=precision, batch=batch,
                       steps=a.steps, input_shape=crop_shape(a.crop))
            if backend in a.skip_backends:
                row["skipped"] = f"backend {backend} excluded"
            elif importlib.util.find_spec(backend) is None:
                row["skipped"] = f"{backend} is not importable"
            elif self.remaining() is not None and self.remaining() <= 0:
                row["skipped"] = f"budget of {a.budget_s:.0f} s spent"
            if "skipped" in row:
                print(f"[{self.elapsed():6.0f} s] {tag}: skipped ({row['skipped']})", flush=True)
                rows.append(row)
                append(jsonl, row)
                continue
            run_dir = os.path.join(a.work, "runs", tag)
            row_out = os.path.join(a.work, "runs", f"{tag}.row.json")
            if os.path.exists(row_out):
                os.remove(row_out)
            cmd = [self.py, os.path.abspath(__file__), "train-one", "--model", a.model, "--h5", data["h5"],
                   "--split", data["split"], "--run-dir", run_dir, "--crop", a.crop, "--batch", str(batch),
                   "--steps", str(a.steps), "--precision", precision, "--row-out", row_out]
            if a.no_deterministic:
                cmd.append("--no-deterministic")
            rc, row["process_s"] = self.call(f"{tag}_train", cmd, backend)
            if rc or not os.path.exists(row_out):
                row["error"] = f"train-one failed (rc {rc}): " + tail(os.path.join(self.logs, f"{tag}_train.log"), 6)
            else:
                with open(row_out) as f:
                    row.update(json.load(f))
                if a.eval == "all" or (a.eval == "first" and backend not in evaluated):
                    evaluated.add(backend)
                    row.update(self.evaluate_predict(tag, backend, row["precision_run"], row["weights"], data))
            row["log"] = os.path.join(self.logs, f"{tag}_train.log")
            rows.append(row)
            append(jsonl, row)
        text = summary(rows, head, jsonl, self.elapsed())
        print(text, flush=True)
        with open(md, "a") as f:
            f.write(text + "\n")
        return 0 if any("slices_per_s" in r for r in rows) else 1


def summary(rows, head, jsonl, elapsed):
    m = head["machine"]
    gpus = "; ".join(m.get("gpus") or []) or "no GPU"
    lines = [
        f"## gpu_check {head['run_id']} ("
        + ("DRY: CPU, tiny sizes, figures meaningless" if head["dry"] else "GPU" if m.get("gpus") else
           "full size without a GPU (--allow-cpu)") + ")",
        "",
        f"host {head['host']}, {gpus}, Python {head['python']}; model {head['model']}, crop {head['crop']}; "
        f"synth/prep/split {head['pipeline'].get('synth_s')}/{head['pipeline'].get('prep_s')}/"
        f"{head['pipeline'].get('split_s')} s; whole check {elapsed:.0f} s; rows: {jsonl}",
        "",
        "| backend | precision (run) | batch | device | slices/s | step ms (median) | first step s | "
        "time to first step s | TFLOP/s | MFU (bf16 989) | peak GPU GiB | loss first -> last | test Dice | "
        "evaluate s | predict s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]

    def f(v, fmt="{:.1f}"):
        return "" if v is None else fmt.format(v)

    def step_cell(r, step):
        if r.get(f"{step}_skipped"):
            return f"skipped ({r[f'{step}_skipped']})"
        if r.get(f"{step}_rc"):
            return f"FAILED (rc {r[f'{step}_rc']}) after {f(r.get(f'{step}_s'))} s"
        return f(r.get(f"{step}_s"))

    for r in rows:
        prec = r["precision"] + (f" ({r['precision_run']})" if r.get("precision_run", r["precision"]) !=
                                 r["precision"] else "")
        if "skipped" in r or "error" in r:
            why = r.get("skipped") or r.get("error", "")[:160]
            lines.append(f"| {r['backend']} | {prec} | {r['batch']} | {'skipped' if 'skipped' in r else 'ERROR'}: "
                         f"{why} |" + " |" * 11)
            continue
        gib = None if r.get("peak_gpu_bytes") is None else r["peak_gpu_bytes"] / 2**30
        mfu = None if r.get("mfu") is None else 100 * r["mfu"]
        lines.append(
            f"| {r['backend']} | {prec} | {r['batch']} | {r['device_name'] if r['device'] == 'gpu' else 'cpu'} | "
            f"{f(r.get('slices_per_s'))}"
            f" | {f(r.get('step_ms_median'))} | {f(r.get('first_step_s'))} | {f(r.get('time_to_first_step_s'))} | "
            f"{f(r.get('train_tflops'), '{:.2f}')} | {f(mfu, '{:.2f} %')} | {f(gib, '{:.2f}')} | "
            f"{f(r.get('loss_first'), '{:.4f}')} -> {f(r.get('loss_last'), '{:.4f}')} | "
            f"{f(r.get('test_dice'), '{:.3f}')} | {step_cell(r, 'evaluate')} | {step_cell(r, 'predict')} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
def today():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def host():
    return re.sub(r"[^A-Za-z0-9._-]+", "_", socket.gethostname().split(".")[0]) or "host"


def append(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def tail(path, n=25):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in lines[-n:])


def parse_config(text):
    try:
        backend, precision, batch = text.split(":")
        batch = int(batch)
    except ValueError:
        raise SystemExit(f"bad configuration {text!r}: expected backend:precision:batch, e.g. jax:bf16:8")
    if backend not in ("torch", "jax", "tensorflow") or precision not in ("fp32", "bf16") or batch < 1:
        raise SystemExit(f"bad configuration {text!r}: backend torch|jax|tensorflow, precision fp32|bf16, batch >= 1")
    return backend, precision, batch


def crop_shape(crop):
    from clci_keras.data.slicing import crop_shape as _shape

    return list(_shape(crop))


def find_t1(atlas, subject_id):
    """The T1 NIfTI of ``subject_id`` in a synthetic R1.1 tree."""
    for dirpath, _, files in os.walk(atlas):
        for name in sorted(files):
            if name.startswith(f"{subject_id}_t1w") and name.endswith((".nii", ".nii.gz")):
                return os.path.join(dirpath, name)
    raise FileNotFoundError(f"no T1 image of subject {subject_id} under {atlas}")


# --------------------------------------------------------------------------
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cli"]:  # clci-keras with the stand-in registered
        if argv[1:2] and argv[1] in ("train", "evaluate", "predict", "summary"):
            register_standin()  # imports Keras and its backend: not for synth / prep / split
        from clci_keras.cli import main as cli_main

        return cli_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train-one", help="one training configuration in this process")
    t.add_argument("--model", required=True)
    t.add_argument("--h5", required=True)
    t.add_argument("--split", required=True)
    t.add_argument("--run-dir", required=True)
    t.add_argument("--crop", required=True)
    t.add_argument("--batch", type=int, required=True)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--precision", choices=("fp32", "bf16"), required=True)
    t.add_argument("--no-deterministic", action="store_true")
    t.add_argument("--row-out", required=True)
    r = sub.add_parser("run", help="the whole check (see gpu_check.sh)")
    r.add_argument("--out", default=os.path.join(HERE, "results"), help="folder of the .jsonl and .md")
    r.add_argument("--work", required=True, help="working folder (data, runs, logs)")
    r.add_argument("--dry", action="store_true", help="CPU, tiny sizes, the stand-in model")
    r.add_argument("--model", help=f"registered model (default: clci_net; --dry: {STANDIN})")
    r.add_argument("--configs", help="backend:precision:batch ... (space- or comma-separated)")
    r.add_argument("--backends", help="only these backends (space- or comma-separated)")
    r.add_argument("--steps", type=int, help="training steps per configuration (--max-steps)")
    r.add_argument("--subjects", type=int, help="synthetic subjects (>= 3)")
    r.add_argument("--crop", help="crop window (default: clci = 224x176; --dry: 96:128,80:112)")
    r.add_argument("--budget-s", type=float, help="start no configuration after this many seconds since the "
                                                  "start of gpu_check.sh (0: none; default 400, --dry: 0)")
    r.add_argument("--grace-s", type=float, default=90.0,
                   help="a step may run this long past the budget before it is killed (default 90)")
    r.add_argument("--eval", choices=("first", "all", "none"), default="first",
                   help="evaluate + predict after the first configuration of each backend (default), all, none")
    r.add_argument("--no-deterministic", action="store_true", help="as clci-keras train --no-deterministic")
    args = p.parse_args(argv)
    if args.command == "train-one":
        return train_one(args)
    d = DRY_DEFAULTS if args.dry else GPU_DEFAULTS
    for k, v in d.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.configs = [c for c in re.split(r"[\s,]+", args.configs) if c]
    for c in args.configs:
        parse_config(c)
    wanted = None if not args.backends else set(re.split(r"[\s,]+", args.backends.strip()))
    args.skip_backends = set() if wanted is None else {parse_config(c)[0] for c in args.configs} - wanted
    if args.subjects < 3:
        raise SystemExit("--subjects must be >= 3 (train, validation and test subjects)")
    args.data_backend = next((parse_config(c)[0] for c in args.configs if parse_config(c)[0] not in
                              args.skip_backends), None)
    args.out, args.work = os.path.abspath(args.out), os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    return Runner(args).run()


if __name__ == "__main__":
    sys.exit(main())
