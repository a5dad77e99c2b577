"""HDF5 slice files must hold their own data: links and storage out of the file are refused.

An HDF5 file can point elsewhere: an *external link* names an object in another
file, a *virtual dataset* maps its contents from other files, and *external
storage* keeps a dataset's raw bytes in plain files. Read through any of them,
``split``, ``train`` and ``evaluate`` would use data that lies outside the file
they were given, without a word (and follow a path chosen by whoever wrote the
file). :func:`check_self_contained` refuses such a file in one line naming it and
the object, unless the user allows it explicitly: ``CLCI_KERAS_ALLOW_EXTERNAL_HDF5=1``
(:data:`ALLOW_ENV`). ``clci-keras prep`` writes none of them.

A leaf module: h5py is imported by the caller, who passes an open file.
"""
from __future__ import annotations

import os

import h5py

#: Environment variable: set to 1 to read HDF5 files whose data lie partly in other files.
ALLOW_ENV = "CLCI_KERAS_ALLOW_EXTERNAL_HDF5"


def external_allowed():
    """Whether :data:`ALLOW_ENV` allows external links, virtual datasets and external storage."""
    return os.environ.get(ALLOW_ENV, "") not in ("", "0")


def outside_references(f):
    """``[(object name, what it points to), ...]`` for every object of the open h5py file ``f``
    whose data lie outside it (external links, virtual datasets mapping other files, external
    raw storage). Links are read without being followed; each object is visited once."""
    found, seen = [], set()

    def visit(group, prefix):
        for name in group:
            full = f"{prefix}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                found.append((full, f"an external link to {link.filename}:{link.path}"))
                continue
            if isinstance(link, h5py.SoftLink):
                continue  # a path inside this file: its target is visited where it lies
            obj = group.get(name)
            if obj is None:
                continue
            if obj.id in seen:  # a second hard link to an object already visited
                continue
            seen.add(obj.id)
            if isinstance(obj, h5py.Group):
                visit(obj, full)
            elif isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    files = sorted({m.file_name for m in obj.virtual_sources() if m.file_name != "."})
                    if files:
                        found.append((full, "a virtual dataset mapping " + ", ".join(files)))
                external = obj.external
                if external:
                    found.append((full, "stored in the external files " + ", ".join(
                        sorted({os.fsdecode(e[0]) for e in external}))))

    visit(f, "")
    return found


def check_self_contained(f, path):
    """Raise a one-line ``ValueError`` naming ``path`` if the open file ``f`` reads data from other
    files (:func:`outside_references`), unless :func:`external_allowed`."""
    if external_allowed():
        return
    found = outside_references(f)
    if found:
        name, what = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ValueError(f"{os.fspath(path)}: HDF5 object {name} is {what}{more}, outside this file; refused "
                         f"(copy the data into the file, e.g. with h5repack, or set {ALLOW_ENV}=1 to read it)")
