"""The synthetic end-to-end demo (``clci-keras demo``) as a library function.

:func:`run_demo` steps (each timed), the workflows of
:mod:`clci_keras.experiments.workflows` on synthetic data:

1. a synthetic ATLAS R1.1-like release of ``subjects`` subjects and its HDF5
   slice file, marked synthetic (:func:`~clci_keras.experiments.workflows.prepare_data`);
2. a hold-out split: 1 test subject, 1 validation subject, the rest training
   (:func:`~clci_keras.experiments.workflows.make_split`);
3. the network built with the seed and scored untrained on the test subject;
4. a short training of that same network on the lesion slices plus a few
   other brain slices of each training subject (``train_slices="lesion+N"``),
   then the trained weights (exported in the Keras 2 ``.h5`` layout, reloaded)
   scored on the test subject
   (:func:`~clci_keras.experiments.workflows.train_and_evaluate`);
5. Table 1 / Table 2 (with a SYNTHETIC mark), training curves and slice
   overlays (untrained vs trained vs ground truth).

Departures from the paper's protocol, all to fit a 2-core CPU, all options:
learning rate 1e-3 instead of 1e-4 (``learning_rate``), BatchNorm momentum 0.5
instead of 0.99 so that the moving statistics used at inference follow the
fast-changing network within a few steps (``bn_momentum``), the last
epoch's weights rather than the best on one validation subject
(``export``), sampled training slices, 8 epochs of 6 steps (48 steps: long
enough to leave the over-segmenting phase, where the test Dice depends on the
random draw and on the backend's rounding), and only the slices inside the
MNI brain mask's z-range predicted at evaluation (``eval_slices="brain"``).
"""
from __future__ import annotations

import inspect
import os
import shutil
import time

import numpy as np

from clci_keras.data import SliceReader, crop_shape, load_split
from clci_keras.data.constants import DEFAULT_CROP
from clci_keras.evaluation.evaluate import evaluate_run, format_summary
from clci_keras.experiments.workflows import make_split, prepare_data, train_and_evaluate
from clci_keras.fileio import write_json
from clci_keras.models import build_model, load_weights
from clci_keras.reports import write_tables
from clci_keras.reports.figures import overlay_figure, pick_slices, training_curves
from clci_keras.run_layout import LOG_FILE
from clci_keras.training import set_seed

#: Number of steps :func:`run_demo` announces.
STEPS = 5


def run_demo(out_dir, subjects=6, seed=0, epochs=8, steps_per_epoch=6, batch_size=8, micro_batch=None,
             train_slices="lesion+8", val_slices="lesion", learning_rate=1e-3, bn_momentum=0.5,
             export="last", eval_slices="brain", crop=DEFAULT_CROP, model="clci_net", init_weights=None,
             overwrite=False, verbose="auto", log=print):
    """Run the demo into ``out_dir``; returns the ``demo_summary.json`` dict.

    The defaults are sized for a 2-core CPU (timings: benchmarks/RESULTS.md,
    "Demo"); each is an option of ``clci-keras demo`` (:data:`DEMO_DEFAULTS`).

    Args:
        out_dir: output folder; refused if not empty unless ``overwrite`` (then
            its data, runs, tables and weights are replaced).
        subjects: synthetic subjects (at least 3: train, val, test).
        seed: data, split and training seed.
        model: registered model trained and scored.
        epochs, steps_per_epoch, batch_size, micro_batch, train_slices, val_slices,
            learning_rate, bn_momentum, export, crop: training options
            (:class:`clci_keras.training.TrainConfig`).
        eval_slices: ``brain`` (155 slices) or ``all``.
        init_weights: start from these weights (any format :func:`clci_keras.models.load_weights`
            reads) instead of the seeded network: the same starting point on every backend
            (each backend draws other random numbers for the same seed).
        verbose: Keras' ``fit`` verbosity.
        log: called with each progress message (``None``: silent).

    Outputs in ``out_dir``: ``synthetic/``, ``demo.h5``, ``split.json``,
    ``untrained/`` (initial weights and scores of the untrained network), ``runs/<model>/`` (the
    run: log, exported weights, scores), ``weights/manifest.json``,
    ``tables/table{1,2}.{csv,md,tex}``, ``training_curves.png``,
    ``overlays.png``, ``demo_summary.json``.
    """
    if subjects < 3:
        raise ValueError(f"the demo needs at least 3 subjects (train, val, test), got subjects={subjects}")
    _clear(out_dir, overwrite)
    step, times = _stepper(log), {}
    t0, c0 = time.time(), time.process_time()

    step(1, f"synthetic ATLAS R1.1-like data: {subjects} subjects, and its HDF5 slice file")
    h5, split_path, split = _data(out_dir, subjects, seed, log, step, times)

    step(3, f"{model} before training: scoring the test subject")
    t = time.time()
    net, init, untrained = _untrained(out_dir, h5, split_path, model, crop, seed, eval_slices, init_weights)
    _say(log, "untrained: " + _format(untrained))
    times["untrained_eval"] = time.time() - t

    step(4, f"training {model} ({epochs} epochs x {steps_per_epoch} steps of batch {batch_size}), "
            "evaluation of the exported weights")
    settings = dict(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size, micro_batch=micro_batch,
                    train_slices=train_slices, val_slices=val_slices, learning_rate=learning_rate,
                    bn_momentum=bn_momentum, export=export, eval_slices=eval_slices, crop=crop, seed=seed)
    manifest = os.path.join(out_dir, "weights", "manifest.json")
    run_dir = os.path.join(out_dir, "runs", model)
    # Training, then the exported Keras 2 .h5 weights reloaded into `net` (its prediction
    # function is already built) and scored on the test subject.
    run = train_and_evaluate(
        model, h5, split_path, run_dir, manifest=manifest, network=net, init_weights=init,
        tensorboard=False, overwrite=True, verbose=verbose,
        eager=False,  # the traced training step, as every real run (and the demo's defaults)
        **settings)
    times["training"], times["trained_eval"] = run["seconds"]["training"], run["seconds"]["evaluation"]
    _say(log, "trained:   " + _format(run["summary"]))

    step(5, "tables and figures")
    t = time.time()

    tables = write_tables(os.path.join(out_dir, "runs"), os.path.join(out_dir, "tables"))
    figs = _figures(out_dir, run_dir, h5, split, model, net, init, crop)
    times["reports"] = time.time() - t
    times["total"] = time.time() - t0
    summary = _summary(subjects, split, model, settings, init_weights, untrained, run, times,
                       cpu=time.process_time() - c0,  # CPU seconds of this process (all threads)
                       outputs={"tables": sorted(tables.values()), "figures": figs,
                                "weights": run["weights"], "manifest": manifest})
    write_json(os.path.join(out_dir, "demo_summary.json"), summary, durable=True)
    return summary


def _clear(out_dir, overwrite):
    """Refuse a non-empty ``out_dir`` unless ``overwrite`` (then remove the demo's own outputs)."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; use --overwrite or another --out")
        for name in ("synthetic", "runs", "tables", "weights", "untrained"):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
    os.makedirs(out_dir, exist_ok=True)


def _data(out_dir, subjects, seed, log, step, times):
    """Steps 1-2: the synthetic release, its HDF5 file, the hold-out split; ``(h5, split path, split)``."""
    h5 = prepare_data("synthetic", out_dir, n_subjects=subjects, seed=seed, synthetic_layout="r1.1",
                      h5_name="demo.h5", source_dir=os.path.join(out_dir, "synthetic"), progress=True,
                      description="synthetic ATLAS R1.1-like data (clci-keras demo)")  # provenance for tables
    times.update(h5.seconds)  # synthetic_data, hdf5
    step(2, "hold-out split")
    split_path, _ = make_split(h5, "holdout", out_dir, val_fraction=1.0 / subjects, test_fraction=1.0 / subjects,
                               seed=seed, path=os.path.join(out_dir, "split.json"), verbose=False)
    split = load_split(split_path)
    _say(log, f"train {split['train']}, val {split['val']}, test {split['test']} (subject indices)")
    return h5, split_path, split


def _untrained(out_dir, h5, split_path, model, crop, seed, eval_slices, init_weights):
    """Step 3: the network (seeded, or ``init_weights``), its initial weights file, its test scores."""
    from clci_keras.models.seeding import deferred_initializers, draw_initial_state

    untrained_dir = os.path.join(out_dir, "untrained")
    os.makedirs(untrained_dir, exist_ok=True)
    set_seed(seed)
    with deferred_initializers() as deferred:  # every weight is loaded or drawn below: skip Keras's draws
        net = build_model(model, input_shape=(*crop_shape(crop), 1))
    if init_weights is not None:
        load_weights(net, init_weights)
        init = os.fspath(init_weights)
    else:  # the same network on every backend (models.seeding)
        draw_initial_state(net, seed)
    unset = deferred.unset(net)
    if unset:  # never start from placeholder zeros
        raise RuntimeError(f"{len(unset)} weight(s) of {model!r} were neither drawn nor loaded (e.g. {unset[0]})")
    if init_weights is None:
        init = os.path.join(untrained_dir, "initial.weights.h5")
        net.save_weights(init)
    untrained = evaluate_run(None, model, h5, split_path, part="test", out_dir=untrained_dir, crop=crop,
                             slices=eval_slices, model=net, tag="untrained", progress=True)
    return net, init, untrained


def _format(summary):
    return format_summary(summary["scores"])


def _summary(subjects, split, model, settings, init_weights, untrained, run, times, cpu, outputs):
    """The ``demo_summary.json`` dict."""
    trained = run["summary"]
    return {
        "data": "SYNTHETIC (clci_keras.data.synthetic), not ATLAS",
        "subjects": subjects,
        "split": {k: split[k] for k in ("train", "val", "test")},
        "model": model,
        "settings": dict(settings),
        "init_weights": None if init_weights is None else os.path.abspath(init_weights),
        "backend": _backend(),
        "epochs_run": run["result"]["epochs_run"],
        "test_dsc_untrained": untrained["scores"]["dsc"]["mean"],
        "test_dsc_trained": trained["scores"]["dsc"]["mean"],
        "untrained": {k: v["mean"] for k, v in untrained["scores"].items()},
        "trained": {k: v["mean"] for k, v in trained["scores"].items()},
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "cpu_seconds": round(cpu, 1),
        "cpu_count": os.cpu_count(),
        "outputs": outputs,
    }


def _backend():
    import keras

    return keras.backend.backend()


def _say(log, text):
    if log is not None:
        log(text)


def _stepper(log):
    def step(i, text):
        _say(log, f"\n[{i}/{STEPS}] {text}")

    return step


def _figures(out_dir, run_dir, h5, split, model, net, init, crop):
    """Training curves and test-subject overlays (untrained vs trained).

    ``net`` holds the trained weights on entry and the initial ones on return;
    only the overlaid slices are predicted again, with each set of weights.
    """
    from clci_keras.models import predict_slices  # Keras

    figs = [training_curves(os.path.join(run_dir, LOG_FILE), os.path.join(out_dir, "training_curves.png"),
                            title=f"{model} on synthetic data (demo)")]
    s = int(split["test"][0])
    with SliceReader(h5, crop) as reader:
        x, gt = reader.read_subject(s)
    gt = gt[..., 0]
    z = pick_slices(gt, 4)
    trained_full = np.zeros(gt.shape, np.float32)
    trained_full[z] = predict_slices(net, x[z], batch_size=8)
    load_weights(net, init)
    untrained_full = np.zeros(gt.shape, np.float32)
    untrained_full[z] = predict_slices(net, x[z], batch_size=8)
    figs.append(overlay_figure(
        x[..., 0], gt, {"untrained": untrained_full, "trained": trained_full},
        os.path.join(out_dir, "overlays.png"), slices=z,
        title=f"test subject {s} (synthetic): ground truth (green) vs prediction (red)"))
    return figs


#: ``{option: default}`` of :func:`run_demo` (what ``clci-keras demo`` shows).
DEMO_DEFAULTS = {name: p.default for name, p in inspect.signature(run_demo).parameters.items()
                 if p.default is not inspect.Parameter.empty and name not in ("overwrite", "verbose", "log")}
