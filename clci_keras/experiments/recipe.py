"""The Table-1 protocol as independent jobs, written as a bash script or Slurm scripts.

:class:`Recipe` describes the study: optional synthetic data (``synth``), the
HDF5 slice file (``prep``), the 5-fold split (``split``), one job per model and
fold (``train``, then ``evaluate`` of its exported weights on the fold's test
patients) and the tables (``tables``). Models x folds are independent (6 x 5 =
30 jobs for Table 1), so they can run one after another (:func:`to_sh`) or as a
Slurm job array (:func:`to_slurm`). Every step is a ``clci-keras`` command of
the README's workflow table.

Rerunning skips finished steps: ``prep``, ``split`` and ``evaluate`` are skipped
when their outputs exist (the split and an evaluation also when they are newer
than the HDF5 file / the weights); ``clci-keras train`` resumes an interrupted
run and returns at once for a finished one. Every step's wall time, CPU time
and peak memory (GNU ``/usr/bin/time``, where installed) are appended to
``WORK/times.tsv``.

A *dry* recipe (``dry=True``) caps training at ``max_steps`` steps
(``train --max-steps``) and scores ``max_subjects`` test patients per fold
(``evaluate --max-subjects``): it checks that the whole recipe runs at full
size (minutes per job instead of hours); the runs record the caps and the tables mark them
``[DRY RUN]``. Its runs, tables and times go to ``runs_dry/``, ``tables_dry/``
and ``times_dry.tsv``, so that the real recipe in the same work folder reuses
the HDF5 file and the split but none of the dry runs.

Importing this module does not import TensorFlow (:meth:`Recipe.validate`
does, to check model names other than Tables 1-2's against the registry).
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess

from clci_keras.data.constants import LAYOUT_CHOICES, SYNTHETIC_MARKER
from clci_keras.data.slicing import get_crop
from clci_keras.experiments.workflows import TABLE1_MODELS, TABLE2_MODELS
from clci_keras.fileio import atomic_text
from clci_keras.run_layout import default_weights_name, summary_file
from clci_keras.training.config import RUN_FIELDS
from clci_keras.version import __version__

#: Emit formats.
EMITS = ("sh", "slurm")
#: Default caps of a dry recipe.
DRY_STEPS = 2
DRY_SUBJECTS = 1
#: ``clci-keras synth`` writes this file last: its presence means the release is complete.
SYNTH_DONE = SYNTHETIC_MARKER


def _train_option(field):
    """The ``clci-keras train`` option of a :class:`~clci_keras.training.TrainConfig` field (``out_dir``: ``--out``)."""
    return "--out" if field == "out_dir" else "--" + field.replace("_", "-")


#: Options of ``train`` / ``evaluate`` that the recipe sets itself: for ``train`` the run
#: (TrainConfig's ``RUN_FIELDS``), its manifest, the crop and the dry-run cap, and the options
#: that would undo them.
_OWN_TRAIN = (*map(_train_option, (*RUN_FIELDS, "manifest", "crop", "max_steps")),
              "--no-manifest", "--no-register", "--overwrite", "--config")
_OWN_EVALUATE = ("--model", "--weights", "--h5", "--split", "--fold", "--out", "--manifest", "--name",
                 "--crop", "--max-subjects", "--part", "--preset")


@dataclasses.dataclass
class SlurmResources:
    """``#SBATCH`` resources of the three Slurm scripts (``None``: the line is left out)."""

    partition: str | None = None     # --partition of every job
    account: str | None = None       # --account of every job
    gpus: int = 1                    # GPUs per training task (--gres=gpu:N; 0: CPU-only)
    cpus: int = 8                    # CPU cores per training task (data reading, evaluation)
    mem: str = "64G"                 # memory per training task
    time: str = "24:00:00"           # time limit per training task (one model, one fold, then its evaluation)
    prep_cpus: int | None = None     # cores of the prep job (default: the recipe's prep workers)
    prep_mem: str = "32G"
    prep_time: str = "06:00:00"
    tables_time: str = "00:30:00"
    parallel: int | None = None      # at most this many array tasks at once (--array=0-29%N)
    setup: str | None = None         # shell lines run first in every job (module load ..., source venv/bin/activate)


@dataclasses.dataclass
class Recipe:
    """The Table-1 protocol on one dataset; see the module docstring.

    Args:
        work_dir: where everything is written (HDF5 file, split, run folders,
            tables, logs, ``times.tsv``; ``*_dry`` for a dry recipe); made absolute.
        src: the data: an ATLAS release root (R1.1, R1.2, 2.0; real or
            synthetic) converted by ``prep``, or an existing HDF5 slice file
            (no ``prep``). With ``synth`` the synthetic release is written
            there (default ``work_dir/synthetic_src``).
        layout: ``prep --layout`` (``auto``, ``r1.1``, ``r1.2``, ``v2``);
            with ``synth`` also the synthetic layout (``auto`` = ``r1.1``).
        synth: generate a synthetic release of this many subjects first.
        models: registered model names (default: Table 1's six).
        folds: fold numbers to run (default: all ``num_folds``).
        num_folds: k of the k-fold cross-validation (the protocol: 5).
        val: validation share of each fold's training subjects.
        crop: crop window of training and evaluation (``None``: ``clci``, 224 x 176).
        dry: cap training at ``max_steps`` steps and evaluation at
            ``max_subjects`` test patients per fold.
        workers: ``prep --workers``.
        train_args, evaluate_args: further options of every ``train`` /
            ``evaluate`` command (e.g. ``("--precision", "bf16")``).
        command: how the scripts call ``clci-keras`` (e.g. ``python3 -m clci_keras``).
    """

    work_dir: str
    src: str | None = None
    layout: str = "auto"
    synth: int | None = None
    synth_seed: int = 0
    models: tuple = TABLE1_MODELS
    folds: tuple | None = None
    num_folds: int = 5
    val: float = 0.1
    crop: str | None = None
    dry: bool = False
    max_steps: int = DRY_STEPS
    max_subjects: int = DRY_SUBJECTS
    workers: int = 2
    train_args: tuple = ()
    evaluate_args: tuple = ()
    command: str = "clci-keras"

    def __post_init__(self):
        self.work_dir = os.path.abspath(os.fspath(self.work_dir))
        if self.src is not None:
            self.src = os.path.abspath(os.fspath(self.src))
        elif self.synth:
            self.src = os.path.join(self.work_dir, "synthetic_src")
        self.models = tuple(self.models)
        self.folds = tuple(range(int(self.num_folds))) if self.folds is None else tuple(int(f) for f in self.folds)
        self.train_args, self.evaluate_args = tuple(self.train_args), tuple(self.evaluate_args)

    # -- paths --------------------------------------------------------------
    @property
    def prep_needed(self):
        """Whether ``src`` is a release to convert (not an HDF5 file)."""
        return not (self.src and os.path.isfile(self.src) and not self.synth)

    @property
    def h5(self):
        return self.src if not self.prep_needed else os.path.join(self.work_dir, "atlas.h5")

    @property
    def split(self):
        return os.path.join(self.work_dir, "splits", f"kfold{self.num_folds}.json")

    @property
    def suffix(self):
        """``_dry`` for a dry recipe: its runs and tables never mix with the real ones."""
        return "_dry" if self.dry else ""

    @property
    def runs(self):
        return os.path.join(self.work_dir, "runs" + self.suffix)

    @property
    def tables(self):
        return os.path.join(self.work_dir, "tables" + self.suffix)

    @property
    def synth_layout(self):
        return "r1.1" if self.layout == "auto" else self.layout

    def jobs(self):
        """``[(model, fold)]``: the independent training (+ evaluation) jobs, models outer."""
        return [(m, f) for m in self.models for f in self.folds]

    # -- checks -------------------------------------------------------------
    def validate(self, check_models=True):
        """Raise ``ValueError`` / ``FileNotFoundError`` naming the first bad setting."""
        if not self.models:
            raise ValueError("no models to run")
        if len(set(self.models)) < len(self.models):
            raise ValueError(f"a model is named twice: {list(self.models)}")
        if check_models and not set(self.models) <= set(TABLE1_MODELS + TABLE2_MODELS):
            from clci_keras.models import list_models  # imports every model's module (Keras)

            known = list_models()
            unknown = [m for m in self.models if m not in known]
            if unknown:
                raise ValueError(f"unknown model(s) {unknown}; registered: {', '.join(known)}")
        if isinstance(self.num_folds, bool) or int(self.num_folds) < 2:
            raise ValueError(f"num_folds must be >= 2, got {self.num_folds!r}")
        bad = [f for f in self.folds if not 0 <= f < self.num_folds]
        if bad or not self.folds or len(set(self.folds)) < len(self.folds):
            raise ValueError(f"folds must be distinct numbers in 0..{self.num_folds - 1}, got {list(self.folds)}")
        if not 0.0 <= float(self.val) < 1.0:
            raise ValueError(f"val must be in [0, 1), got {self.val!r}")
        if self.crop is not None:
            get_crop(self.crop)
        if self.layout not in LAYOUT_CHOICES:
            raise ValueError(f"layout must be one of {', '.join(LAYOUT_CHOICES)}, got {self.layout!r}")
        for name in ("max_steps", "max_subjects", "workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.synth is not None:
            if isinstance(self.synth, bool) or not isinstance(self.synth, int) or self.synth < self.num_folds:
                raise ValueError(f"synth must be a number of subjects >= num_folds ({self.num_folds}), "
                                 f"got {self.synth!r}")
            if os.path.isfile(self.src):
                raise ValueError(f"{self.src}: the synthetic release is written there, but it is a file")
        elif self.src is None:
            raise ValueError("give the data (src: an ATLAS release folder or an HDF5 file) or synth=N")
        elif not os.path.exists(self.src):
            raise FileNotFoundError(f"{self.src}: no such ATLAS release folder or HDF5 file")
        for args, own, cmd in ((self.train_args, _OWN_TRAIN, "train"), (self.evaluate_args, _OWN_EVALUATE, "evaluate")):
            clash = [a for a in args if a.split("=")[0] in own]
            if clash:
                raise ValueError(f"extra {cmd} options {clash} are set by the recipe itself; "
                                 f"use the recipe's own options")
        return self

    # -- the commands -------------------------------------------------------
    def command_line(self):
        """The ``clci-keras recipe`` options that give this recipe (written into the scripts)."""
        d = Recipe(self.work_dir)
        out = ["clci-keras", "recipe", "--work-dir", self.work_dir]
        if self.src is not None and not (self.synth and self.src == os.path.join(self.work_dir, "synthetic_src")):
            out += ["--src", self.src]
        if self.synth:
            out += ["--synth", str(self.synth)] + (["--synth-seed", str(self.synth_seed)] if self.synth_seed else [])
        if self.layout != d.layout:
            out += ["--layout", self.layout]
        if self.models != d.models:
            out += ["--models", *self.models]
        if self.num_folds != d.num_folds:
            out += ["--num-folds", str(self.num_folds)]
        if self.folds != tuple(range(self.num_folds)):
            out += ["--folds", *map(str, self.folds)]
        if self.val != d.val:
            out += ["--val", f"{self.val:g}"]
        if self.crop is not None:
            out += ["--crop", self.crop]
        if self.dry:
            out += ["--dry"] + (["--max-steps", str(self.max_steps)] if self.max_steps != DRY_STEPS else []) + (
                ["--max-subjects", str(self.max_subjects)] if self.max_subjects != DRY_SUBJECTS else [])
        if self.workers != d.workers:
            out += ["--workers", str(self.workers)]
        if self.train_args:
            out.append("--train-args=" + shlex.join(self.train_args))
        if self.evaluate_args:
            out.append("--evaluate-args=" + shlex.join(self.evaluate_args))
        if self.command != d.command:
            out += ["--command", self.command]
        return shlex.join(out)

    def describe(self):
        """One line per stage (what the CLI prints)."""
        lines = []
        if self.synth:
            lines.append(f"synth: {self.synth} synthetic subjects ({self.synth_layout}) -> {self.src}")
        if self.prep_needed:
            lines.append(f"prep: {self.src} -> {self.h5}")
        lines.append(f"split: {self.num_folds}-fold, validation {self.val:g} -> {self.split}")
        dry = (f"; DRY: train --max-steps {self.max_steps}, evaluate --max-subjects {self.max_subjects}"
               if self.dry else "")
        lines.append(f"train + evaluate: {len(self.jobs())} jobs ({len(self.models)} models x "
                     f"{len(self.folds)} folds) -> {self.runs}/MODEL/foldK{dry}")
        lines.append(f"tables: {self.tables}")
        return lines


# ---------------------------------------------------------------------------
# Shell text
# ---------------------------------------------------------------------------
def _q(s):
    return shlex.quote(os.fspath(s))


def _header_lines(recipe, generated_by):
    r = recipe
    steps = []
    if r.synth:
        steps.append(f"synth   {r.synth} synthetic ATLAS-like subjects ({r.synth_layout} layout) -> $SRC")
    if r.prep_needed:
        steps.append("prep    $SRC -> $H5 (HDF5 slice file)")
    steps.append(f"split   {r.num_folds} contiguous folds in file order, {r.val:g} of each fold's "
                 "training subjects held out for validation -> $SPLIT")
    steps.append(f"{len(r.jobs())} independent jobs ({len(r.models)} models x {len(r.folds)} folds): "
                 "train one model on one fold,")
    steps.append("        then evaluate its weights on the fold's test patients -> $RUNS/MODEL/foldK")
    steps.append("tables  Tables 1 and 2 from every run below $RUNS -> $TABLES")
    out = [f"# CLCI-Net (MICCAI 2019) Tables 1-2 recipe, written by clci-keras {__version__}:",
           f"#   {generated_by or r.command_line()}"]
    out += ["#", "# Steps, in order:"]
    out += [f"#   {s}" for s in steps]
    out += [f"# Models: {' '.join(r.models)}; folds: {' '.join(map(str, r.folds))}."]
    if r.dry:
        out += ["#",
                f"# DRY RUN: training capped at {r.max_steps} steps (train --max-steps {r.max_steps}) and "
                f"{r.max_subjects} test patient(s)",
                f"# scored per fold (evaluate --max-subjects {r.max_subjects}). It checks that every step "
                "runs at full size;",
                "# the runs record the caps, the tables mark them [DRY RUN], and the numbers mean nothing.",
                "# Dry runs go to runs_dry/ and tables_dry/, so that a real recipe in the same work folder",
                "# reuses the HDF5 file and the split but none of the dry runs."]
    out += ["#",
            "# Rerun to resume: steps whose outputs exist are skipped, `clci-keras train` resumes an",
            "# interrupted run and returns at once for a finished one. Wall time, CPU time and peak",
            "# memory of every step are appended to $TIMES (if GNU /usr/bin/time is installed)."]
    return out


def _variables(recipe):
    r = recipe
    lines = [f"WORK={_q(r.work_dir)}"]
    if r.src is not None:
        lines.append(f"SRC={_q(r.src)}")
    lines += [
        'H5="$WORK/atlas.h5"' if r.prep_needed else 'H5="$SRC"   # an HDF5 file: no prep',
        f'SPLIT="$WORK/splits/kfold{r.num_folds}.json"',
        f'RUNS="$WORK/runs{r.suffix}"' + ("   # dry runs apart from real ones" if r.dry else ""),
        f'TABLES="$WORK/tables{r.suffix}"',
        f'TIMES="$WORK/times{r.suffix}.tsv"',
    ]
    return lines


HELPERS = r'''# done_already OUT [IN]: true, and says so, when OUT exists and is not older than IN.
done_already() {
  if [ -e "$1" ] && { [ $# -lt 2 ] || [ ! "$2" -nt "$1" ]; }; then
    echo "skipped (already done): $1"
    return 0
  fi
  return 1
}

# timed LABEL COMMAND...: run COMMAND; append "LABEL wall_s user_s sys_s max_rss_kB" to $TIMES.
timed() {
  local label=$1
  shift
  echo "== $label ($(date '+%F %T'))"
  if [ -x /usr/bin/time ]; then
    [ -e "$TIMES" ] || printf 'step\twall_s\tuser_s\tsys_s\tmax_rss_kB\n' > "$TIMES"
    /usr/bin/time -a -o "$TIMES" -f "$label\t%e\t%U\t%S\t%M" "$@"
  else
    "$@"
  fi
}
'''


def _job_function(recipe):
    r = recipe
    cli = r.command
    crop = [] if r.crop is None else ["--crop", r.crop]
    train_opts = crop + (["--max-steps", str(r.max_steps)] if r.dry else []) + list(r.train_args)
    eval_opts = crop + (["--max-subjects", str(r.max_subjects)] if r.dry else []) + list(r.evaluate_args)
    train_tail = (" " + shlex.join(train_opts)) if train_opts else ""
    eval_tail = (" " + shlex.join(eval_opts)) if eval_opts else ""
    return f'''# train_and_evaluate MODEL FOLD: one job. Trains MODEL on fold FOLD (resumable), then scores
# its exported weights per patient on the fold's test subjects (skipped when already scored).
# Each run folder has its own weights manifest, so that jobs running at once never share a file.
train_and_evaluate() {{
  local model=$1 fold=$2
  local run="$RUNS/$model/fold$fold"
  local weights="$run/{default_weights_name("${model}")}"
  timed "train $model fold$fold" \\
    {cli} train --model "$model" --h5 "$H5" --split "$SPLIT" --fold "$fold" --out "$run" \\
      --manifest "$run/manifest.json"{train_tail}
  done_already "$run/{summary_file("test")}" "$weights" ||
    timed "evaluate $model fold$fold" \\
      {cli} evaluate --model "$model" --weights "$weights" --h5 "$H5" --split "$SPLIT" --fold "$fold" \\
        --out "$run" --manifest "$run/manifest.json" --name "$model-fold$fold"{eval_tail}
}}
'''


def _data_steps(recipe):
    """Shell lines of synth, prep and split."""
    r = recipe
    cli = r.command
    out = ['mkdir -p "$WORK/splits" "$RUNS"']
    if r.synth:
        out += ["", "# synth: a synthetic release (its marker file is written last: present = complete)",
                f'done_already "$SRC/{SYNTH_DONE}" ||',
                f'  timed synth {cli} synth "$SRC" --layout {r.synth_layout} --subjects {r.synth} '
                f'--seed {r.synth_seed} --overwrite --quiet']
    if r.prep_needed:
        layout = f" --layout {r.layout}" if r.layout != "auto" else ""
        out += ["", "# prep: the HDF5 slice file (written under a temporary name, then renamed)",
                'done_already "$H5" ||',
                f'  timed prep {cli} prep "$SRC" -o "$H5"{layout} --workers {r.workers} --quiet']
    out += ["", f"# split: {r.num_folds} contiguous folds (X-Net's protocol), every fold in one file",
            'done_already "$SPLIT" "$H5" ||',
            f'  timed split {cli} split "$H5" -o "$SPLIT" --mode kfold --folds {r.num_folds} --fold all '
            f'--val {r.val:g} --overwrite']
    return out


def _tables_step(recipe):
    return [f'timed tables {recipe.command} tables "$RUNS" -o "$TABLES"']


def _preamble(recipe, generated_by, sbatch=()):
    lines = ["#!/usr/bin/env bash", *sbatch, *_header_lines(recipe, generated_by), "set -euo pipefail", ""]
    return lines


def to_sh(recipe, generated_by=None):
    """The recipe as one bash script: the steps in order, the jobs one after another."""
    r = recipe
    lines = _preamble(r, generated_by)
    lines += _variables(r) + ["", HELPERS, _job_function(r)]
    lines += _data_steps(r)
    lines += ["", f"# {len(r.jobs())} jobs (independent of each other; the Slurm version runs them as an array)"]
    lines += [f"train_and_evaluate {m} {f}" for m, f in r.jobs()]
    lines += ["", "# tables (rewritten at every run)"] + _tables_step(r)
    lines += ['echo "done: tables in $TABLES, times in $TIMES"', ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Slurm
# ---------------------------------------------------------------------------
def _sbatch(name, log, res, time, cpus=None, mem=None, gpus=0, array=None):
    lines = [f"#SBATCH --job-name={name}", f"#SBATCH --output={log}", f"#SBATCH --time={time}"]
    if array:
        lines.append(f"#SBATCH --array={array}")
    if cpus:
        lines.append(f"#SBATCH --cpus-per-task={cpus}")
    if mem:
        lines.append(f"#SBATCH --mem={mem}")
    if gpus:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    if res.partition:
        lines.append(f"#SBATCH --partition={res.partition}")
    if res.account:
        lines.append(f"#SBATCH --account={res.account}")
    return lines


def _setup(res):
    if not res.setup:
        return []
    # without `set -u` (nounset), which some environment scripts (venv, conda) do not survive
    return ["# environment (recipe --setup)", "set +u", res.setup, "set -u", ""]


def to_slurm(recipe, resources=None, generated_by=None):
    """The recipe as Slurm scripts: ``{file name: text}``.

    ``prep.sbatch`` (synth, prep, split), ``train.sbatch`` (a job array, one
    task per model and fold: training, then its evaluation), ``tables.sbatch``
    and ``submit.sh``, which submits the three with ``--dependency=afterok``.
    Every script also runs without Slurm (``SLURM_ARRAY_TASK_ID=K bash train.sbatch``).
    """
    r, res = recipe, resources or SlurmResources()
    jobs = r.jobs()
    logs = os.path.join(r.work_dir, "logs")
    common = _variables(r) + ["", HELPERS]
    n = len(jobs)
    array = f"0-{n - 1}" + (f"%{res.parallel}" if res.parallel else "")

    prep = _preamble(r, generated_by, _sbatch(f"clci{r.suffix}-prep", f"{logs}/%x-%j.out", res, res.prep_time,
                                               res.prep_cpus or r.workers, res.prep_mem))
    prep += ["# This job: the data steps (synth, prep, split)." if r.synth else "# This job: the data steps "
             "(prep, split).", ""]
    prep += _setup(res) + common + _data_steps(r) + [""]

    train = _preamble(r, generated_by, _sbatch(f"clci{r.suffix}-train", f"{logs}/%x-%A_%a.out", res, res.time, res.cpus,
                                                res.mem, res.gpus, array))
    train += [f"# This job: array task K (0-{n - 1}) trains one model on one fold, then evaluates it.",
              "# Without Slurm: SLURM_ARRAY_TASK_ID=K bash train.sbatch", ""]
    train += _setup(res) + common + [_job_function(r)]
    train += ['case "${SLURM_ARRAY_TASK_ID:?set SLURM_ARRAY_TASK_ID (the job number K)}" in']
    width = len(str(n - 1))
    train += [f"  {i:>{width}}) MODEL={m} FOLD={f} ;;" for i, (m, f) in enumerate(jobs)]
    train += [f'  *) echo "no job number $SLURM_ARRAY_TASK_ID: this recipe has 0-{n - 1}" >&2; exit 2 ;;',
              "esac", 'train_and_evaluate "$MODEL" "$FOLD"', ""]

    tables = _preamble(r, generated_by, _sbatch(f"clci{r.suffix}-tables", f"{logs}/%x-%j.out", res, res.tables_time, 1, "8G"))
    tables += ["# This job: the tables, after every training task succeeded.", ""]
    tables += _setup(res) + common + _tables_step(r) + [""]

    submit = ["#!/usr/bin/env bash",
              "# Submits the recipe's three Slurm jobs, each waiting for the previous one to succeed:",
              "#   prep.sbatch   the data steps",
              f"#   train.sbatch  a job array of {n} tasks (model x fold), after prep",
              "#   tables.sbatch the tables, after every array task",
              "# A failed task holds the tables job back (afterok): fix it, resubmit that task",
              "# (sbatch --array=K train.sbatch) and then tables.sbatch; finished steps are skipped.",
              "set -euo pipefail",
              'cd "$(dirname "$0")"',
              f"mkdir -p {_q(logs)}   # Slurm does not create the log folder",
              "prep=$(sbatch --parsable prep.sbatch)",
              'prep=${prep%%;*}   # --parsable prints JOBID or JOBID;CLUSTER',
              'train=$(sbatch --parsable --dependency=afterok:"$prep" train.sbatch)',
              "train=${train%%;*}",
              'tables=$(sbatch --parsable --dependency=afterok:"$train" tables.sbatch)',
              f'echo "submitted: prep $prep, training array $train (tasks 0-{n - 1}), tables ${{tables%%;*}}"',
              f'echo "logs: {logs}"', ""]
    return {"prep.sbatch": "\n".join(prep), "train.sbatch": "\n".join(train),
            "tables.sbatch": "\n".join(tables), "submit.sh": "\n".join(submit)}


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------
def _write_executable(path, text):
    with atomic_text(path, base_mode=0o777) as f:
        f.write(text)


def write_recipe(recipe, emit="sh", output=None, resources=None, generated_by=None):
    """Write the recipe; returns the written paths.

    ``emit="sh"``: one script at ``output`` (default ``WORK/recipe.sh``,
    ``recipe_dry.sh`` when dry); ``emit="slurm"``: the scripts of
    :func:`to_slurm` in the folder ``output`` (default ``WORK/slurm``, ``slurm_dry``). Files are written atomically and made executable.
    """
    if emit not in EMITS:
        raise ValueError(f"emit must be one of {EMITS}, got {emit!r}")
    if emit == "sh":
        path = os.path.abspath(output or os.path.join(recipe.work_dir, f"recipe{recipe.suffix}.sh"))
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path}: the script's path is a folder")
        _write_executable(path, to_sh(recipe, generated_by))
        return [path]
    folder = os.path.abspath(output or os.path.join(recipe.work_dir, f"slurm{recipe.suffix}"))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder}: the Slurm scripts' folder is a file")
    paths = []
    for name, text in to_slurm(recipe, resources, generated_by).items():
        path = os.path.join(folder, name)
        _write_executable(path, text)
        paths.append(path)
    return paths


def run_script(path):
    """Run an emitted bash script here; returns its exit code."""
    return subprocess.run(["bash", os.fspath(path)]).returncode
