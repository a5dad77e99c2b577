"""Small helpers shared by every layer (a leaf module: imports nothing of clci_keras).

* :func:`publish`: atomic rename of a finished temporary file to its path;
  :func:`atomic_text`: write a text file that way.
* :func:`check_writable_folder`: fail early, naming the folder, where outputs cannot be written.
* :func:`progress_bar`: a tqdm bar on a terminal; plain lines (no carriage returns, no ANSI
  escapes) in log files and pipes.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile

#: Prefix of the empty probe file :func:`check_writable_folder` creates and removes at once.
WRITE_PROBE_PREFIX = ".clci-keras-write-probe-"


def umask_mode(base=0o666):
    """``base`` with the process umask applied: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def publish(tmp, path):
    """Give ``tmp`` the user's default file mode and rename it to ``path`` (atomic).

    ``tempfile.mkstemp`` creates files with mode 0600; an output renamed from
    such a file would stay unreadable to the user's group, unlike a file the
    user wrote directly (0644 under umask 022).
    """
    os.chmod(tmp, umask_mode())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_text(path, newline=None):
    """Open ``path`` for writing text through a temporary file beside it.

    On success the file is published (:func:`publish`: the user's umask, then
    rename); on any error the temporary is removed and ``path`` is untouched.
    The folder is created if needed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", newline=newline) as f:
            yield f
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_writable_folder(folder, what="output folder"):
    """Raise a one-line ``OSError`` naming ``folder`` unless new files can be written in it.

    A folder that does not exist yet is checked through its nearest existing
    parent (where it would be created).  The check creates and removes an empty
    probe file, so it holds for every user, root included (``os.access``
    says yes to root even in a read-only folder).

    Raises:
        NotADirectoryError: the folder, or a parent of it, is a regular file.
        PermissionError: files cannot be created there (permissions, read-only file system).
        OSError: any other reason, with the system's reason.
    """
    folder = os.path.abspath(os.fspath(folder))
    probe = folder
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        where = "" if probe == folder else f" ({probe} is a file)"
        raise NotADirectoryError(f"{folder}: {what} is not a folder{where}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=WRITE_PROBE_PREFIX, dir=probe)
    except OSError as e:
        cls = PermissionError if isinstance(e, PermissionError) or e.errno in (1, 13, 30) else OSError
        reason = e.strerror or str(e)
        where = "" if probe == folder else f" (its parent {probe})"
        raise cls(f"{folder}: cannot write to the {what}{where}: {reason}") from e
    os.close(fd)
    os.remove(tmp)
    return folder


class _LineProgress:
    """What :func:`progress_bar` returns off a terminal: one plain line per 10 % step."""

    def __init__(self, total, desc, unit, file, steps=10):
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.n = 0
        self._steps = steps
        self._shown = 0  # steps already printed
        self._closed = False

    def update(self, n=1):
        self.n += n
        if self.total:
            step = min(self._steps, self.n * self._steps // self.total)
            if step > self._shown:
                self._shown = step
                self._line()

    def _line(self):
        pct = f" ({100 * self.n // self.total}%)" if self.total else ""
        print(f"{self.desc}: {self.n}/{self.total or '?'} {self.unit}{pct}", file=self.file, flush=True)

    def close(self):
        if not self._closed:
            self._closed = True
            if not self.total or self._shown < self._steps:
                self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress_bar(total, desc, unit="it", file=None, leave=True):
    """A progress display with tqdm's ``update(n)`` / ``close()``.

    On a terminal (``file.isatty()``): a tqdm bar.  In a Jupyter kernel:
    ``tqdm.auto`` (a widget).  Anywhere else (log files, pipes, CI): one plain
    line per 10 % of ``total`` and one at the end, e.g. ``prep r1.1: 3/4 subject
    (75%)``, with no carriage returns and no ANSI escape sequences.

    Args:
        total: number of units (None if unknown: one line at the end).
        desc: label printed before the counts.
        unit: unit name.
        file: stream (default ``sys.stderr``).
        leave: keep the tqdm bar on screen when done (terminal only).
    """
    stream = sys.stderr if file is None else file
    if type(stream).__module__.split(".")[0] == "ipykernel":
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=leave)
    isatty = getattr(stream, "isatty", None)
    try:
        tty = bool(isatty and isatty())
    except (OSError, ValueError):  # closed stream
        tty = False
    if tty:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=leave)
    return _LineProgress(total, desc, unit, stream)
