"""Loading and exporting weights across Keras 2 and Keras 3 formats.

Formats read by :func:`load_weights`:

* **legacy weights HDF5** (``model.save_weights("w.h5")`` in Keras 2.x, the
  format the original CLCI-Net/X-Net code writes): root attribute
  ``layer_names``; one group per layer with attribute ``weight_names``.
  Layers that hold weights are matched **in topological order** (as Keras 2's
  ``load_weights(by_name=False)`` does), so layer names need not agree.
* **legacy full-model HDF5** (Keras 2 ``model.save("m.h5")``): the same layout
  inside the ``model_weights`` group.
* **Keras 3** ``.weights.h5`` and ``.keras`` archives (``model.save_weights`` /
  ``model.save`` of this package), loaded with Keras' own loader.

:func:`save_weights_legacy` writes the legacy weights layout, so that the
original Keras 2 code can load weights trained here with ``load_weights``.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
import zipfile

import h5py
import numpy as np

from clci_keras.fileio import atomic_path
from clci_keras.models.registry import build_model
from clci_keras.version import __version__


class WeightsMismatchError(ValueError):
    """Weights that cannot be loaded into a model: not a weights file, unreadable, missing, or
    of another architecture; the message names the file.

    The package's one weights error (a ``ValueError``): :func:`load_weights` raises it for a
    file that holds something else, and
    :func:`clci_keras.inference.build_inference_model` for any file in
    :data:`LOAD_ERRORS`.
    """


#: What loading weights raises when the *file* is at fault, and only that: the file system's
#: and h5py's errors (``OSError``, ``FileNotFoundError`` among them; ``KeyError`` for an entry
#: the file lacks), ``ValueError`` (:class:`WeightsMismatchError` is one) and a damaged
#: ``.keras`` zip. Callers that turn a bad file into one line catch these; anything else (a
#: ``TypeError`` in this package's code, say) is a bug and keeps its traceback.
LOAD_ERRORS = (OSError, KeyError, ValueError, zipfile.BadZipFile)


def _decode(names):
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def _layers_with_weights(model):
    return [layer for layer in _flat_layers(model) if layer.weights]


def _flat_layers(model):
    """Layers in topological order, nested models expanded (as Keras 2 saved them)."""
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and hasattr(layer, "inputs"):  # nested functional model
            out.extend(_flat_layers(layer))
        else:
            out.append(layer)
    return out


def _ordered_weights(layer):
    """Weights in Keras-2 order: trainable first, then non-trainable."""
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _keras3_layer_names(group):
    """Layer names (paths under ``layers/``) holding variables in a Keras 3 ``.weights.h5`` group."""
    names = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and name.endswith("/vars") and len(obj):
            names.append(name[: -len("/vars")])

    if "layers" in group:
        group["layers"].visititems(visit)
    return sorted(names, key=lambda n: (n.count("/"), n))


def _shorten(names, k=3):
    shown = ", ".join(repr(n) for n in names[:k])
    return shown + (", ..." if len(names) > k else "")


def describe_weights_file(path):
    """One phrase saying what a weights file holds (layer count and first names), or why it is unreadable."""
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            import json

            with zipfile.ZipFile(path) as z:
                config = json.loads(z.read("config.json")) if "config.json" in z.namelist() else {}
            cfg = config.get("config", {}) if isinstance(config, dict) else {}
            layers = [l.get("config", {}).get("name", "?") for l in cfg.get("layers", []) if isinstance(l, dict)]
            return (f"a .keras archive of model {cfg.get('name', '?')!r} ({config.get('class_name', '?')}) with "
                    f"{len(layers)} layers ({_shorten(layers)})")
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs or ("model_weights" in f and "layer_names" in f["model_weights"].attrs):
                g = f if "layer_names" in f.attrs else f["model_weights"]
                named = [n for n in _decode(g.attrs["layer_names"]) if len(g[n].attrs.get("weight_names", []))]
                return f"Keras 2 weights of {len(named)} layers with weights ({_shorten(named)})"
            names = _keras3_layer_names(f)
            if names:
                return f"Keras 3 weights of {len(names)} layers with weights ({_shorten(names)})"
            keys = sorted(f.keys())
            return f"an HDF5 file with top-level entries {_shorten(keys, 5)}" if keys else "an empty HDF5 file"
    except (OSError, ValueError, KeyError) as e:
        return f"an unreadable file ({type(e).__name__}: {' '.join(str(e).split())})"


def _expected(model):
    names = [l.name for l in _layers_with_weights(model)]
    return f"model {model.name!r} has {len(names)} layers with weights ({_shorten(names)})"


class _QuietKeras:
    """Collect Python warnings and silence absl/keras/tensorflow logging during a Keras load.

    Keras 3 prints one warning per layer it cannot match (hundreds for a file
    of another architecture) before it raises; the caller turns the outcome
    into one message.  ``self.caught`` holds the warnings.
    """

    LOGGERS = ("absl", "keras", "tensorflow", "h5py")

    def __enter__(self):
        self._warn = warnings.catch_warnings(record=True)
        self.caught = self._warn.__enter__()
        warnings.simplefilter("always")
        self._levels = {}
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc):
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._warn.__exit__(*exc)
        return False


def detect_format(path):
    """Return ``'legacy_weights'``, ``'legacy_model'``, ``'keras3_weights'`` or ``'keras_archive'``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if zipfile.is_zipfile(path):
        return "keras_archive"
    try:
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs:
                return "legacy_weights"
            if "model_weights" in f and "layer_names" in f["model_weights"].attrs:
                return "legacy_model"
            if "layers" in f or "vars" in f or "_layer_checkpoint_dependencies" in f:
                return "keras3_weights"
    except OSError as e:
        reason = " ".join(str(e).split())
        raise ValueError(f"{path}: not a readable HDF5 or .keras weights file ({reason})") from e
    raise WeightsMismatchError(
        f"{path}: not a weights file: it is {describe_weights_file(path)}; expected legacy Keras 2 HDF5 "
        "weights, Keras 3 .weights.h5 or a .keras archive"
    )


def _load_legacy_group(model, group, path):
    layer_names = _decode(group.attrs["layer_names"])
    file_layers = []
    for name in layer_names:
        g = group[name]
        weight_names = _decode(g.attrs.get("weight_names", []))
        if weight_names:
            file_layers.append((name, [np.asarray(g[w]) for w in weight_names]))
    model_layers = _layers_with_weights(model)
    counts = (f"the file holds Keras 2 weights of {len(file_layers)} layers with weights "
              f"({_shorten([n for n, _ in file_layers])}), {_expected(model)}")
    for i, (layer, (fname, arrays)) in enumerate(zip(model_layers, file_layers)):
        weights = _ordered_weights(layer)
        want = [tuple(w.shape) for w in weights]
        got = [tuple(a.shape) for a in arrays]
        if want != got:
            raise WeightsMismatchError(
                f"{path}: weights do not fit the model: layer #{i} with weights, model layer "
                f"{layer.name!r} ({type(layer).__name__}) expects shapes {want}, file layer "
                f"{fname!r} holds {got}; {counts}"
            )
    if len(model_layers) != len(file_layers):
        k = min(len(model_layers), len(file_layers))
        first = (
            f"model layer {model_layers[k].name!r} ({type(model_layers[k]).__name__}) has no "
            "counterpart in the file"
            if k < len(model_layers)
            else f"file layer {file_layers[k][0]!r} has no counterpart in the model"
        )
        raise WeightsMismatchError(
            f"{path}: weights do not fit the model: the file has {len(file_layers)} layers with "
            f"weights, model {model.name!r} has {len(model_layers)}; {first}"
        )
    for layer, (_, arrays) in zip(model_layers, file_layers):
        for var, arr in zip(_ordered_weights(layer), arrays):
            var.assign(arr.astype(var.dtype) if hasattr(var, "dtype") else arr)


def load_weights(model, path):
    """Load weights from any supported format into ``model`` (in place).

    Args:
        model: a built Keras model of the same architecture as the file.
        path: legacy Keras 2 ``.h5`` (weights or full model), Keras 3
            ``.weights.h5`` or a ``.keras`` archive.

    Returns:
        The detected format name.

    Raises:
        FileNotFoundError: no file at ``path``.
        WeightsMismatchError: (a ``ValueError``) the architecture differs; the
            message names the first layer that does not fit.
    """
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt in ("legacy_weights", "legacy_model"):
        with h5py.File(path, "r") as f:
            group = f if fmt == "legacy_weights" else f["model_weights"]
            _load_legacy_group(model, group, path)
        return fmt
    # Keras' own loaders dispatch on the file suffix.
    suffix = ".keras" if fmt == "keras_archive" else ".weights.h5"
    tmpdir = None
    src = path
    if not path.endswith(suffix):
        tmpdir = tempfile.mkdtemp(prefix="clci_weights_")
        src = os.path.join(tmpdir, "weights" + suffix)
        os.symlink(os.path.abspath(path), src)
    try:
        with _QuietKeras() as quiet:
            model.load_weights(src)
    except (ValueError, KeyError, TypeError) as e:
        first = " ".join(str(e).strip().splitlines()[0].split()) if str(e).strip() else type(e).__name__
        first = first.rstrip(":")
        if len(first) > 160:
            first = first[:157] + "..."
        raise WeightsMismatchError(
            f"{path}: weights do not fit the model: the file holds {describe_weights_file(path)}, "
            f"{_expected(model)} (Keras: {first})"
        ) from e
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    if quiet.caught:  # loaded, but Keras had something to say: keep it, once
        import warnings

        first = " ".join(str(quiet.caught[0].message).split())
        warnings.warn(f"{path}: Keras emitted {len(quiet.caught)} warning(s) while loading; first: {first}",
                      UserWarning, stacklevel=2)
    return fmt


def save_weights_legacy(model, path, keras_version="2.2.0"):
    """Write ``model``'s weights in the Keras 2 legacy HDF5 layout.

    The file is loadable by Keras 2.x ``model.load_weights(path)`` (topological
    matching) on a model built by the original code, and by :func:`load_weights`.
    ``keras_version`` is recorded as Keras 2 readers expect; the attribute
    ``written_by`` names this package. Written to a temporary file, then renamed.
    """
    path = os.fspath(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        layers = _flat_layers(model)
        f.attrs["layer_names"] = np.array([l.name.encode("utf8") for l in layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = keras_version.encode("utf8")
        f.attrs["written_by"] = f"clci_keras {__version__}".encode("utf8")
        for layer in layers:
            g = f.create_group(layer.name)
            names = []
            for var in _ordered_weights(layer):
                wname = f"{layer.name}/{var.name}:0"
                names.append(wname.encode("utf8"))
                g.create_dataset(wname, data=np.asarray(var.numpy()))
            g.attrs["weight_names"] = np.array(names, dtype="S") if names else np.array([], dtype="S1")
    return path


def build_with_weights(name, weights, input_shape=(224, 176, 1), **options):
    """Build the registered model ``name`` for ``input_shape`` and load ``weights`` into it.

    The one "build, then load" of the package (inference, evaluation, the published-weights
    preset and the experiments all use it). ``options`` go to
    :func:`clci_keras.models.build_model`. The current dtype policy applies (wrap the call in
    :func:`clci_keras.precision.precision_policy` for bf16).

    Raises:
        ValueError: unknown ``name`` (from the registry).
        WeightsMismatchError: ``weights`` is missing, unreadable or of another architecture (any
            of :data:`LOAD_ERRORS`); the message names the file and the model. Other exceptions
            are bugs and propagate unchanged.
    """
    from clci_keras.models.seeding import deferred_initializers

    if weights is None:
        raise ValueError(f"`weights` is required to build model {name!r} with weights, got weights=None")
    with deferred_initializers() as deferred:  # every weight is loaded below: skip Keras's random draws
        model = build_model(name, input_shape=tuple(input_shape), **options)
    path = os.fspath(weights)
    try:
        load_weights(model, path)
    except LOAD_ERRORS as e:  # the file's fault only; a bug in our code keeps its traceback
        msg = str(e)
        if msg.startswith(path + ": "):
            msg = msg[len(path) + 2:]
        raise WeightsMismatchError(
            f"{path}: cannot load these weights into model {name!r} ({type(e).__name__}: {msg})"
        ) from e
    unset = deferred.unset(model)
    if unset:  # a file that left weights out would leave them at the placeholder
        raise WeightsMismatchError(f"{path}: these weights leave {len(unset)} weight(s) of model {name!r} unset "
                                   f"(e.g. {unset[0]})")
    return model
