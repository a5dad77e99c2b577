"""`clci-keras recipe`: the Table-1 protocol (prep, split, models x folds, tables) as a bash
script or Slurm scripts (library: :mod:`clci_keras.experiments.recipe`)."""
from __future__ import annotations

import shlex

from clci_keras.cli import int_in, nonnegative_int, positive_int, report
from clci_keras.data.constants import LAYOUT_CHOICES
from clci_keras.experiments.recipe import DRY_STEPS, DRY_SUBJECTS, EMITS, Recipe, SlurmResources


def _names(values):
    """``--models a b,c`` -> ``("a", "b", "c")``."""
    return tuple(n for v in values for n in v.split(",") if n)


def add_arguments(parser):
    d, s = Recipe("."), SlurmResources()
    p = parser
    p.add_argument("--work-dir", required=True, metavar="DIR",
                   help="everything is written here: atlas.h5, splits/, runs/MODEL/foldK/, tables/, logs/, times.tsv "
                        "(with --dry: runs_dry/, tables_dry/, times_dry.tsv)")
    g = p.add_argument_group("data")
    g.add_argument("--src", "--data-root", dest="src", metavar="PATH",
                   help="ATLAS release root (R1.1, R1.2 or 2.0; real or from `clci-keras synth`), or an HDF5 "
                        "file of `clci-keras prep` (then no prep step)")
    g.add_argument("--synth", type=positive_int, metavar="N",
                   help="first write a synthetic release of N subjects (into --src, default WORK/synthetic_src)")
    g.add_argument("--synth-seed", type=int, default=d.synth_seed, help=f"seed of --synth (default: {d.synth_seed})")
    g.add_argument("--layout", choices=LAYOUT_CHOICES, default=d.layout,
                   help="release layout for prep (and --synth: auto = r1.1) (default: auto)")
    g.add_argument("--workers", type=positive_int, default=d.workers,
                   help=f"prep worker processes (default: {d.workers})")
    g = p.add_argument_group("protocol")
    g.add_argument("--models", nargs="+", metavar="MODEL",
                   help=f"registered models, space- or comma-separated (default: Table 1: {' '.join(d.models)})")
    g.add_argument("--num-folds", type=int_in(2, 100), default=d.num_folds,
                   help=f"k of the k-fold cross-validation (default: {d.num_folds})")
    g.add_argument("--folds", nargs="+", type=nonnegative_int, metavar="K", help="folds to run (default: all)")
    g.add_argument("--val", type=float, default=d.val,
                   help=f"validation share of each fold's training subjects (default: {d.val})")
    g.add_argument("--crop", help="crop window of train and evaluate (default: clci = 224x176)")
    g.add_argument("--train-args", default="", metavar="'OPTIONS'",
                   help="more options of every train command, as one string: --train-args='--precision bf16'")
    g.add_argument("--evaluate-args", default="", metavar="'OPTIONS'",
                   help="more options of every evaluate command, e.g. --evaluate-args='--batch-size 32'")
    g = p.add_argument_group("dry run (checks that everything runs; numbers mean nothing)")
    g.add_argument("--dry", action="store_true",
                   help=f"train --max-steps {DRY_STEPS} and evaluate --max-subjects {DRY_SUBJECTS} in every job")
    g.add_argument("--max-steps", type=positive_int, default=None, metavar="N",
                   help=f"with --dry: training steps per job (default: {DRY_STEPS})")
    g.add_argument("--max-subjects", type=positive_int, default=None, metavar="N",
                   help=f"with --dry: test patients scored per job (default: {DRY_SUBJECTS})")
    g = p.add_argument_group("output")
    g.add_argument("--emit", choices=EMITS, default="sh",
                   help="sh: one bash script; slurm: prep.sbatch, train.sbatch (job array), tables.sbatch and "
                        "submit.sh (default: sh)")
    g.add_argument("-o", "--output", metavar="PATH",
                   help="the script (sh; default WORK/recipe.sh, recipe_dry.sh with --dry) or the scripts' folder "
                        "(slurm; default WORK/slurm, slurm_dry with --dry)")
    g.add_argument("--command", dest="cli_command", default=d.command, metavar="'CMD'",
                   help=f"how the scripts call clci-keras, e.g. 'python3 -m clci_keras' (default: {d.command})")
    g.add_argument("--run", action="store_true", help="sh: run the written script here at once (its exit code)")
    g = p.add_argument_group("Slurm resources (--emit slurm)")
    g.add_argument("--partition", help="partition of every job (default: the cluster's default)")
    g.add_argument("--account", help="account of every job")
    g.add_argument("--gpus", type=nonnegative_int, default=s.gpus,
                   help=f"GPUs per training task (--gres=gpu:N; 0 = none) (default: {s.gpus})")
    g.add_argument("--cpus", type=positive_int, default=s.cpus, help=f"cores per training task (default: {s.cpus})")
    g.add_argument("--mem", default=s.mem, help=f"memory per training task (default: {s.mem})")
    g.add_argument("--time", default=s.time,
                   help=f"time limit per training task, one model on one fold plus its evaluation (default: {s.time})")
    g.add_argument("--prep-cpus", type=positive_int, help="cores of the prep job (default: --workers)")
    g.add_argument("--prep-mem", default=s.prep_mem, help=f"memory of the prep job (default: {s.prep_mem})")
    g.add_argument("--prep-time", default=s.prep_time, help=f"time limit of the prep job (default: {s.prep_time})")
    g.add_argument("--tables-time", default=s.tables_time, help=f"(default: {s.tables_time})")
    g.add_argument("--parallel", type=positive_int, metavar="N", help="at most N training tasks at once (%%N)")
    g.add_argument("--setup", metavar="'LINES'",
                   help="shell lines run first in every job, e.g. 'source ~/venv/bin/activate'")


def run(args) -> int:
    try:
        from clci_keras.experiments.recipe import (
            DRY_STEPS,
            DRY_SUBJECTS,
            Recipe,
            SlurmResources,
            run_script,
            write_recipe,
        )
        from clci_keras.fileio import check_writable_folder

        if not args.dry and (args.max_steps or args.max_subjects):
            raise ValueError("--max-steps / --max-subjects set the caps of a dry run: add --dry")
        if args.run and args.emit != "sh":
            raise ValueError("--run runs the sh script; with --emit slurm submit WORK/slurm/submit.sh instead")
        recipe = Recipe(
            args.work_dir, src=args.src, layout=args.layout, synth=args.synth, synth_seed=args.synth_seed,
            **({"models": _names(args.models)} if args.models else {}),
            folds=args.folds, num_folds=args.num_folds, val=args.val, crop=args.crop, dry=args.dry,
            max_steps=args.max_steps or DRY_STEPS, max_subjects=args.max_subjects or DRY_SUBJECTS,
            workers=args.workers, train_args=shlex.split(args.train_args),
            evaluate_args=shlex.split(args.evaluate_args), command=args.cli_command,
        )
        recipe.validate()
        check_writable_folder(recipe.work_dir, what="work folder")
        resources = SlurmResources(
            partition=args.partition, account=args.account, gpus=args.gpus, cpus=args.cpus, mem=args.mem,
            time=args.time, prep_cpus=args.prep_cpus, prep_mem=args.prep_mem, prep_time=args.prep_time,
            tables_time=args.tables_time, parallel=args.parallel, setup=args.setup,
        )
        paths = write_recipe(recipe, args.emit, args.output, resources)
    except (OSError, ValueError) as e:
        return report("recipe", e)
    for line in recipe.describe():
        print(line)
    print("wrote " + ", ".join(paths))
    if args.emit == "slurm":
        print(f"submit: bash {[p for p in paths if p.endswith('submit.sh')][0]}")
        return 0
    if not args.run:
        print(f"run: bash {paths[0]}   (rerun it to resume)")
        return 0
    return run_script(paths[0])
