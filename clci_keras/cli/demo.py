"""`clci-keras demo`: synthetic end-to-end run sized for a CPU (timings: benchmarks/RESULTS.md, "Demo").

Argument parsing and printing only; the demo itself is
:func:`clci_keras.experiments.run_demo` (its docstring lists the steps, the
outputs and the departures from the paper's protocol).
"""
from __future__ import annotations

import os

from clci_keras.cli import eval_slices_arg, positive_int
from clci_keras.experiments import DEMO_DEFAULTS, run_demo
from clci_keras.training.config import EXPORTS
from clci_keras.training.determinism import prepare_determinism


def add_arguments(parser):
    p, d = parser, DEMO_DEFAULTS
    p.add_argument("--out", default="clci_demo", metavar="DIR", help="output folder (default: ./clci_demo)")
    p.add_argument("--subjects", type=int, default=d["subjects"], help=f"synthetic subjects (default: {d['subjects']})")
    p.add_argument("--seed", type=int, default=d["seed"], help=f"data, split and training seed (default: {d['seed']})")
    p.add_argument("--model", default=d["model"], help=f"registered model (default: {d['model']})")
    p.add_argument("--epochs", type=int, default=d["epochs"], help=f"(default: {d['epochs']})")
    p.add_argument("--steps-per-epoch", type=int, default=d["steps_per_epoch"],
                   help=f"batches per epoch (default: {d['steps_per_epoch']})")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help=f"(default: {d['batch_size']})")
    p.add_argument("--micro-batch", type=positive_int, default=d["micro_batch"], metavar="M",
                   help="train each batch as micro-batches of M slices, gradients averaged: less memory, "
                        "but BatchNorm statistics and the Dice loss per micro-batch move the result "
                        "(docs/training.md; default: the whole batch)")
    p.add_argument("--train-slices", default=d["train_slices"], help=f"(default: {d['train_slices']})")
    p.add_argument("--val-slices", default=d["val_slices"], help=f"(default: {d['val_slices']})")
    p.add_argument("--lr", type=float, default=d["learning_rate"], help=f"(default: {d['learning_rate']})")
    p.add_argument("--bn-momentum", type=float, default=d["bn_momentum"], help=f"(default: {d['bn_momentum']})")
    p.add_argument("--export", choices=EXPORTS, default=d["export"],
                   help=f"weights evaluated: last epoch or best on validation (default: {d['export']})")
    p.add_argument("--eval-slices", type=eval_slices_arg, default=d["eval_slices"], metavar="all|brain|A:B",
                   help=f"(default: {d['eval_slices']})")
    p.add_argument("--crop", default=d["crop"], help=f"crop window (default: {d['crop']} = 224x176)")
    p.add_argument("--init-weights", metavar="W",
                   help="start from these weights instead of the seeded network, e.g. another backend's "
                        "OUT/untrained/initial.weights.h5 (each backend draws other random numbers)")
    p.add_argument("--deterministic", action="store_true",
                   help="the same seed gives the same demo bit for bit on this machine and backend (TensorFlow: "
                        "oneDNN off, one inter-op thread; about 2x the CPU time per step; docs/reproducibility.md)")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty DIR (its data and run are replaced)")


def run(args) -> int:
    prepare_determinism(args.deterministic)  # before TensorFlow is imported, which reads the settings then
    try:
        s = run_demo(args.out, subjects=args.subjects, seed=args.seed, epochs=args.epochs,
                     steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                     micro_batch=args.micro_batch,
                     train_slices=args.train_slices, val_slices=args.val_slices, learning_rate=args.lr,
                     bn_momentum=args.bn_momentum, export=args.export, eval_slices=args.eval_slices,
                     crop=args.crop, model=args.model, init_weights=args.init_weights, overwrite=args.overwrite,
                     log=lambda text: print(text, flush=True))
    except (OSError, ValueError) as e:
        from clci_keras.cli import report

        return report("demo", e)
    print("\n" + "=" * 72)
    print(f"DEMO DONE in {s['seconds']['total'] / 60:.1f} min, {s['cpu_seconds'] / 60:.1f} CPU-min "
          "(synthetic data, not ATLAS)")
    print(f"test Dice (3D, per patient): untrained {s['test_dsc_untrained']:.3f} -> trained {s['test_dsc_trained']:.3f}")
    print(f"table:   {os.path.join(args.out, 'tables', 'table1.md')}")
    print(f"figures: {', '.join(s['outputs']['figures'])}")
    print("=" * 72)
    return 0
