"""The `clci-keras` entry point."""
import errno
import json
import os
import subprocess
import sys

import pytest

from clci_keras import __version__
from clci_keras.cli import DEBUG_ENV, SUBCOMMANDS, build_parser, main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "summary" in out and "COMMAND" in out


def test_help_does_not_import_tensorflow():
    code = "import sys; from clci_keras.cli import main; main(['--help'])"
    proc = subprocess.run([sys.executable, "-c", code + "\n"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    check = subprocess.run(
        [sys.executable, "-c",
         "import sys\nfrom clci_keras.cli import build_parser\nbuild_parser()\n"
         "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"],
        capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stderr


def test_summary_prints_parameter_count(capsys):
    assert main(["summary", "--quiet"]) == 0
    assert "36,838,305 parameters" in capsys.readouterr().out


def test_summary_rejects_bad_shape(capsys):
    assert main(["summary", "--quiet", "--input-shape", "100", "176", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clci-keras summary: error: ") and "(100, 176, 1)" in err and err.count("\n") == 1


def test_every_declared_subcommand_has_help():
    assert set(SUBCOMMANDS) >= {"summary", "synth", "prep", "train", "evaluate", "tables", "demo", "predict"}


# ------------------------------------------- issue 14: one-line errors, exit code 2
def _one_line_error(capsys, command):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"clci-keras {command}: error: "), err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_max_subjects_is_validated_by_argparse(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as e:
        main(["prep", str(tmp_path), "-o", str(tmp_path / "x.h5"), f"--max-subjects={value}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --max-subjects" in err and repr(value) in err
    assert os.listdir(tmp_path) == []


def _unwritable(tmp_path, monkeypatch, how):
    """A folder where files cannot be created, and the output path inside it.

    "under a file": the output's folder is a regular file (fails for every user, root included).
    "read-only": a chmod 0555 folder; where that does not stop writes (root), writes into it are
    refused by a patched ``os.open`` (EACCES), as a read-only mount would.
    """
    if how == "under a file":
        (tmp_path / "afile").write_text("user data")
        return tmp_path / "afile"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").touch()
    except PermissionError:
        return ro  # the permission bits do stop us
    (ro / "probe").unlink()
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if os.path.dirname(os.path.abspath(os.fsdecode(path))) == str(ro) and flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    return ro


@pytest.mark.parametrize("how", ["under a file", "read-only"])
def test_unwritable_output_folder_is_one_line(synthetic_r11_dir, synthetic_h5, tmp_path, monkeypatch, capsys, how):
    folder = _unwritable(tmp_path, monkeypatch, how)
    before = sorted(os.listdir(tmp_path))
    assert main(["prep", str(synthetic_r11_dir), "-o", str(folder / "x.h5"), "--quiet"]) == 2
    assert str(folder) in _one_line_error(capsys, "prep")
    assert main(["split", str(synthetic_h5), "-o", str(folder / "s.json")]) == 2
    assert str(folder) in _one_line_error(capsys, "split")
    assert main(["tables", str(tmp_path), "-o", str(folder / "tables")]) == 2
    assert str(folder) in _one_line_error(capsys, "tables")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before
    if how == "read-only":
        assert os.listdir(folder) == []
        folder.chmod(0o755)


def test_split_of_a_non_hdf5_file_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    bad = tmp_path / "notes.h5"
    bad.write_text("not HDF5\n")
    assert main(["split", str(bad), "-o", str(tmp_path / "s.json")]) == 2
    err = _one_line_error(capsys, "split")
    assert str(bad) in err and "not a readable HDF5 file" in err
    assert main(["split", str(tmp_path / "missing.h5"), "-o", str(tmp_path / "s.json")]) == 2
    assert str(tmp_path / "missing.h5") in _one_line_error(capsys, "split")
    assert not (tmp_path / "s.json").exists()
    monkeypatch.setenv(DEBUG_ENV, "1")  # the traceback on request
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        main(["split", str(bad), "-o", str(tmp_path / "s.json")])


@pytest.fixture
def fake_command(tmp_path, monkeypatch):
    """A subcommand ``boom`` whose run raises the exception named by ``--raise``."""
    (tmp_path / "clci_fake_boom.py").write_text(
        "HELP = 'raises'\n"
        "def add_arguments(p):\n"
        "    p.add_argument('--raise', dest='exc')\n"
        "def run(args):\n"
        "    if args.exc == 'oserror':\n"
        "        raise PermissionError(13, 'Permission denied', '/some/where/out.h5')\n"
        "    if args.exc == 'valueerror':\n"
        "        raise ValueError('/some/file.csv: line 3: bad\\nsecond line')\n"
        "    raise TypeError('a bug')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(SUBCOMMANDS, "boom", ("clci_fake_boom", "raises"))
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def test_central_handler_turns_input_errors_into_one_line(fake_command, capsys, monkeypatch):
    assert main(["boom", "--raise", "oserror"]) == 2
    assert "/some/where/out.h5: Permission denied" in _one_line_error(capsys, "boom")
    assert main(["boom", "--raise", "valueerror"]) == 2
    assert "/some/file.csv: line 3: bad second line" in _one_line_error(capsys, "boom")
    with pytest.raises(TypeError, match="a bug"):  # a bug keeps its traceback
        main(["boom", "--raise", "typeerror"])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(PermissionError):  # CLCI_KERAS_DEBUG=1: every traceback
        main(["boom", "--raise", "oserror"])


# ------------------------------------------- issue 22: a CLI that parses and prints
BACKENDS = ("tensorflow", "keras", "jax", "torch")


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_command_help_is_only_its_usage(command):
    """`clci-keras CMD --help`: exit 0, the usage on stdout, nothing on stderr (no backend log lines)."""
    proc = subprocess.run([sys.executable, "-m", "clci_keras", command, "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:"), proc.stdout[:200]
    assert proc.stderr == ""


def test_parsing_help_of_every_command_imports_no_backend():
    """Parsing every command's --help imports neither Keras nor a backend (they load when a command runs)."""
    script = (
        "import contextlib, io, json, sys\n"
        "from clci_keras.cli import SUBCOMMANDS, build_parser\n"
        "loaded = {}\n"
        "for command in SUBCOMMANDS:\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(io.StringIO()):\n"
        "            build_parser(load=command).parse_args([command, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"    loaded[command] = [m for m in {BACKENDS!r} if m in sorted(sys.modules)]\n"
        "print(json.dumps(loaded))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(loaded) == set(SUBCOMMANDS)
    assert {c: m for c, m in loaded.items() if m} == {}


def test_no_manifest_and_its_deprecated_alias(monkeypatch, capsys):
    """`train --no-manifest` skips the weights manifest; `--no-register` still does, with a warning."""
    calls = {}

    def fake_train(*args, **overrides):
        calls.clear()
        calls.update(overrides)
        return {"epochs_run": 0, "monitor": "val_loss", "best_value": None, "best_epoch": None,
                "run_dir": "r", "weights": "w"}

    monkeypatch.setattr("clci_keras.training.train", fake_train)
    monkeypatch.setattr("clci_keras.fileio.check_writable_folder", lambda *a, **k: None)
    base = ["train", "--h5", "d.h5", "--split", "s.json", "--out", "r", "--quiet"]
    assert main(base) == 0
    assert calls["manifest"] == "weights/manifest.json"
    capsys.readouterr()
    assert main(base + ["--no-manifest"]) == 0
    assert calls["manifest"] is None and capsys.readouterr().err == ""
    assert main(base + ["--no-register"]) == 0
    assert calls["manifest"] is None
    assert "warning: --no-register is deprecated; use --no-manifest" in capsys.readouterr().err
    help_text = _train_parser().format_help()
    assert "--no-manifest" in help_text and "deprecated alias of --no-manifest" in help_text


def test_add_to_manifest_and_its_deprecated_name(tmp_path):
    """The manifest's word is "add" (register is the model registry's and MNI152 registration's):
    ``models.manifest.register_weights`` still works, with a DeprecationWarning naming ``add_to_manifest``."""
    import warnings

    import clci_keras.training as training
    from clci_keras.models.manifest import add_to_manifest, read_manifest, register_weights

    weights, path = tmp_path / "w.h5", tmp_path / "weights" / "manifest.json"
    weights.write_bytes(b"weights")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert add_to_manifest(path, weights, "a", format="x")["file"] == os.path.abspath(weights)
    with pytest.warns(DeprecationWarning, match="register_weights is deprecated; use .*add_to_manifest"):
        assert register_weights(path, weights, "b")["name"] == "b"
    assert [e["name"] for e in read_manifest(path)["weights"]] == ["a", "b"]
    assert training.add_to_manifest is add_to_manifest
    assert "add_to_manifest" in training.__all__ and "register_weights" not in training.__all__


def _train_parser():
    import argparse

    from clci_keras.cli import train as cli_train

    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    return parser


def test_train_options_are_the_trainconfig_fields():
    """Every TrainConfig field but the run's identity and the manifest is read from its option (or --set)."""
    import dataclasses

    from clci_keras.cli import train as cli_train
    from clci_keras.training.config import RUN_FIELDS, TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(cli_train.OPTION_FIELDS) == fields - set(RUN_FIELDS) - {"manifest"}
    parser = _train_parser()
    args = parser.parse_args(
        ["--h5", "d.h5", "--split", "s.json", "--out", "r", "--epochs", "3", "--lr", "0.01",
         "--stream-buffer", "4", "--no-tensorboard", "--precision", "bf16", "--set", "reduce_lr_min_lr=1e-7"])
    assert cli_train.overrides_from_args(args) == {
        "epochs": 3, "learning_rate": 0.01, "stream_buffer_subjects": 4, "tensorboard": False,
        "precision": "bf16", "reduce_lr_min_lr": 1e-7}
    assert set(cli_train.OPTION_FIELDS) & set(vars(args)) >= {"epochs", "crop", "precision", "deterministic"}


@pytest.mark.parametrize("old, new", [([], "bf16"), (["bf16"], "bf16"), (["fp16"], "fp16"), (["off"], "fp32"),
                                      (["fp32"], "fp32")])
def test_mixed_precision_is_a_deprecated_alias_of_precision(capsys, old, new):
    """`train --mixed-precision [VALUE]` sets --precision (no value: bf16; off: fp32), warning once."""
    from clci_keras.cli import train as cli_train

    base = ["--h5", "d.h5", "--split", "s.json", "--out", "r"]
    parser = _train_parser()
    args = parser.parse_args([*base, "--mixed-precision", *old])
    assert args.precision == new and cli_train.overrides_from_args(args)["precision"] == new
    err = capsys.readouterr().err
    assert err.count("warning: --mixed-precision is deprecated; use --precision") == 1 and len(err.splitlines()) == 1
    args = parser.parse_args([*base, "--precision", new])
    assert args.precision == new and capsys.readouterr().err == ""
    assert parser.parse_args(base).precision is None  # not given: TrainConfig's fp32
    help_text = parser.format_help()
    assert "--precision {fp32,bf16,fp16}" in help_text and "deprecated alias of --precision" in help_text


@pytest.mark.parametrize("command", ["train", "predict", "bids"])
def test_every_command_names_precision_alike(command):
    """One flag, one vocabulary: --precision on train, predict and bids (fp16 for training only)."""
    import argparse
    import importlib

    from clci_keras.precision import INFERENCE_PRECISIONS, PRECISIONS

    parser = argparse.ArgumentParser()
    importlib.import_module(f"clci_keras.cli.{command}").add_arguments(parser)
    action = next(a for a in parser._actions if "--precision" in a.option_strings)
    assert tuple(action.choices) == (PRECISIONS if command == "train" else INFERENCE_PRECISIONS)


def test_training_choices_are_the_library_constants():
    """``train`` and ``demo`` offer the choice lists that TrainConfig checks, not copies of them."""
    import argparse

    from clci_keras.cli import demo, train
    from clci_keras.data.reader import INPUT_MODES
    from clci_keras.models.choices import BN_UPDATES, LOSSES
    from clci_keras.training.config import EXPORTS, STRATEGIES

    for module, expected in ((train, {"--loss": LOSSES, "--bn-update": BN_UPDATES, "--input-mode": INPUT_MODES,
                                      "--export": EXPORTS, "--strategy": STRATEGIES}),
                             (demo, {"--export": EXPORTS})):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        for option, choices in expected.items():
            action = next(a for a in parser._actions if option in a.option_strings)
            assert action.choices is choices, option


def test_data_and_inference_choices_are_the_library_constants():
    """``prep``, ``synth``, ``recipe``, ``export``, ``evaluate``, ``predict`` and ``bids`` offer the lists the
    library checks."""
    import argparse

    from clci_keras.bids.layout import REGISTER_CHOICES
    from clci_keras.cli import bids, evaluate, export, predict, prep, recipe, synth
    from clci_keras.data.constants import CROPS, LAYOUT_CHOICES, LAYOUTS
    from clci_keras.data.intensity import SCHEMES
    from clci_keras.data.splits import PARTS
    from clci_keras.inference.ensemble import TTA_CHOICES
    from clci_keras.inference.export import FORMATS

    for module, expected in ((prep, {"--layout": LAYOUT_CHOICES, "--intensity": SCHEMES}),
                             (recipe, {"--layout": LAYOUT_CHOICES}), (synth, {"--layout": LAYOUTS}),
                             (export, {"--crop": CROPS, "--format": FORMATS}), (evaluate, {"--part": PARTS}),
                             (bids, {"--register": REGISTER_CHOICES, "--tta": TTA_CHOICES}),
                             (predict, {"--tta": TTA_CHOICES})):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        for option, choices in expected.items():
            action = next(a for a in parser._actions if option in a.option_strings)
            assert action.choices is choices, (module.__name__, option)
    assert LAYOUT_CHOICES == ("auto", *LAYOUTS)


def test_training_has_no_names_of_the_unreleased_0_1_0():
    """``load_split`` (now ``load_training_split``), ``make_strategy`` and ``register_weights`` are gone."""
    import clci_keras.training as training
    from clci_keras.training import trainer

    assert training.load_training_split is trainer.load_training_split
    for name in ("load_split", "make_strategy", "register_weights"):
        with pytest.raises(AttributeError, match=name):
            getattr(training, name)


@pytest.mark.parametrize("option, value, message", [
    ("--min-lesion-size", "-1", "must be >= 0, got '-1'"),
    ("--reg-resolution", "0", "must be > 0, got '0'"),
    ("--reg-iterations", "100,0", "expected positive integers like 100,30, got '100,0'"),
    ("--reg-iterations", "a,b", "expected positive integers like 100,30, got 'a,b'"),
    ("--threads", "0", "must be >= 1, got '0'"),
    ("--precision", "fp16", "invalid choice: 'fp16'"),
])
def test_predict_options_are_checked_by_argparse(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path), "-o", str(tmp_path / "out"), "--weights", "w.h5", option, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and message in err
    assert os.listdir(tmp_path) == []


def test_predict_option_values_reach_the_library():
    args = build_parser(load="predict").parse_args(
        ["predict", "scan.nii.gz", "-o", "out", "--weights", "w.h5", "--reg-iterations", "50,20",
         "--reg-resolution", "4", "--min-lesion-size", "20"])
    from clci_keras.cli.predict import _registration_options

    assert _registration_options(args) == {"resolution": 4.0, "iterations": (50, 20)}
    assert args.min_lesion_size == 20.0 and args.precision == "fp32"


def test_predict_without_weights_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert main(["predict", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert "give the weights: --weights W, or --ensemble W1 W2" in _one_line_error(capsys, "predict")


def test_split_fold_is_checked_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["split", "x.h5", "-o", str(tmp_path / "s.json"), "--mode", "kfold", "--fold", "two"])
    assert e.value.code == 2
    assert "argument --fold: must be an integer or 'all', got 'two'" in capsys.readouterr().err
