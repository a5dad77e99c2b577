"""Subject-level splits (never by slice) and their JSON files.

* :func:`make_holdout_split`: seeded random train / val / test partition.
* :func:`make_kfold_split` (one fold) / :func:`make_kfold_splits` (all folds
  in one file, under ``"folds"``): the X-Net protocol, ``KFold(n_splits=5,
  shuffle=False)`` over subjects in file order: fold ``k`` tests on the
  ``k``-th contiguous block (the first ``n % k`` blocks are one subject
  larger), trains on the rest, and has no separate validation part unless
  ``val > 0`` (then the last ``val`` fraction of the training subjects, in
  file order, is held out for validation).

A split is a dict with keys ``"train"``, ``"val"``, ``"test"`` (sorted lists
of subject indices in file order), ``"subject_ids"`` (the ids of all
subjects, by index), ``"mode"``, and the parameters that made it.
"""
from __future__ import annotations

import json
import os

import numpy as np

SPLIT_FORMAT_VERSION = 1
PARTS = ("train", "val", "test")


def _ids(subject_ids):
    if isinstance(subject_ids, (int, np.integer)):
        return [str(i) for i in range(int(subject_ids))]
    ids = [str(s) for s in subject_ids]
    if len(set(ids)) != len(ids):
        dup = sorted({s for s in ids if ids.count(s) > 1})
        raise ValueError(f"Duplicate subject ids {dup[:5]}: a subject would land in two parts.")
    return ids


def _check_fraction(name, v):
    if not 0.0 <= float(v) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {v}.")


def make_holdout_split(subject_ids, val=0.1, test=0.2, seed=0):
    """Random hold-out split by subject.

    Args:
        subject_ids: subject ids in file order (or their count).
        val, test: fractions of subjects (rounded to the nearest count; at
            least one subject in a part whose fraction is > 0).
        seed: permutation seed (``numpy.random.default_rng(seed)``).
    """
    ids = _ids(subject_ids)
    _check_fraction("val", val)
    _check_fraction("test", test)
    if val + test >= 1.0:
        raise ValueError(f"val + test must be < 1, got val={val}, test={test}.")
    n = len(ids)
    n_test = max(1, int(round(n * test))) if test > 0 else 0
    n_val = max(1, int(round(n * val))) if val > 0 else 0
    if n - n_test - n_val < 1:
        raise ValueError(f"{n} subjects are too few for val={val}, test={test}: no training subject left.")
    perm = np.random.default_rng(int(seed)).permutation(n)
    test_idx = sorted(int(i) for i in perm[:n_test])
    val_idx = sorted(int(i) for i in perm[n_test : n_test + n_val])
    train_idx = sorted(int(i) for i in perm[n_test + n_val :])
    return {
        "format_version": SPLIT_FORMAT_VERSION, "mode": "holdout", "seed": int(seed), "val_fraction": float(val),
        "test_fraction": float(test), "train": train_idx, "val": val_idx, "test": test_idx, "subject_ids": ids,
    }


def kfold_blocks(n, k):
    """Contiguous folds of ``range(n)`` as sklearn's ``KFold(k, shuffle=False)``."""
    sizes = np.full(k, n // k, dtype=int)
    sizes[: n % k] += 1
    stops = np.cumsum(sizes)
    return [list(range(int(s - z), int(s))) for s, z in zip(stops, sizes)]


def make_kfold_split(subject_ids, k=5, fold=0, val=0.0):
    """Fold ``fold`` of the X-Net protocol's ``k``-fold cross-validation (no shuffle).

    ``test`` is the fold's contiguous block; ``train`` all other subjects.
    X-Net validates on the test fold itself; pass ``val > 0`` to carve a
    validation part off the end of the training subjects instead.
    """
    ids = _ids(subject_ids)
    k, fold = int(k), int(fold)
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}.")
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in [0, {k - 1}], got {fold}.")
    if len(ids) < k:
        raise ValueError(f"{len(ids)} subjects are too few for {k} folds.")
    _check_fraction("val", val)
    test_idx = kfold_blocks(len(ids), k)[fold]
    rest = [i for i in range(len(ids)) if i not in set(test_idx)]
    n_val = max(1, int(round(len(rest) * val))) if val > 0 else 0
    val_idx = rest[len(rest) - n_val :] if n_val else []
    train_idx = rest[: len(rest) - n_val]
    return {
        "format_version": SPLIT_FORMAT_VERSION, "mode": "kfold", "k": k, "fold": fold, "val_fraction": float(val),
        "train": train_idx, "val": val_idx, "test": list(test_idx), "subject_ids": ids,
    }


def make_kfold_splits(subject_ids, k=5, val=0.0):
    """All ``k`` folds in one split dict: ``"folds"`` is the list of
    :func:`make_kfold_split` parts (with ``"fold"``), and the top-level
    ``train``/``val``/``test`` are fold 0's."""
    folds = [make_kfold_split(subject_ids, k=k, fold=f, val=val) for f in range(int(k))]
    parts = [{key: f[key] for key in ("fold", *PARTS)} for f in folds]
    out = dict(folds[0])
    out.pop("fold")
    out["folds"] = parts
    return out


def validate_split(split, n_subjects=None, source="split"):
    """Check parts are disjoint index lists inside range; raise ValueError naming ``source``.

    A split with ``"folds"`` (from :func:`make_kfold_splits`) has every fold checked.
    """
    for i, fold in enumerate(split.get("folds", ())):
        sub = {**fold, "subject_ids": split.get("subject_ids", [])}
        sub.setdefault("val", [])
        validate_split(sub, n_subjects, source=f"{source} (fold {fold.get('fold', i)})")
    for p in PARTS:
        if p not in split:
            raise ValueError(f"{source}: missing key {p!r}.")
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in split[p]):
            raise ValueError(f"{source}: {p!r} must be a list of integer subject indices.")
    seen = {}
    for p in PARTS:
        for i in split[p]:
            if i in seen:
                raise ValueError(f"{source}: subject index {i} is in both {seen[i]!r} and {p!r}.")
            seen[i] = p
    n = n_subjects if n_subjects is not None else len(split.get("subject_ids", [])) or None
    if n is not None:
        bad = [i for i in seen if not 0 <= i < n]
        if bad:
            raise ValueError(f"{source}: subject indices {sorted(bad)[:5]} out of range for {n} subjects.")
    return split


def save_split(split, path):
    """Write ``split`` as JSON (atomically)."""
    validate_split(split)
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(split, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_split(path, n_subjects=None):
    """Read and validate a split file written by :func:`save_split`."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            split = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read split file ({e}).") from e
    if not isinstance(split, dict):
        raise ValueError(f"{path}: a split file must hold a JSON object, got {type(split).__name__}.")
    split.setdefault("val", [])
    return validate_split(split, n_subjects, source=path)
