"""Write the five notebooks of this folder (without outputs) from the cell sources below.

Usage: ``python notebooks/make_notebooks.py`` (rewrites ``notebooks/0*.ipynb``).

Every notebook has one cell tagged ``parameters`` (papermill injects values
after it) and a ``QUICK`` switch: a tiny synthetic run for CI and a first look
on a laptop CPU. With the defaults (``QUICK = False``) on a real ATLAS file the
notebooks follow the paper's protocol (docs/notebooks.md). Shared snippets
(settings, data, split, training loop) are defined once here, so the
notebooks stay consistent with each other.
"""
from __future__ import annotations

import os
import sys
import textwrap

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

#: 64 x 64 window of the slices used by QUICK runs (rows, columns of the 233 x 197
#: slice): left hemisphere around the middle-cerebral-artery territory, where the
#: synthetic lesions lie; 10x fewer pixels than CLCI-Net's 224 x 176 window.
QUICK_CROP = "72:136,32:96"

TABLE1_MODELS = ["fcn8s", "pspnet", "deeplabv3plus", "denseunet", "baseline", "clci_net"]
TABLE2_MODELS = ["baseline", "clci_aspp", "clci_aspp_clf", "clci_net"]


def md(text):
    # Lines of the source are indented by 8; inserted snippets (RUN_HOWTO) are not.
    lines = [line[8:] if line.startswith(" " * 8) else line for line in text.split("\n")]
    return nbformat.v4.new_markdown_cell("\n".join(lines).strip("\n"))


def code(*parts, tags=None):
    """A code cell from source ``parts``, each dedented on its own, joined by newlines."""
    text = "\n".join(textwrap.dedent(p).strip("\n") for p in parts)
    cell = nbformat.v4.new_code_cell(text)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def setup_cell(params_src, quick_src):
    """The setup cell: QUICK_SETTINGS, the protocol defaults they replace, and SETUP_COMMON."""
    params, quick = {}, {}
    exec(textwrap.dedent(params_src), params)
    exec(textwrap.dedent(quick_src), quick)
    defaults = {k: params[k] for k in quick["QUICK_SETTINGS"]}
    return code(quick_src, f"PROTOCOL_DEFAULTS = {defaults!r}", SETUP_COMMON)


def notebook(cells):
    nb = nbformat.v4.new_notebook()
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating gives the same files
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


# ---------------------------------------------------------------------------
# Shared snippets
# ---------------------------------------------------------------------------
RUN_HOWTO = """
Run it in Jupyter (edit the `parameters` cell; paths are relative to the notebook's folder),
or headless with papermill:

```bash
papermill notebooks/{name}.ipynb out.ipynb {full} -p OUT_DIR outputs/{name}
papermill notebooks/{name}.ipynb out.ipynb -p QUICK True {quick}-p OUT_DIR /tmp/{name}   # minutes on a CPU
```
"""
H5_EXAMPLE = "-p DATA outputs/01_prepare_data/atlas.h5"


QUICK_NOTE = """
**`QUICK = True`** gives every setting of `QUICK_SETTINGS` below that is still at its protocol
default its QUICK value (synthetic data, a 64 x 64 crop window, a couple of training steps,
evaluation on the brain slices only); settings you changed are kept. It checks that everything
runs end to end in a few minutes on a CPU; its numbers are **not** the paper's protocol and say
nothing about accuracy. Every output of such a run is marked `QUICK` / `SYNTHETIC`.
"""

TRAIN_PARAMS = """
DATA = "outputs/01_prepare_data/atlas.h5"  # HDF5 slice file (notebook 01 / `clci-keras prep`),
                          # or "synthetic": a synthetic file made here
OUT_DIR = "outputs/{name}"
SPLIT = "kfold"           # "kfold" (paper: 5-fold CV, X-Net's contiguous folds), "holdout", or a split JSON
K = 5                     # number of folds (SPLIT kfold)
FOLDS = "all"             # "all" or a list of fold numbers, e.g. [0]
VAL_FRACTION = 0.1        # k-fold: last fraction of each fold's training subjects used for validation
                          # (docs/training.md; X-Net validated on the test fold; 0: none, monitor the loss)
EPOCHS = 100              # maximum epochs (EarlyStopping patience 5, ReduceLROnPlateau x0.2 after 3)
BATCH_SIZE = 8
LEARNING_RATE = 1e-4      # Adam, as CLCI_Net.py
STEPS_PER_EPOCH = None    # None: training slices // BATCH_SIZE (X-Net)
TRAIN_SLICES = "all"      # "all" (protocol), "brain", "lesion" or "lesion+N"
VAL_SLICES = "all"        # slices of the validation subjects scored after each epoch
CROP = "clci"             # 224 x 176 window (paper); "xnet" (224 x 192) or "r0:r1,c0:c1"
BN_MOMENTUM = None        # None keeps Keras' 0.99
MIXED_PRECISION = "off"   # "bf16" / "fp16" on recent GPUs (a departure from the paper)
EVAL_SLICES = "all"       # "all" (protocol) or "brain" (the 155 brain slices; faster)
SEED = 0
N_SYNTHETIC = 16          # subjects generated for synthetic DATA
QUICK = False
"""

def train_quick(epochs):
    """QUICK_SETTINGS of the training notebooks (02: 2 epochs for a curve; 03/04: 1)."""
    return f"""
QUICK_SETTINGS = dict(
    DATA="synthetic", N_SYNTHETIC=3, SPLIT="kfold", K=3, FOLDS=[0], VAL_FRACTION=0.5, EPOCHS={epochs}, STEPS_PER_EPOCH=1,
    BATCH_SIZE=2, TRAIN_SLICES="lesion", VAL_SLICES="lesion", CROP={QUICK_CROP!r}, LEARNING_RATE=1e-3, BN_MOMENTUM=0.9,
    EVAL_SLICES="brain",
)
"""

SETUP_COMMON = """
import glob
import json
import os
import time

import h5py
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import Image, Markdown, display

import clci_keras


def show(fig, png):  # save the figure, then show the file (whatever the matplotlib backend)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    display(Image(filename=png))


T0 = time.time()
if QUICK:  # QUICK values for the settings left at their protocol defaults
    for _name, _value in QUICK_SETTINGS.items():
        if globals()[_name] == PROTOCOL_DEFAULTS[_name]:
            globals()[_name] = _value
    print("QUICK settings:", {_name: globals()[_name] for _name in QUICK_SETTINGS})
SYNTHETIC = DATA == "synthetic"
FIG_DIR = os.path.join(OUT_DIR, "figures")
TAB_DIR = os.path.join(OUT_DIR, "tables")
for d in (OUT_DIR, FIG_DIR, TAB_DIR):
    os.makedirs(d, exist_ok=True)
MODE = ("QUICK " if QUICK else "") + ("SYNTHETIC" if SYNTHETIC else "")
print(f"clci_keras {clci_keras.__version__}; outputs in {os.path.abspath(OUT_DIR)}")
if QUICK or SYNTHETIC:
    print(f"*** {MODE} run: not the paper's protocol; numbers say nothing about ATLAS ***")
"""

SYNTHETIC_DATA = """
from clci_keras.data import generate_dataset, prepare_h5, read_subjects
from clci_keras.training import dataset_info

if SYNTHETIC:
    # Synthetic ATLAS R1.1-like release -> HDF5 file, marked synthetic (tables and manifests show it).
    src = os.path.join(OUT_DIR, "synthetic_atlas")
    generate_dataset(src, layout="r1.1", n_subjects=N_SYNTHETIC, seed=SEED, overwrite=True)
    H5 = os.path.join(OUT_DIR, "synthetic.h5")
    prepare_h5(src, H5, overwrite=True, progress=False)
    with h5py.File(H5, "r+") as f:
        f.attrs["synthetic"] = True
        f.attrs["description"] = "synthetic ATLAS R1.1-like data (clci_keras.data.synthetic)"
else:
    H5 = DATA
    if not os.path.isfile(H5):
        raise FileNotFoundError(f"DATA={H5!r}: no such HDF5 file (run notebook 01 or `clci-keras prep`)")
SUBJECTS = read_subjects(H5)
print(f"{H5}: {len(SUBJECTS)} subjects")
SYNTHETIC = dataset_info(H5)["synthetic"]  # from the file's attributes (e.g. a synthetic file from notebook 01)
MODE = ("QUICK " if QUICK else "") + ("SYNTHETIC" if SYNTHETIC else "")
"""

SPLIT_CELL = """
from clci_keras.data import load_split, make_holdout_split, make_kfold_splits, save_split

ids = [s["subject_id"] for s in SUBJECTS]
if SPLIT == "kfold":
    SPLIT_PATH = os.path.join(OUT_DIR, f"split_kfold{K}.json")
    save_split(make_kfold_splits(ids, k=K, val=VAL_FRACTION), SPLIT_PATH)
elif SPLIT == "holdout":
    SPLIT_PATH = os.path.join(OUT_DIR, "split_holdout.json")
    save_split(make_holdout_split(ids, val=0.1, test=0.2, seed=SEED), SPLIT_PATH)
else:
    SPLIT_PATH = SPLIT
split = load_split(SPLIT_PATH, n_subjects=len(ids))
if "folds" in split:
    FOLD_LIST = list(range(len(split["folds"]))) if FOLDS == "all" else [int(k) for k in FOLDS]
    for k in FOLD_LIST:
        p = split["folds"][k]
        print(f"fold {k}: train {len(p['train'])}, val {len(p['val'])}, test {len(p['test'])} subjects")
else:
    FOLD_LIST = [None]  # a single hold-out (or single-fold) split
    print(f"train {len(split['train'])}, val {len(split['val'])}, test {len(split['test'])} subjects")
"""

TRAIN_OPTIONS = """
from clci_keras.training import train
from clci_keras.evaluation.evaluate import evaluate_run, format_summary

RUNS_DIR = os.path.join(OUT_DIR, "runs")
MANIFEST = os.path.join(OUT_DIR, "weights", "manifest.json")
TRAIN_OPTIONS = dict(
    epochs=EPOCHS, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE, steps_per_epoch=STEPS_PER_EPOCH,
    train_slices=TRAIN_SLICES, val_slices=VAL_SLICES, crop=CROP, bn_momentum=BN_MOMENTUM, mixed_precision=MIXED_PRECISION,
    seed=SEED, tensorboard=not QUICK, verbose=2 if QUICK else "auto", manifest=MANIFEST,
)
print(json.dumps(TRAIN_OPTIONS, indent=1, default=str))


def run_dir(model, fold):
    return os.path.join(RUNS_DIR, model, "holdout" if fold is None else f"fold{fold}")


def train_and_evaluate(model, fold):
    \"\"\"Train (or resume / skip a finished run) and score the test subjects of ``fold``.\"\"\"
    t = time.time()
    result = train(model, H5, SPLIT_PATH, run_dir(model, fold), fold=fold, **TRAIN_OPTIONS)
    weights = os.path.join(result["run_dir"], result["weights"])
    done = os.path.join(result["run_dir"], "summary_test.json")
    if os.path.exists(done) and os.path.getmtime(done) > os.path.getmtime(weights):
        summary = json.load(open(done))  # already evaluated
    else:
        summary = evaluate_run(weights, model, H5, SPLIT_PATH, part="test", fold=fold, crop=CROP,
                               slices=EVAL_SLICES, out_dir=result["run_dir"], progress=not QUICK,
                               manifest=MANIFEST, manifest_name=result.get("manifest_entry"))
    print(f"{model} fold {fold}: {result['epochs_run']} epochs, {time.time() - t:.0f} s; test "
          + format_summary(summary["scores"]))
    return result, summary
"""

FINISH = """
elapsed = time.time() - T0
outputs = sorted(os.path.relpath(p, OUT_DIR) for p in glob.glob(os.path.join(OUT_DIR, "*", "*.*"))
                 if os.path.dirname(p) in (FIG_DIR, TAB_DIR))
print(f"done in {elapsed / 60:.1f} min ({MODE or 'protocol'} run); figures and tables:")
print("\\n".join("  " + p for p in outputs))
"""


# ---------------------------------------------------------------------------
# 01: data preparation
# ---------------------------------------------------------------------------
P01 = """
        DATA = "synthetic"        # "synthetic", or an ATLAS release root: R1.1 (the folder holding
                                  # ATLAS_Meta-Data_Release_1.1_standard_mni.csv) or 2.0 (holding Training/)
        LAYOUT = "auto"           # "auto", "r1.1" or "v2"
        SYNTHETIC_LAYOUT = "r1.1" # layout of the generated synthetic release (r1.1 or v2)
        N_SYNTHETIC = 16          # synthetic subjects
        SEED = 0
        OUT_DIR = "outputs/01_prepare_data"
        H5_NAME = "atlas.h5"      # the HDF5 file, written in OUT_DIR
        WORKERS = 2               # preprocessing processes
        OVERWRITE = False         # rebuild an existing HDF5 file from a real release
        N_EXAMPLES = 4            # subjects drawn with their lesion outlined
        SIZE_BINS_ML = [5.0, 30.0]  # lesion-size classes in ml: small below 5, medium, large from 30 (our choice)
        QUICK = False             # 3 synthetic subjects, 1 worker
"""
Q01 = "QUICK_SETTINGS = dict(N_SYNTHETIC=3, WORKERS=1)"


def nb01():
    name = "01_prepare_data"
    return notebook([
        md(f"""
        # 01 · Prepare the data: ATLAS (or synthetic) → HDF5 slice file

        Converts an ATLAS release (R1.1, the paper's data, or 2.0) into the HDF5 slice file used for
        training (`clci_keras.data.prepare_h5`, the same as `clci-keras prep`), then inspects it:
        slice counts, the lesion-volume distribution and a few slices with the lesion outlined.
        `DATA = "synthetic"` generates an ATLAS-like release first (`clci_keras.data.synthetic`);
        how to obtain the real data: `data_prep/README.md`. Format and options: `docs/data.md`.
        {RUN_HOWTO.format(name=name, full="-p DATA /data/ATLAS_R1.1", quick="")}
        """),
        code(P01, tags=["parameters"]),
        md(QUICK_NOTE),
        setup_cell(P01, Q01),
        md("## 1. Obtain the release"),
        code("""
        from clci_keras.data import detect_layout, generate_dataset, prepare_h5, read_subjects

        if SYNTHETIC:
            SRC = os.path.join(OUT_DIR, "synthetic_atlas")
            generate_dataset(SRC, layout=SYNTHETIC_LAYOUT, n_subjects=N_SYNTHETIC, seed=SEED,
                             overwrite=True, progress=not QUICK)
        else:
            SRC = DATA
        print(f"{SRC}: layout {detect_layout(SRC)}")
        """),
        md("## 2. Preprocess into the HDF5 slice file\n\n"
           "189 axial slices per subject, intensities scaled as the original generator (R1.1: / 100), "
           "labels binarised; written atomically."),
        code("""
        H5 = os.path.join(OUT_DIR, H5_NAME)
        if SYNTHETIC or OVERWRITE or not os.path.exists(H5):
            info = prepare_h5(SRC, H5, layout=LAYOUT, workers=WORKERS, overwrite=True, progress=not QUICK)
            print(f"{info['n_subjects']} subjects, {info['n_slices']} slices, "
                  f"{info['bytes'] / 1e6:.0f} MB in {info['seconds']:.0f} s")
        else:
            print(f"{H5} exists; OVERWRITE = True rebuilds it")
        if SYNTHETIC:  # provenance: tables, manifests and figures mark results on this file SYNTHETIC
            with h5py.File(H5, "r+") as f:
                f.attrs["synthetic"] = True
                f.attrs["description"] = "synthetic ATLAS R1.1-like data (clci_keras.data.synthetic)"
        with h5py.File(H5, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            shape = f["data"].shape
        print(f"data {shape}, attributes:")
        for k in ("format", "layout", "intensity_scheme", "n_subjects", "slicing", "label_rule"):
            print(f"  {k}: {attrs.get(k)}")
        """),
        md("## 3. Subjects, slice counts and lesion volumes\n\n"
           "Slice counts per subject as the trainer selects them "
           "(`clci_keras.training.select_slices`): all 189, the 155 inside the MNI152 brain mask, "
           "and those with lesion voxels inside CLCI-Net's 224 x 176 window."),
        code("""
        from clci_keras.training import select_slices

        subjects = pd.DataFrame(read_subjects(H5))
        subjects["lesion_ml"] = subjects["lesion_voxels"] / 1000.0  # 1 mm isotropic voxels
        for spec in ("all", "brain", "lesion"):
            idx = select_slices(H5, subjects["index"].tolist(), spec, crop="clci")
            per = np.searchsorted(subjects["offset"].to_numpy(), idx, side="right") - 1
            subjects[f"{spec}_slices"] = np.bincount(per, minlength=len(subjects))
        small, large = SIZE_BINS_ML
        subjects["size"] = pd.cut(subjects["lesion_ml"], [-np.inf, small, large, np.inf],
                                  right=False, labels=["small", "medium", "large"])
        cols = ["index", "subject_id", "site", "session", "lesion_voxels", "lesion_ml", "size",
                "all_slices", "brain_slices", "lesion_slices"]
        subjects[cols].to_csv(os.path.join(TAB_DIR, "subjects.csv"), index=False)
        SUMMARY = {
            "h5": os.path.abspath(H5), "synthetic": SYNTHETIC, "quick": QUICK,
            "layout": attrs.get("layout"), "intensity_scheme": attrs.get("intensity_scheme"),
            "subjects": len(subjects), "slices": int(shape[0]),
            "lesion_slices": int(subjects["lesion_slices"].sum()),
            "lesion_ml": subjects["lesion_ml"].describe().round(3).to_dict(),
            "size_bins_ml": list(SIZE_BINS_ML),
            "size_counts": subjects["size"].value_counts().reindex(["small", "medium", "large"]).to_dict(),
        }
        with open(os.path.join(TAB_DIR, "summary.json"), "w") as f:
            json.dump(SUMMARY, f, indent=2, default=int)
        display(subjects[cols].head(10))
        print(json.dumps(SUMMARY, indent=1, default=int))
        """),
        code("""
        fig, ax = plt.subplots(figsize=(6, 3.2))
        vol = subjects["lesion_ml"].clip(lower=1e-3)
        bins = np.logspace(np.log10(vol.min()) - 0.1, np.log10(vol.max()) + 0.1, 25)
        ax.hist(vol, bins=bins, color="tab:blue", edgecolor="white")
        for b in SIZE_BINS_ML:
            ax.axvline(b, color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("lesion volume (ml)")
        ax.set_ylabel("subjects")
        ax.set_title(f"{MODE} lesion volumes, {len(subjects)} subjects "
                     f"(dashed: small / medium / large at {SIZE_BINS_ML} ml)".strip(), fontsize=9)
        fig.tight_layout()
        show(fig, os.path.join(FIG_DIR, "lesion_volumes.png"))
        """),
        md("## 4. Example slices\n\nThe slice with the largest lesion area of subjects spread over "
           "the lesion-volume range; lesion outlined in red, CLCI-Net's 224 x 176 crop window in yellow."),
        code("""
        from clci_keras.data import CROPS, load_subject_slices

        order = subjects.sort_values("lesion_ml")["index"].to_numpy()
        picks = order[np.unique(np.linspace(0, len(order) - 1, min(N_EXAMPLES, len(order))).round().astype(int))]
        rows, cols_ = CROPS["clci"]
        fig, axes = plt.subplots(1, len(picks), figsize=(3 * len(picks), 3.6), squeeze=False)
        for ax, s in zip(axes[0], picks):
            x, y = load_subject_slices(H5, int(s), crop=None, channel_axis=False)
            z = int(np.argmax(y.reshape(len(y), -1).sum(axis=1)))
            ax.imshow(x[z], cmap="gray", origin="lower")
            if y[z].any():
                ax.contour(y[z], levels=[0.5], colors=["red"], linewidths=0.8, origin="lower")
            ax.add_patch(plt.Rectangle((cols_.start, rows.start), cols_.stop - cols_.start,
                                       rows.stop - rows.start, fill=False, ec="yellow", lw=0.8))
            r = subjects.set_index("index").loc[s]
            ax.set_title(f"{r['subject_id']} z={z}\\n{r['lesion_ml']:.1f} ml ({r['size']})", fontsize=8)
            ax.set_xticks([]); ax.set_yticks([])
        fig.suptitle(f"{MODE} examples: lesion (red), crop window (yellow)".strip(), fontsize=9)
        fig.tight_layout()
        show(fig, os.path.join(FIG_DIR, "example_slices.png"))
        """),
        md("Next: `02_train_clci_net.ipynb` with `DATA` = the HDF5 file printed below."),
        code(FINISH, """
        print(f"HDF5 file for notebooks 02-05: DATA = {os.path.abspath(H5)!r}")
        """),
    ])


# ---------------------------------------------------------------------------
# 02: train CLCI-Net
# ---------------------------------------------------------------------------
def nb02():
    name = "02_train_clci_net"
    table = None
    params = ('MODEL = "clci_net"        # any name of clci_keras.list_models()\n'
              + textwrap.dedent(TRAIN_PARAMS.format(name=name)).lstrip("\n"))
    return notebook([
        md(f"""
        # 02 · Train CLCI-Net

        Split the subjects (5-fold cross-validation in file order, X-Net's protocol that CLCI-Net's
        authors used, or a hold-out split), train CLCI-Net on each fold with the original protocol
        (`clci_keras.training.train`: Adam 1e-4, Dice loss, batch 8, up to 100 epochs,
        ReduceLROnPlateau and EarlyStopping; resumable: re-running continues an interrupted run),
        plot the training curves from the CSV log, score the test subjects per patient in 3D
        (`clci_keras.evaluation.evaluate_run`) and export the weights in the Keras 2 `.h5` layout
        (registered in a weights manifest). Details: `docs/training.md`.
        {RUN_HOWTO.format(name=name, full=H5_EXAMPLE, quick="")}
        """),
        code(params, tags=["parameters"]),
        md(QUICK_NOTE),
        setup_cell(params, train_quick(2 if table is None else 1)),
        md("## 1. Data"),
        code(SYNTHETIC_DATA),
        md("## 2. Split (by subject)"),
        code(SPLIT_CELL),
        md("## 3. Train"),
        code(TRAIN_OPTIONS, """
        RESULTS, SUMMARIES = {}, {}
        for fold in FOLD_LIST:
            RESULTS[fold], SUMMARIES[fold] = train_and_evaluate(MODEL, fold)
        """),
        md("## 4. Training curves (from each run's `log.csv`)"),
        code("""
        from clci_keras.reports.figures import training_curves

        for fold, r in RESULTS.items():
            tag = "holdout" if fold is None else f"fold{fold}"
            png = training_curves(os.path.join(r["run_dir"], "log.csv"),
                                  os.path.join(FIG_DIR, f"training_curves_{tag}.png"),
                                  title=f"{MODE} {MODEL} {tag}".strip())
            display(Image(filename=png))
        """),
        md("## 5. Test scores (per patient, 3D; pooled over the folds)"),
        code("""
        from clci_keras.evaluation import summarize

        scores = pd.concat(
            [pd.read_csv(os.path.join(r["run_dir"], "scores_test.csv"), dtype={"subject_id": str, "site": str})
             .assign(fold=fold)
             for fold, r in RESULTS.items()], ignore_index=True)
        scores.to_csv(os.path.join(TAB_DIR, f"{MODEL}_test_scores.csv"), index=False)
        pooled = summarize(scores.to_dict("records"))
        table = pd.DataFrame(pooled).T[["mean", "std", "n"]]
        table.insert(0, "data", MODE or "ATLAS")
        table.to_csv(os.path.join(TAB_DIR, f"{MODEL}_test_summary.csv"))
        display(table)
        """),
        md("## 6. Exported weights and a test patient\n\nThe exported Keras 2 `.h5` file is loaded into a "
           "fresh model (`clci_keras.load_weights`) and one test patient is predicted whole."),
        code("""
        from clci_keras import build_model, load_weights
        from clci_keras.evaluation import predict_subject
        from clci_keras.reports.figures import overlay_figure, pick_slices
        from clci_keras.training.sampling import SliceReader

        fold = FOLD_LIST[0]
        weights = os.path.join(RESULTS[fold]["run_dir"], RESULTS[fold]["weights"])
        reader = SliceReader(H5, CROP)
        model = build_model(MODEL, input_shape=reader.shape)
        load_weights(model, weights)
        test = (split["folds"][fold] if fold is not None else split)["test"]
        s = int(test[0])
        prob, gt = predict_subject(model, H5, s, crop=CROP, slices=EVAL_SLICES, reader=reader)
        meta = SUBJECTS[s]
        x, _ = reader.read(np.arange(meta["offset"], meta["offset"] + meta["count"]))
        reader.close()
        row = scores[(scores["subject_index"] == s) & (scores["fold"].astype(str) == str(fold))].iloc[0]
        png = overlay_figure(x[..., 0], gt, {MODEL: prob}, os.path.join(FIG_DIR, "test_patient_overlay.png"),
                             slices=pick_slices(gt, 4, prob > 0.5), scores={MODEL: f"DSC {row['dsc']:.3f}"},
                             title=f"{MODE} test subject {meta['subject_id']}: ground truth (green) vs {MODEL} (red)".strip())
        display(Image(filename=png))
        print("weights:", *[os.path.join(r["run_dir"], r["weights"]) for r in RESULTS.values()], sep="\\n  ")
        print("manifest:", MANIFEST)
        """),
        code(FINISH),
    ])


# ---------------------------------------------------------------------------
# 03 / 04: Tables 1 and 2
# ---------------------------------------------------------------------------
def _table_notebook(name, title, intro, models, table):
    params = (f"MODELS = {models!r}\n" + textwrap.dedent(TRAIN_PARAMS.format(name=name)).lstrip("\n")
              + "RUNS_DIR = None           # None: OUT_DIR/runs (another notebook's runs/ to reuse its runs)\n")
    return notebook([
        md(f"""
        # {title}

        {intro}
        Each model is trained and scored exactly as CLCI-Net in notebook 02 (same split, protocol
        and evaluation; `clci_keras.training.train`, `clci_keras.evaluation.evaluate_run`); the table is
        `clci_keras.reports.tables.write_tables` (CSV, Markdown, LaTeX), with the paper's values beside
        ours. Finished runs are not retrained: re-running the notebook (or pointing `RUNS_DIR` at
        another notebook's `runs/` folder) reuses them.
        {RUN_HOWTO.format(name=name, full=H5_EXAMPLE, quick="")}
        """),
        code(params, tags=["parameters"]),
        md(QUICK_NOTE),
        setup_cell(params, train_quick(2 if table is None else 1)),
        md("## 1. Data"),
        code(SYNTHETIC_DATA),
        md("## 2. Split (the same for every model)"),
        code(SPLIT_CELL),
        md("## 3. Train and evaluate every model on every fold"),
        code("_RUNS_DIR = RUNS_DIR", TRAIN_OPTIONS, """
        RUNS_DIR = _RUNS_DIR or RUNS_DIR
        RESULTS = {}
        for model in MODELS:
            for fold in FOLD_LIST:
                RESULTS[model, fold] = train_and_evaluate(model, fold)
        """),
        md(f"## 4. Table {table}"),
        code(f"""
        from clci_keras.reports.tables import collect_runs, write_tables

        written = write_tables(RUNS_DIR, TAB_DIR, part="test", tables=({table},))
        display(Markdown(open(written["table{table}.md"]).read()))
        """),
        md("## 5. Per-patient Dice of each method (pooled over folds), paper means beside"),
        code(f"""
        from clci_keras.reports.tables import TABLE{table}

        runs = collect_runs(RUNS_DIR, part="test")
        labels = {{entry[1]: entry[0] for entry in TABLE{table}}}
        paper = {{entry[1]: entry[-1][0] for entry in TABLE{table} if entry[-1]}}
        shown = [m for m in MODELS if m in runs]
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
        ax.set_title(f"{{MODE}} Table {table} methods: per-patient Dice (ours), paper means (red stars)".strip(),
                     fontsize=9)
        fig.tight_layout()
        show(fig, os.path.join(FIG_DIR, "table{table}_dice.png"))
        """),
        code(FINISH),
    ])


def nb03():
    return _table_notebook(
        "03_five_method_comparison",
        "03 · Comparison with five methods (the paper's Table 1)",
        "FCN-8s, PSPNet, DeepLabv3+, DenseUNet, the Baseline (CLCI-Net without ASPP, CLF and context "
        "inference) and CLCI-Net, trained and evaluated on the same split.",
        TABLE1_MODELS, 1)


def nb04():
    return _table_notebook(
        "04_ablation",
        "04 · Ablation (the paper's Table 2)",
        "The Baseline, + ASPP, + ASPP + CLF (cross-level feature fusion) and CLCI-Net "
        "(+ the context-inference module), registered as `baseline`, `clci_aspp`, `clci_aspp_clf`, "
        "`clci_net`.",
        TABLE2_MODELS, 2)


# ---------------------------------------------------------------------------
# 05: visualization
# ---------------------------------------------------------------------------
P05 = f"""
        DATA = "outputs/01_prepare_data/atlas.h5"  # HDF5 slice file the runs were trained on
        OUT_DIR = "outputs/05_visualization"
        RUNS_DIR = "outputs/03_five_method_comparison/runs"  # run folders (config.json + result.json + weights)
        MODELS = {TABLE1_MODELS!r}
        FOLD = 0                  # which fold's runs (None for hold-out runs)
        WEIGHTS = {{}}              # more weights: {{"label": ["model name", "path/to/weights.h5"]}}
        ORIGINAL_WEIGHTS = None   # the authors' Keras 2 CLCI-Net .h5 (github.com/YH0517/CLCI_Net), if you have it
        SPLIT = None              # split JSON; None: the one the runs were trained with
        PART = "test"             # which subjects of the split
        PATIENTS = None           # subject indices (file order) to predict; None: all of PART
        CROP = None               # None: the runs' crop window (their config.json)
        EVAL_SLICES = "all"       # "all" (protocol) or "brain" (155 brain slices; faster)
        SLICES = None             # axial slices to overlay; None: picked around each lesion
        N_OVERLAY = 3             # patients overlaid (smallest, median, largest lesion)
        SIZE_BINS_ML = [5.0, 30.0]  # lesion-size classes in ml: small below 5, medium, large from 30 (as 01)
        N_FAILURES = 3            # lowest-Dice patients shown as failure cases
        SEED = 0
        QUICK = False
"""
Q05 = 'QUICK_SETTINGS = dict(EVAL_SLICES="brain", N_OVERLAY=1, N_FAILURES=1)'


def nb05():
    name = "05_visualization"
    full = H5_EXAMPLE + " -p RUNS_DIR outputs/03_five_method_comparison/runs -p ORIGINAL_WEIGHTS authors.h5"
    quick = "-p DATA /tmp/03_five_method_comparison/synthetic.h5 -p RUNS_DIR /tmp/03_five_method_comparison/runs "
    return notebook([
        md(f"""
        # 05 · Visualization: whole-patient predictions of every method

        Loads `.h5` weights — ours (the run folders of notebooks 02-04, whose exported
        `<model>_weights.h5` are in the Keras 2 layout) or the original authors' Keras 2 CLCI-Net
        weights (`ORIGINAL_WEIGHTS`) — predicts whole patients (`clci_keras.evaluation.predict_subject`,
        all 189 slices), and draws: ground truth vs each method on chosen slices, per-patient Dice
        against lesion volume (small / medium / large lesions), and the failure cases (the patients
        with the lowest Dice).
        {RUN_HOWTO.format(name=name, full=full, quick=quick)}
        Run notebook 03 (and 02 / 04) first, with the same `DATA`; a `QUICK` run of 03 gives
        `QUICK` weights to look at in minutes.
        """),
        code(P05, tags=["parameters"]),
        md(QUICK_NOTE),
        setup_cell(P05, Q05),
        md("## 1. Data and weights"),
        code("""
        from clci_keras.data import read_subjects
        from clci_keras.training import dataset_info

        H5 = DATA
        if not os.path.isfile(H5):
            raise FileNotFoundError(f"DATA={H5!r}: no such HDF5 file (the file the runs were trained on)")
        SUBJECTS = read_subjects(H5)
        print(f"{H5}: {len(SUBJECTS)} subjects")
        SYNTHETIC = dataset_info(H5)["synthetic"]
        MODE = ("QUICK " if QUICK else "") + ("SYNTHETIC" if SYNTHETIC else "")
        """),
        code("""
        # Runs of MODELS for FOLD: their config (model, crop, split) and exported weights.
        RUNS = {}
        for cfg_path in sorted(glob.glob(os.path.join(RUNS_DIR or "", "**", "config.json"), recursive=True)):
            run = os.path.dirname(cfg_path)
            cfg = json.load(open(cfg_path))
            res_path = os.path.join(run, "result.json")
            if cfg["model"] in MODELS and cfg.get("fold") == FOLD and os.path.exists(res_path):
                RUNS.setdefault(cfg["model"], (cfg, os.path.join(run, json.load(open(res_path))["weights"])))
        missing = [m for m in MODELS if m not in RUNS]
        if missing:
            print(f"no finished run of {missing} (fold {FOLD}) below {RUNS_DIR}; they are left out")
        crops = {cfg["crop"] for cfg, _ in RUNS.values()}
        if CROP is None:
            if len(crops) > 1:
                raise ValueError(f"runs use different crop windows {crops}; set CROP")
            CROP = crops.pop() if crops else "clci"
        if SPLIT is None and not RUNS:
            raise ValueError("SPLIT is required when no run folder is used")
        SPLIT = SPLIT or next(iter(RUNS.values()))[0]["split"]
        METHODS = {m: (m, w) for m in MODELS if m in RUNS for w in [RUNS[m][1]]}
        METHODS.update({label: tuple(v) for label, v in WEIGHTS.items()})
        if ORIGINAL_WEIGHTS:
            METHODS["clci_net (authors)"] = ("clci_net", ORIGINAL_WEIGHTS)
        if not METHODS:
            raise ValueError("no weights: set RUNS_DIR, WEIGHTS or ORIGINAL_WEIGHTS")
        print(f"crop {CROP}, split {SPLIT}")
        for label, (m, w) in METHODS.items():
            print(f"  {label:22s} {m:14s} {w}")
        """),
        md("## 2. Predict whole patients with every method\n\n"
           "Each method's weights are loaded into a fresh model (`clci_keras.load_weights` reads the Keras 2 "
           "`.h5` layout, Keras 3 `.weights.h5` and `.keras`), every patient is predicted whole and scored "
           "in 3D (`clci_keras.evaluation.evaluate_model`). The predictions are kept in memory for the figures "
           "when they fit in ~2 GB, otherwise the patients drawn below are predicted again."),
        code("""
        from clci_keras import build_model, load_weights
        from clci_keras.data import load_split
        from clci_keras.evaluation import predict_subject
        from clci_keras.evaluation.evaluate import evaluate_model
        from clci_keras.training.sampling import SliceReader

        split = load_split(SPLIT)
        part = split["folds"][FOLD] if ("folds" in split and FOLD is not None) else split
        SUBJ = [int(s) for s in (PATIENTS if PATIENTS is not None else part[PART])]
        reader = SliceReader(H5, CROP)
        MODELS_BUILT = {}


        def get_model(label):
            if label not in MODELS_BUILT:
                name, path = METHODS[label]
                net = build_model(name, input_shape=reader.shape)
                load_weights(net, path)
                MODELS_BUILT.clear()  # one model in memory at a time
                MODELS_BUILT[label] = net
            return MODELS_BUILT[label]


        # Keep every prediction in memory (for the figures) when they fit in ~2 GB; else recompute.
        H, W, _ = reader.shape
        KEEP = len(SUBJ) * len(METHODS) * 189 * H * W * 2 <= 2e9
        rows, PROBS = [], {}
        for label in METHODS:
            for r in evaluate_model(get_model(label), H5, SUBJ, crop=CROP, slices=EVAL_SLICES,
                                    progress=not QUICK, keep_predictions=KEEP):
                if KEEP:
                    PROBS[label, r["subject_index"]] = (r.pop("_prob").astype(np.float16), r.pop("_gt"))
                rows.append({"method": label, **r})
        scores = pd.DataFrame(rows)
        scores["lesion_ml"] = scores["gt_voxels"] / 1000.0  # 1 mm isotropic voxels, inside the crop window
        small, large = SIZE_BINS_ML
        scores["size"] = pd.cut(scores["lesion_ml"], [-np.inf, small, large, np.inf], right=False,
                                labels=["small", "medium", "large"])
        scores.insert(0, "data", MODE or "ATLAS")
        scores.to_csv(os.path.join(TAB_DIR, "per_patient_scores.csv"), index=False)
        display(scores.pivot_table(index="subject_id", columns="method", values="dsc", sort=False).round(3))
        """),
        md("## 3. Ground truth vs each method"),
        code("""
        from clci_keras.reports.figures import overlay_figure, pick_slices

        META = {s["index"]: s for s in SUBJECTS}


        def patient_figure(s, png, title):
            \"\"\"Overlay of patient ``s``: one row per method (kept or recomputed predictions).\"\"\"
            preds, texts, gt = {}, {}, None
            for label in METHODS:
                if (label, s) in PROBS:
                    prob, gt = PROBS[label, s]
                else:
                    prob, gt = predict_subject(get_model(label), H5, s, crop=CROP, slices=EVAL_SLICES, reader=reader)
                preds[label] = np.asarray(prob, np.float32)
                d = scores[(scores["method"] == label) & (scores["subject_index"] == s)]["dsc"].iloc[0]
                texts[label] = f"DSC {d:.3f}"
            m = META[s]
            x, _ = reader.read(np.arange(m["offset"], m["offset"] + m["count"]))
            union = np.max(np.stack([p > 0.5 for p in preds.values()]), axis=0)
            z = SLICES if SLICES is not None else pick_slices(gt, 4, union)
            return overlay_figure(x[..., 0], gt, preds, png, slices=z, scores=texts, title=title)


        by_volume = scores.drop_duplicates("subject_index").sort_values("lesion_ml")["subject_index"].tolist()
        pick = [by_volume[i] for i in sorted({int(round(i)) for i in np.linspace(0, len(by_volume) - 1, N_OVERLAY)})]
        for s in pick:
            ml = scores[scores["subject_index"] == s]["lesion_ml"].iloc[0]
            png = patient_figure(s, os.path.join(FIG_DIR, f"overlay_subject{s}.png"),
                                 f"{MODE} subject {META[s]['subject_id']} ({ml:.1f} ml): "
                                 "ground truth (green) vs prediction (red)".strip())
            display(Image(filename=png))
        """),
        md("## 4. Dice against lesion volume"),
        code("""
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for label, g in scores.groupby("method", sort=False):
            ax.scatter(g["lesion_ml"].clip(lower=1e-3), g["dsc"], s=16, label=label, alpha=0.8)
        for b in SIZE_BINS_ML:
            ax.axvline(b, color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("lesion volume in the crop window (ml)")
        ax.set_ylabel("Dice (3D, per patient)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
        ax.set_title(f"{MODE} Dice vs lesion volume (dashed: small / medium / large)".strip(), fontsize=9)
        fig.tight_layout()
        show(fig, os.path.join(FIG_DIR, "dice_vs_lesion_volume.png"))

        by_size = (scores.groupby(["method", "size"], sort=False, observed=False)["dsc"]
                   .agg(["mean", "std", "count"]).round(3).reset_index())
        by_size.insert(0, "data", MODE or "ATLAS")
        by_size.to_csv(os.path.join(TAB_DIR, "dice_by_lesion_size.csv"), index=False)
        display(by_size.pivot_table(index="size", columns="method", values="mean", sort=False, observed=False))
        """),
        md("## 5. Failure cases\n\nFor each method, the patients with the lowest Dice, and what went wrong: "
           "*missed* (no lesion voxel found), *over-segmentation* (more predicted than true voxels) or "
           "*under-segmentation*. The worst patients of the last method are drawn with every method."),
        code("""
        worst = scores.sort_values("dsc").groupby("method", sort=False).head(N_FAILURES).copy()
        worst["failure"] = np.where(worst["tp_voxels"] == 0, "missed",
                                    np.where(worst["pred_voxels"] > worst["gt_voxels"],
                                             "over-segmentation", "under-segmentation"))
        cols = ["data", "method", "subject_index", "subject_id", "lesion_ml", "size", "dsc", "precision",
                "recall", "gt_voxels", "pred_voxels", "fp_voxels", "fn_voxels", "failure"]
        worst[cols].to_csv(os.path.join(TAB_DIR, "failure_cases.csv"), index=False)
        display(worst[cols])
        ref = list(METHODS)[-1]
        for rank, s in enumerate(worst[worst["method"] == ref]["subject_index"], 1):
            d = scores[(scores["method"] == ref) & (scores["subject_index"] == s)]["dsc"].iloc[0]
            png = patient_figure(int(s), os.path.join(FIG_DIR, f"failure{rank}_subject{s}.png"),
                                 f"{MODE} failure case {rank} of {ref}: subject {META[int(s)]['subject_id']} "
                                 f"(DSC {d:.3f})".strip())
            display(Image(filename=png))
        reader.close()
        """),
        code(FINISH),
    ])


NOTEBOOKS = {
    "01_prepare_data": nb01,
    "02_train_clci_net": nb02,
    "03_five_method_comparison": nb03,
    "04_ablation": nb04,
    "05_visualization": nb05,
}


def main(argv=None):
    out = HERE if not argv else argv[0]
    for name, make in NOTEBOOKS.items():
        nb = make()
        nbformat.validate(nb)
        path = os.path.join(out, f"{name}.ipynb")
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.replace(tmp, path)
        print(f"wrote {path} ({len(nb.cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
