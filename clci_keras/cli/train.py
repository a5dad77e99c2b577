"""`clci-keras train`: train a model on an HDF5 file and a split (resumable)."""
from __future__ import annotations

import dataclasses
import json
import sys

from clci_keras.data.reader import INPUT_MODES
from clci_keras.fileio import check_writable_folder, read_json
from clci_keras.models.choices import BN_UPDATES, LOSSES
from clci_keras.precision import PRECISIONS
from clci_keras.training.config import EXPORTS, RUN_FIELDS, STRATEGIES, TrainConfig
from clci_keras.training.determinism import prepare_determinism

#: The TrainConfig fields that are training options, read from the option of the same ``dest``
#: where there is one (``--epochs``, ``--lr``, ...; ``--set`` reaches any field): every field but
#: the run's identity (``--model --h5 --split --out --fold``: train()'s own arguments) and the
#: manifest (``--manifest`` / ``--no-manifest``).
OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in (*RUN_FIELDS, "manifest"))


def add_arguments(parser):
    from clci_keras.cli import DeprecatedFlag, DeprecatedOption, positive_int

    d = TrainConfig()
    p = parser
    p.add_argument("--model", default=d.model, help=f"registered model name (default: {d.model})")
    p.add_argument("--h5", required=True, metavar="DATA.h5", help="HDF5 slice file (clci-keras prep)")
    p.add_argument("--split", required=True, metavar="SPLIT.json", help="split file (clci-keras split)")
    p.add_argument("--fold", type=int, default=None, help="fold number, recorded (k-fold split files)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder; rerun the same command to resume")
    p.add_argument("--config", metavar="CONFIG.json", help="start from a config.json of another run")
    g = p.add_argument_group("protocol (defaults: CLCI-Net / X-Net)")
    g.add_argument("--epochs", type=int, help=f"maximum epochs (default: {d.epochs})")
    g.add_argument("--batch-size", type=int, help=f"global batch size (default: {d.batch_size})")
    g.add_argument("--micro-batch", type=positive_int, metavar="M",
                   help="slices per forward/backward pass: each batch's gradients are averaged over its "
                        "micro-batches of M (less memory; BatchNorm statistics and the Dice loss per "
                        "micro-batch, a departure; default: the whole batch)")
    g.add_argument("--val-batch-size", type=int, help=f"validation batch (default: {d.val_batch_size})")
    g.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float,
                   help=f"Adam learning rate (default: {d.learning_rate})")
    g.add_argument("--loss", choices=LOSSES, help=f"loss (default: {d.loss})")
    g.add_argument("--steps-per-epoch", type=int, help="batches per epoch (default: training slices // batch)")
    g.add_argument("--max-steps", type=positive_int, metavar="N",
                   help="DRY RUN, not the protocol: one epoch of at most N training steps and N validation "
                        "batches (recorded in config.json and result.json; tables mark such runs)")
    g.add_argument("--monitor", help=f"checkpoint/LR/early-stopping quantity (default: {d.monitor})")
    g.add_argument("--reduce-lr-factor", type=float, help=f"(default: {d.reduce_lr_factor})")
    g.add_argument("--reduce-lr-patience", type=int, help=f"(default: {d.reduce_lr_patience})")
    g.add_argument("--reduce-lr-min-delta", type=float, help=f"(default: {d.reduce_lr_min_delta})")
    g.add_argument("--early-stopping-patience", type=int, help=f"(default: {d.early_stopping_patience})")
    g.add_argument("--train-slices", help="all | brain | lesion | lesion+N (default: all)")
    g.add_argument("--val-slices", help="all | brain | lesion | lesion+N (default: all)")
    g.add_argument("--crop", help="crop window: clci (224x176), xnet (224x192) or 'r0:r1,c0:c1'")
    g.add_argument("--input-mode", choices=INPUT_MODES,
                   help="memory: subjects read once, X-Net's global shuffle; stream: whole-subject reads by "
                        "worker processes, shuffled within windows of subjects; auto (default): memory when "
                        "the subjects fit --max-memory-gb")
    g.add_argument("--max-memory-gb", type=float, metavar="GB",
                   help="memory budget of the input pipeline (default: half the RAM)")
    g.add_argument("--stream-buffer", dest="stream_buffer_subjects", type=int, metavar="N",
                   help="subjects per shuffling window when streaming (default: from the budget, <= 32)")
    g.add_argument("--export", choices=EXPORTS, help=f"weights exported at the end (default: {d.export})")
    g.add_argument("--bn-momentum", type=float, help="override BatchNorm momentum (default: keep 0.99)")
    g.add_argument("--bn-update", choices=BN_UPDATES,
                   help="BatchNorm moving-statistics update: Keras 2.2.4's (Bessel-corrected, zero-debiased; "
                        "the original code's) or Keras 3's (default: keras2)")
    g.add_argument("--init-weights", metavar="W", help="start from these weights (any supported format)")
    h = p.add_argument_group("hardware and reproducibility")
    h.add_argument("--strategy", choices=STRATEGIES, help="tf.distribute strategy (default: default)")
    h.add_argument("--precision", choices=PRECISIONS,
                   help="fp32 (the default), bf16 (mixed, float32 variables) or fp16 (mixed, dynamic "
                   "loss scaling); bf16 falls back to fp32 with a warning on CPUs that only emulate it "
                   "(no AVX-512 BF16 / AMX)")
    h.add_argument("--mixed-precision", dest="precision", nargs="?", const="bf16", action=DeprecatedOption,
                   new="--precision", values={"off": "fp32"}, choices=(*PRECISIONS, "off"),
                   help="deprecated alias of --precision (no value: bf16; off: fp32)")
    h.add_argument("--force-bf16", action="store_true",
                   help="run bf16 even on a CPU without native BF16 (emulated, slower)")
    h.add_argument("--jit", action="store_true", default=None, help="XLA-compile the train step")
    h.add_argument("--seed", type=int, help=f"random seed (default: {d.seed})")
    h.add_argument("--deterministic", dest="deterministic", action="store_true", default=None,
                   help="the same seed gives the same weights bit for bit on this machine and backend; on "
                        "TensorFlow also oneDNN off and one inter-op thread (about 2x the CPU time per step; "
                        "docs/reproducibility.md)")
    h.add_argument("--no-deterministic", dest="deterministic", action="store_false", default=None,
                   help="no deterministic kernels at all (default: op determinism, the last bits may still "
                        "differ from run to run)")
    o = p.add_argument_group("outputs")
    o.add_argument("--manifest", default="weights/manifest.json",
                   help="weights manifest the result is added to (default: weights/manifest.json)")
    o.add_argument("--no-manifest", dest="no_manifest", action="store_true",
                   help="do not add the weights to the manifest")
    o.add_argument("--no-register", dest="no_manifest", action=DeprecatedFlag, new="--no-manifest",
                   help="deprecated alias of --no-manifest")
    o.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None)
    o.add_argument("--quiet", action="store_true", help="one line per epoch instead of progress bars")
    o.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other TrainConfig field (JSON value), e.g. --set reduce_lr_min_lr=1e-7")
    o.add_argument("--overwrite", action="store_true", help="delete RUN_DIR's run and start afresh")


def overrides_from_args(args):
    """TrainConfig overrides given on the command line (None = not given), ``--set`` ones last."""
    out = {k: getattr(args, k) for k in OPTION_FIELDS if getattr(args, k, None) is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def run(args) -> int:
    from clci_keras.cli import report

    try:
        check_writable_folder(args.out, what="run folder")
        config = None
        if args.config:
            config = TrainConfig.from_dict(read_json(args.config))
        overrides = overrides_from_args(args)
        # --deterministic: before TensorFlow is imported (by the trainer), which reads the settings then
        prepare_determinism(args.deterministic is True)
        from clci_keras.training import train

        overrides["manifest"] = None if args.no_manifest else args.manifest
        if args.quiet or not sys.stdout.isatty():  # no progress-bar escapes in log files
            overrides["verbose"] = 2
        result = train(args.model, args.h5, args.split, args.out, fold=args.fold, config=config,
                       overwrite=args.overwrite, force_bf16=args.force_bf16, **overrides)
    except (OSError, ValueError) as e:
        return report("train", e)
    print(f"done: {result['epochs_run']} epochs, best {result['monitor']} = {result['best_value']} "
          f"(epoch {None if result['best_epoch'] is None else result['best_epoch'] + 1}); "
          f"weights: {result['run_dir']}/{result['weights']}"
          + (f" [DRY RUN: --max-steps {result['max_steps']}]" if result.get("dry_run") else ""))
    return 0
