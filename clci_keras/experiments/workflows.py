"""The study's workflows as library functions: data, split, train -> evaluate, Tables 1 and 2.

Each function is one row of the README's workflow table (or a sequence of
them) and is what the notebooks and ``clci-keras demo`` call:

* :func:`prepare_data` -- ATLAS release, synthetic data or an existing HDF5 file -> the HDF5 file
  (a :class:`PreparedData` path: its stages' wall times in ``.seconds``);
* :func:`make_split` -- the subject-level split file and the folds to run;
* :func:`train_and_evaluate` -- train one model on one fold (resumable; a
  finished run is reused), score the exported Keras 2 ``.h5`` weights per
  patient in 3D, record the scores in the weights manifest;
* :func:`compare_models` -- that for several models and folds, then the
  paper's table (Table 1 by default); :func:`ablation` is Table 2;
* :func:`run_demo` -- the synthetic end-to-end demo (``clci-keras demo``).

TensorFlow is imported only when a function that trains or predicts runs.
"""
from __future__ import annotations

import inspect
import os
import time

import h5py

from clci_keras.data import (
    crop_shape,
    generate_dataset,
    load_split,
    make_holdout_split,
    make_kfold_splits,
    prepare_h5,
    read_subjects,
    save_split,
)
from clci_keras.evaluation.evaluate import evaluate_run, format_summary
from clci_keras.fileio import read_json
from clci_keras.models import build_with_weights
from clci_keras.models.paper import TABLE1_MODELS, TABLE2_MODELS  # the paper's Table 1 and 2 models, in table order
from clci_keras.run_layout import CONFIG_FILE, summary_file
from clci_keras.training import read_manifest, train


def _say(log, text):
    if log is not None:
        log(text)


# ---------------------------------------------------------------------------
# Data and split
# ---------------------------------------------------------------------------
def mark_synthetic(h5_path, description="synthetic ATLAS R1.1-like data (clci_keras.data.synthetic)"):
    """Mark an HDF5 file as synthetic: tables, manifests and figures then say so."""
    with h5py.File(h5_path, "r+") as f:
        f.attrs["synthetic"] = True
        f.attrs["description"] = description


class PreparedData(str):
    """The absolute path of the HDF5 slice file that :func:`prepare_data` returns (a ``str``),
    with the wall time of each stage of that call.

    Attributes:
        seconds: ``{stage: wall seconds}`` of the stages that ran, in order:
            ``synthetic_data`` (generating a synthetic release), ``hdf5`` (converting a
            release with :func:`~clci_keras.data.prepare_h5`, and marking a synthetic
            file); ``{}`` when an existing file was used as is.
    """

    seconds: dict

    def __new__(cls, path, seconds=None):
        self = super().__new__(cls, os.path.abspath(path))
        self.seconds = dict(seconds or {})
        return self

    def __reduce__(self):
        return (type(self), (str(self), self.seconds))


def prepare_data(data, out_dir, n_subjects=16, seed=0, layout="auto", synthetic_layout="r1.1",
                 workers=1, h5_name=None, source_dir=None, description=None, overwrite=False,
                 progress=True):
    """The HDF5 slice file for ``data``; returns its path (absolute) and its stages' times.

    Args:
        data: ``"synthetic"`` (a synthetic ATLAS-like release of ``n_subjects``
            subjects is generated, seed ``seed``, and converted; the file is
            marked synthetic), an ATLAS release root (converted with
            :func:`clci_keras.data.prepare_h5` unless the file exists and not
            ``overwrite``), or an existing HDF5 file (returned as is).
        out_dir: where the HDF5 file (and a synthetic release) are written.
        layout: release layout for :func:`~clci_keras.data.prepare_h5`
            (``"auto"``, ``"r1.1"``, ``"r1.2"``, ``"v2"``).
        synthetic_layout: layout of a generated synthetic release.
        workers: preprocessing processes.
        h5_name: file name in ``out_dir`` (default ``synthetic.h5`` or ``atlas.h5``).
        source_dir: folder of the generated release (default ``out_dir/synthetic_atlas``).
        description: the synthetic file's ``description`` attribute.

    Returns:
        :class:`PreparedData`: the file's absolute path (a ``str``, usable as one)
        whose ``seconds`` says how long each stage took (``synthetic_data``,
        ``hdf5``; only the stages that ran).

    Raises:
        FileNotFoundError: ``data`` is neither ``"synthetic"``, a file nor a folder.
    """
    data = os.fspath(data)
    seconds = {}
    t = time.perf_counter()
    if data == "synthetic":
        src = source_dir or os.path.join(out_dir, "synthetic_atlas")
        generate_dataset(src, layout=synthetic_layout, n_subjects=int(n_subjects), seed=int(seed),
                         overwrite=True, progress=progress)
        seconds["synthetic_data"], t = time.perf_counter() - t, time.perf_counter()
        h5 = os.path.join(out_dir, h5_name or "synthetic.h5")
        prepare_h5(src, h5, layout=layout, workers=int(workers), overwrite=True, progress=progress)
        mark_synthetic(h5, *([description] if description else []))
        seconds["hdf5"] = time.perf_counter() - t
        return PreparedData(h5, seconds)
    if os.path.isfile(data):
        return PreparedData(data)
    if os.path.isdir(data):
        h5 = os.path.join(out_dir, h5_name or "atlas.h5")
        if overwrite or not os.path.exists(h5):
            prepare_h5(data, h5, layout=layout, workers=int(workers), overwrite=True, progress=progress)
            seconds["hdf5"] = time.perf_counter() - t
        else:
            print(f"{h5} exists; overwrite=True rebuilds it")
        return PreparedData(h5, seconds)
    raise FileNotFoundError(f"data={data!r}: neither 'synthetic', an HDF5 file nor an ATLAS release folder "
                            "(run notebook 01 or `clci-keras prep`)")


def make_split(h5, split="kfold", out_dir=".", k=5, folds="all", val_fraction=0.1, test_fraction=0.2,
               seed=0, path=None, verbose=True):
    """Write (or read) the subject-level split of ``h5``; returns ``(split_path, fold_list)``.

    Args:
        split: ``"kfold"`` (``k`` contiguous folds in file order, X-Net's
            protocol, the last ``val_fraction`` of each fold's training subjects
            held out for validation), ``"holdout"`` (seeded random
            train / val / test by ``val_fraction`` / ``test_fraction``) or the
            path of a split JSON (``clci-keras split``).
        out_dir: folder of a written split (``split_kfold<k>.json`` /
            ``split_holdout.json``), unless ``path`` names the file.
        folds: ``"all"`` or the fold numbers to run (k-fold files).

    Returns:
        The split file's absolute path and the folds to run (``[None]`` for a
        hold-out or single-fold split).
    """
    ids = [s["subject_id"] for s in read_subjects(h5)]
    if split == "kfold":
        path = path or os.path.join(out_dir, f"split_kfold{int(k)}.json")
        save_split(make_kfold_splits(ids, k=int(k), val=val_fraction), path)
    elif split == "holdout":
        path = path or os.path.join(out_dir, "split_holdout.json")
        save_split(make_holdout_split(ids, val=val_fraction, test=test_fraction, seed=int(seed)), path)
    else:
        path = os.fspath(split)
    loaded = load_split(path, n_subjects=len(ids))
    if "folds" in loaded:
        fold_list = list(range(len(loaded["folds"]))) if folds == "all" else [int(f) for f in folds]
        parts = [(f"fold {f}", loaded["folds"][f]) for f in fold_list]
    else:
        fold_list = [None]
        parts = [("split", loaded)]
    if verbose:
        for label, p in parts:
            print(f"{label}: train {len(p['train'])}, val {len(p.get('val') or [])}, "
                  f"test {len(p['test'])} subjects")
    return os.path.abspath(path), fold_list


def run_dir_for(runs_dir, model_name, fold=None):
    """The run folder of ``model_name`` on ``fold``: ``runs_dir/<model>/fold<k>`` (or ``/holdout``)."""
    return os.path.join(runs_dir, model_name, "holdout" if fold is None else f"fold{fold}")


# ---------------------------------------------------------------------------
# Train -> evaluate -> manifest
# ---------------------------------------------------------------------------
def _manifest_has(manifest, name):
    if not manifest or not name or not os.path.exists(manifest):
        return False

    return any(e.get("name") == name for e in read_manifest(manifest)["weights"])


def _evaluation_default_slices():
    return inspect.signature(evaluate_run).parameters["slices"].default


def train_and_evaluate(model_name, h5, split, out_dir, fold=None, part="test", eval_slices=None,
                       manifest=None, progress=True, keep_model=False, network=None, eager="auto",
                       **train_options):
    """Train ``model_name`` on ``fold`` of ``split``, then score its exported weights per patient.

    The sequence of ``clci-keras train`` and ``clci-keras evaluate``:
    :func:`clci_keras.training.train` (resumes an interrupted run; a finished
    run with the same settings is reused, not retrained), then the exported
    Keras 2 ``.h5`` weights are loaded into a fresh network and ``part`` is
    scored in 3D per patient (:func:`clci_keras.evaluation.evaluate_run`:
    ``scores_<part>.csv``, ``summary_<part>.json`` in the run folder). An
    evaluation newer than the weights, with the same slices, is reused. With
    ``manifest`` the weights are added to it (by ``train``) and the
    scores added to their entry.

    Args:
        model_name: a registered model (:func:`clci_keras.list_models`).
        h5, split: the HDF5 slice file and the split JSON.
        out_dir: the run folder (:func:`run_dir_for` gives the notebooks' layout).
        fold: fold number of a k-fold split file (``None`` for a hold-out split).
        part: the split part scored (``test``, ``val``, ``train``).
        eval_slices: ``all`` (protocol) or ``brain``; ``None``: the evaluation's default.
        manifest: weights manifest JSON (``weights/manifest.json``), or ``None``.
        progress: progress bar while predicting.
        keep_model: return the network holding the evaluated weights (``"network"``).
        network: a built network of the same model and input shape to load the
            exported weights into for the evaluation (default: a fresh one);
            it is returned as ``"network"``.
        eager: :class:`~clci_keras.training.TrainConfig`'s ``eager`` (``"auto"``: a run of at
            most :data:`~clci_keras.training.config.EAGER_MAX_STEPS` training steps, e.g. a
            QUICK run, steps eagerly). The evaluation always uses the traced prediction function.
        **train_options: :class:`clci_keras.training.TrainConfig` fields
            (``epochs=``, ``crop=``, ...), ``callbacks=``, ``overwrite=``.

    Returns:
        ``dict(model, fold, run_dir, weights, result, summary, network, seconds)``:
        ``result`` is the run's ``result.json``, ``summary`` the evaluation
        summary, ``network`` the Keras model if ``keep_model`` (or given) else
        ``None``, ``seconds`` the wall time of ``training`` and ``evaluation``.
    """
    t = time.time()
    result = train(model_name, h5, split, out_dir, fold=fold, manifest=manifest, eager=eager, **train_options)
    t_eval = time.time()
    run_dir = result["run_dir"]
    weights = os.path.join(run_dir, result["weights"])
    crop = read_json(os.path.join(run_dir, CONFIG_FILE))["crop"]
    slices = eval_slices or _evaluation_default_slices()
    summary = _earlier_evaluation(run_dir, weights, part, slices, fold)
    if network is not None:
        from clci_keras.models import load_weights

        load_weights(network, weights)
        keep_model = True
    elif summary is None or keep_model:
        network = _load_network(model_name, crop, weights)
    if summary is None:
        entry = result.get("manifest_entry")
        in_manifest = _manifest_has(manifest, entry)
        summary = evaluate_run(weights, model_name, h5, split, part=part, out_dir=run_dir, fold=fold, crop=crop,
                               slices=slices, progress=progress, model=network,
                               manifest=manifest if in_manifest else None,
                               manifest_name=entry if in_manifest else None)
    seconds = {"training": t_eval - t, "evaluation": time.time() - t_eval}
    print(f"{model_name} fold {fold}: {result['epochs_run']} epochs, {time.time() - t:.0f} s; {part} "
          + format_summary(summary["scores"]), flush=True)
    return dict(model=model_name, fold=fold, run_dir=run_dir, weights=weights, result=result, summary=summary,
                network=network if keep_model else None, seconds=seconds)


def _earlier_evaluation(run_dir, weights, part, slices, fold):
    """The run's ``summary_<part>.json`` if it is newer than ``weights`` and scored the same
    ``slices`` of the same ``part`` and ``fold``; else ``None`` (to evaluate)."""
    done = os.path.join(run_dir, summary_file(part))
    if not (os.path.exists(done) and os.path.getmtime(done) >= os.path.getmtime(weights)):
        return None
    summary = read_json(done)
    if summary.get("slices") != slices or summary.get("fold") != fold or summary.get("part") != part:
        return None
    return summary


def _load_network(model_name, crop, weights):
    """A fresh ``model_name`` network for ``crop`` with ``weights`` loaded."""
    return build_with_weights(model_name, weights, input_shape=(*crop_shape(crop), 1))


def compare_models(model_names, h5, split, out_root, folds=(None,), part="test", eval_slices=None,
                   manifest=None, tables=(1,), tables_dir=None, progress=True, **train_options):
    """Train and score every model on every fold, then write the paper's table(s).

    The five-method comparison (Table 1) with the defaults: each model of
    ``model_names`` on each fold of ``folds`` by :func:`train_and_evaluate`
    into ``out_root/<model>/fold<k>`` (finished runs are reused, so pointing
    ``out_root`` at another study's runs reuses its models), then
    :func:`clci_keras.reports.write_tables` over ``out_root``: every run
    below it is pooled per model (per-patient rows), the paper's values beside.

    Args:
        model_names: registered model names (:data:`TABLE1_MODELS`).
        h5, split: HDF5 slice file and split JSON (:func:`make_split`).
        out_root: the runs folder.
        folds: fold numbers (``[None]`` for a hold-out split).
        tables: which tables to write (1, 2); ``tables_dir`` ``None``: no table.
        eval_slices, manifest, progress, **train_options: as :func:`train_and_evaluate`
            (``eager=`` too).

    Returns:
        ``dict(runs=[train_and_evaluate results], tables={file name: path})``.
    """
    runs = []
    for model_name in model_names:
        for fold in folds:
            runs.append(train_and_evaluate(model_name, h5, split, run_dir_for(out_root, model_name, fold),
                                           fold=fold, part=part, eval_slices=eval_slices, manifest=manifest,
                                           progress=progress, **train_options))
    written = {}
    if tables_dir is not None and tables:
        from clci_keras.reports import write_tables

        written = write_tables(out_root, tables_dir, part=part, tables=tuple(tables))
    return dict(runs=runs, tables=written)


def ablation(h5, split, out_root, model_names=TABLE2_MODELS, **options):
    """The ablation study (Table 2): Baseline, + ASPP, + ASPP + CLF, CLCI-Net.

    :func:`compare_models` with the ablation variants and ``tables=(2,)``;
    ``options`` as there. Runs of Baseline and CLCI-Net already in ``out_root``
    (e.g. Table 1's) with the same settings are reused.
    """
    options.setdefault("tables", (2,))
    return compare_models(model_names, h5, split, out_root, **options)
