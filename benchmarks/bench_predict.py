"""Benchmark of whole-volume inference (`clci-keras predict`) with CLCI-Net at 224x176.

One process, one synthetic evaluation volume on the ATLAS grid, measured in
this order (so that ratios come from the same run under the same load):

1. weights: a small CLCI-Net trained here on synthetic data for a few
   minutes of CPU (``--weights`` uses given weights instead);
2. batch-size sweep of the optimised fp32 model (few slices per size);
3. "plain": ``model.predict`` of all 189 slices with the unmodified model
   (fp32), the reference rate and masks;
4. "ours fp32": ``load_image`` + ``segment_image`` + ``save_atomic``
   (brain slices only, optimised model) and a check that its masks and
   probabilities equal the plain ones on every brain slice;
5. "ours bf16": the same with ``--precision bf16``; Dice vs the fp32 masks.

With ``--threads-sweep`` each (inter-op, intra-op) setting is timed in a
fresh subprocess first (TensorFlow fixes its thread pools at start-up).
Peak memory is the largest resident set size sampled every 20 ms during a
phase. Results are printed as a Markdown section (``--append`` adds it to
benchmarks/RESULTS.md).

    python benchmarks/bench_predict.py --threads-sweep --append
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _harness  # noqa: E402  (puts the checkout on sys.path)
import numpy as np  # noqa: E402


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Context manager sampling this process's RSS; ``.peak`` in MB."""

    def __enter__(self):
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def loadavg():
    return os.getloadavg()[0]


def count_flops(model):
    """``(nominal, executed)`` GFLOP per slice (multiply-add = 2 FLOP; convolutions only).

    ``nominal`` counts every convolution of the Keras graph (ConvLSTM: 4 input
    and 4 recurrent gate convolutions per step). ``executed`` leaves out what
    :class:`ZeroStateConvLSTM2D` skips: at step 1 the 4 recurrent and the
    forget-gate input convolution.
    """
    import keras

    nominal = executed = 0.0
    for layer in model.layers:
        if type(layer) is keras.layers.Conv2D:
            _, h, w, co = layer.output.shape
            kh, kw = layer.kernel_size
            f = 2.0 * h * w * kh * kw * layer.input.shape[-1] * co
            nominal += f
            executed += f
        elif isinstance(layer, keras.layers.ConvLSTM2D):
            _, t, h, w, ci = layer.input.shape
            kh, kw = layer.kernel_size
            fi = 2.0 * h * w * kh * kw * ci * layer.filters  # one gate, input conv
            fr = 2.0 * h * w * kh * kw * layer.filters * layer.filters  # one gate, recurrent conv
            nominal += t * 4 * (fi + fr)
            executed += t * 4 * (fi + fr) - (fi + 4 * fr)
    return nominal / 1e9, executed / 1e9


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * (a & b).sum() / s


# --------------------------------------------------------------------------
# Quick training on synthetic data
# --------------------------------------------------------------------------
def train_quick_weights(path, steps, batch, seed=0, log=print):
    """Train CLCI-Net on 112x96 windows of synthetic slices (1 mm, as inference); save weights.

    The weights do not depend on the input size, so they load into the
    224x176 model. BatchNormalization momentum is lowered to 0.9 so that
    the moving statistics settle within the few steps.
    """
    import keras

    from clci_keras.data.constants import ATLAS_SHAPE
    from clci_keras.data.intensity import normalize_intensity
    from clci_keras.data.slicing import crop_slices, volume_to_slices
    from clci_keras.data.synthetic import generate_subject
    from clci_keras.models import bce_dice_loss, build_model, save_weights_legacy

    rng = np.random.default_rng(seed)
    h, w = 112, 96
    xs, ys = [], []
    for index in range(3):
        subj = generate_subject(seed=seed, index=index, layout="r1.1")
        label = np.zeros(ATLAS_SHAPE, np.uint8)
        for m in subj.masks:
            label |= m
        x = crop_slices(volume_to_slices(normalize_intensity(subj.t1, "r1.1")), "clci")
        y = crop_slices(volume_to_slices(label), "clci")
        lesion_slices = np.flatnonzero(y.any(axis=(1, 2)))
        picks = list(rng.choice(lesion_slices, size=min(len(lesion_slices), steps * batch // 5)))
        picks += list(rng.integers(20, 150, size=len(picks)))  # as many windows anywhere in the brain
        for s in picks:
            rows, cols = np.nonzero(y[s]) if y[s].any() and len(xs) % 2 == 0 else ((), ())
            if len(rows):  # window around a lesion voxel
                k = rng.integers(len(rows))
                r0 = int(np.clip(rows[k] - rng.integers(16, h - 16), 0, x.shape[1] - h))
                c0 = int(np.clip(cols[k] - rng.integers(16, w - 16), 0, x.shape[2] - w))
            else:
                r0, c0 = rng.integers(0, x.shape[1] - h + 1), rng.integers(0, x.shape[2] - w + 1)
            xs.append(x[s, r0 : r0 + h, c0 : c0 + w])
            ys.append(y[s, r0 : r0 + h, c0 : c0 + w])
    xs = np.stack(xs)[..., None].astype(np.float32)
    ys = np.stack(ys)[..., None].astype(np.float32)
    order = rng.permutation(len(xs))[: steps * batch]
    model = build_model("clci_net", input_shape=(h, w, 1))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=bce_dice_loss)
    t = time.perf_counter()
    hist = model.fit(xs[order], ys[order], batch_size=batch, epochs=1, shuffle=False, verbose=0)
    log(f"trained {steps} steps of {batch} windows {h}x{w} in {time.perf_counter() - t:.0f} s, "
        f"loss {hist.history['loss'][-1]:.3f}")
    save_weights_legacy(model, path)
    log(f"weights: {path}")
    return path


# --------------------------------------------------------------------------
# Thread probe (run in a subprocess)
# --------------------------------------------------------------------------
def thread_probe(inter, intra, batch, slices):
    from clci_keras.inference import build_inference_model, configure_threads

    configure_threads(intra_op=intra, inter_op=inter)
    model = build_inference_model("clci_net", None)
    x = np.random.default_rng(0).random((batch, 224, 176, 1), dtype=np.float32)
    model.predict_on_batch(x)
    n = max(1, slices // batch)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        model.predict_on_batch(x)
    print(json.dumps({"inter": inter, "intra": intra, "s_per_slice": (time.perf_counter() - t) / (n * batch),
                      "cpu_s_per_slice": (time.process_time() - c) / (n * batch)}))


# --------------------------------------------------------------------------
# Measured configurations
# --------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="CLCI-Net weights to use instead of training quick ones")
    p.add_argument("--train-steps", type=int, default=40)
    p.add_argument("--train-batch", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=None, help="batch size of the volume runs (default: library default)")
    p.add_argument("--sweep", default="1,4,8", help="batch sizes of the sweep ('' to skip)")
    p.add_argument("--paired-batches", type=int, default=5)
    p.add_argument("--sweep-slices", type=int, default=8)
    p.add_argument("--threads-sweep", action="store_true")
    p.add_argument("--inter", type=int, default=1)
    p.add_argument("--intra", type=int, default=0)
    p.add_argument("--append", action="store_true", help="append the results to benchmarks/RESULTS.md")
    p.add_argument("--_probe", nargs=4, type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def threads_sweep(log):
    """Time each (inter-op, intra-op) setting in a fresh subprocess; a list of :func:`thread_probe` results."""
    rows = []
    for inter, intra in ((1, 2), (2, 2), (1, 1)):
        out = subprocess.run(
            [sys.executable, __file__, "--_probe", str(inter), str(intra), "4", "8"],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        log(f"threads {rows[-1]}")
    return rows


def get_weights(args, work, log):
    """``(weights path, description, peak RSS of the quick training in MB or None)``."""
    if args.weights is not None:
        return args.weights, f"given weights {args.weights}", None
    with PeakRSS() as mem_train:
        t = time.perf_counter()
        weights = train_quick_weights(os.path.join(work, "quick_clci.h5"), args.train_steps, args.train_batch, log=log)
        t_train = time.perf_counter() - t
    note = (f"CLCI-Net trained here for {args.train_steps} steps of {args.train_batch} 112x96 windows "
            f"of 3 synthetic R1.1 subjects ({t_train:.0f} s)")
    return weights, note, mem_train.peak


def write_eval_volume(work):
    """An unseen synthetic subject on the ATLAS grid, stored as ATLAS does (int16); ``(path, lesion label)``."""
    import nibabel as nib

    from clci_keras.data.constants import ATLAS_SHAPE
    from clci_keras.data.synthetic import generate_subject

    subj = generate_subject(seed=0, index=7, layout="r1.1")
    label = np.zeros(ATLAS_SHAPE, np.uint8)
    for m in subj.masks:
        label |= m
    src = os.path.join(work, "sub07_t1w_deface_stx.nii.gz")
    img = nib.Nifti1Image(subj.t1.astype(np.float32), subj.affine)
    img.set_data_dtype(np.int16)
    img.set_sform(subj.affine, code=4)
    img.set_qform(subj.affine, code=4)
    nib.save(img, src)
    return src, label


def paired_timing(models, x_all, brain, batch, n_batches, log):
    """Time the models on the same batches, interleaved batch by batch, so that the
    ratios are not biased by load changing between phases: ``{name: [wall s, CPU s]}``."""
    from clci_keras.inference import predict_slices

    paired = {name: [0.0, 0.0] for name, _ in models}
    for _, mdl in models:
        predict_slices(mdl, x_all[brain[:batch]], batch_size=batch)  # trace
    for k in range(n_batches):
        xb = x_all[brain[20 + k * batch : 20 + (k + 1) * batch]]
        for name, mdl in models:
            t, c = time.perf_counter(), time.process_time()
            predict_slices(mdl, xb, batch_size=batch)
            paired[name][0] += time.perf_counter() - t
            paired[name][1] += time.process_time() - c
    n_paired = n_batches * batch
    log("paired s/slice (wall, CPU): " + ", ".join(f"{k}: {v[0] / n_paired:.3f}, {v[1] / n_paired:.3f}" for k, v in paired.items()))
    return paired


def batch_sweep(model, x_all, brain, sizes, sweep_slices, log):
    """s/slice of ``model`` (optimised fp32) at each batch size: ``[(batch size, s/slice)]``."""
    from clci_keras.inference import predict_slices

    sweep = []
    for b in sizes:
        xs = x_all[brain[40 : 40 + max(b, sweep_slices)]]
        predict_slices(model, xs[:b], batch_size=b)  # trace
        t = time.perf_counter()
        predict_slices(model, xs, batch_size=b)
        sweep.append((b, (time.perf_counter() - t) / len(xs)))
        log(f"sweep B={b}: {sweep[-1][1]:.3f} s/slice")
    return sweep


def time_plain(plain, x_all, batch, nominal, log):
    """Plain ``model.predict`` on all 189 slices: the reference rate and probabilities."""
    with PeakRSS() as mem:
        plain.predict(x_all[:batch, ..., None], batch_size=batch, verbose=0)  # trace
        t, c = time.perf_counter(), time.process_time()
        probs = plain.predict(x_all[..., None], batch_size=batch, verbose=0)[..., 0]
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
    rate = 189 * nominal / seconds
    log(f"plain model.predict: {seconds:.1f} s for 189 slices, {rate:.1f} GFLOP/s")
    return dict(probs=probs, seconds=seconds, cpu=cpu, rate=rate, peak=mem.peak)


def time_ours(model, tag, src, work, x_all, brain, batch):
    """``load_image`` + ``segment_image`` + ``save_atomic`` of one volume, as the CLI does."""
    from clci_keras.inference import load_image, predict_slices, save_atomic, segment_image

    predict_slices(model, x_all[brain[:batch]], batch_size=batch)  # trace the model function
    with PeakRSS() as mem:
        t, c = time.perf_counter(), time.process_time()
        image, data = load_image(src)
        seg = segment_image(model, image, data=data, batch_size=batch, return_probabilities=True)
        t_model = seg.seconds
        save_atomic([(seg.mask, os.path.join(work, f"{tag}_mask.nii.gz"))])
        total, cpu = time.perf_counter() - t, time.process_time() - c
    return dict(seg=seg, total=total, cpu=cpu, model_s=t_model, peak=mem.peak)


def compare_with_plain(p_plain, seg32, brain):
    """Exactness of ours fp32 against plain ``model.predict`` on the brain slices."""
    from clci_keras.data.slicing import slices_to_volume, uncrop_slices

    m32 = np.asanyarray(seg32.mask.dataobj) > 0
    p32 = np.asanyarray(seg32.probabilities.dataobj)
    p_plain_vol = slices_to_volume(uncrop_slices(p_plain, "clci", fill=0.0))
    bz = brain
    return dict(
        mask_diff=int(((p_plain_vol[:, :, bz] > 0.5) != m32[:, :, bz]).sum()),
        prob_equal=bool(np.array_equal(p_plain_vol[:, :, bz], p32[:, :, bz])),
        prob_maxdiff=float(np.abs(p_plain_vol[:, :, bz] - p32[:, :, bz]).max()),
        outside=int((p_plain_vol[:, :, np.setdiff1d(np.arange(189), bz)] > 0.5).sum()),
    )


def compare_bf16(seg16, seg32, label, brain):
    """Agreement of the bf16 and fp32 masks and probabilities, and of both with the ground truth."""
    bz = brain
    m32 = np.asanyarray(seg32.mask.dataobj) > 0
    p32 = np.asanyarray(seg32.probabilities.dataobj)
    m16 = np.asanyarray(seg16.mask.dataobj) > 0
    p16 = np.asanyarray(seg16.probabilities.dataobj)
    gt = label > 0
    # Stress test independent of how well the quick model learned: the threshold at which the
    # fp32 mask has as many voxels as the true lesion puts the mask boundary where the model is unsure.
    t_star = float(np.sort(p32[:, :, bz].ravel())[-int(gt.sum())])
    p_diff = np.abs(p16 - p32)[:, :, bz]
    return dict(
        dice=dice(m16, m32), voxels16=int(m16.sum()), voxels32=int(m32.sum()), voxels_gt=int(gt.sum()),
        dice_gt32=dice(m32, gt), dice_gt16=dice(m16, gt), t_star=t_star,
        dice_star=dice(p16 >= t_star, p32 >= t_star),
        diff_mean=p_diff.mean(), diff_p999=np.percentile(p_diff, 99.9), diff_max=p_diff.max(),
    )


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
def report_header(args, r, machine):
    return [
        "",
        "### Inference: `clci-keras predict` (`benchmarks/bench_predict.py`)",
        "",
        f"Machine: {_harness.machine_line(machine)}. Date: {_harness.today()} (UTC). "
        f"TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, "
        f"Python {platform.python_version()}. Load average (1 min) at start / middle / end: "
        f"{r['load0']:.1f} / {r['load_b']:.1f} / {r['load1']:.1f} — the {_harness.cores(machine)} cores were "
        "shared with other jobs, so absolute times are inflated and noisy; compare rows of this run with each other.",
        f"CLCI-Net 224x176, batch size {r['batch']}, threads inter-op {args.inter or 'default'} / intra-op "
        f"{args.intra or 'default (all cores)'}. Weights: {r['weights_note']}. Volume: unseen synthetic subject "
        "(int16 .nii.gz on the ATLAS grid). GFLOP per slice: nominal "
        f"{r['nominal']:.2f} (every convolution of the Keras graph), executed by the optimised graph {r['executed']:.2f}.",
        "",
    ]


def report_table(r):
    nominal, executed, plain, o32, o16 = r["nominal"], r["executed"], r["plain"], r["fp32"], r["bf16"]
    n = o32["seg"].slices_computed
    rows = [
        ("plain `model.predict`, all slices, fp32 (reference)", 189, plain["seconds"], None,
         189 * nominal / plain["seconds"], 189 * nominal / plain["seconds"], plain["cpu"],
         189 * nominal / plain["cpu"], plain["peak"]),
        ("ours fp32 (zero-state ConvLSTM), brain slices", n, o32["total"], o32["model_s"],
         n * nominal / o32["model_s"], n * executed / o32["model_s"], o32["cpu"], n * nominal / o32["cpu"], o32["peak"]),
        ("ours bf16 (+ BN folding), brain slices", n, o16["total"], o16["model_s"],
         n * nominal / o16["model_s"], n * executed / o16["model_s"], o16["cpu"], n * nominal / o16["cpu"], o16["peak"]),
    ]
    lines = [
        "| path | slices computed | s/volume (total) | s in `segment_image` | nominal GFLOP/s | executed GFLOP/s | CPU s | nominal GFLOP per CPU-s | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, sl, tot, tm, gn, ge, cpu, gc, mem in rows:
        lines.append(f"| {name} | {sl} | {tot:.1f} | {'' if tm is None else f'{tm:.1f}'} | {gn:.1f} | {ge:.1f} | "
                     f"{cpu:.1f} | {gc:.1f} | {mem:.0f} |")
    return lines


def report_paired(args, r, cores):
    nominal, executed, batch = r["nominal"], r["executed"], r["batch"]
    n_paired = args.paired_batches * batch
    pw = {k: v[0] / n_paired for k, v in r["paired"].items()}
    pc = {k: v[1] / n_paired for k, v in r["paired"].items()}
    return [
        "",
        f"- Paired timing ({args.paired_batches} batches of {batch} brain slices, the three models interleaved "
        f"batch by batch), s/slice wall (CPU): plain {pw['plain']:.3f} ({pc['plain']:.3f}), ours fp32 "
        f"{pw['fp32']:.3f} ({pc['fp32']:.3f}), ours bf16 {pw['bf16']:.3f} ({pc['bf16']:.3f}). Achieved rate "
        f"of ours fp32 vs plain: {100 * pw['plain'] / pw['fp32']:.0f} % nominal / "
        f"{100 * pw['plain'] / pw['fp32'] * executed / nominal:.0f} % executed FLOPs (CPU time: "
        f"{100 * pc['plain'] / pc['fp32']:.0f} % / {100 * pc['plain'] / pc['fp32'] * executed / nominal:.0f} %); "
        f"bf16 vs ours fp32: {pw['fp32'] / pw['bf16']:.2f}x (CPU {pc['fp32'] / pc['bf16']:.2f}x).",
        f"- Unloaded estimate (CPU seconds / {cores} cores, volume of 155 slices): ours fp32 "
        f"{155 * pc['fp32'] / cores:.0f} s, ours bf16 {155 * pc['bf16'] / cores:.0f} s, plain all slices "
        f"{189 * pc['plain'] / cores:.0f} s.",
        "",
    ]


def report_accuracy(r):
    nominal, executed, plain, o32, o16 = r["nominal"], r["executed"], r["plain"], r["fp32"], r["bf16"]
    n = o32["seg"].slices_computed
    ex, b = r["exact"], r["bf16_vs_fp32"]
    n_brain = len(r["brain"])
    return [
        f"- fp32 ours vs plain, same run: {plain['seconds'] / o32['total']:.2f}x faster per volume; achieved rate on computed slices "
        f"{100 * (n * nominal / o32['model_s']) / plain['rate']:.0f} % (nominal FLOPs) / "
        f"{100 * (n * executed / o32['model_s']) / plain['rate']:.0f} % "
        "(executed FLOPs) of the plain batched `model.predict` rate.",
        f"- Exactness: on the {n_brain} brain slices the fp32 masks differ from plain `model.predict` in "
        f"{ex['mask_diff']} voxels; probabilities bitwise equal: {ex['prob_equal']} (max |diff| {ex['prob_maxdiff']:.2g}). "
        f"Plain predicts {ex['outside']} lesion voxels on the {189 - n_brain} slices outside the brain.",
        f"- bf16 vs fp32, same run: {o32['total'] / o16['total']:.2f}x faster; Dice(bf16 mask, fp32 mask) = {b['dice']:.4f} "
        f"({b['voxels16']} vs {b['voxels32']} lesion voxels; Dice vs the synthetic ground truth: fp32 "
        f"{b['dice_gt32']:.3f}, bf16 {b['dice_gt16']:.3f}). Stress test at the threshold {b['t_star']:.3g} that gives "
        f"the fp32 mask the true lesion's size ({b['voxels_gt']} voxels): Dice {b['dice_star']:.4f}. |p_bf16 - p_fp32| on "
        f"brain slices: mean {b['diff_mean']:.2g}, 99.9th percentile {b['diff_p999']:.2g}, max {b['diff_max']:.2g}.",
    ]


def report(args, r):
    """The Markdown section of RESULTS.md for the measurements ``r``."""
    machine = _harness.machine_summary()  # TensorFlow and Keras are imported by now: their versions are recorded
    lines = report_header(args, r, machine) + report_table(r) + report_paired(args, r, _harness.cores(machine))
    lines += report_accuracy(r)
    if r["sweep"]:
        lines.append("- Batch-size sweep (optimised fp32, s/slice): "
                     + ", ".join(f"B={b}: {s:.3f}" for b, s in r["sweep"]) + ".")
    if r["thread_rows"]:
        lines.append("- Threads (fresh process each, optimised fp32, B=4, s/slice wall / CPU): "
                     + ", ".join(f"inter {t['inter']} intra {t['intra']}: {t['s_per_slice']:.3f} / {t['cpu_s_per_slice']:.3f}"
                                 for t in r["thread_rows"]) + ".")
    if r["train_peak"] is not None:
        lines.append(f"- Quick training peak RSS {r['train_peak']:.0f} MB.")
    lines.append(f"- Whole benchmark: {time.perf_counter() - r['t_start']:.0f} s.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Main benchmark
# --------------------------------------------------------------------------
def measure(args, log):
    """Run every measured configuration in order; a dict of the results for :func:`report`."""
    r = dict(load0=loadavg(), t_start=time.perf_counter())
    r["thread_rows"] = threads_sweep(log) if args.threads_sweep else []

    from clci_keras.inference import DEFAULT_BATCH_SIZE, brain_slice_indices, build_inference_model, configure_threads

    configure_threads(intra_op=args.intra or None, inter_op=args.inter or None)
    import keras
    import nibabel as nib

    from clci_keras.data.intensity import normalize_intensity
    from clci_keras.data.slicing import crop_slices, volume_to_slices

    r["batch"] = batch = args.batch_size or DEFAULT_BATCH_SIZE
    work = tempfile.mkdtemp(prefix="bench_predict_")
    weights, r["weights_note"], r["train_peak"] = get_weights(args, work, log)
    keras.backend.clear_session()
    src, label = write_eval_volume(work)

    plain = build_inference_model("clci_net", weights, optimize=False)
    fast32 = build_inference_model("clci_net", weights)
    r["nominal"], r["executed"] = count_flops(plain)
    log(f"GFLOP per slice: nominal {r['nominal']:.2f}, executed by the optimised graph {r['executed']:.2f}")

    x_all = crop_slices(volume_to_slices(normalize_intensity(np.asanyarray(nib.load(src).dataobj), "r1.1")), "clci")
    r["brain"] = brain = np.asarray(brain_slice_indices())
    fast16 = build_inference_model("clci_net", weights, precision="bf16")

    # 1b. paired timing of the three models; 2. batch-size sweep (optimised fp32)
    r["paired"] = paired_timing((("plain", plain), ("fp32", fast32), ("bf16", fast16)), x_all, brain, batch,
                                args.paired_batches, log)
    r["sweep"] = batch_sweep(fast32, x_all, brain, [int(s) for s in args.sweep.split(",") if s], args.sweep_slices, log)

    # 3. plain model.predict on all 189 slices (reference rate and masks)
    r["plain"] = time_plain(plain, x_all, batch, r["nominal"], log)
    del plain

    # 4. ours, fp32 (load + segment + save, as the CLI)
    r["fp32"] = o32 = time_ours(fast32, "fp32", src, work, x_all, brain, batch)
    r["load_b"] = loadavg()
    r["exact"] = ex = compare_with_plain(r["plain"]["probs"], o32["seg"], brain)
    log(f"ours fp32: {o32['total']:.1f} s/volume ({o32['model_s']:.1f} s segment_image), {o32['seg'].slices_computed} slices; "
        f"brain-slice mask voxels differing from plain: {ex['mask_diff']}; probabilities bitwise equal: {ex['prob_equal']}")

    # 5. ours, bf16
    r["bf16"] = o16 = time_ours(fast16, "bf16", src, work, x_all, brain, batch)
    r["bf16_vs_fp32"] = b = compare_bf16(o16["seg"], o32["seg"], label, brain)
    log(f"ours bf16: {o16['total']:.1f} s/volume, Dice vs fp32 {b['dice']:.4f} "
        f"(fp32 {b['voxels32']} voxels, bf16 {b['voxels16']})")
    r["load1"] = loadavg()
    return r


def main(argv=None):
    args = parse_args(argv)
    if args._probe:
        return thread_probe(*args._probe)
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"machine: {_harness.machine_line()}")
    text = report(args, measure(args, log))
    print(text)
    if args.append:
        _harness.append_atomic(_harness.RESULTS, text)


if __name__ == "__main__":
    main()
