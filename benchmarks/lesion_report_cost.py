"""Cost of the lesion report per scan (issue 33): ``python3 benchmarks/lesion_report_cost.py``.

A synthetic template-grid mask with four components (ball radii 8, 5, 4 and 1 mm), its probability
map and two members (ensemble / TTA), through :func:`clci_keras.inference.lesions.lesion_report`
(which includes :func:`~clci_keras.inference.lesions.lesion_load`). Prints the one-off cost of
reading the atlases (first call in a process) and the per-scan cost after it (median of 5),
with tracemalloc's peak of Python-allocated memory during one report and the process's peak RSS.
``--segment``: first the segmentation of a synthetic scan with CLCI-Net (224 x 176, random weights:
the time does not depend on them) through the engine, so both costs come from one run.
"""
import resource
import statistics
import time
import tracemalloc

import numpy as np

from clci_keras.data import regions
from clci_keras.data.constants import ATLAS_AFFINE, ATLAS_SHAPE
from clci_keras.inference.lesions import lesion_load, lesion_report


def _mask():
    mask = np.zeros(ATLAS_SHAPE, bool)
    for c, r in (([30, 20, 30], 8), ([-22, -15, 20], 5), ([20, -65, -30], 4), ([40, -10, -5], 1)):
        g = np.indices((2 * r + 1,) * 3).reshape(3, -1).T - r  # a ball, drawn in its own small box
        g = g[np.linalg.norm(g, axis=1) <= r] + np.round(np.array(c) - ATLAS_AFFINE[:3, 3]).astype(int)
        mask[tuple(g.T)] = True
    return mask


def _segmentation_cost():
    """Seconds and peak RSS (MiB) of one engine segmentation of a template-grid scan with CLCI-Net."""
    import nibabel as nib

    from clci_keras.inference.engine import SegmentationEngine
    from clci_keras.inference.predict import build_inference_model

    data = np.zeros(ATLAS_SHAPE, np.float32)
    data[30:170, 30:200, 10:150] = 80.0
    data[_mask()] = 250.0
    engine = SegmentationEngine.from_models(build_inference_model("clci_net"), check_intensity=False)
    engine.segment(nib.Nifti1Image(data, ATLAS_AFFINE))  # warm-up: the first call traces
    t = time.perf_counter()
    seg = engine.segment(nib.Nifti1Image(data, ATLAS_AFFINE))
    seconds = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"segmentation (CLCI-Net fp32, {seg.slices_computed} slices, engine): {seconds:.1f} s; peak RSS {rss:.0f} MiB")


def main():
    import sys

    if "--segment" in sys.argv:
        _segmentation_cost()
    mask = _mask()
    prob = np.where(mask, 0.9, 0.05).astype(np.float32)
    members = [np.where(mask, 0.8, 0.0).astype(np.float32), np.where(mask, 0.95, 0.0).astype(np.float32)]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    lesion_report(mask, ATLAS_AFFINE, probability=prob, members=members)
    first = time.perf_counter() - t
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(5):
        t = time.perf_counter()
        lesion_report(mask, ATLAS_AFFINE, probability=prob, members=members)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    lesion_load(mask)
    load_s = time.perf_counter() - t
    tracemalloc.start()
    report = lesion_report(mask, ATLAS_AFFINE, probability=prob, members=members)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(f"atlas {regions.DEFAULT_ATLAS}, {len(report.lesions)} components, {mask.sum()} voxels, 2 members")
    print(f"first report in the process (reads the atlases): {first:.2f} s; peak RSS {rss0:.0f} -> {rss1:.0f} MiB")
    print(f"per scan after it: {statistics.median(times):.2f} s (median of 5; min {min(times):.2f}), "
          f"of which lesion_load {load_s:.2f} s; tracemalloc peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
