"""What the notebooks compute besides training: data summaries, pooled scores, per-method predictions.

Tables are pandas DataFrames; each function writes nothing unless given a path.
"""
from __future__ import annotations

import glob
import os

import numpy as np

from clci_keras.data import crop_shape, dataset_info, load_split, read_subjects, select_slices
from clci_keras.data.constants import DEFAULT_CROP
from clci_keras.evaluation import evaluate_model, predict_subject, summarize
from clci_keras.fileio import atomic_text, read_json, write_json
from clci_keras.models import build_with_weights
from clci_keras.run_layout import CONFIG_FILE, RESULT_FILE, scores_file

#: Lesion-size classes in ml: small below 5, medium, large from 30 (our choice;
#: the paper does not analyse lesion size).
SIZE_BINS_ML = (5.0, 30.0)
SIZE_LABELS = ("small", "medium", "large")


def size_classes(lesion_ml, size_bins_ml=SIZE_BINS_ML):
    """``small`` / ``medium`` / ``large`` of each lesion volume (ml), bins closed on the left.

    A categorical Series (every class a category, present or not) with the
    index of ``lesion_ml`` when that is a Series.
    """
    import pandas as pd

    small, large = size_bins_ml
    values = lesion_ml if isinstance(lesion_ml, pd.Series) else pd.Series(lesion_ml)
    return pd.cut(values, [-np.inf, small, large, np.inf], right=False, labels=list(SIZE_LABELS))


def data_label(quick=False, synthetic=False):
    """The mark of a run's outputs: ``"QUICK SYNTHETIC"``, ``"SYNTHETIC"``, ``"QUICK "``, or ``""``."""
    return ("QUICK " if quick else "") + ("SYNTHETIC" if synthetic else "")


def is_synthetic(h5):
    """Whether the HDF5 file holds synthetic data (its attributes)."""
    return bool(dataset_info(h5)["synthetic"])


# ---------------------------------------------------------------------------
# 01: the data
# ---------------------------------------------------------------------------
def describe_data(h5, tables_dir=None, size_bins_ml=SIZE_BINS_ML, crop=DEFAULT_CROP, quick=False):
    """Subjects of ``h5`` with slice counts and lesion volumes, and a summary.

    Slice counts per subject as training selects them
    (:func:`clci_keras.data.select_slices`): all 189, the 155 inside the
    MNI152 brain mask, and those with lesion voxels inside ``crop``. With
    ``tables_dir`` writes ``subjects.csv`` and ``summary.json`` there.

    Returns:
        ``(subjects DataFrame, summary dict)``.
    """
    import pandas as pd

    info = dataset_info(h5)
    subjects = pd.DataFrame(read_subjects(h5))
    subjects["lesion_ml"] = subjects["lesion_voxels"] / 1000.0  # 1 mm isotropic voxels
    for spec in ("all", "brain", "lesion"):
        idx = select_slices(h5, subjects["index"].tolist(), spec, crop=crop)
        per = np.searchsorted(subjects["offset"].to_numpy(), idx, side="right") - 1
        subjects[f"{spec}_slices"] = np.bincount(per, minlength=len(subjects))
    subjects["size"] = size_classes(subjects["lesion_ml"], size_bins_ml)
    cols = ["index", "subject_id", "site", "session", "lesion_voxels", "lesion_ml", "size",
            "all_slices", "brain_slices", "lesion_slices"]
    subjects = subjects[[c for c in cols if c in subjects] + [c for c in subjects if c not in cols]]
    summary = {
        "h5": os.path.abspath(h5), "synthetic": info["synthetic"], "quick": bool(quick),
        "layout": info.get("layout"), "intensity_scheme": info.get("intensity_scheme"),
        "subjects": len(subjects), "slices": int(info.get("slices", subjects["count"].sum())),
        "lesion_slices": int(subjects["lesion_slices"].sum()),
        "lesion_ml": subjects["lesion_ml"].describe().round(3).to_dict(),
        "size_bins_ml": list(size_bins_ml),
        "size_counts": {k: int(v) for k, v in
                        subjects["size"].value_counts().reindex(list(SIZE_LABELS), fill_value=0).items()},
    }
    if tables_dir is not None:
        os.makedirs(tables_dir, exist_ok=True)
        with atomic_text(os.path.join(tables_dir, "subjects.csv"), newline="") as f:
            subjects[[c for c in cols if c in subjects]].to_csv(f, index=False)
        write_json(os.path.join(tables_dir, "summary.json"), summary)
    return subjects, summary


# ---------------------------------------------------------------------------
# 02-04: scores of runs
# ---------------------------------------------------------------------------
def pooled_scores(runs, part="test"):
    """Per-patient rows of several runs (:func:`train_and_evaluate` results), with a ``fold`` column."""
    import pandas as pd

    frames = [pd.read_csv(os.path.join(r["run_dir"], scores_file(part)), dtype={"subject_id": str, "site": str})
              .assign(model=r["model"], fold=r["fold"]) for r in runs]
    return pd.concat(frames, ignore_index=True)


def score_summary(scores, label=""):
    """Mean, std and n of every score over the rows of ``scores`` (each patient once), marked ``label``."""
    import pandas as pd

    table = pd.DataFrame(summarize(scores.to_dict("records"))).T[["mean", "std", "n"]]
    table.insert(0, "data", label or "ATLAS")
    return table


# ---------------------------------------------------------------------------
# 05: weights of several methods on the same patients
# ---------------------------------------------------------------------------
def find_runs(runs_dir, models, fold=None):
    """Finished runs of ``models`` on ``fold`` below ``runs_dir``: ``{model: (config, weights path)}``."""
    found = {}
    for cfg_path in sorted(glob.glob(os.path.join(runs_dir or "", "**", CONFIG_FILE), recursive=True)):
        run = os.path.dirname(cfg_path)
        res_path = os.path.join(run, RESULT_FILE)
        cfg = read_json(cfg_path)
        if cfg.get("model") in models and cfg.get("fold") == fold and os.path.exists(res_path):
            found.setdefault(cfg["model"], (cfg, os.path.join(run, read_json(res_path)["weights"])))
    return found


def split_subjects(split_path, part="test", fold=None):
    """Subject indices of ``part`` of ``fold`` of a split file."""
    split = load_split(split_path)
    p = split["folds"][fold] if ("folds" in split and fold is not None) else split
    return [int(s) for s in p[part]]


class Methods:
    """Weights of several methods (``{label: (model name, weights path)}``) on one crop window.

    Networks are built on demand and one at a time; weights of a model that
    is already built are loaded into it (no new network, no new prediction
    function), e.g. our CLCI-Net and the authors' CLCI-Net.
    """

    def __init__(self, methods, crop, split=None):
        self.methods = {label: tuple(v) for label, v in methods.items()}
        if not self.methods:
            raise ValueError("no weights: give run folders, weights files or the authors' weights")
        self.crop = crop
        self.split = split  # the split file the runs were trained with (if known)
        self._net = None  # (model name, weights path, network)

    @classmethod
    def from_runs(cls, runs_dir, models, fold=None, weights=None, original_weights=None, crop=None):
        """The finished runs of ``models`` on ``fold`` below ``runs_dir``, plus more weights files.

        Args:
            weights: ``{label: (model name, weights path)}`` added after the runs.
            original_weights: the authors' Keras 2 CLCI-Net ``.h5`` (label
                ``"clci_net (authors)"``).
            crop: crop window; ``None``: the runs' (they must agree), else ``"clci"``
                (:data:`~clci_keras.data.constants.DEFAULT_CROP`).
        """
        runs = find_runs(runs_dir, models, fold) if runs_dir else {}
        missing = [m for m in models if m not in runs]
        if runs_dir and missing:
            print(f"no finished run of {missing} (fold {fold}) below {runs_dir}; they are left out")
        methods = {m: (m, runs[m][1]) for m in models if m in runs}
        methods.update({label: tuple(v) for label, v in (weights or {}).items()})
        if original_weights:
            methods["clci_net (authors)"] = ("clci_net", os.fspath(original_weights))
        if crop is None:
            crops = {cfg["crop"] for cfg, _ in runs.values()}
            if len(crops) > 1:
                raise ValueError(f"the runs use different crop windows {sorted(crops)}; give crop=")
            crop = crops.pop() if crops else DEFAULT_CROP
        split = next(iter(runs.values()))[0].get("split") if runs else None
        return cls(methods, crop, split)

    def __iter__(self):
        return iter(self.methods)

    def __len__(self):
        return len(self.methods)

    def network(self, label):
        """The network of ``label`` with its weights loaded."""
        name, path = self.methods[label]
        if self._net is None or self._net[:2] != (name, path):
            self._net = None  # one network in memory at a time
            self._net = (name, path, build_with_weights(name, path, input_shape=(*crop_shape(self.crop), 1)))
        return self._net[2]

    def __repr__(self):
        lines = [f"crop {self.crop}, split {self.split}"]
        lines += [f"  {label:22s} {name:14s} {path}" for label, (name, path) in self.methods.items()]
        return "\n".join(lines)

    def score(self, h5, subjects, eval_slices="all", keep_predictions="auto", progress=True):
        """Per-patient 3D scores of every method (:func:`clci_keras.evaluation.evaluate_model`).

        Returns ``(scores DataFrame, predictions)``: one row per method and
        patient (``method`` column, ``lesion_ml`` added: ground-truth volume in
        the crop window, 1 mm isotropic voxels); ``predictions`` maps
        ``(label, subject)`` to ``(probability as float16, ground truth)`` when
        ``keep_predictions`` (``"auto"``: when they take at most 2 GB), else
        it is empty and :meth:`patient` predicts again.
        """
        import pandas as pd

        if keep_predictions == "auto":
            h, w = crop_shape(self.crop)
            keep_predictions = len(subjects) * len(self.methods) * 189 * h * w * 2 <= 2e9
        rows, predictions = [], {}
        first = {}  # methods of the same model one after the other: its network is reused
        for name, _ in self.methods.values():
            first.setdefault(name, len(first))
        order = sorted(self.methods, key=lambda label: first[self.methods[label][0]])
        by_label = {}
        for label in order:
            out = evaluate_model(self.network(label), h5, subjects, crop=self.crop, slices=eval_slices,
                                 progress=progress, keep_predictions=keep_predictions)
            for r in out:
                if keep_predictions:
                    predictions[label, r["subject_index"]] = (r.pop("_prob").astype(np.float16), r.pop("_gt"))
            by_label[label] = out
        for label in self.methods:  # rows in the order the methods were given
            rows += [{"method": label, **r} for r in by_label[label]]
        scores = pd.DataFrame(rows)
        scores["lesion_ml"] = scores["gt_voxels"] / 1000.0  # 1 mm isotropic voxels, inside the crop window
        return scores, predictions

    def patient(self, h5, subject, predictions=None, eval_slices="all"):
        """``({label: probability}, ground truth)`` of one patient: kept predictions, else predicted now."""
        predictions = predictions or {}
        if all((label, subject) in predictions for label in self.methods):
            gt = predictions[next(iter(self.methods)), subject][1]
            return {label: np.asarray(predictions[label, subject][0], np.float32) for label in self.methods}, gt
        return self.predict(h5, subject, eval_slices)

    def predict(self, h5, subject, eval_slices="all"):
        """``{label: probability}`` and the ground truth of one patient, every method."""
        probs, gt = {}, None
        for label in self.methods:
            probs[label], gt = predict_subject(self.network(label), h5, subject, crop=self.crop, slices=eval_slices)
        return probs, gt


def failure_cases(scores, n=3):
    """The ``n`` lowest-Dice patients of each method, labelled by what went wrong.

    *missed* (no true-positive voxel), *over-segmentation* (more predicted than
    true voxels), *under-segmentation* (otherwise).
    """
    worst = scores.sort_values("dsc").groupby("method", sort=False).head(int(n)).copy()
    worst["failure"] = np.where(worst["tp_voxels"] == 0, "missed",
                                np.where(worst["pred_voxels"] > worst["gt_voxels"],
                                         "over-segmentation", "under-segmentation"))
    return worst


def dice_by_size(scores):
    """Mean, std and count of Dice per method and lesion-size class (every class, even if empty)."""
    import pandas as pd

    scores = scores.assign(size=pd.Categorical(scores["size"], categories=list(SIZE_LABELS)))
    return (scores.groupby(["method", "size"], sort=False, observed=False)["dsc"]
            .agg(["mean", "std", "count"]).round(3).reset_index())
