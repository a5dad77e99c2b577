"""``weights/manifest.json``: the list of trained weight files and their provenance.

Layout::

    {"format": 1,
     "weights": [{"name": ..., "file": ..., "sha256": ..., "bytes": ...,
                  "format": "keras2_legacy_h5", "architecture": "clci_net",
                  "builder_options": {...}, "input_shape": [224, 176, 1],
                  "num_class": 1, "training": {...}, "metrics": {...},
                  "created": "...", "clci_keras_version": "...",
                  "card": "<file>.card.json"}, ...]}

``card`` (entries written by ``clci-keras train``) names the model card beside
the weights (:mod:`clci_keras.models.card`), which holds the same provenance
plus the input the weights expect (crop, space, intensity scheme).

``file`` is relative to the manifest's folder when the weights lie inside it
(or below), absolute otherwise. Entries are keyed by ``name``; adding an
existing name replaces it (:func:`add_to_manifest`; ``register_weights`` is its
deprecated name: "register" is the model registry's and MNI152 registration's word).
"""
from __future__ import annotations

import hashlib
import os
import warnings

from clci_keras.fileio import read_json, write_json

MANIFEST_FORMAT = 1


def sha256(path, chunk=1 << 20):
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(path):
    """The manifest at ``path`` (an empty one if the file does not exist)."""
    if not os.path.exists(path):
        return {"format": MANIFEST_FORMAT, "weights": []}
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("weights"), list):
        raise ValueError(f"{path}: not a weights manifest (no 'weights' list)")
    return data


def add_to_manifest(manifest_path, weights_path, name, **fields):
    """Add (or replace) the entry ``name`` for ``weights_path``; returns the entry."""
    manifest_path = os.fspath(manifest_path)
    base = os.path.dirname(os.path.abspath(manifest_path))
    absw = os.path.abspath(weights_path)
    rel = os.path.relpath(absw, base)
    entry = {
        "name": name,
        "file": rel if not rel.startswith("..") else absw,
        "sha256": sha256(absw),
        "bytes": os.path.getsize(absw),
        **fields,
    }
    data = read_manifest(manifest_path)
    data["weights"] = [e for e in data["weights"] if e.get("name") != name] + [entry]
    write_json(manifest_path, data, durable=True)
    return entry


def register_weights(manifest_path, weights_path, name, **fields):
    """Deprecated name of :func:`add_to_manifest` (a DeprecationWarning says so)."""
    warnings.warn("register_weights is deprecated; use clci_keras.models.manifest.add_to_manifest",
                  DeprecationWarning, stacklevel=2)
    return add_to_manifest(manifest_path, weights_path, name, **fields)


def update_entry(manifest_path, name, **fields):
    """Merge ``fields`` into the entry ``name`` (dict values are merged one level deep)."""
    data = read_manifest(manifest_path)
    for e in data["weights"]:
        if e.get("name") == name:
            for k, v in fields.items():
                if isinstance(v, dict) and isinstance(e.get(k), dict):
                    e[k] = {**e[k], **v}
                else:
                    e[k] = v
            write_json(manifest_path, data, durable=True)
            return e
    raise ValueError(f"{manifest_path}: no weights entry named {name!r}")
