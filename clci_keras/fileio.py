"""Small helpers shared by every layer (a leaf module: imports nothing of clci_keras).

* The one writer of every file the package publishes: :func:`atomic_text` (text),
  :func:`atomic_path` (a temporary path for libraries that write by file name: h5py,
  Keras ``save_weights``, nibabel, matplotlib), :func:`atomic_folder` (a whole folder),
  all through :func:`temporary` and :func:`publish` (or :func:`discard`);
  :func:`move` renames a finished file elsewhere; :func:`remove_temporaries` clears
  what a killed writer left, :func:`remove_dead_temporaries` what a killed process left
  of a temporary named for it (``per_process=True``), :func:`remove_leftovers` both for
  the outputs a run holds :func:`exclusive` (:func:`remove_leftovers_under`: in a whole
  output folder it holds).
* :func:`write_json` / :func:`read_json`: the one JSON format (:func:`json_text`: ``indent=2`` unless
  told, a final newline, NumPy values as numbers: :func:`jsonable`), written through :func:`atomic_text`.
* :func:`check_writable_folder`: fail early, naming the folder, where outputs cannot be written;
  :func:`check_not_an_input`: an output that is (or lies inside) an input, compared as resolved paths.
* :func:`walk`: a folder walk that follows links to folders, each folder once.
* :func:`exclusive`: one run at a time per output (a second one fails at once, naming the first's PID);
  ``reentrant=True`` (and :func:`holds`) for a library call inside a command that locked its output first.
* :func:`progress_bar`: a tqdm bar on a terminal; plain lines (no carriage returns, no ANSI
  escapes) in log files and pipes.

Every writer follows one contract:

* the data go to a temporary beside the target, named uniquely by ``tempfile``
  (``.XXXXXXXX.STEM.TAG.EXT``: hidden, the target's extension kept, e.g.
  ``.k3j_9q2a.best.partial.weights.h5`` for ``best.weights.h5``), so two writers of
  one target never share a temporary; or, with ``per_process=True``, named for the
  process that writes it (``.NAME.tmp-PID``: one writer of a target per process), so
  that a rerun finds and removes what a killed process left
  (:func:`remove_dead_temporaries`), even in a folder other processes write to;
* on success the temporary gets the mode a direct ``open()`` would give (the user's
  umask) and is renamed over the target in one step: a reader sees the old file or
  the new one, never part of one;
* on any error (``KeyboardInterrupt`` included) the temporary is removed and the
  target is untouched;
* with ``durable=True`` (results, weights, resume points) the data and the rename
  are flushed to the disk (``fsync``) before the writer returns.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import tempfile

#: Prefix of the empty probe file :func:`check_writable_folder` creates and removes at once.
WRITE_PROBE_PREFIX = ".clci-keras-write-probe-"

#: The tags a temporary's name carries before the target's extension (``TAG`` above).
TEMPORARY_TAGS = ("tmp", "partial")

#: Extensions of two parts that a temporary keeps whole (Keras requires ``.weights.h5``;
#: nibabel picks gzip from ``.nii.gz``).
DOUBLE_EXTENSIONS = (".weights.h5", ".nii.gz", ".tar.gz")

#: A temporary's name (:func:`temporary`): ``.``, tempfile's random part, ``.STEM.TAG`` and the extension.
_TEMPORARY = re.compile(r"\.[a-z0-9_]+\.(?P<rest>.+\.(?:%s)(?:\.[^.]+)*)\Z" % "|".join(TEMPORARY_TAGS))


def umask_mode(base=0o666):
    """``base`` with the process umask applied: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def split_name(name):
    """``(stem, extension)`` of a file name, keeping :data:`DOUBLE_EXTENSIONS` whole."""
    for ext in DOUBLE_EXTENSIONS:
        if name.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return os.path.splitext(name)


def _temporary_suffix(name, tag, folder):
    if tag not in TEMPORARY_TAGS:
        raise ValueError(f"temporary tag must be one of {TEMPORARY_TAGS}, got {tag!r}")
    if folder:
        return f".{name}.{tag}"
    stem, ext = split_name(name)
    return f".{stem}.{tag}{ext}"


def is_temporary(name, of=None):
    """Whether ``name`` is the name of a temporary of these writers (for the target named ``of``)."""
    m = _TEMPORARY.match(name)
    if m is None or of is None:
        return m is not None
    return any(m.group("rest") == _temporary_suffix(of, tag, folder)[1:]
               for tag in TEMPORARY_TAGS for folder in (False, True))


def remove_temporaries(folder, of=None):
    """Remove what a killed writer left in ``folder`` (of the target named ``of``); returns the names.

    Only for folders that one process writes (a run folder): another writer's
    temporary in progress would go too.
    """
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    gone = []
    for name in names:
        if is_temporary(name, of):
            p = os.path.join(folder, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(p)
            gone.append(name)
    return gone


def _process_temporary_name(name, tag, pid):
    return f".{name}.{tag}-{pid}"


def _pid_alive(pid):
    """Whether process ``pid`` is running (a zombie, dead but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_dead_temporaries(path, tag="tmp"):
    """Remove the temporaries of ``path`` named for processes that are gone; returns their paths.

    Only files named as :func:`temporary` names them with ``per_process=True``
    (``.NAME.TAG-PID``, beside ``path``) whose process ``PID`` is no longer
    running are removed; this process's, a live process's, and every other file
    of the folder stay. Safe in a folder that other processes write to.
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    pattern = re.compile(re.escape(_process_temporary_name(name, tag, "")) + r"(\d+)")
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    removed = []
    for entry in names:
        m = pattern.fullmatch(entry)
        p = os.path.join(folder, entry)
        if not m or not os.path.isfile(p) or os.path.islink(p):
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            os.remove(p)
        except FileNotFoundError:  # another rerun removed it first
            continue
        removed.append(p)
    return removed


def remove_leftovers(*paths):
    """Remove what killed runs left of the outputs ``paths``; returns the removed paths.

    A run killed in any way (``kill -9`` included) leaves its temporaries beside
    its outputs under names that say so (:func:`temporary`:
    ``.XXXXXXXX.STEM.TAG.EXT`` files and ``.XXXXXXXX.NAME.TAG`` folders, and
    ``.NAME.TAG-PID`` files): those of each of ``paths`` are removed here (the
    per-process ones only where their process is gone). Call it while holding
    :func:`exclusive` on these outputs, before writing them: no live writer of
    them can then own one of these temporaries. Other files stay.
    """
    removed = []
    for path in paths:
        folder, name = os.path.split(os.path.abspath(os.fspath(path)))
        removed += [os.path.join(folder, n) for n in remove_temporaries(folder, of=name)]
        for tag in TEMPORARY_TAGS:
            removed += remove_dead_temporaries(os.path.join(folder, name), tag)
    return removed


#: A per-process temporary's name (:func:`temporary` with ``per_process=True``): ``.NAME.TAG-PID``.
_PROCESS_TEMPORARY = re.compile(r"\..+\.(?:%s)-(?P<pid>\d+)\Z" % "|".join(TEMPORARY_TAGS))


def remove_leftovers_under(folder):
    """Remove every temporary of these writers that killed runs left in the tree ``folder``; returns their paths.

    For a command that writes many outputs into one folder tree (``predict``, the
    BIDS App) and holds :func:`exclusive` on the whole folder: right after taking
    the lock, no live writer can own one of its temporaries, so every file or folder
    named as :func:`temporary` names them is a leftover (per-process ones only where
    their process is gone). Folders are walked without following links; other files stay.
    """
    removed = []
    for root, dirs, files in os.walk(os.fspath(folder)):
        for name in sorted(dirs + files):
            p = os.path.join(root, name)
            m = _PROCESS_TEMPORARY.match(name)
            if m is not None:
                pid = int(m.group("pid"))
                if pid == os.getpid() or _pid_alive(pid) or not os.path.isfile(p) or os.path.islink(p):
                    continue
            elif not is_temporary(name):
                continue
            discard(p)
            removed.append(p)
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in removed]
    return removed


def _fsync(path, folder=False):
    """Flush ``path`` (a file, or a folder's entries) to the disk."""
    try:
        fd = os.open(path, (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if folder else os.O_RDONLY)
    except OSError:
        if folder:  # folders cannot be opened on some systems (Windows): nothing to flush there
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


def _fsync_tree(root):
    for here, _, files in os.walk(root):
        for name in files:
            p = os.path.join(here, name)
            if not os.path.islink(p):
                _fsync(p)
        _fsync(here, folder=True)


def publish(tmp, path, durable=False, base_mode=None):
    """Give ``tmp`` the user's default mode and rename it to ``path`` (atomic).

    ``tempfile`` creates files with mode 0600 and folders with 0700; an output
    renamed from such a temporary would stay unreadable to the user's group,
    unlike one the user wrote directly (0644 / 0755 under umask 022).

    Args:
        tmp: the finished temporary file or folder, beside ``path``.
        path: the target; an existing file is replaced (a folder must be empty or absent).
        durable: flush the data and the rename to the disk (``fsync``).
        base_mode: the mode before the umask (default 0o666 for a file, 0o777 for a folder).
    """
    is_dir = os.path.isdir(tmp)
    if base_mode is None:
        base_mode = 0o777 if is_dir else 0o666
    os.chmod(tmp, umask_mode(base_mode))
    if durable and is_dir:
        _fsync_tree(tmp)
    elif durable:
        _fsync(tmp)
    os.replace(tmp, path)
    if durable:
        _fsync(os.path.dirname(os.path.abspath(path)), folder=True)


def move(src, dst, durable=False):
    """Rename the finished file or folder ``src`` to ``dst`` on the same file system (atomic)."""
    os.replace(src, dst)
    if durable:
        _fsync(os.path.dirname(os.path.abspath(os.fspath(dst))), folder=True)


def _close_hdf5(tmp):
    """Close HDF5 files that a failed writer left open on ``tmp`` (or inside the folder ``tmp``).

    A library that fails while writing an HDF5 file (Keras' ``save_weights`` on a full
    disk) can leave its ``h5py`` objects open, referenced by the exception's frames;
    HDF5 then flushes them again when they are freed at exit, fails, and the process
    dies with a segmentation fault. Closed here, they cannot. Only if h5py is loaded.
    """
    h5py = sys.modules.get("h5py")
    if h5py is None:
        return
    tmp = os.path.abspath(tmp)
    try:
        ids = h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)
    except Exception:  # noqa: BLE001 - best effort: h5py's own errors vary by version
        return
    for fid in ids:
        try:
            name = os.path.abspath(os.fsdecode(fid.name))
            if name == tmp or name.startswith(tmp + os.sep):
                h5py.File(fid).close()
        except Exception:  # noqa: BLE001 - the flush fails again (full disk): the ids are closed anyway
            pass


def discard(tmp):
    """Remove the temporary file or folder ``tmp`` (nothing if it is gone: published or never made)."""
    if os.path.isdir(tmp) and not os.path.islink(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def temporary(path, tag="tmp", folder=False, per_process=False):
    """A new, uniquely named, empty temporary file (or folder) beside ``path``; returns its path.

    The name is ``.XXXXXXXX.STEM.TAG.EXT`` (folders: ``.XXXXXXXX.NAME.TAG``); the
    folder of ``path`` is created if needed. The caller must :func:`publish` or
    :func:`discard` it; :func:`atomic_text`, :func:`atomic_path` and
    :func:`atomic_folder` do both.

    With ``per_process=True`` (files only) the name is ``.NAME.TAG-PID``, this
    process's id: unique among processes (one writer of ``path`` per process), and
    what a killed process left is found and removed by :func:`remove_dead_temporaries`.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if per_process:
        if folder:
            raise ValueError("per_process temporaries are files, not folders")
        if tag not in TEMPORARY_TAGS:
            raise ValueError(f"temporary tag must be one of {TEMPORARY_TAGS}, got {tag!r}")
        tmp = os.path.join(parent, _process_temporary_name(os.path.basename(path), tag, os.getpid()))
        with open(tmp, "wb"):  # this process's: a leftover of an earlier process with this id is emptied
            pass
        return tmp
    suffix = _temporary_suffix(os.path.basename(path), tag, folder)
    if folder:
        return tempfile.mkdtemp(prefix=".", suffix=suffix, dir=parent)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=suffix, dir=parent)
    os.close(fd)
    return tmp


#: errno values of "the disk is full" (full, over quota, over the file size limit).
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


#: errno values of a write that fails for want of room or of a working disk; the system's text
#: of each is looked for in the message of a library's own exception (:func:`_failed`).
WRITE_FAILURES = _NO_SPACE + (errno.EROFS, errno.EIO)


def write_failure_errno(exc):
    """The errno of :data:`WRITE_FAILURES` whose system text ``exc``'s message carries, or None.

    TensorFlow, for one, reports a failed write as its own exception
    (``ResourceExhaustedError: ...; No space left on device``), not an ``OSError``.
    """
    text = str(exc)
    return next((no for no in WRITE_FAILURES if os.strerror(no) in text), None)


def _failed(exc, path):
    """The error to raise for a writer of ``path`` that failed with ``exc``.

    A full disk becomes one ``OSError`` naming the target (libraries such as h5py
    name their temporary and carry several lines of detail), and so does a
    library's own exception (not an ``OSError``: TensorFlow's
    ``ResourceExhaustedError``) whose message carries the system's text of a
    full disk, a read-only file system or an I/O error; an ``OSError`` that
    already names what could not be written (a file written inside the block),
    Ctrl-C and anything else stay as they are.
    """
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
        return exc
    if isinstance(exc, OSError) and str(exc.strerror or "").startswith("cannot write it"):
        return exc
    no = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and no in _NO_SPACE:
        return OSError(no, f"cannot write it: {os.strerror(no)}", path)
    if not isinstance(exc, OSError):
        no = write_failure_errno(exc)
        if no is not None:
            return OSError(no, f"cannot write it: {os.strerror(no)} ({type(exc).__name__})", path)
    return exc


def write_error(exc, path):
    """``exc`` as :func:`_failed` gives it for ``path``: for writers that do not go through
    :func:`atomic_path` (raise the result ``from exc`` when it is another exception)."""
    return _failed(exc, os.fspath(path))


@contextlib.contextmanager
def _discard_on_error(tmp, path):
    """On any error in the block (``KeyboardInterrupt`` included) remove ``tmp``; a full disk
    is re-raised as one OSError naming ``path`` (:func:`_failed`)."""
    try:
        yield
    except BaseException as e:
        _close_hdf5(tmp)  # only the temporary's: a published file may be open elsewhere
        discard(tmp)
        err = _failed(e, path)
        if err is e:
            raise
        raise err from e


@contextlib.contextmanager
def atomic_text(path, newline=None, durable=False, base_mode=0o666):
    """Open ``path`` for writing text through a temporary file beside it.

    On success the file is published (:func:`publish`: the user's umask, then
    rename); on any error the temporary is removed and ``path`` is untouched.
    The folder is created if needed.

    Args:
        path: the target file.
        newline: as ``open()``'s (``""`` for the ``csv`` module).
        durable: ``fsync`` the data and the rename (results, resume points).
        base_mode: the mode before the umask (``0o777`` for an executable script).
    """
    path = os.fspath(path)
    tmp = temporary(path, "tmp", folder=False)
    with _discard_on_error(tmp, path):
        with open(tmp, "w", newline=newline) as f:
            yield f
        publish(tmp, path, durable=durable, base_mode=base_mode)


@contextlib.contextmanager
def atomic_path(path, durable=False, tag="tmp", per_process=False, skip_empty=False):
    """A temporary path beside ``path`` for a library that writes by file name; published on success.

    The temporary keeps the target's extension (Keras' ``save_weights`` wants
    ``.weights.h5``, nibabel ``.nii.gz``, matplotlib the image format's), and
    exists (empty) when the block starts: the library overwrites it. On any
    error the temporary is removed and ``path`` is untouched::

        with atomic_path("run/best.weights.h5", durable=True) as tmp:
            model.save_weights(tmp)

    Args:
        path: the target file.
        durable: ``fsync`` the data and the rename (weights, results).
        tag: the word before the extension in the temporary's name (:data:`TEMPORARY_TAGS`).
        per_process: name the temporary for this process (``.NAME.TAG-PID``, no
            extension kept), so that a rerun removes what a killed run left
            (:func:`remove_dead_temporaries`).
        skip_empty: a temporary still empty at the end is discarded, not
            published (the library decided not to write: Keras' checkpoint).

    Raises:
        OSError: naming ``path`` when the disk is full; any error of the block.
    """
    path = os.fspath(path)
    tmp = temporary(path, tag, folder=False, per_process=per_process)
    with _discard_on_error(tmp, path):
        yield tmp
        if skip_empty and not os.path.getsize(tmp):
            discard(tmp)
            return
        publish(tmp, path, durable=durable)


@contextlib.contextmanager
def atomic_folder(path, durable=False, tag="tmp"):
    """A new temporary folder beside ``path`` to fill; renamed to ``path`` on success.

    An existing folder ``path`` is removed just before the rename (a folder
    cannot be renamed over a non-empty one): callers that need the old one
    until the new one is complete name each version differently and commit a
    pointer to it (the resume points of :mod:`clci_keras.training.run_folder`).
    With ``durable=True`` every file in it is flushed before the rename. On an
    error inside the block the temporary folder is removed and ``path`` is
    untouched; on any error the temporary folder is removed.
    """
    path = os.fspath(path)
    tmp = temporary(path, tag, folder=True)
    with _discard_on_error(tmp, path):
        yield tmp
        if os.path.lexists(path):
            discard(path)
        publish(tmp, path, durable=durable)


def jsonable(obj):
    """``json``'s ``default=``: NumPy (and other array) values as Python numbers and lists, bytes as
    UTF-8 text, anything else as ``str(obj)``."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", "replace")
    return str(obj)


def json_text(obj, indent=2, sort_keys=False):
    """``obj`` as the text of a JSON file: :func:`jsonable` for what JSON lacks, a final newline.

    For files written together with others (``save_atomic``); a file on its own: :func:`write_json`.

    Args:
        indent: as ``json.dump``'s (``None``: one line, for small machine-read records).
        sort_keys: keys in sorted order (else in the order of ``obj``).
    """
    return json.dumps(obj, indent=indent, sort_keys=sort_keys, default=jsonable) + "\n"


def write_json(path, obj, indent=2, durable=False, sort_keys=False):
    """Write ``obj`` to ``path`` as :func:`json_text`, through :func:`atomic_text`.

    Args:
        indent, sort_keys: as :func:`json_text`'s.
        durable: ``fsync`` the data and the rename (results, resume points).
    """
    text = json_text(obj, indent=indent, sort_keys=sort_keys)
    with atomic_text(path, durable=durable) as f:
        f.write(text)


_REQUIRED = object()


def read_json(path, missing=_REQUIRED):
    """``path`` parsed as JSON; ``missing`` (when given) if the file does not exist.

    Raises:
        ValueError: the file is not valid JSON (one line naming it).
        FileNotFoundError: the file does not exist and no ``missing`` is given.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        if missing is _REQUIRED:
            raise
        return missing
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{os.fspath(path)}: not valid JSON ({e})") from None


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


def check_not_an_input(output, inputs, what="output"):
    """Raise a one-line ``ValueError`` naming ``output`` if it is one of ``inputs`` or lies inside one.

    Paths are compared resolved (links followed, ``os.path.realpath``), and an
    existing output is also compared by identity (``os.path.samefile``: hard
    links), so that neither a link nor another spelling lets a command write over
    what it reads. ``None`` entries of ``inputs`` are ignored.
    """
    out = os.path.realpath(os.fspath(output))
    for given in inputs:
        if given is None:
            continue
        src = os.path.realpath(os.fspath(given))
        same = out == src
        if not same and os.path.exists(out) and os.path.exists(src):
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, src)
        if same or out.startswith(src.rstrip(os.sep) + os.sep):
            where = "is" if same else "lies inside"
            shown = "" if os.fspath(given) == os.fspath(output) else f" {os.fspath(given)}"
            raise ValueError(f"{os.fspath(output)}: the {what} {where} the input{shown}"
                             + (f" (resolved: {src})" if src != os.path.abspath(os.fspath(given)) else "")
                             + f"; choose another {what}")


def walk(top, skip=None):
    """``os.walk(top)`` in sorted order, following links to folders, each folder once.

    A folder reached twice (a link loop, or two links to one folder) is walked the
    first time only, so the walk ends. ``skip(root)`` (optional) prunes a folder.
    Yields ``(root, dirs, files)`` like ``os.walk``.
    """
    seen = set()
    for root, dirs, files in os.walk(top, followlinks=True):
        dirs.sort()
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen or (skip is not None and skip(root)):
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        yield root, dirs, sorted(files)


#: Name of the lock file :func:`exclusive` keeps beside an output: ``.NAME.lock``.
LOCK_NAME = ".{}.lock"


#: Descriptors of the locks this process holds (:func:`exclusive`).
_HELD_LOCKS = set()
#: Lock file -> how many ``exclusive(..., reentrant=True)`` blocks of this process are inside its holder's.
_HELD_PATHS = {}


def _forget_inherited_locks():
    """In a forked child: close the lock descriptors inherited from the parent.

    An ``flock`` belongs to the open file, which a forked child shares: a pool
    worker that outlives a killed parent would otherwise keep the parent's
    output locked. (Executed children do not inherit them: Python opens
    descriptors close-on-exec.)
    """
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()
    _HELD_PATHS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_locks)


class OutputInUseError(OSError):
    """Another live process holds :func:`exclusive` on the same output (the message names it and the PID)."""


def _lock_owner(fd):
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 512).decode("utf-8", "replace").strip().replace("\n", ", ") or "unknown"
    except OSError:
        return "unknown"


def _lock_file(path, inside):
    """The lock file :func:`exclusive` uses for output ``path`` (absolute)."""
    path = os.path.abspath(os.fspath(path))
    if inside:
        return os.path.join(path, LOCK_NAME.format("clci-keras"))
    return os.path.join(os.path.dirname(path), LOCK_NAME.format(os.path.basename(path)))


def holds(path, inside=False):
    """Whether this process holds :func:`exclusive` on output ``path`` now."""
    return _lock_file(path, inside) in _HELD_PATHS


@contextlib.contextmanager
def exclusive(path, what="output", inside=False, reentrant=False):
    """Hold an exclusive lock on output ``path`` (a file or a folder) for the ``with`` block.

    The lock is ``flock`` on ``.NAME.lock`` beside ``path`` (with ``inside``:
    ``path/.clci-keras.lock`` in the folder ``path``; folders are created if needed, and removed
    again at the end if they are still empty), which records the
    holder's PID and command line (forked children, e.g. pool workers, do not keep
    it); the kernel releases it when the holder ends,
    however it ends (a lock file left by a killed process is reused). Take it
    before checking whether ``path`` exists, so that two runs cannot both find
    it absent. Where ``flock`` is unavailable (not POSIX), nothing is locked.

    With ``reentrant=True`` a block inside one of this process that already holds the
    lock (a command that locks its output before its start-up, then calls a library
    function that locks it again) runs without locking again; otherwise a second lock
    of the same output, even in the same process, is refused as another run's.

    Raises:
        OutputInUseError: a live process holds the lock (named, with its PID and command).
        OSError: the lock file cannot be created (the message names it).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = os.path.abspath(os.fspath(path))
    lock = _lock_file(path, inside)
    if reentrant and lock in _HELD_PATHS:
        _HELD_PATHS[lock] += 1
        try:
            yield
        finally:
            _HELD_PATHS[lock] -= 1
        return
    folder = path if inside else os.path.dirname(path)
    created = []  # the folders this lock makes, deepest first: removed again if the run left them empty
    f = folder
    while not os.path.exists(f) and os.path.dirname(f) != f:
        created.append(f)
        f = os.path.dirname(f)
    os.makedirs(folder, exist_ok=True)  # as the output's writer would
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, umask_mode(0o666))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(fd)
            os.close(fd)
            raise OutputInUseError(f"{path}: this {what} is in use by another run (process {owner}); "
                                   "wait for it to end or choose another output") from None
        try:  # the holder before us may have removed the file after we opened it: lock the current one
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _HELD_LOCKS.add(fd)
    _HELD_PATHS[lock] = 0
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n{' '.join(sys.argv)[:400]}\n".encode("utf-8", "replace"))
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock)
        _HELD_PATHS.pop(lock, None)
        _HELD_LOCKS.discard(fd)
        os.close(fd)
        for f in created:  # a run that wrote nothing leaves nothing, not even its folder
            with contextlib.suppress(OSError):
                os.rmdir(f)


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
