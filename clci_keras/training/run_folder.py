"""The run folder of :func:`clci_keras.training.train`: resume points, logs, worker folders.

No Keras and no backend here: only files. The folder's layout (its file names) is
:mod:`clci_keras.run_layout`'s, where every layer reads it.
"""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import time

from clci_keras import fileio
from clci_keras.run_layout import (BACKUP_DIR, BEST_CKPT, LOG_FILE, POINTER, PREVIOUS_ATTEMPT_DIR, STATE_FILE,
                                   WEIGHTS_FILE, WORKERS_DIR)


class ResumeError(ValueError):
    """The run folder's resume point cannot be read; the message names the file."""


def resume_point(run_dir):
    """``(epochs done, folder of that resume point)``; ``(0, None)`` when there is none."""
    pointer = os.path.join(run_dir, BACKUP_DIR, POINTER)
    if not os.path.exists(pointer):
        return 0, None
    try:
        meta = fileio.read_json(pointer)
        epoch, folder = int(meta["epoch"]), os.path.join(run_dir, BACKUP_DIR, meta["dir"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ResumeError(f"{pointer}: unreadable resume point ({e}); delete {os.path.dirname(pointer)} "
                          "to restart the run from scratch, or pass --overwrite") from e
    for name in (WEIGHTS_FILE, STATE_FILE):
        if not os.path.isfile(os.path.join(folder, name)):
            raise ResumeError(f"{pointer} names {os.path.join(folder, name)}, which is missing")
    return epoch, folder


def commit_resume_point(run_dir, epoch, write):
    """Write the resume point after ``epoch`` epochs: ``write(folder)`` fills a temporary folder.

    The folder (:func:`clci_keras.fileio.atomic_folder`, flushed to the disk) is
    renamed to ``backup/epoch_NNNN``, then ``latest.json`` is replaced (the
    commit), then older points and what a killed commit left go. A process
    killed at any moment leaves the previous point intact.
    """
    backup = os.path.join(run_dir, BACKUP_DIR)
    name = f"epoch_{epoch:04d}"
    with fileio.atomic_folder(os.path.join(backup, name), durable=True) as folder:
        write(folder)
    fileio.write_json(os.path.join(backup, POINTER), {"epoch": epoch, "dir": name}, indent=None, durable=True)
    for old in os.listdir(backup):  # earlier points
        if old.startswith("epoch_") and old != name:
            shutil.rmtree(os.path.join(backup, old), ignore_errors=True)
    fileio.remove_temporaries(backup)  # left by a process killed while writing a point


def csv_epoch(line):
    """The epoch number of a CSVLogger row; None for an empty or partly written line."""
    try:
        return int(float(line.split(",")[0]))
    except ValueError:
        return None


def truncate_log(run_dir, epochs_done):
    """Drop the log rows of epochs >= ``epochs_done`` (written after the last resume point)."""
    path = os.path.join(run_dir, LOG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines:
        return
    keep = [lines[0]] + [l for l in lines[1:] if csv_epoch(l) is not None and csv_epoch(l) < epochs_done]
    with fileio.atomic_text(path) as f:
        f.write("\n".join(keep) + "\n")


def _log_number(v):
    """A CSVLogger cell as float; None for empty cells and ``NA`` (no validation data)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def read_log(run_dir):
    """The rows of ``log.csv`` as dicts of floats (None for empty cells); [] without a log."""
    path = os.path.join(run_dir, LOG_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [{k: _log_number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def keep_previous_attempt(run_dir):
    """Move the log and best checkpoint of an attempt that left no resume point aside.

    Returns the names moved into ``previous_attempt/`` (nothing is deleted).
    """
    kept = [p for p in (LOG_FILE, BEST_CKPT) if os.path.exists(os.path.join(run_dir, p))]
    if kept:
        attic = os.path.join(run_dir, PREVIOUS_ATTEMPT_DIR)
        os.makedirs(attic, exist_ok=True)
        for p in kept:
            fileio.move(os.path.join(run_dir, p), os.path.join(attic, p))
    return kept


def remove_folder(path, retries=0):
    """``shutil.rmtree``, retried ``retries`` times (another worker's write probe may come and go)."""
    for attempt in range(retries + 1):
        if not os.path.lexists(path):
            return
        try:
            shutil.rmtree(path)
            return
        except OSError:
            if attempt == retries:
                raise
            time.sleep(0.5)


def worker_folder(run_dir, name):
    """A worker's private run folder, emptied and seeded with the chief's resume point.

    Every worker runs every callback, so every worker writes a log, checkpoints
    and resume points; only the chief writes into ``run_dir``. Another worker
    works in ``run_dir/.workers/<name>``, seeded with a copy of the chief's
    resume point (and log, best checkpoint), so that all resume after the same
    epoch with the same weights and states.
    """
    folder = os.path.join(run_dir, WORKERS_DIR, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, BACKUP_DIR))
    epoch, point = resume_point(run_dir)
    if point is not None:  # the chief writes nothing before the next epoch ends, which needs us
        point_name = os.path.basename(point)
        shutil.copytree(point, os.path.join(folder, BACKUP_DIR, point_name))
        for f in (LOG_FILE, BEST_CKPT):
            if os.path.exists(os.path.join(run_dir, f)):
                shutil.copy2(os.path.join(run_dir, f), os.path.join(folder, f))
        fileio.write_json(os.path.join(folder, BACKUP_DIR, POINTER), {"epoch": epoch, "dir": point_name},
                          indent=None, durable=True)
    return folder


def remove_worker_folder(folder):
    """Remove a worker's private folder, and ``.workers/`` once every worker is done."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(folder))
