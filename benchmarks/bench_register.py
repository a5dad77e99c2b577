"""Benchmark of `clci-keras predict --register`: registration next to prediction, per scan.

1. Registration (dipy affine, :func:`clci_keras.inference.register_to_mni`)
   of synthetic native-space scans: the MNI152 template (x 90) moved by a
   known random affine (rotation <= 15 deg, scale 0.9-1.1, shift <= 10 mm) to
   a 1.2 x 1.0 x 1.3 mm PIR grid. Seconds per scan and mean / max error (mm)
   of the found transform over the MNI152 brain, for the default schedule
   (3 mm, 100 + 30 iterations) and the tests' fast one (4 mm, 50 + 20).
2. Prediction of one registered scan with CLCI-Net 224 x 176 (fp32, random
   weights: the time does not depend on them), brain slices only.
3. Minimum-component-size clean-up: lesion-wise F1 (26-connectivity,
   :func:`clci_keras.evaluation.metrics.segmentation_scores`) of simulated
   predictions on synthetic subjects (ground truth with a perturbed boundary
   plus small false-positive blobs), for several minimum sizes.

    python benchmarks/bench_register.py --append
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _harness  # noqa: E402  (puts the checkout on sys.path)
import numpy as np  # noqa: E402
from clci_keras.data.synthetic import axis_rotation as _rot  # noqa: E402


def native_case(seed):
    import nibabel as nib

    from clci_keras.data.constants import ATLAS_SHAPE
    from clci_keras.inference import ATLAS_AFFINE
    from clci_keras.inference.register import resample, template

    rng = np.random.default_rng(seed)
    tpl, _ = template()
    a = np.eye(4)
    ang = rng.uniform(-15, 15, 3)
    a[:3, :3] = _rot(0, ang[0]) @ _rot(1, ang[1]) @ _rot(2, ang[2]) @ np.diag(rng.uniform(0.9, 1.1, 3))
    a[:3, 3] = rng.uniform(-10, 10, 3)
    perm = np.zeros((3, 3))
    perm[1, 0], perm[2, 1], perm[0, 2] = -1, -1, 1
    n = np.eye(4)
    n[:3, :3] = perm * np.array([1.2, 1.0, 1.3])[None, :]
    shape = (190, 172, 150)
    n[:3, 3] = np.array([0.0, -18.0, 10.0]) - n[:3, :3] @ ((np.array(shape) - 1) / 2)
    data = resample(tpl * 90.0, ATLAS_AFFINE, a @ n, shape)
    data += rng.normal(0, 1.0, shape).astype(np.float32) * (data > 0)
    assert tpl.shape == ATLAS_SHAPE
    return nib.Nifti1Image(np.clip(data, 0, None), n), a


def transform_error(reg, a_true):
    from nilearn.datasets import load_mni152_brain_mask

    from clci_keras.inference import ATLAS_AFFINE

    bm = np.asanyarray(load_mni152_brain_mask(resolution=1).dataobj) > 0
    pts = np.argwhere(bm)[::50] + ATLAS_AFFINE[:3, 3]
    pts = np.c_[pts, np.ones(len(pts))]
    d = np.linalg.norm((reg.mni_to_native @ pts.T - np.linalg.inv(a_true) @ pts.T)[:3], axis=0)
    return float(d.mean()), float(d.max())


def cleanup_effect(n_subjects, sizes, seed=0):
    from scipy import ndimage

    from clci_keras.data.synthetic import generate_subject
    from clci_keras.evaluation.metrics import segmentation_scores
    from clci_keras.inference import remove_small_components

    rows = {s: [] for s in sizes}
    for k in range(n_subjects):
        sub = generate_subject(seed=seed, index=k)
        gt = np.zeros(sub.t1.shape, bool)
        for m in sub.masks:
            gt |= np.asarray(m) > 0
        rng = np.random.default_rng([seed, k, 7])
        # boundary perturbation: smoothed noise added to the signed distance
        noise = ndimage.gaussian_filter(rng.normal(0, 1, gt.shape).astype(np.float32), 2) * 8
        dist = ndimage.distance_transform_edt(~gt) - ndimage.distance_transform_edt(gt)
        pred = (dist + noise) < 0.5
        head = sub.t1 > 0.3 * sub.t1.max()
        cand = np.argwhere(head & ~ndimage.binary_dilation(gt, iterations=5))
        for c in cand[rng.choice(len(cand), rng.poisson(6), replace=False)]:  # false-positive blobs
            r = rng.uniform(0.8, 3.5)
            lo = np.maximum(c - 4, 0)
            hi = np.minimum(c + 5, gt.shape)
            zz = np.indices(tuple(hi - lo)).reshape(3, -1).T + lo
            inside = zz[np.linalg.norm(zz - c, axis=1) <= r]
            pred[tuple(inside.T)] = True
        for s in sizes:
            p, _ = remove_small_components(pred, s)
            sc = segmentation_scores(gt, p.astype(np.float32))
            rows[s].append((sc["lesion_f1"], sc["dsc"]))
    return {s: (float(np.mean([r[0] for r in v])), float(np.mean([r[1] for r in v]))) for s, v in rows.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=2, help="synthetic native scans to register per schedule")
    ap.add_argument("--no-predict", action="store_true", help="skip the CLCI-Net prediction timing")
    ap.add_argument("--cleanup-subjects", type=int, default=8)
    ap.add_argument("--append", action="store_true", help="append the section to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    import dipy

    from clci_keras.inference import build_inference_model, register_to_mni, segment_image

    machine = _harness.machine_summary()
    print(f"machine: {_harness.machine_line(machine)}", flush=True)
    load = [os.getloadavg()[0]]
    t_all = time.perf_counter()
    schedules = [("default: 3 mm, 100 + 30 iterations", dict(resolution=3.0, iterations=(100, 30))),
                 ("tests: 4 mm, 50 + 20 iterations", dict(resolution=4.0, iterations=(50, 20)))]
    reg_rows, regs = [], {}
    for label, opts in schedules:
        secs, errs = [], []
        for s in range(args.scans):
            img, a = native_case(s)
            reg = register_to_mni(img, **opts)
            secs.append(reg.seconds)
            errs.append(transform_error(reg, a))
            regs.setdefault(label, (img, reg))
            print(f"{label} scan {s}: {reg.seconds:.1f} s, similarity {reg.similarity:.3f} "
                  f"(before {reg.similarity_before:.3f}), error mean/max {errs[-1][0]:.2f}/{errs[-1][1]:.2f} mm",
                  flush=True)
        reg_rows.append((label, np.mean(secs), np.mean([e[0] for e in errs]), np.max([e[1] for e in errs])))
    load.append(os.getloadavg()[0])
    pred_s = None
    if not args.no_predict:
        img, reg = regs[schedules[0][0]]
        model = build_inference_model("clci_net")
        t = time.perf_counter()
        seg = segment_image(model, img, registration=reg, check_intensity=False)
        pred_s = time.perf_counter() - t
        print(f"CLCI-Net fp32 prediction of the registered scan: {pred_s:.1f} s ({seg.slices_computed} slices)",
              flush=True)
    load.append(os.getloadavg()[0])
    sizes = (0, 10, 30, 100)
    clean = cleanup_effect(args.cleanup_subjects, sizes)
    for s, (f1, dice) in clean.items():
        print(f"min lesion size {s} mm3: lesion-wise F1 {f1:.3f}, Dice {dice:.4f}", flush=True)
    load.append(os.getloadavg()[0])
    total = time.perf_counter() - t_all

    lines = [
        "### Inference: `clci-keras predict --register` (`benchmarks/bench_register.py`)",
        "",
        f"Machine: {_harness.machine_line(machine)}. Date: {_harness.today()} (UTC). dipy {dipy.__version__}, "
        f"Python {platform.python_version()}. Load average (1 min) at start / after registration / after "
        f"prediction / end: {' / '.join(f'{x:.1f}' for x in load)}"
        + (" — the 2 cores were shared with other jobs; absolute times are inflated, compare rows of this run."
           if max(load) > 1.5 else "."),
        "",
        f"Registration of {args.scans} synthetic native-space scans per schedule (template x 90 moved by a known "
        "random affine, rotation <= 15 deg, scale 0.9-1.1, shift <= 10 mm, 1.2 x 1.0 x 1.3 mm PIR grid); "
        "error = distance between the found and the true transform over the MNI152 brain.",
        "",
        "| step | s / scan | error mean (mm) | error max (mm) |",
        "|---|---|---|---|",
    ]
    for label, s, e_mean, e_max in reg_rows:
        lines.append(f"| registration (dipy), {label} | {s:.1f} | {e_mean:.2f} | {e_max:.2f} |")
    if pred_s is not None:
        lines.append(f"| prediction, CLCI-Net 224x176 fp32, 155 brain slices, registered scan | {pred_s:.1f} | | |")
    lines += [
        "",
        f"Minimum-component-size clean-up (`--min-lesion-size`), {args.cleanup_subjects} synthetic subjects, "
        "simulated predictions (ground truth with a perturbed boundary plus Poisson(6) false-positive blobs of "
        "radius 0.8-3.5 voxels); lesion-wise F1 with 26-connectivity:",
        "",
        "| min lesion size (mm^3) | lesion-wise F1 | Dice |",
        "|---|---|---|",
    ]
    for s, (f1, dice) in clean.items():
        lines.append(f"| {s}{' (off, default)' if s == 0 else ''} | {f1:.3f} | {dice:.4f} |")
    lines += ["", f"- Whole benchmark: {total:.0f} s."]
    text = "\n".join(lines)
    print(text)
    if args.append:
        _harness.append_atomic(_harness.RESULTS, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
