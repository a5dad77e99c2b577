"""`clci-keras recipe`: the Table-1 protocol as a bash script or Slurm scripts, and its dry mode
(`train --max-steps`, `evaluate --max-subjects`, tables' [DRY RUN] mark).

The content tests only write text. One test runs an emitted dry `sh` recipe end to end at tiny
scale (4 synthetic subjects, 2 folds of which fold 0 runs, a 32 x 32 window, the Baseline U-Net:
synth, prep, split, train, evaluate, tables), then the Slurm scripts of the same recipe without
Slurm, which find every step done. About 80 CPU-seconds, most of them TensorFlow's start-up and
the tracing of the training step in the two processes that import it.
"""
import csv
import json
import os
import re
import resource
import subprocess
import sys

import pytest

from clci_keras.cli import main
from clci_keras.experiments.recipe import Recipe, SlurmResources, to_sh, to_slurm, write_recipe
from clci_keras.experiments.workflows import TABLE1_MODELS
from clci_keras.reports.tables import build_table, collect_runs, to_latex, to_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = f"{sys.executable} -m clci_keras"
TINY_CROP = "96:128,80:112"  # 32 x 32 window around the synthetic lesions' region
JOB = re.compile(r"^train_and_evaluate (\S+) (\d+)$", re.M)


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SLURM_ARRAY_TASK_ID", None)
    return env


def _bash_syntax_ok(path):
    return subprocess.run(["bash", "-n", path], capture_output=True, text=True)


def test_sh_lists_the_steps_in_order_and_the_30_jobs(tmp_path):
    src = tmp_path / "ATLAS_R1.1"
    src.mkdir()
    r = Recipe(tmp_path / "work", src=src, layout="r1.1", dry=True).validate()
    assert len(r.jobs()) == 30
    (path,) = write_recipe(r, "sh")
    assert path == str(tmp_path / "work" / "recipe_dry.sh") and os.access(path, os.X_OK)
    assert _bash_syntax_ok(path).returncode == 0
    text = open(path).read()
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert JOB.findall(text) == [(m, str(f)) for m in TABLE1_MODELS for f in range(5)]
    # one prep, one split, 30 jobs, the tables: in that order
    at = [text.index(s) for s in ("timed prep clci-keras prep \"$SRC\" -o \"$H5\" --layout r1.1",
                                  "timed split clci-keras split \"$H5\" -o \"$SPLIT\" --mode kfold --folds 5 --fold all",
                                  "\ntrain_and_evaluate fcn8s 0\n", "\ntrain_and_evaluate clci_net 4\n",
                                  "timed tables clci-keras tables \"$RUNS\" -o \"$TABLES\"")]
    assert at == sorted(at)
    assert text.count("clci-keras train --model") == 1 and text.count("clci-keras evaluate --model") == 1
    assert "--max-steps 2" in text and "--max-subjects 1" in text and "# DRY RUN" in text
    assert 'RUNS="$WORK/runs_dry"' in text and 'TABLES="$WORK/tables_dry"' in text
    assert f"SRC={src}" in text and "timed synth" not in text  # a given release: no synth step

    real = to_sh(Recipe(tmp_path / "work", src=src, train_args=("--precision", "bf16")))
    assert "--max-steps" not in real and "--max-subjects" not in real and "DRY RUN" not in real
    assert 'RUNS="$WORK/runs"' in real
    assert "--manifest \"$run/manifest.json\" --precision bf16" in real


def test_slurm_array_maps_task_ids_to_model_and_fold_and_chains_the_jobs(tmp_path):
    r = Recipe(tmp_path / "work", synth=12, layout="v2", num_folds=5, dry=True)
    res = SlurmResources(partition="gpu", gpus=2, parallel=6, setup="module load cuda")
    files = to_slurm(r, res)
    assert sorted(files) == ["prep.sbatch", "submit.sh", "tables.sbatch", "train.sbatch"]
    train = files["train.sbatch"]
    assert "#SBATCH --array=0-29%6" in train and "#SBATCH --gres=gpu:2" in train
    assert "#SBATCH --partition=gpu" in train and "module load cuda" in train
    cases = re.findall(r"^\s*(\d+)\) MODEL=(\S+) FOLD=(\d+) ;;$", train, re.M)
    assert [(int(i), m, int(f)) for i, m, f in cases] == [
        (i, m, f) for i, (m, f) in enumerate((m, f) for m in TABLE1_MODELS for f in range(5))]
    assert "synth \"$SRC\" --layout v2 --subjects 12" in files["prep.sbatch"]
    assert "--gres" not in files["prep.sbatch"] and "train_and_evaluate" not in files["prep.sbatch"]
    assert "--dependency" not in files["prep.sbatch"]
    submit = files["submit.sh"]
    assert submit.count("sbatch --parsable") == 3
    assert 'sbatch --parsable --dependency=afterok:"$prep" train.sbatch' in submit
    assert 'sbatch --parsable --dependency=afterok:"$train" tables.sbatch' in submit

    # the chain with a stand-in sbatch that hands out job ids 101, 102, 103
    paths = write_recipe(r, "slurm", tmp_path / "slurm", res)
    for p in paths:
        assert _bash_syntax_ok(p).returncode == 0, p
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "sbatch.log"
    (bin_ / "sbatch").write_text(
        "#!/usr/bin/env bash\n"
        f"echo \"$*\" >> {log}\n"
        f"n=$(wc -l < {log}); echo $((100 + n))\\;cluster\n")
    os.chmod(bin_ / "sbatch", 0o755)
    env = dict(_env(), PATH=f"{bin_}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(["bash", str(tmp_path / "slurm" / "submit.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines() == [
        "--parsable prep.sbatch", "--parsable --dependency=afterok:101 train.sbatch",
        "--parsable --dependency=afterok:102 tables.sbatch"]
    assert "prep 101, training array 102 (tasks 0-29), tables 103" in out.stdout
    assert (tmp_path / "work" / "logs").is_dir()


def test_recipe_command_checks_its_options(tmp_path, capsys):
    src = str(tmp_path)
    work = str(tmp_path / "w")
    assert main(["recipe", "--work-dir", work, "--src", src, "--folds", "5"]) == 2
    assert "folds must be distinct numbers in 0..4, got [5]" in capsys.readouterr().err
    assert main(["recipe", "--work-dir", work, "--src", src, "--max-steps", "3"]) == 2
    assert "add --dry" in capsys.readouterr().err
    assert main(["recipe", "--work-dir", work, "--src", src, "--emit", "slurm", "--run"]) == 2
    assert main(["recipe", "--work-dir", work, "--src", str(tmp_path / "nope")]) == 2
    assert "no such ATLAS release folder or HDF5 file" in capsys.readouterr().err
    assert main(["recipe", "--work-dir", work, "--src", src, "--train-args=--fold 3"]) == 2
    assert "set by the recipe itself" in capsys.readouterr().err
    assert not os.path.exists(work)
    with pytest.raises(SystemExit):
        main(["recipe", "--work-dir", work, "--src", src, "--dry", "--max-steps", "0"])


def test_evaluate_max_subjects_is_refused_with_a_preset(tmp_path, capsys):
    w = tmp_path / "w.h5"
    w.write_bytes(b"")
    assert main(["evaluate", "--preset", "spin_clcinet", "--weights", str(w), "--h5", str(w),
                 "--max-subjects", "1"]) == 2
    assert "leave out --max-subjects" in capsys.readouterr().err


def _fake_run(root, name, model, cfg_extra=None, summary_extra=None):
    run = os.path.join(root, name)
    os.makedirs(run)
    json.dump({"model": model, "fold": 0, "part": "test", "data": {"h5": "/d/a.h5", "synthetic": False},
               "scores": {k: {"mean": 0.5, "n": 1} for k in ("dsc", "precision", "recall", "voe", "rvd")},
               **(summary_extra or {})}, open(os.path.join(run, "summary_test.json"), "w"))
    json.dump({"model": model, "fold": 0, **(cfg_extra or {})}, open(os.path.join(run, "config.json"), "w"))


def test_tables_mark_dry_runs_and_refuse_to_pool_them_with_real_ones(tmp_path):
    root = str(tmp_path / "runs")
    _fake_run(root, "dry", "clci_net", {"max_steps": 2}, {"partial": True, "subjects": [3], "part_subjects": 46})
    _fake_run(root, "real", "baseline")
    rows = {r["model"]: r for r in build_table(1, collect_runs(root))}
    assert rows["clci_net"]["dry_run"] is True and rows["baseline"]["dry_run"] is False
    assert rows["clci_net"]["measured_on"].startswith("DRY RUN a.h5")
    assert "training capped at 2 steps; 1 of 46 test patients scored" in rows["clci_net"]["measured_on"]
    md = to_markdown(list(rows.values()), 1)
    assert "| [DRY RUN] CLCI-Net |" in md and "| Baseline |" in md and "Rows marked [DRY RUN]" in md
    assert r"CLCI-Net$^\ddagger$" in to_latex(list(rows.values()), 1)
    _fake_run(root, "real2", "clci_net")
    with pytest.raises(ValueError, match=r"model 'clci_net' has dry runs \(.*dry\) beside real ones \(.*real2\)"):
        collect_runs(root)


def test_dry_sh_recipe_runs_end_to_end_and_its_slurm_scripts_find_it_done(tmp_path):
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    work = tmp_path / "work"
    opts = ["recipe", "--work-dir", str(work), "--synth", "4", "--num-folds", "2", "--folds", "0",
            "--models", "baseline", "--crop", TINY_CROP, "--dry", "--workers", "1", "--command", CLI]
    assert main(opts) == 0
    out = subprocess.run(["bash", str(work / "recipe_dry.sh")], cwd=tmp_path, env=_env(), capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    run = work / "runs_dry" / "baseline" / "fold0"
    cfg = json.load(open(run / "config.json"))
    res = json.load(open(run / "result.json"))
    assert cfg["max_steps"] == 2 and cfg["crop"] == TINY_CROP and cfg["epochs"] == 100  # protocol kept, capped
    assert res["dry_run"] is True and res["optimizer_iterations"] == 2 and res["epochs_run"] == 1
    assert res["val_slices"] == 189 and res["validation_batches_per_epoch"] == 2  # of 21 batches of 9
    summary = json.load(open(run / "summary_test.json"))
    assert summary["partial"] is True and summary["part_subjects"] == 2 and len(summary["subjects"]) == 1
    assert len(list(csv.DictReader(open(run / "scores_test.csv")))) == 1
    table = {r["model"]: r for r in csv.DictReader(open(work / "tables_dry" / "table1.csv"))}
    assert table["baseline"]["dry_run"] == "True" and table["baseline"]["synthetic"] == "True"
    assert float(table["baseline"]["measured_dsc"]) >= 0 and table["clci_net"]["measured_on"] == "not run"
    assert "| [SYNTHETIC] [DRY RUN] Baseline |" in open(work / "tables_dry" / "table1.md").read()
    if os.path.exists("/usr/bin/time"):  # the script measures every step with GNU time where installed
        steps = [line.split("\t")[0] for line in open(work / "times_dry.tsv").read().splitlines()]
        assert steps == ["step", "synth", "prep", "split", "train baseline fold0", "evaluate baseline fold0", "tables"]
    else:
        assert not (work / "times_dry.tsv").exists()

    # The Slurm scripts of the same recipe, run without Slurm, after it: the data steps and the
    # evaluation are skipped, the tables rewritten; the weights stay.
    assert main(opts + ["--emit", "slurm"]) == 0
    slurm = work / "slurm_dry"
    weights = run / "baseline_weights.h5"
    stamp = os.path.getmtime(weights)
    prep = subprocess.run(["bash", str(slurm / "prep.sbatch")], env=_env(), capture_output=True, text=True)
    assert prep.returncode == 0, prep.stderr[-3000:]
    for done in ("synthetic_src/clci_keras_synthetic.json", "atlas.h5", "splits/kfold2.json"):
        assert f"skipped (already done): {work / done}" in prep.stdout
    os.remove(work / "tables_dry" / "table1.md")
    tables = subprocess.run(["bash", str(slurm / "tables.sbatch")], env=_env(), capture_output=True, text=True)
    assert tables.returncode == 0 and (work / "tables_dry" / "table1.md").exists()
    # Array task 0 is that job: with a stand-in for clci-keras (a real `train` would only import
    # TensorFlow to say "run already complete"), it trains into the same run folder and skips the
    # evaluation, which is done; task 1 does not exist.
    fake, calls = tmp_path / "fake-clci", tmp_path / "calls.txt"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n')
    os.chmod(fake, 0o755)
    assert main(opts[:-1] + [str(fake), "--emit", "slurm", "-o", str(tmp_path / "slurm_fake")]) == 0
    task = subprocess.run(["bash", str(tmp_path / "slurm_fake" / "train.sbatch")],
                          env=dict(_env(), SLURM_ARRAY_TASK_ID="0"), capture_output=True, text=True)
    assert task.returncode == 0, task.stderr[-3000:]
    (call,) = calls.read_text().splitlines()
    assert call.startswith(f"train --model baseline --h5 {work / 'atlas.h5'} --split {work / 'splits' / 'kfold2.json'} "
                           f"--fold 0 --out {run} ") and call.endswith(f"--crop {TINY_CROP} --max-steps 2")
    assert f"skipped (already done): {run / 'summary_test.json'}" in task.stdout
    assert os.path.getmtime(weights) == stamp
    bad = subprocess.run(["bash", str(tmp_path / "slurm_fake" / "train.sbatch")],
                         env=dict(_env(), SLURM_ARRAY_TASK_ID="1"), capture_output=True, text=True)
    assert bad.returncode == 2 and "no job number 1: this recipe has 0-0" in bad.stderr
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    print(f"end-to-end recipe: {cpu:.0f} CPU-s in subprocesses")


def test_options_the_recipe_owns_are_options_of_train_and_evaluate(tmp_path, capsys):
    """The recipe refuses extra options it sets itself; each is a real option (a rename must reach it)."""
    import argparse

    from clci_keras.cli import evaluate as cli_evaluate
    from clci_keras.cli import train as cli_train
    from clci_keras.experiments.recipe import _OWN_EVALUATE, _OWN_TRAIN

    for module, own in ((cli_train, _OWN_TRAIN), (cli_evaluate, _OWN_EVALUATE)):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        known = {s for a in parser._actions for s in a.option_strings}
        assert set(own) <= known, set(own) - known
    assert {"--no-manifest", "--no-register", "--model", "--out", "--fold", "--crop"} <= set(_OWN_TRAIN)
    for extra in ("--no-manifest", "--no-register", "--out=x"):
        assert main(["recipe", "--work-dir", str(tmp_path / "w"), "--src", str(tmp_path), f"--train-args={extra}"]) == 2
        assert "set by the recipe itself" in capsys.readouterr().err
