"""`clci-keras demo`: synthetic end-to-end run on a CPU in under 10 minutes.

Steps (each timed, progress shown):

1. a synthetic ATLAS R1.1-like release of ``--subjects`` subjects
   (:func:`clci_keras.data.synthetic.generate_dataset`);
2. the HDF5 slice file (:func:`clci_keras.data.prepare_h5`), marked synthetic;
3. a hold-out split: 1 test subject, 1 validation subject, the rest training;
4. CLCI-Net built with the seed and scored untrained on the test subject;
5. a short training of that same network (:func:`clci_keras.training.train`)
   on the lesion slices plus a few other brain slices of each training
   subject (``--train-slices lesion+N``);
6. the trained weights (exported in the Keras-2 ``.h5`` layout, reloaded) scored
   on the test subject; Table 1 / Table 2 (with a SYNTHETIC mark), training
   curves and slice overlays (untrained vs trained vs ground truth).

Departures from the paper's protocol, all to fit a 2-core CPU, all options:
learning rate 1e-3 instead of 1e-4 (``--lr``), BatchNorm momentum 0.5
instead of 0.99 so that the moving statistics used at inference follow the
fast-changing network within a few steps (``--bn-momentum``), the last
epoch's weights rather than the best on one validation subject
(``--export``), sampled training slices, few epochs, and only
the slices inside the MNI brain mask's z-range predicted at evaluation
(``--eval-slices brain``).
"""
from __future__ import annotations

import json
import os
import sys
import time

HELP = "synthetic end-to-end demo: data, training, evaluation, figure"

#: Defaults tuned to fit <= 10 minutes on a 2-core CPU (see docs/training.md).
DEFAULTS = dict(
    subjects=6,
    seed=0,
    epochs=3,
    steps_per_epoch=6,
    batch_size=8,
    train_slices="lesion+8",
    val_slices="lesion",
    learning_rate=1e-3,
    bn_momentum=0.5,
    export="last",
    eval_slices="brain",
    crop="clci",
    model="clci_net",
)


def add_arguments(parser):
    d = DEFAULTS
    p = parser
    p.add_argument("--out", default="clci_demo", metavar="DIR", help="output folder (default: ./clci_demo)")
    p.add_argument("--subjects", type=int, default=d["subjects"], help=f"synthetic subjects (default: {d['subjects']})")
    p.add_argument("--seed", type=int, default=d["seed"], help="data, split and training seed (default: 0)")
    p.add_argument("--model", default=d["model"], help="registered model (default: clci_net)")
    p.add_argument("--epochs", type=int, default=d["epochs"], help=f"(default: {d['epochs']})")
    p.add_argument("--steps-per-epoch", type=int, default=d["steps_per_epoch"],
                   help=f"batches per epoch (default: {d['steps_per_epoch']})")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"(default: {d['batch_size']})")
    p.add_argument("--train-slices", default=d["train_slices"], help=f"(default: {d['train_slices']})")
    p.add_argument("--val-slices", default=d["val_slices"], help=f"(default: {d['val_slices']})")
    p.add_argument("--lr", type=float, default=d["learning_rate"], help=f"(default: {d['learning_rate']})")
    p.add_argument("--bn-momentum", type=float, default=d["bn_momentum"], help=f"(default: {d['bn_momentum']})")
    p.add_argument("--export", choices=("best", "last"), default=d["export"],
                   help=f"weights evaluated: last epoch or best on validation (default: {d['export']})")
    p.add_argument("--eval-slices", choices=("all", "brain"), default=d["eval_slices"],
                   help=f"(default: {d['eval_slices']})")
    p.add_argument("--crop", default=d["crop"], help="crop window (default: clci = 224x176)")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty DIR (its data and run are replaced)")


def _step(i, n, text):
    print(f"\n[{i}/{n}] {text}", flush=True)


def run_demo(out_dir, subjects=6, seed=0, epochs=3, steps_per_epoch=6, batch_size=8,
             train_slices="lesion+8", val_slices="lesion", learning_rate=1e-3, bn_momentum=0.5,
             export="last", eval_slices="brain", crop="clci", model="clci_net", overwrite=False, verbose="auto"):
    """Run the demo into ``out_dir``; returns the ``demo_summary.json`` dict."""
    import shutil

    import h5py

    from clci_keras.data import generate_dataset, make_holdout_split, prepare_h5, read_subjects, save_split

    if subjects < 3:
        raise ValueError(f"the demo needs at least 3 subjects (train, val, test), got subjects={subjects}")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; use --overwrite or another --out")
        for name in ("synthetic", "runs", "tables", "weights", "untrained"):
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
    os.makedirs(out_dir, exist_ok=True)
    n = 6
    times = {}
    t0 = t = time.time()
    c0 = time.process_time()

    _step(1, n, f"synthetic ATLAS R1.1-like data: {subjects} subjects")
    src = os.path.join(out_dir, "synthetic")
    generate_dataset(src, layout="r1.1", n_subjects=subjects, seed=seed, overwrite=True, progress=True)
    times["synthetic_data"], t = time.time() - t, time.time()

    _step(2, n, "HDF5 slice file")
    h5 = os.path.join(out_dir, "demo.h5")
    prepare_h5(src, h5, overwrite=True, progress=True)
    with h5py.File(h5, "r+") as f:  # provenance: tables and the manifest mark it synthetic
        f.attrs["synthetic"] = True
        f.attrs["description"] = "synthetic ATLAS R1.1-like data (clci-keras demo)"
    ids = [s["subject_id"] for s in read_subjects(h5)]
    times["hdf5"], t = time.time() - t, time.time()

    _step(3, n, "hold-out split")
    split = make_holdout_split(ids, val=1.0 / subjects, test=1.0 / subjects, seed=seed)
    split_path = os.path.join(out_dir, "split.json")
    save_split(split, split_path)
    print(f"train {split['train']}, val {split['val']}, test {split['test']} (subject indices)")

    _step(4, n, f"{model} before training: scoring the test subject")
    from clci_keras.evaluation.evaluate import evaluate_run, format_summary
    from clci_keras.models import build_model
    from clci_keras.training import set_seed, train
    from clci_keras.training.sampling import _crop

    rows_, cols_ = _crop(crop)
    shape = (rows_.stop - rows_.start, cols_.stop - cols_.start, 1)
    run_dir = os.path.join(out_dir, "runs", model)
    untrained_dir = os.path.join(out_dir, "untrained")
    os.makedirs(untrained_dir, exist_ok=True)
    set_seed(seed)
    net = build_model(model, input_shape=shape)
    init = os.path.join(untrained_dir, "initial.weights.h5")
    net.save_weights(init)
    untrained = evaluate_run(None, model, h5, split_path, part="test", out_dir=untrained_dir, crop=crop,
                             slices=eval_slices, model=net, tag="untrained", progress=True)
    print("untrained: " + format_summary(untrained["scores"]))
    del net
    times["untrained_eval"], t = time.time() - t, time.time()

    _step(5, n, f"training {model} ({epochs} epochs x {steps_per_epoch} steps of batch {batch_size})")
    manifest = os.path.join(out_dir, "weights", "manifest.json")
    result = train(
        model, h5, split_path, run_dir, init_weights=init, epochs=epochs,
        steps_per_epoch=steps_per_epoch, batch_size=batch_size, train_slices=train_slices,
        val_slices=val_slices, learning_rate=learning_rate, bn_momentum=bn_momentum, crop=crop,
        seed=seed, manifest=manifest, tensorboard=False, overwrite=True, verbose=verbose,
        export=export,
    )
    times["training"], t = time.time() - t, time.time()

    _step(6, n, "evaluation of the exported weights, tables and figures")
    weights = os.path.join(run_dir, result["weights"])
    trained = evaluate_run(weights, model, h5, split_path, part="test", out_dir=run_dir, crop=crop,
                           slices=eval_slices, manifest=manifest,
                           manifest_name=result.get("manifest_entry"), progress=True)
    times["trained_eval"], t = time.time() - t, time.time()
    print("trained:   " + format_summary(trained["scores"]))

    from clci_keras.reports.tables import write_tables

    tables = write_tables(os.path.join(out_dir, "runs"), os.path.join(out_dir, "tables"))
    figs = _figures(out_dir, run_dir, h5, split, model, shape, weights, init, crop, eval_slices)
    times["reports"] = time.time() - t
    times["total"] = time.time() - t0
    cpu = time.process_time() - c0  # CPU seconds of this process (all threads)

    d_un = untrained["scores"]["dsc"]["mean"]
    d_tr = trained["scores"]["dsc"]["mean"]
    summary = {
        "data": "SYNTHETIC (clci_keras.data.synthetic), not ATLAS",
        "subjects": subjects,
        "split": {k: split[k] for k in ("train", "val", "test")},
        "model": model,
        "settings": dict(epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                         train_slices=train_slices, val_slices=val_slices, learning_rate=learning_rate,
                         bn_momentum=bn_momentum, export=export, eval_slices=eval_slices, crop=crop,
                         seed=seed),
        "epochs_run": result["epochs_run"],
        "test_dsc_untrained": d_un,
        "test_dsc_trained": d_tr,
        "untrained": {k: v["mean"] for k, v in untrained["scores"].items()},
        "trained": {k: v["mean"] for k, v in trained["scores"].items()},
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "cpu_seconds": round(cpu, 1),
        "cpu_count": os.cpu_count(),
        "outputs": {"tables": sorted(tables.values()), "figures": figs, "weights": weights,
                    "manifest": manifest},
    }
    with open(os.path.join(out_dir, "demo_summary.json.tmp"), "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(os.path.join(out_dir, "demo_summary.json.tmp"), os.path.join(out_dir, "demo_summary.json"))
    os.remove(init)
    print("\n" + "=" * 72)
    print(f"DEMO DONE in {times['total'] / 60:.1f} min, {cpu / 60:.1f} CPU-min "
          "(synthetic data, not ATLAS)")
    print(f"test Dice (3D, per patient): untrained {d_un:.3f} -> trained {d_tr:.3f}")
    print(f"table:   {os.path.join(out_dir, 'tables', 'table1.md')}")
    print(f"figures: {', '.join(figs)}")
    print("=" * 72)
    return summary


def _figures(out_dir, run_dir, h5, split, model, shape, weights, init, crop, eval_slices):
    """Training curves and test-subject overlays (untrained vs trained)."""
    from clci_keras.models import build_model, load_weights
    from clci_keras.reports.figures import overlay_figure, pick_slices, training_curves
    from clci_keras.training.sampling import SliceReader, subject_table

    figs = [training_curves(os.path.join(run_dir, "log.csv"), os.path.join(out_dir, "training_curves.png"),
                            title=f"{model} on synthetic data (demo)")]
    s = int(split["test"][0])
    net = build_model(model, input_shape=shape)
    reader = SliceReader(h5, crop)
    off, count = subject_table(h5)[s]
    x, gt = reader.read(list(range(off, off + count)))
    gt = gt[..., 0]
    # Only the overlaid slices are predicted again (cheap), with each set of weights.
    load_weights(net, weights)
    import numpy as np

    trained_full = np.zeros(gt.shape, np.float32)
    z = pick_slices(gt, 4)
    trained_full[z] = np.asarray(net.predict_on_batch(x[z]))[..., 0]
    load_weights(net, init)
    untrained_full = np.zeros(gt.shape, np.float32)
    untrained_full[z] = np.asarray(net.predict_on_batch(x[z]))[..., 0]
    reader.close()
    figs.append(overlay_figure(
        x[..., 0], gt, {"untrained": untrained_full, "trained": trained_full},
        os.path.join(out_dir, "overlays.png"), slices=z,
        title=f"test subject {s} (synthetic): ground truth (green) vs prediction (red)"))
    return figs


def run(args) -> int:
    try:
        run_demo(args.out, subjects=args.subjects, seed=args.seed, epochs=args.epochs,
                 steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                 train_slices=args.train_slices, val_slices=args.val_slices, learning_rate=args.lr,
                 bn_momentum=args.bn_momentum, export=args.export, eval_slices=args.eval_slices,
                 crop=args.crop,
                 model=args.model, overwrite=args.overwrite)
    except (OSError, ValueError) as e:
        print(f"clci-keras demo: error: {e}", file=sys.stderr)
        return 2
    return 0
