"""Figures: slice overlays of ground truth vs prediction, and training curves."""
from __future__ import annotations

import csv
import os

import numpy as np

from clci_keras.plotting import save


def _pyplot():
    # No matplotlib.use(): pyplot falls back to Agg on headless machines by itself,
    # and forcing a backend here would switch off Jupyter's inline figures.
    import matplotlib.pyplot as plt

    return plt


def pick_slices(gt, n=4, extra=None):
    """``n`` slice indices spread over the lesion's extent (largest-area slice included).

    ``extra`` (optional, same shape) adds its voxels to the lesion extent, e.g.
    a prediction, so false positives show up too. Falls back to the middle slices.
    """
    area = np.asarray(gt).reshape(len(gt), -1).sum(axis=1).astype(float)
    if extra is not None:
        area = area + 0.5 * np.asarray(extra).reshape(len(gt), -1).sum(axis=1)
    nz = np.flatnonzero(area)
    if nz.size == 0:
        mid = len(gt) // 2
        return sorted({int(np.clip(mid + d, 0, len(gt) - 1)) for d in range(-n // 2, n - n // 2)})
    picks = set(np.linspace(nz[0], nz[-1], n + 2)[1:-1].round().astype(int).tolist())
    picks.add(int(np.argmax(area)))
    picks = sorted(picks, key=lambda i: -area[i])[:n]
    return sorted(picks)


def overlay_figure(image, gt, predictions, out_png, slices=None, n=4, threshold=0.5, title=None,
                   scores=None, dpi=110):
    """Grid of axial slices: T1 in grey, ground truth (green outline), prediction (red fill).

    Args:
        image: ``(S, H, W)`` intensities of one patient.
        gt: ``(S, H, W)`` ground-truth mask.
        predictions: ``{row label: (S, H, W) probabilities}``; one figure row each.
        out_png: output path (written via a temporary file).
        slices: slice indices to show (default :func:`pick_slices`).
        scores: optional ``{row label: text}`` appended to each row's label.
    """
    plt = _pyplot()
    gt = np.asarray(gt) > 0.5
    first = next(iter(predictions.values()))
    slices = list(slices) if slices is not None else pick_slices(gt, n, np.asarray(first) > threshold)
    rows = len(predictions)
    fig, axes = plt.subplots(rows, len(slices), figsize=(2.3 * len(slices), 2.9 * rows + 0.4),
                             squeeze=False)
    lo, hi = np.percentile(np.asarray(image)[np.asarray(image) > 0], [1, 99]) if np.any(
        np.asarray(image) > 0) else (0, 1)
    for r, (label, prob) in enumerate(predictions.items()):
        pred = np.asarray(prob) > threshold
        for c, z in enumerate(slices):
            ax = axes[r, c]
            ax.imshow(image[z], cmap="gray", vmin=lo, vmax=hi, origin="lower")
            red = np.zeros(pred[z].shape + (4,))
            red[pred[z]] = (1.0, 0.15, 0.1, 0.55)
            ax.imshow(red, origin="lower")
            if gt[z].any():
                ax.contour(gt[z], levels=[0.5], colors=["lime"], linewidths=0.9, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"slice z={z}", fontsize=8)
            if c == 0:
                text = label + (f"\n{scores[label]}" if scores and label in scores else "")
                ax.set_ylabel(text, fontsize=8)
    fig.suptitle(title or "ground truth (green outline) vs prediction (red)", fontsize=9)
    fig.tight_layout()
    save(fig, out_png, dpi, close=True)
    return out_png


def training_curves(log_csv, out_png, title=None, dpi=110):
    """Loss, Dice and learning rate per epoch from a Keras ``CSVLogger`` file."""
    plt = _pyplot()
    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{log_csv}: no epochs logged")
    ep = [int(float(r["epoch"])) + 1 for r in rows]

    def col(name):
        out = []
        for r in rows:
            try:
                out.append(float(r.get(name)))
            except (TypeError, ValueError):  # empty or "NA" (no validation data)
                out.append(np.nan)
        return out

    panels = [("loss", ["loss", "val_loss"]), ("Dice (soft, batch)", ["dice_coef", "val_dice_coef"]),
              ("learning rate", ["learning_rate", "lr"])]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, (name, keys) in zip(axes, panels):
        for k in keys:
            if k in rows[0]:
                ax.plot(ep, col(k), marker="o", ms=3, label=k)
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=9)
        if name == "learning rate":
            ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title or os.path.basename(os.path.dirname(os.path.abspath(log_csv))), fontsize=9)
    fig.tight_layout()
    save(fig, out_png, dpi, close=True)
    return out_png
