"""clci_keras.experiments without training: settings resolution, data and split helpers, the demo's guards."""
import dataclasses
import json

import pytest

from clci_keras import experiments as ex


# ---------------------------------------------------------------------------
# resolve_settings: None -> QUICK value or protocol default; user values kept
# ---------------------------------------------------------------------------
def test_user_value_survives_quick():
    s = ex.resolve_settings({"EPOCHS": 7, "CROP": "clci"}, quick=True, quick_values=ex.QUICK_TRAINING)
    assert s == {"EPOCHS": 7, "CROP": "clci"}


def test_user_value_equal_to_the_protocol_default_survives_quick():
    """Setting a value (even the protocol's own) is a choice: QUICK does not replace it."""
    from clci_keras.training import TrainConfig

    s = ex.resolve_settings({"EPOCHS": TrainConfig().epochs}, quick=True, quick_values=ex.QUICK_TRAINING)
    assert s["EPOCHS"] == TrainConfig().epochs


def test_none_becomes_the_quick_value():
    s = ex.resolve_settings({"EPOCHS": None, "crop": None, "Data": None}, quick=True,
                            quick_values=ex.QUICK_TRAINING)
    assert s == {"EPOCHS": ex.QUICK_TRAINING["epochs"], "crop": ex.QUICK_CROP, "Data": "synthetic"}


def test_none_without_a_quick_value_becomes_the_protocol_default():
    s = ex.resolve_settings({"PRECISION": None, "LEARNING_RATE": None}, quick=True,
                            quick_values={"epochs": 1})
    assert s == {"PRECISION": "fp32", "LEARNING_RATE": 1e-4}


def test_quick_off_uses_trainconfig_defaults_read_at_run_time(monkeypatch):
    """With QUICK off a None becomes TrainConfig's *current* default, not a copy taken earlier."""
    import clci_keras.training.config as config
    from clci_keras.training import TrainConfig

    names = ("EPOCHS", "BATCH_SIZE", "LEARNING_RATE", "STEPS_PER_EPOCH", "TRAIN_SLICES", "CROP", "BN_MOMENTUM")
    s = ex.resolve_settings({n: None for n in names}, quick=False, quick_values=ex.QUICK_TRAINING)
    cfg = TrainConfig()
    assert s == {n: getattr(cfg, n.lower()) for n in names}

    @dataclasses.dataclass
    class Changed(TrainConfig):
        epochs: int = 42
        learning_rate: float = 3e-4

    monkeypatch.setattr(config, "TrainConfig", Changed)
    s = ex.resolve_settings({"EPOCHS": None, "LEARNING_RATE": None, "BATCH_SIZE": 4}, quick=False,
                            quick_values=ex.QUICK_TRAINING)
    assert s == {"EPOCHS": 42, "LEARNING_RATE": 3e-4, "BATCH_SIZE": 4}
    # QUICK values are not defaults: with QUICK on they still win over the changed default.
    s = ex.resolve_settings({"EPOCHS": None}, quick=True, quick_values=ex.QUICK_TRAINING)
    assert s == {"EPOCHS": ex.QUICK_TRAINING["epochs"]}


def test_workflow_and_evaluation_defaults():
    d = ex.protocol_defaults()
    assert d["eval_slices"] == "all" and d["k"] == 5 and d["split"] == "kfold"
    assert d["val_fraction"] == 0.1 and d["folds"] == "all"
    s = ex.resolve_settings({"K": None, "EVAL_SLICES": None, "FOLDS": None}, quick=True,
                            quick_values=ex.QUICK_TABLES)
    assert s == {"K": 3, "EVAL_SLICES": ex.QUICK_EVAL_SLICES, "FOLDS": [0]}


def test_quick_values_are_not_shared_between_runs():
    s = ex.resolve_settings({"FOLDS": None}, quick=True, quick_values=ex.QUICK_TRAINING)
    s["FOLDS"].append(1)
    assert ex.QUICK_TRAINING["folds"] == [0]


def test_unknown_none_setting_is_an_error():
    with pytest.raises(KeyError, match="NO_SUCH_SETTING"):
        ex.resolve_settings({"NO_SUCH_SETTING": None})
    assert ex.resolve_settings({"NO_SUCH_SETTING": 3}) == {"NO_SUCH_SETTING": 3}


def test_report_prints_where_each_value_came_from(capsys):
    ex.resolve_settings({"EPOCHS": None, "BATCH_SIZE": 3, "SEED": None}, quick=True,
                        quick_values=ex.QUICK_TRAINING, report=True)
    out = capsys.readouterr().out
    assert "EPOCHS" in out and "(QUICK)" in out and "(set)" in out and "(protocol default)" in out


def test_train_options_are_trainconfig_fields_only():
    s = {"DATA": "x.h5", "SPLIT": "kfold", "K": 5, "EPOCHS": 3, "crop": "clci", "EVAL_SLICES": "all",
         "SEED": 1}
    assert ex.train_options(s, verbose=2) == {"epochs": 3, "crop": "clci", "seed": 1, "verbose": 2}


# ---------------------------------------------------------------------------
# Data and split helpers (no training)
# ---------------------------------------------------------------------------
def test_prepare_data_and_make_split(synthetic_h5, tmp_path):
    assert ex.prepare_data(synthetic_h5, tmp_path) == str(synthetic_h5)  # an HDF5 file is used as is
    with pytest.raises(FileNotFoundError):
        ex.prepare_data(tmp_path / "missing.h5", tmp_path)
    path, folds = ex.make_split(synthetic_h5, "kfold", tmp_path, k=2, folds="all", val_fraction=0.5)
    assert folds == [0, 1] and path.endswith("split_kfold2.json")
    assert ex.make_split(synthetic_h5, path, tmp_path, folds=[1])[1] == [1]  # a split file, read
    path, folds = ex.make_split(synthetic_h5, "holdout", tmp_path, val_fraction=0.25, test_fraction=0.25)
    split = json.load(open(path))
    assert folds == [None] and len(split["test"]) == 1 and len(split["val"]) == 1
    assert ex.split_subjects(path, "test") == split["test"]
    assert ex.run_dir_for("runs", "baseline", None).endswith("baseline/holdout")


def test_describe_data(synthetic_h5, tmp_path):
    subjects, summary = ex.describe_data(synthetic_h5, tmp_path, quick=True)
    assert len(subjects) == 4 and (subjects["brain_slices"] == 155).all()
    assert summary["subjects"] == 4 and summary["slices"] == 4 * 189 and sum(summary["size_counts"].values()) == 4
    assert json.load(open(tmp_path / "summary.json"))["quick"] is True
    assert (tmp_path / "subjects.csv").read_text().startswith("index,subject_id")


def test_run_demo_guards(tmp_path):
    with pytest.raises(ValueError, match="at least 3 subjects"):
        ex.run_demo(tmp_path / "a", subjects=2, log=None)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(FileExistsError):
        ex.run_demo(str(tmp_path / "b"), log=None)


def test_demo_cli_defaults_are_run_demos():
    from clci_keras.cli import build_parser

    args = build_parser(load="demo").parse_args(["demo"])
    d = ex.DEMO_DEFAULTS
    assert (args.subjects, args.epochs, args.steps_per_epoch, args.batch_size, args.lr, args.bn_momentum,
            args.train_slices, args.val_slices, args.export, args.eval_slices, args.crop, args.model, args.seed) == (
        d["subjects"], d["epochs"], d["steps_per_epoch"], d["batch_size"], d["learning_rate"], d["bn_momentum"],
        d["train_slices"], d["val_slices"], d["export"], d["eval_slices"], d["crop"], d["model"], d["seed"])
    assert d["subjects"] == 6 and d["epochs"] == 8 and d["steps_per_epoch"] == 6 and d["model"] == "clci_net"


def test_eager_training_only_for_a_handful_of_steps():
    """QUICK runs (a step or two) train eagerly under ``eager="auto"`` (train_and_evaluate's
    default); protocol-sized runs trace the step."""
    from clci_keras.training import TrainConfig
    from clci_keras.training.config import EAGER_MAX_STEPS
    from clci_keras.training.trainer import _runs_eagerly

    def eager(backend="tensorflow", **options):
        return _runs_eagerly(TrainConfig(**{"eager": "auto", **options}), backend)

    quick = ex.train_options(ex.resolve_settings({"EPOCHS": None, "STEPS_PER_EPOCH": None}, quick=True,
                                                 quick_values=ex.QUICK_TRAINING))
    assert eager(**quick) and eager("torch", **quick) and not eager("jax", **quick)
    assert not eager(epochs=100, steps_per_epoch=None)  # the protocol: slices // batch
    assert not eager(epochs=8, steps_per_epoch=6)  # the demo's defaults
    assert not eager(epochs=1, steps_per_epoch=1, strategy="mirrored")
    assert eager(epochs=1, steps_per_epoch=EAGER_MAX_STEPS)
    assert eager(eager=True, epochs=100) and not eager(eager=False, **quick)
    assert not eager(steps_per_epoch=1)  # the default 100 epochs
    assert TrainConfig().eager is False  # clci-keras train traces unless told (--set eager=true)
