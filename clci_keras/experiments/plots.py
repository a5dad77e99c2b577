"""The notebooks' figures; each function saves a PNG (atomically) and returns its path.

Slice overlays and training curves are :mod:`clci_keras.reports.figures`'.
"""
from __future__ import annotations

import numpy as np

from clci_keras.data import SliceReader, get_crop, load_subject_slices
from clci_keras.data.constants import DEFAULT_CROP
from clci_keras.experiments.analysis import SIZE_BINS_ML
from clci_keras.plotting import save
from clci_keras.reports import TABLE1, TABLE2, collect_runs
from clci_keras.reports.figures import overlay_figure, pick_slices


def lesion_volume_histogram(subjects, png, size_bins_ml=SIZE_BINS_ML, title=""):
    """Histogram of ``subjects["lesion_ml"]`` (log scale), the size-class bounds dashed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    vol = subjects["lesion_ml"].clip(lower=1e-3)
    bins = np.logspace(np.log10(vol.min()) - 0.1, np.log10(vol.max()) + 0.1, 25)
    ax.hist(vol, bins=bins, color="tab:blue", edgecolor="white")
    for b in size_bins_ml:
        ax.axvline(b, color="k", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("lesion volume (ml)")
    ax.set_ylabel("subjects")
    ax.set_title(f"{title} lesion volumes, {len(subjects)} subjects "
                 f"(dashed: small / medium / large at {list(size_bins_ml)} ml)".strip(), fontsize=9)
    fig.tight_layout()
    return save(fig, png, dpi=110, close=True)


def example_slices(h5, subjects, png, n=4, crop=DEFAULT_CROP, title=""):
    """The largest-lesion slice of ``n`` subjects spread over the lesion volumes.

    Lesion outlined in red, the ``crop`` window in yellow.
    """
    import matplotlib.pyplot as plt

    order = subjects.sort_values("lesion_ml")["index"].to_numpy()
    picks = order[np.unique(np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int))]
    rows, cols = get_crop(crop)
    by_index = subjects.set_index("index")
    fig, axes = plt.subplots(1, len(picks), figsize=(3 * len(picks), 3.6), squeeze=False)
    for ax, s in zip(axes[0], picks):
        x, y = load_subject_slices(h5, int(s), crop=None, channel_axis=False)
        z = int(np.argmax(y.reshape(len(y), -1).sum(axis=1)))
        ax.imshow(x[z], cmap="gray", origin="lower")
        if y[z].any():
            ax.contour(y[z], levels=[0.5], colors=["red"], linewidths=0.8, origin="lower")
        ax.add_patch(plt.Rectangle((cols.start, rows.start), cols.stop - cols.start, rows.stop - rows.start,
                                   fill=False, ec="yellow", lw=0.8))
        r = by_index.loc[s]
        ax.set_title(f"{r['subject_id']} z={z}\n{r['lesion_ml']:.1f} ml ({r['size']})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title} examples: lesion (red), crop window (yellow)".strip(), fontsize=9)
    fig.tight_layout()
    return save(fig, png, dpi=110, close=True)


def table_dice(runs_dir, models, table, png, part="test", title=""):
    """Per-patient Dice of each model's runs (pooled over folds) with the paper's mean beside (red star)."""
    import matplotlib.pyplot as plt

    entries = {1: TABLE1, 2: TABLE2}[int(table)]
    runs = collect_runs(runs_dir, part=part)
    labels = {e[1]: e[0] for e in entries}
    paper = {e[1]: e[-1][0] for e in entries if e[-1]}
    shown = [m for m in models if m in runs]
    fig, ax = plt.subplots(figsize=(1.4 * len(shown) + 2, 3.6))
    dsc = [[r["dsc"] for r in runs[m]["rows"]] for m in shown]
    ax.boxplot(dsc, showmeans=True)
    for i, m in enumerate(shown, 1):
        ax.scatter(np.full(len(dsc[i - 1]), i), dsc[i - 1], s=10, c="tab:blue", zorder=3)
        if m in paper:
            ax.scatter([i], [paper[m]], marker="*", s=90, c="tab:red", zorder=4,
                       label="paper mean" if i == 1 or m == shown[-1] else None)
    ax.set_xticks(range(1, len(shown) + 1), [labels.get(m, m) for m in shown], rotation=20, fontsize=8)
    ax.set_ylabel("Dice per test patient (3D)")
    ax.set_ylim(-0.02, 1.02)
    handles, names = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles[:1], names[:1], fontsize=8)
    ax.set_title(f"{title} Table {table} methods: per-patient Dice (ours), paper means (red stars)".strip(),
                 fontsize=9)
    fig.tight_layout()
    return save(fig, png, dpi=110, close=True)


def dice_vs_volume(scores, png, size_bins_ml=SIZE_BINS_ML, title=""):
    """Per-patient Dice against lesion volume, one colour per method, size-class bounds dashed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, g in scores.groupby("method", sort=False):
        ax.scatter(g["lesion_ml"].clip(lower=1e-3), g["dsc"], s=16, label=label, alpha=0.8)
    for b in size_bins_ml:
        ax.axvline(b, color="k", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("lesion volume in the crop window (ml)")
    ax.set_ylabel("Dice (3D, per patient)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_title(f"{title} Dice vs lesion volume (dashed: small / medium / large)".strip(), fontsize=9)
    fig.tight_layout()
    return save(fig, png, dpi=110, close=True)


def patient_overlay(h5, subject, crop, predictions, gt, png, texts=None, slices=None, title=None):
    """Ground truth vs each prediction of one patient (:func:`clci_keras.reports.figures.overlay_figure`).

    ``predictions``: ``{row label: (S, H, W) probabilities}`` in the ``crop``
    window; ``slices`` default: picked around the lesion and every prediction.
    """
    with SliceReader(h5, crop) as reader:
        x, _ = reader.read_subject(int(subject))
    preds = {label: np.asarray(p, np.float32) for label, p in predictions.items()}
    if slices is None:
        union = np.max(np.stack([p > 0.5 for p in preds.values()]), axis=0)
        slices = pick_slices(gt, 4, union)
    return overlay_figure(x[..., 0], gt, preds, png, slices=slices, scores=texts, title=title)


def network_overlay(network, h5, subject, crop, png, label="prediction", text=None, n=4, title=None):
    """Ground truth vs ``network`` on ``n`` slices of one patient, picked around the lesion.

    Only the drawn slices are predicted (:func:`clci_keras.models.predict_slices`),
    so a figure costs one batch, not a whole patient.
    """
    from clci_keras.models import predict_slices  # Keras

    x, gt = load_subject_slices(h5, int(subject), crop=crop, channel_axis=False)
    z = pick_slices(gt, n)
    prob = np.zeros(gt.shape, np.float32)
    prob[z] = predict_slices(network, x[z])
    return overlay_figure(x, gt, {label: prob}, png, slices=z, scores={label: text} if text else None,
                          title=title)
