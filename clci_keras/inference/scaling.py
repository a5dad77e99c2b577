"""Which intensity scaling the weights were trained with, and a check that a scan fits it.

The weights' training intensity scheme is read from their record, first found of:

1. ``result.json`` of the training run folder holding the weights
   (``data.intensity_scheme``, written by ``clci-keras train``);
2. a weights manifest (``manifest.json`` beside the weights or in a folder
   above, or ``weights/manifest.json`` of the working directory) whose entry
   has the same file (path or SHA-256): ``training.data.intensity_scheme``;
3. the catalogue of published weights (:mod:`clci_keras.models.catalog`),
   matched by file name (``"T1 / 100"`` is the ``r1.1`` scheme).

Without a record the R1.1 scheme (divide by 100, the original's) is assumed
and said so. ``--intensity`` / ``intensity=`` overrides all of this.

:func:`check_intensity` refuses a scan whose scaled intensities are far from
the training data's (ATLAS R1.1 / 100: bright white matter near 1): a float
image with values up to 1e6 would otherwise give a mask over most of the head.
"""
from __future__ import annotations

import os

from clci_keras.data.intensity import v2_reference
from clci_keras.fileio import read_json
from clci_keras.inference.io import InputError
from clci_keras.models.catalog import CATALOG
from clci_keras.run_layout import RESULT_FILE

#: Accepted range of the 99.5th percentile of the non-zero voxels after scaling
#: (ATLAS R1.1 / 100 and the v2 scheme put it near 1).
INTENSITY_RANGE = (0.25, 4.0)


class IntensityError(InputError):
    """A scan whose intensities do not fit the weights' training scale; the message says how to fix it."""


def _scheme_of_text(text):
    t = str(text).lower()
    if "/ 100" in t or "/100" in t or "÷100" in t or t.strip() == "r1.1":
        return "r1.1"
    if "percentile" in t or t.strip() == "v2":
        return "v2"
    return None


def _manifests_for(path):
    folder = os.path.dirname(os.path.abspath(path))
    seen = []
    for _ in range(4):
        seen.append(os.path.join(folder, "manifest.json"))
        seen.append(os.path.join(folder, "weights", "manifest.json"))
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    seen.append(os.path.abspath(os.path.join("weights", "manifest.json")))
    out = []
    for m in seen:
        if m not in out and os.path.isfile(m):
            out.append(m)
    return out


def weights_intensity(weights):
    """``(scheme, where)`` from the weights' training record, or ``(None, why)`` when there is none."""
    path = os.path.abspath(os.fspath(weights))
    base = os.path.basename(path)
    # 1. the training run folder
    result = os.path.join(os.path.dirname(path), RESULT_FILE)
    if os.path.isfile(result):
        try:
            r = read_json(result)
            if r.get("weights") in (base, path) and (r.get("data") or {}).get("intensity_scheme"):
                return r["data"]["intensity_scheme"], f"training record {result}"
        except (OSError, ValueError, AttributeError):
            pass
    # 2. manifests
    digest = None
    for manifest in _manifests_for(path):
        from clci_keras.models.manifest import read_manifest, sha256

        try:
            entries = read_manifest(manifest)["weights"]
        except (OSError, ValueError):
            continue
        for e in entries:
            f = e.get("file") or ""
            fpath = f if os.path.isabs(f) else os.path.join(os.path.dirname(manifest), f)
            same = os.path.abspath(fpath) == path
            if not same and e.get("sha256") and os.path.isfile(path) and e.get("bytes") == os.path.getsize(path):
                digest = digest or sha256(path)
                same = e["sha256"] == digest
            scheme = ((e.get("training") or {}).get("data") or {}).get("intensity_scheme")
            if same and scheme:
                return scheme, f"manifest {manifest} entry {e.get('name')!r}"
    # 3. the catalogue of published weights

    for name, e in CATALOG.items():
        if e.get("file") == base and _scheme_of_text(e.get("intensity", "")):
            return _scheme_of_text(e["intensity"]), f"catalogue entry {name!r} ({e['intensity']})"
    return None, "no training record found"


def resolve_intensity(weights, override=None):
    """The intensity scheme to use for ``weights`` (a path or a list of paths): ``(scheme, where)``.

    ``override`` wins. Weights whose records disagree raise ``ValueError``
    naming them. Without any record: ``"r1.1"``, with ``where`` saying it was assumed.
    """
    if override is not None:
        return override, "given"
    paths = [weights] if isinstance(weights, (str, os.PathLike)) else list(weights or [])
    found = {}
    for p in paths:
        scheme, where = weights_intensity(p)
        if scheme is not None:
            found[os.fspath(p)] = (scheme, where)
    schemes = {s for s, _ in found.values()}
    if len(schemes) > 1:
        raise ValueError("the weights were trained with different intensity schemes: "
                         + "; ".join(f"{p}: {s} ({w})" for p, (s, w) in found.items())
                         + "; give --intensity to choose one")
    if schemes:
        scheme = schemes.pop()
        return scheme, "; ".join(w for _, w in found.values())
    return "r1.1", "assumed (no training record found for the weights; ATLAS R1.1 scaling / 100)"


def check_intensity(scaled, scheme, name, bounds=INTENSITY_RANGE):
    """Raise :class:`IntensityError` if the scaled volume's 99.5th percentile of non-zero voxels is out of ``bounds``.

    ``scaled`` is the volume after the scheme's scaling. The v2 scheme scales
    each scan by that percentile itself, so it always passes.
    """
    if scheme not in ("r1.1",):
        return None
    ref = v2_reference(scaled)
    lo, hi = bounds
    if lo <= ref <= hi:
        return ref
    raise IntensityError(
        f"{name}: intensities are not on the scale the weights were trained with: the 99.5th percentile "
        f"of the non-zero voxels is {ref * 100:.4g} ({ref:.4g} after the r1.1 scaling / 100), where ATLAS "
        f"R1.1 training data give about 1 (accepted {lo:g}-{hi:g}); the mask would be wrong. Pass "
        "--intensity v2 (Python: intensity='v2') to scale this scan by its own 99.5th percentile, which puts "
        "white matter near 1 as R1.1's / 100 does, or rescale the image"
    )

