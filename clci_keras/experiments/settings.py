"""Workflow settings: the protocol defaults, the QUICK values, and how a notebook resolves them.

A notebook's ``parameters`` cell sets each protocol setting to ``None``
("the protocol default") or to a value of the user's choice. At run time
:func:`resolve_settings` replaces every ``None`` by

* its QUICK value when ``QUICK`` is on (:data:`QUICK_TRAINING` and friends), or
* the protocol default read from the library *now*
  (:func:`protocol_defaults`: :class:`clci_keras.training.TrainConfig`'s
  defaults, the evaluation's default slices, the k-fold default of
  :func:`clci_keras.data.make_kfold_splits`, and :data:`WORKFLOW_DEFAULTS`),

and keeps every value the user set, QUICK or not. Nothing here copies a
default at import time, so a changed ``TrainConfig`` default reaches the
notebooks without editing them.

Names are matched case-insensitively: a notebook's ``EPOCHS`` is the
library's ``epochs``.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect

import clci_keras.training.config as train_config  # read at run time: a changed default reaches the settings
from clci_keras.data.splits import make_kfold_splits
from clci_keras.evaluation.evaluate import evaluate_run

#: 48 x 32 window of the slices used by QUICK runs (rows, columns of the 233 x 197
#: slice): the left hemisphere around the middle-cerebral-artery territory, where the
#: lesions of the QUICK synthetic subjects lie (the whole lesion of fold 0's training
#: subject, most of the validation subject's, 14 ml of the test subject's); 26x fewer
#: pixels than CLCI-Net's 224 x 176 window and a third fewer than 48 x 48.
QUICK_CROP = "70:118,35:67"

#: Slab of each subject's slices that QUICK runs predict and score (file order, as the
#: evaluation's ``"A:B"``): 48 of the 155 brain slices, every slice with lesion voxels of
#: the QUICK subjects inside :data:`QUICK_CROP` (67-106, 94-111 and 83-108); the rest
#: count as "no lesion". A third of the prediction work of ``"brain"``, for each
#: network of 02-05 (tables mark such rows).
QUICK_EVAL_SLICES = "64:112"

#: Defaults of the workflow settings that are not :class:`TrainConfig` fields.
WORKFLOW_DEFAULTS = dict(
    data="outputs/01_prepare_data/atlas.h5",  # where notebook 01 writes the HDF5 file
    n_synthetic=16,       # subjects of a synthetic release
    workers=2,            # preprocessing processes
    split="kfold",        # "kfold" (X-Net's contiguous folds), "holdout" or a split JSON
    folds="all",          # folds trained: "all" or a list
    val_fraction=0.1,     # validation share of each fold's training subjects (docs/training.md)
    test_fraction=0.2,    # hold-out splits: test share
    n_overlay=3,          # 05: patients overlaid
    n_failures=3,         # 05: failure cases per method
)

#: QUICK values of notebook 01 (data preparation).
QUICK_DATA = dict(n_synthetic=3, workers=1)

#: QUICK values of the training notebooks (02): 3 synthetic subjects, one fold
#: (1 training, 1 validation, 1 test subject), the 48 x 32 window, 2 epochs of one
#: step of batch 2 on lesion slices, the last epoch's weights exported (the protocol
#: exports the best epoch's: reloading that checkpoint, optimizer state included, costs
#: more CPU than a QUICK step; after one epoch, as in 03 and 04, they are the same
#: weights), evaluation on the slab :data:`QUICK_EVAL_SLICES`.
QUICK_TRAINING = dict(
    data="synthetic", n_synthetic=3, split="kfold", k=3, folds=[0], val_fraction=0.5,
    epochs=2, steps_per_epoch=1, batch_size=2, train_slices="lesion", val_slices="lesion",
    crop=QUICK_CROP, learning_rate=1e-3, bn_momentum=0.9, export="last", eval_slices=QUICK_EVAL_SLICES,
)

#: QUICK values of the table notebooks (03, 04): as :data:`QUICK_TRAINING`, one epoch.
QUICK_TABLES = {**QUICK_TRAINING, "epochs": 1}

#: QUICK values of notebook 05 (visualization).
QUICK_VISUALIZATION = dict(eval_slices=QUICK_EVAL_SLICES, n_overlay=1, n_failures=1)


def protocol_defaults():
    """``{setting: protocol default}``, read from the library at call time.

    Every :class:`clci_keras.training.TrainConfig` field (its current default),
    ``eval_slices`` (the default of :func:`clci_keras.evaluation.evaluate_run`),
    ``k`` (the default of :func:`clci_keras.data.make_kfold_splits`) and
    :data:`WORKFLOW_DEFAULTS`. The TrainConfig field ``split`` (a path) is
    replaced by the workflow's ``split`` (``"kfold"``).
    """
    out = dataclasses.asdict(train_config.TrainConfig())
    out["eval_slices"] = inspect.signature(evaluate_run).parameters["slices"].default
    out["k"] = inspect.signature(make_kfold_splits).parameters["k"].default
    out.update(WORKFLOW_DEFAULTS)
    return out


def resolve_settings(user_values, quick=False, quick_values=None, defaults=None, report=False):
    """Fill each ``None`` of ``user_values`` with its QUICK value or its protocol default.

    Args:
        user_values: ``{name: value}`` as the user set them; ``None`` means
            "the protocol default" (or the QUICK value when ``quick``).
        quick: QUICK mode on.
        quick_values: ``{name: QUICK value}`` (e.g. :data:`QUICK_TRAINING`).
        defaults: ``{name: protocol default}``; default :func:`protocol_defaults`
            (read now, so it follows the library).
        report: print one line per setting with where its value came from.

    Returns:
        ``{name: value}`` with the keys of ``user_values``. A value the user set
        (anything but ``None``) is always kept. Names are matched
        case-insensitively; a ``None`` with neither a QUICK value nor a
        default raises ``KeyError``.
    """
    defaults = protocol_defaults() if defaults is None else defaults
    quick_low = {str(k).lower(): v for k, v in (quick_values or {}).items()}
    default_low = {str(k).lower(): v for k, v in defaults.items()}
    out, source = {}, {}
    for name, value in user_values.items():
        key = str(name).lower()
        if value is not None:
            out[name], source[name] = value, "set"
        elif quick and key in quick_low:
            out[name], source[name] = copy.deepcopy(quick_low[key]), "QUICK"
        elif key in default_low:
            out[name], source[name] = copy.deepcopy(default_low[key]), "protocol default"
        else:
            raise KeyError(f"setting {name!r} is None and has no protocol default; set a value "
                           f"(settings with defaults: {', '.join(sorted(default_low))})")
    if report:
        width = max((len(str(n)) for n in out), default=0)
        print(("QUICK" if quick else "protocol") + " settings (None -> QUICK value or protocol default):")
        for name, value in out.items():
            print(f"  {str(name):{width}s} = {value!r}  ({source[name]})")
    return out


def train_options(settings, **extra):
    """The training options (:class:`TrainConfig` fields, lower case) among ``settings``.

    ``settings`` is a :func:`resolve_settings` result (any case); ``model``,
    ``h5``, ``split``, ``out_dir`` and ``fold`` are left out (the workflow
    passes them), ``extra`` is added last.
    """
    fields = {f.name for f in dataclasses.fields(train_config.TrainConfig)} - set(train_config.RUN_FIELDS)
    out = {str(k).lower(): v for k, v in settings.items() if str(k).lower() in fields}
    out.update(extra)
    return out
