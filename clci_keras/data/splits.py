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

**Id splits** (``"mode": "ids"``) name subjects by id instead of position, so
they hold for any HDF5 file whatever its subject order:

* :func:`preset_split` — a published split by name (``"spin_traintest"``,
  :mod:`clci_keras.data.published_splits`);
* :func:`split_from_lists` — plain id lists, one line per subject, as the SPiN
  authors' ``data_split/atlas/traintest/*/*_scans.txt``
  (``c0008/c0008s0028t01/c0008s0028t01_t1w_stx.npy``; :func:`read_id_list`).

Their parts live under ``"ids"`` (``{"train": [...], "val": [...], "test":
[...]}``).  :func:`resolve_split` turns them into indices of one HDF5 file by
subject id; :func:`load_split` does so when given ``h5=`` and accepts a
preset name wherever a split file path is accepted.  Ids that the file lacks
are an error listing them, unless ``allow_missing=True``: then the ids present
are used and the missing ones are recorded under ``"missing"``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from clci_keras.data.preprocess import read_subjects
from clci_keras.data.published_splits import PUBLISHED_SPLITS
from clci_keras.fileio import write_json

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

    A split with ``"folds"`` (from :func:`make_kfold_splits`) has every fold checked;
    an id split (``"ids"``) has its id lists checked, and its index lists too
    once resolved.
    """
    if not isinstance(split, dict):
        raise ValueError(f"{source}: a split must be a JSON object with {list(PARTS)}, got {type(split).__name__}.")
    if "ids" in split:
        _validate_ids(split, source)
        if not all(p in split for p in PARTS):  # not resolved against a file yet
            return split
    folds = split.get("folds", ())
    if not isinstance(folds, (list, tuple)) or not all(isinstance(f, dict) for f in folds):
        raise ValueError(f"{source}: 'folds' must be a list of objects, got {folds!r:.60}.")
    ids = split.get("subject_ids", [])
    if not isinstance(ids, (list, tuple)):
        raise ValueError(f"{source}: 'subject_ids' must be a list, got {ids!r:.60}.")
    for i, fold in enumerate(folds):
        sub = {**fold, "subject_ids": ids}
        sub.setdefault("val", [])
        validate_split(sub, n_subjects, source=f"{source} (fold {fold.get('fold', i)})")
    for p in PARTS:
        if p not in split:
            raise ValueError(f"{source}: missing key {p!r}.")
        if not isinstance(split[p], (list, tuple)) or not all(
                isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in split[p]):
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


# ---------------------------------------------------------------------------
# Id splits: published presets and plain id lists
# ---------------------------------------------------------------------------
def _validate_ids(split, source):
    ids = split["ids"]
    if not isinstance(ids, dict):
        raise ValueError(f"{source}: 'ids' must map parts to lists of subject ids, got {type(ids).__name__}.")
    unknown = sorted(set(ids) - set(PARTS))
    if unknown:
        raise ValueError(f"{source}: unknown parts {unknown} under 'ids'; expected {list(PARTS)}.")
    seen = {}
    for p in PARTS:
        lst = ids.get(p, [])
        if not isinstance(lst, (list, tuple)) or not all(isinstance(s, str) and s for s in lst):
            raise ValueError(f"{source}: ids[{p!r}] must be a list of non-empty subject-id strings.")
        for s in lst:
            if s in seen:
                where = "twice in" if seen[s] == p else f"in both {seen[s]!r} and"
                raise ValueError(f"{source}: subject id {s!r} is {where} {p!r}.")
            seen[s] = p


def list_split_presets():
    """Names of the published splits :func:`preset_split` knows."""
    return sorted(PUBLISHED_SPLITS)


def is_split_preset(name):
    """True if ``name`` is a published split name (and not an existing file of that name)."""
    return isinstance(name, str) and name in PUBLISHED_SPLITS and not os.path.exists(name)


def preset_split(name):
    """The published split ``name`` as an id split (``"mode": "ids"``).

    ``"spin_traintest"``: Wong et al. 2021's ATLAS R1.2 split, 212 training
    and 27 test scans (:mod:`clci_keras.data.published_splits`).
    """
    if name not in PUBLISHED_SPLITS:
        raise ValueError(f"Unknown split preset {name!r}; known presets: {list_split_presets()}.")
    p = PUBLISHED_SPLITS[name]
    return {
        "format_version": SPLIT_FORMAT_VERSION, "mode": "ids", "preset": name,
        "description": p["description"], "dataset": p["dataset"], "source": dict(p["source"]),
        "ids": {part: list(p[part]) for part in PARTS},
    }


def _id_from_line(line):
    """Subject id of one list line: a bare id, a folder path, or a file path.

    For a file (last component with a ``.``), the id is the deepest folder
    whose name prefixes the file name followed by ``_`` (R1.2
    ``c0008/c0008s0028t01/c0008s0028t01_t1w_stx.npy`` -> ``c0008s0028t01``;
    R1.1 ``Site1/031768/t01/031768_t1w_deface_stx.nii.gz`` -> ``031768``), else
    the folder holding the file.  Returns None when a bare file name gives no
    folder to take the id from.
    """
    parts = [q for q in line.replace("\\", "/").split("/") if q not in ("", ".")]
    last = parts[-1]
    if "." not in last:
        return last
    folders = parts[:-1]
    for folder in reversed(folders):
        if last.startswith(folder + "_"):
            return folder
    return folders[-1] if folders else None


def read_id_list(path):
    """Subject ids listed in a plain text file, in line order.

    One subject per line; blank lines and lines starting with ``#`` are
    skipped; each line is a bare id (``c0008s0028t01``), a folder path or a
    file path shaped like the SPiN authors' lists (see :func:`_id_from_line`).
    Raises ValueError naming the file and line for an unreadable line, a
    repeated id or an empty list.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read subject-id list ({e}).") from e
    ids, first = [], {}
    for no, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sid = _id_from_line(line)
        if not sid:
            raise ValueError(
                f"{path}, line {no}: cannot tell the subject id from {line!r}: give the id itself "
                "or a path through the subject's folder (e.g. c0008/c0008s0028t01/c0008s0028t01_t1w_stx.npy)."
            )
        if sid in first:
            raise ValueError(f"{path}, line {no}: subject id {sid!r} repeats line {first[sid]}.")
        first[sid] = no
        ids.append(sid)
    if not ids:
        raise ValueError(f"{path}: the subject-id list is empty.")
    return ids


def split_from_lists(train, test, val=None):
    """An id split from plain list files (:func:`read_id_list`); ``val`` optional."""
    files = {"train": train, "val": val, "test": test}
    ids = {p: (read_id_list(f) if f is not None else []) for p, f in files.items()}
    split = {
        "format_version": SPLIT_FORMAT_VERSION, "mode": "ids",
        "source": {p: os.path.abspath(os.fspath(f)) for p, f in files.items() if f is not None},
        "ids": ids,
    }
    _validate_ids(split, source=" + ".join(os.fspath(f) for f in files.values() if f is not None))
    return split


def resolve_split(split, subject_ids, *, parts=None, allow_missing=False, source="split", h5=None):
    """Indices of an id split's subjects in a file whose subjects are ``subject_ids`` (file order).

    Args:
        split: an id split (:func:`preset_split`, :func:`split_from_lists`).
        subject_ids: the file's subject ids by index (``read_subjects``).
        parts: the parts that must be complete (default: all); ids of other
            parts that the file lacks are dropped and recorded.
        allow_missing: use the ids present in every part, and record the
            others, instead of raising.
        source: name used in error messages; h5: path recorded in the result.

    Returns:
        The split with ``train``/``val``/``test`` index lists (in the id
        lists' order), ``subject_ids``, ``missing`` (``{part: [ids]}`` of the
        ids the file lacks) and ``h5``.

    Raises:
        ValueError listing, per part, the ids the file lacks.
    """
    _validate_ids(split, source)
    file_ids = [str(s) for s in subject_ids]
    where = os.fspath(h5) if h5 is not None else "the HDF5 file"
    index = {}
    dup = set()
    for i, s in enumerate(file_ids):
        if s in index:
            dup.add(s)
        index.setdefault(s, i)
    strict = PARTS if parts is None else tuple(parts)
    unknown = [p for p in strict if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown split parts {unknown}; expected some of {list(PARTS)}.")
    out = {k: v for k, v in split.items() if k not in (*PARTS, "subject_ids", "missing", "h5", "folds")}
    out["missing"] = {}
    problems = []
    for p in PARTS:
        wanted = list(split["ids"].get(p, []))
        clash = [s for s in wanted if s in dup]
        if clash:
            raise ValueError(f"{where}: subject ids {clash} occur more than once in the file; cannot resolve {source}.")
        out[p] = [index[s] for s in wanted if s in index]
        missing = [s for s in wanted if s not in index]
        if missing:
            out["missing"][p] = missing
            if p in strict:
                problems.append(f"{len(missing)} of the {len(wanted)} {p!r} ids ({', '.join(missing)})")
    if problems and not allow_missing:
        raise ValueError(
            f"{source}: {where} lacks " + "; ".join(problems)
            + ". Prepare the data that holds them, or pass allow_missing=True (--allow-missing) to use "
            "the ids present."
        )
    out["subject_ids"] = file_ids
    if h5 is not None:
        out["h5"] = os.path.abspath(os.fspath(h5))
    validate_split(out, len(file_ids), source=source)
    return out


def missing_summary(split):
    """One line per part with missing ids of a resolved split, e.g. ``test: 24 of 27 ids missing``."""
    missing = split.get("missing") or {}
    ids = split.get("ids") or {}
    return [f"{p}: {len(missing[p])} of {len(ids.get(p, []))} ids missing" for p in PARTS if missing.get(p)]


def save_split(split, path):
    """Write ``split`` as JSON (atomically)."""
    validate_split(split)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        kind = "is a file, not a folder" if os.path.lexists(folder) else "does not exist"
        raise FileNotFoundError(f"{path}: cannot write the split file: folder {folder} {kind}.")
    try:
        write_json(path, split, indent=1)
    except OSError as e:
        raise type(e)(f"{path}: cannot write the split file ({e.strerror or e}).") from e
    return path


def load_split(path, n_subjects=None, *, fold=None, h5=None, parts=None, allow_missing=False):
    """Read and validate a split file written by :func:`save_split`, or a preset name.

    ``fold`` selects one fold of a k-fold file (its ``train``/``val``/``test``
    lists replace the top-level ones); for a single-fold file it must match
    the fold the file records, if any.

    ``path`` may also be a published split name (``"spin_traintest"``,
    :func:`list_split_presets`).  Such a split, and any id split file, names
    subjects by id: with ``h5`` (the HDF5 slice file) the ids are resolved to
    that file's indices (:func:`resolve_split`, with ``parts`` and
    ``allow_missing``); without it, a file already resolved by ``clci-keras
    split DATA.h5 --preset ...`` is used as written, and anything else is an
    error saying how to resolve it.  Index splits ignore ``h5``.
    """
    if is_split_preset(path):
        split = preset_split(path)
        source = f"split preset {path!r}"
    else:
        path = os.fspath(path)
        source = path
        try:
            with open(path) as f:
                split = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            hint = ""
            if isinstance(e, FileNotFoundError):
                hint = f" (not a split preset either; presets: {list_split_presets()})"
            raise ValueError(f"{path}: cannot read split file ({e}){hint}.") from e
        if not isinstance(split, dict):
            raise ValueError(f"{path}: a split file must hold a JSON object, got {type(split).__name__}.")
    if "ids" in split:
        _validate_ids(split, source)
        if h5 is not None:
            from clci_keras.data.preprocess import read_subjects

            ids = [s["subject_id"] for s in read_subjects(h5)]
            split = resolve_split(split, ids, parts=parts, allow_missing=allow_missing, source=source, h5=h5)
        elif not all(p in split for p in PARTS):
            name = split.get("preset")
            how = f"--preset {name}" if name else "--from-lists TRAIN.txt TEST.txt"
            raise ValueError(
                f"{source}: this split names subjects by id; pass the HDF5 slice file to resolve them "
                f"(h5=... in Python, --h5 on the command line) or write a resolved split file with "
                f"`clci-keras split DATA.h5 {how} -o SPLIT.json`."
            )
        if fold is not None and split.get("fold") is not None and int(split["fold"]) != int(fold):
            raise ValueError(f"{source}: holds fold {split['fold']}, not fold {fold} (--fold)")
        return validate_split(split, n_subjects, source=source)
    split.setdefault("val", [])
    split = validate_split(split, n_subjects, source=path)
    if fold is not None:
        if "folds" in split:
            folds = split["folds"]
            if not 0 <= int(fold) < len(folds):
                raise ValueError(f"{path}: fold {fold} (--fold) out of range (0..{len(folds) - 1})")
            split = {**split, **folds[int(fold)]}
        elif split.get("fold") is not None and int(split["fold"]) != int(fold):
            raise ValueError(f"{path}: holds fold {split['fold']}, not fold {fold} (--fold)")
    if h5 is not None:
        check_split_matches_h5(split, h5, source=path)
    return split


def check_split_matches_h5(split, h5, source="split"):
    """Check that an index split was made for the HDF5 file ``h5``; ValueError naming what differs.

    Every index must be a subject of the file, and where the split records the
    ``subject_ids`` it was made from, the file's ids at the split's indices must
    be those ids (a split made from another file, or from the same data in
    another subject order, is refused). A different recorded ``h5`` path with
    matching ids is accepted (the file was moved or copied).
    """
    h5 = os.fspath(h5)
    file_ids = [str(s["subject_id"]) for s in read_subjects(h5)]
    used = sorted({int(i) for p in PARTS for i in split.get(p) or []})
    out_of_range = [i for i in used if not 0 <= i < len(file_ids)]
    if out_of_range:
        raise ValueError(f"{source}: subject indices {out_of_range[:10]} are not in {h5}, which has "
                         f"{len(file_ids)} subjects; was the split made from another file "
                         f"({split.get('h5', 'not recorded')})?")
    recorded = split.get("subject_ids")
    if recorded:
        wrong = [(i, recorded[i], file_ids[i]) for i in used if i < len(recorded) and str(recorded[i]) != file_ids[i]]
        if wrong or len(recorded) != len(file_ids):
            detail = ", ".join(f"index {i}: split {a!r} / file {b!r}" for i, a, b in wrong[:5])
            raise ValueError(
                f"{source} was made from another file ({split.get('h5', 'path not recorded')}): its subject "
                f"ids do not match {h5} ({len(recorded)} vs {len(file_ids)} subjects"
                + (f"; {len(wrong)} differ, e.g. {detail}" if wrong else "")
                + "). Make the split from this file with `clci-keras split`."
            )
