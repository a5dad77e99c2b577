"""Model cards: what a weights file is and what input it expects, as JSON beside the weights.

The card of ``W`` is ``W.card.json`` in the same folder (:func:`card_path`; the
whole file name is kept, so ``a.h5`` and ``a.keras`` get different cards; a
SavedModel folder ``M`` gets ``M.card.json``). Layout (``schema`` 1;
docs/model_cards.md)::

    {"schema": 1, "kind": "clci-keras model card",
     "name": ..., "description": ...,
     "weights": {"file": ..., "format": ..., "sha256": ..., "bytes": ...},
     "architecture": {"name": "clci_net", "builder_options": {...}, "num_class": 1, "params": ...},
     "input": {"shape": [224, 176, 1], "crop": "clci", "crop_window": {"rows": [5, 229], "cols": [10, 186]},
               "space": "MNI152 (ATLAS R1.1 standard MNI)", "grid": {"shape": [197, 233, 189], ...},
               "slicing": ..., "intensity": "r1.1", "intensity_rule": "T1 / 100"},
     "training": {...}, "metrics": {...}, "software": {...}, "created": ..., ...}

``architecture.name``, ``input.shape``, ``input.crop`` and ``input.intensity``
are required; the other sections are informative (``null`` or absent when
unknown). :func:`check_card` compares an input with a card: it raises
:class:`CardMismatchError` (a ``ValueError`` naming the weights and the
mismatch) where the weights cannot fit the input, and returns warnings where
they fit with a caveat. Neither this module nor a card needs Keras.
"""
from __future__ import annotations

import json
import os
import platform

from clci_keras.data.constants import ATLAS_AFFINE, ATLAS_SHAPE, CROPS, V2_SPACE
from clci_keras.data.intensity import SCHEMES
from clci_keras.data.slicing import get_crop
from clci_keras.fileio import write_json
from clci_keras.version import __version__

#: Version of the card layout; a card of a newer schema is refused (upgrade clci_keras).
CARD_SCHEMA = 1
#: Suffix appended to the weights file's (or export's) full name.
CARD_SUFFIX = ".card.json"
CARD_KIND = "clci-keras model card"

#: Intensity rule of each scheme, in words.
INTENSITY_RULES = {
    "r1.1": "T1 / 100 (the original ATLAS R1.1 generator)",
    "v2": "T1 / its 99.5th percentile of non-zero voxels, negatives set to 0",
    "none": "T1 values unchanged",
}
#: The space of the training data of each HDF5 layout (clci_keras.data: all on the ATLAS grid).
LAYOUT_SPACES = {
    "r1.1": "MNI152 (ATLAS R1.1 standard MNI)",
    "r1.2": "MNI152 (ATLAS R1.2 standard MNI)",
    "v2": V2_SPACE,
}
#: Space labels that mean a scan in its own (scanner / subject) space: refused unless registered.
NATIVE_SPACES = ("native", "orig", "t1w", "individual", "scanner", "subject")
#: Grid kinds of :class:`clci_keras.inference.Segmentation` ``grid`` that are the card's grid.
ON_GRID = ("atlas", "reoriented", "registered")


class CardMismatchError(ValueError):
    """An input the weights cannot be used on, by their card; the message names the weights."""


def card_path(weights):
    """The card's path for the weights file (or exported model) ``weights``: ``W.card.json``."""
    path = os.fspath(weights).rstrip("/" + os.sep)
    return path + CARD_SUFFIX


def atlas_grid():
    """The ATLAS MNI152 1 mm grid as a card's ``input.grid``."""
    return {"shape": list(ATLAS_SHAPE), "voxel_mm": [1.0, 1.0, 1.0], "affine": ATLAS_AFFINE.tolist(),
            "axes": "RAS"}


def crop_window(crop):
    """``{"rows": [a, b], "cols": [c, d]}`` of a crop: a name of :data:`clci_keras.data.constants.CROPS`
    or a window ``"r0:r1,c0:c1"`` (:func:`clci_keras.data.slicing.get_crop`; ValueError otherwise)."""
    rows, cols = get_crop(crop)
    return {"rows": [rows.start, rows.stop], "cols": [cols.start, cols.stop]}


def crop_name(crop):
    """A crop as a card stores it: its name, or the window ``"r0:r1,c0:c1"`` (None: the whole slice)."""
    if isinstance(crop, str) and crop in CROPS:
        return crop
    w = crop_window(crop)
    return f"{w['rows'][0]}:{w['rows'][1]},{w['cols'][0]}:{w['cols'][1]}"


def software_versions(backend=None):
    """Python, clci_keras, Keras and backend versions of this process (``backend``: name, if known)."""
    out = {"python": platform.python_version(), "clci_keras": __version__}
    try:
        import keras

        out["keras"] = keras.__version__
        backend = backend or keras.backend.backend()
    except ImportError:  # pragma: no cover - keras is a requirement
        pass
    if backend:
        out["backend"] = backend
        module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
        try:
            out["backend_version"] = __import__(module).__version__ if module else None
        except ImportError:
            out["backend_version"] = None
    return out


def make_card(*, architecture, input_shape, crop, intensity, name=None, description=None, num_class=1,
              builder_options=None, params=None, space=None, weights=None, training=None, metrics=None,
              **extra):
    """A card dict (validated); ``space`` defaults to the ATLAS R1.1 MNI152 space.

    Args:
        architecture: registered model name (:func:`clci_keras.models.list_models`).
        input_shape: ``(H, W, C)`` of the model the weights belong to.
        crop: crop window: a name of :data:`clci_keras.data.constants.CROPS`, a window
            ``"r0:r1,c0:c1"``, or None (the whole slice).
        intensity: intensity scheme of :data:`clci_keras.data.intensity.SCHEMES`.
        weights: the ``weights`` section (file, format, sha256, bytes), or None.
        training, metrics: free-form provenance sections.
        **extra: other top-level fields (``software``, ``created``, ``source``, ``export``, ...).

    Raises:
        ValueError: a required field is missing or invalid (the message echoes it).
    """
    card = {
        "schema": CARD_SCHEMA,
        "kind": CARD_KIND,
        "name": name,
        "description": description,
        "weights": weights,
        "architecture": {"name": architecture, "builder_options": dict(builder_options or {}),
                         "num_class": int(num_class), "params": params},
        "input": {
            "shape": [None if d is None else int(d) for d in input_shape],
            "crop": crop_name(crop),
            "crop_window": crop_window(crop),
            "space": space or LAYOUT_SPACES["r1.1"],
            "grid": atlas_grid(),
            "slicing": "axial slices of the RAS volume: slice z = volume[:, :, z].T, then the crop window",
            "intensity": intensity,
            "intensity_rule": INTENSITY_RULES.get(intensity),
        },
        "training": training,
        "metrics": metrics,
        **extra,
    }
    return validate_card(card, "<new card>")


def validate_card(card, where):
    """``card`` if it is a card this version reads; else ValueError naming ``where`` and the problem."""
    def bad(problem):
        return ValueError(f"{where}: not a valid model card ({problem})")

    if not isinstance(card, dict):
        raise bad(f"a JSON {type(card).__name__}, expected an object")
    schema = card.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise bad(f"'schema' must be a positive integer, got {schema!r}")
    if schema > CARD_SCHEMA:
        raise bad(f"schema {schema} is newer than this clci_keras reads ({CARD_SCHEMA}); upgrade clci_keras")
    arch, inp = card.get("architecture"), card.get("input")
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not arch["name"]:
        raise bad(f"'architecture.name' must be a model name, got {arch!r}")
    if not isinstance(inp, dict):
        raise bad(f"'input' must be an object, got {inp!r}")
    shape = inp.get("shape")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(d is None or (isinstance(d, int) and d > 0) for d in shape)):
        raise bad(f"'input.shape' must be [H, W, C], got {shape!r}")
    try:
        if not isinstance(inp.get("crop"), str):
            raise ValueError
        get_crop(inp["crop"])
    except ValueError:
        raise bad(f"'input.crop' must be one of {sorted(CROPS)} or a window 'r0:r1,c0:c1', "
                  f"got {inp.get('crop')!r}") from None
    w = crop_window(inp["crop"])
    size = [w["rows"][1] - w["rows"][0], w["cols"][1] - w["cols"][0]]
    if None not in shape[:2] and shape[:2] != size:
        raise bad(f"'input.shape' {shape} does not fit crop {inp['crop']!r} ({_size(size)})")
    if inp.get("intensity") not in SCHEMES:
        raise bad(f"'input.intensity' must be one of {list(SCHEMES)}, got {inp.get('intensity')!r}")
    return card


def write_card(weights, card):
    """Write ``card`` (validated) beside ``weights`` as :func:`card_path`, atomically; returns its path."""
    path = card_path(weights)
    validate_card(card, path)
    write_json(path, card, durable=True)
    return path


def read_card(weights_path):
    """The card beside ``weights_path`` as a dict; None when it has none.

    Raises:
        ValueError: the card exists but is not valid JSON or not a card this
            version reads (one line naming the card file).
        OSError: the card exists but cannot be read.
    """
    path = card_path(weights_path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        card = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: not a valid model card (JSON error: {e})") from None
    return validate_card(card, path)


def _size(shape):
    return "x".join("?" if d is None else str(d) for d in shape)


def check_card(card, weights, *, model=None, input_shape=None, crop=None, intensity=None, space=None,
               grid=None):
    """Compare an input with the card of ``weights``; returns warnings, raises where it cannot fit.

    Every argument but ``card`` and ``weights`` is optional: only what is given
    is checked. ``card=None`` (weights without a card) checks nothing.

    Args:
        card: from :func:`read_card` (or a catalogue card), or None.
        weights: the weights' path or name, used in the messages.
        model: registered model name the weights are loaded into.
        input_shape: ``(H, W)`` or ``(H, W, C)`` of that model's input.
        crop: crop window name the slices are cut with.
        intensity: intensity scheme the input is scaled with.
        space: the input's space: a BIDS ``space-`` label (``MNI152NLin2009aSym``),
            a native-space word of :data:`NATIVE_SPACES` (``T1w``, ``native``), or None (unknown).
        grid: how the input reaches the card's grid: ``"atlas"``, ``"reoriented"``,
            ``"registered"`` (fine), or ``"resampled"`` (warned).

    Returns:
        A list of one-line warnings (empty when the input fits the card).

    Raises:
        CardMismatchError: another architecture or channel count, or a native-space
            input that is not registered. (Another slice size is a warning: the
            networks are convolutional and run on it.)
    """
    if card is None:
        return []
    name, inp, warnings = os.fspath(weights), card["input"], []
    arch = card["architecture"]["name"]

    def refuse(problem):
        return CardMismatchError(f"{name}: {problem} (model card {card_path(name)})")

    if model is not None and model != arch:
        raise refuse(f"the weights are a {arch!r} model by their card, not {model!r}; "
                     f"use --model {arch} (Python: build_model({arch!r}))")
    if input_shape is not None:
        want, got = list(inp["shape"]), [None if d is None else int(d) for d in input_shape]
        if len(got) == 3 and None not in (got[2], want[2]) and got[2] != want[2]:
            raise refuse(f"the weights take {want[2]}-channel input, the model {got[2]}")
        if None not in got[:2] + want[:2] and got[:2] != want[:2]:  # convolutional: runs, but warn
            warnings.append(f"{name}: the weights were trained on {_size(want[:2])} slices (crop {inp['crop']!r}), "
                            f"the model takes {_size(got[:2])}: each output sees other context than in training")
    if crop is not None and crop_window(crop) != crop_window(inp["crop"]):
        warnings.append(f"{name}: trained with crop window {inp['crop']!r} {inp.get('crop_window')}, used with "
                        f"{crop!r} {crop_window(crop)}: slices are shifted against the training data")
    if intensity is not None and intensity != inp["intensity"]:
        warnings.append(f"{name}: trained on intensities scaled {inp['intensity']!r} "
                        f"({INTENSITY_RULES.get(inp['intensity'])}), input scaled {intensity!r} "
                        f"({INTENSITY_RULES.get(intensity, '?')})")
    warnings += _space_warnings(inp, name, space, grid, refuse)
    return warnings


def _space_warnings(inp, name, space, grid, refuse):
    """The space / grid part of :func:`check_card`."""
    want, out = inp.get("space") or "", []
    if space is not None:
        label = str(space)
        if label.lower() in NATIVE_SPACES and grid != "registered":
            raise refuse(f"the input is in space {label!r}; the weights expect {want} (1 mm ATLAS grid): "
                         "register it to MNI152 first (clci-keras predict --register)")
        # A card naming a template (MNI152NLin2009aSym) warns of another; a generic "MNI152 (...)" of non-MNI152.
        specific = " " not in want
        if label.lower() not in NATIVE_SPACES and label != want and (specific or not label.startswith("MNI152")):
            out.append(f"{name}: input in space {label!r}, the weights were trained in {want!r}")
    if grid is not None and grid not in ON_GRID:
        out.append(f"{name}: input not on the weights' grid ({_size(inp['grid']['shape'])} 1 mm MNI152) and "
                   f"{grid} to it without registration; the mask may be unreliable")
    return out


def describe_card(card):
    """A few human-readable lines about a card (``clci-keras weights --show``)."""
    arch, inp = card["architecture"], card["input"]
    w = card.get("weights") or {}
    lines = [f"{card.get('name') or w.get('file') or '?'}: {card.get('description') or 'model card'}"]
    lines.append(f"  architecture {arch['name']}" + (f" ({arch['params']:,} parameters)" if arch.get("params")
                                                    else "") + f", {arch.get('num_class', 1)} class(es)")
    lines.append(f"  input {_size(inp['shape'])} slices, crop {inp['crop']} {inp.get('crop_window')}")
    lines.append(f"  space {inp.get('space')}, grid {_size((inp.get('grid') or {}).get('shape') or [])}")
    lines.append(f"  intensity {inp['intensity']}: {inp.get('intensity_rule')}")
    if w:
        lines.append(f"  weights {w.get('file')} ({w.get('format')}, {w.get('bytes')} bytes, sha256 "
                     f"{w.get('sha256')})")
    for key in ("training", "metrics", "software", "export", "source"):
        if card.get(key):
            lines.append(f"  {key}: {_short_json(card[key])}")
    return "\n".join(lines)


def _short_json(obj, limit=300):
    text = json.dumps(obj, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
