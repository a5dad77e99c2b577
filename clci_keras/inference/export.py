"""Export trained weights as a standalone inference artifact: ONNX or a TensorFlow SavedModel.

:func:`export_model` builds the registered model for inference
(:func:`clci_keras.inference.build_inference_model`: float32, the exact
zero-state ConvLSTM rewrite unless ``optimize=False``), loads the weights and
calls Keras' own ``model.export`` (``format="onnx"`` or ``"tf_saved_model"``)
into a temporary beside the target, which is checked, given its card and
renamed to the target only then (:mod:`clci_keras.fileio`). One export per
output at a time (:func:`clci_keras.fileio.exclusive`, taken before TensorFlow
starts); what killed exports of the same output left is removed first. The artifact maps ``(batch, H, W, 1)`` float32
slices, cropped and intensity-scaled as the model card says, to the lesion
probabilities ``(batch, H, W, num_class)``; the batch size is free (ONNX
from the PyTorch backend: fixed to 1, Keras' limitation). A model card
(:mod:`clci_keras.models.card`) with an ``export`` section is written beside
it (``PATH.card.json``).

What each format needs (``pip install -e ".[export]"``; docs/export.md):

=============  =====================================  ====================================
format         TensorFlow backend                     JAX backend / PyTorch backend
=============  =====================================  ====================================
``onnx``       ``tf2onnx``, ``onnx``                  ``jax2onnx`` / ``onnx``, ``onnxscript``
``savedmodel`` nothing more                           ``tensorflow`` (jax2tf) / refused
=============  =====================================  ====================================

Export is for portability (ONNX Runtime, OpenVINO, TensorFlow Serving), not speed.
"""
from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging
import os
import time

import numpy as np

from clci_keras import fileio
from clci_keras.inference.scaling import weights_intensity
from clci_keras.models.card import card_path, make_card, software_versions, write_card
from clci_keras.models.manifest import sha256

#: ``--format`` names -> Keras ``model.export`` formats.
FORMATS = {"onnx": "onnx", "savedmodel": "tf_saved_model"}
#: Python modules each (format, backend) needs besides Keras and the backend.
REQUIREMENTS = {
    ("onnx", "tensorflow"): ("tf2onnx", "onnx"),
    ("onnx", "jax"): ("jax2onnx", "onnx"),
    ("onnx", "torch"): ("onnx", "onnxscript"),
    ("savedmodel", "tensorflow"): (),
    ("savedmodel", "jax"): ("tensorflow",),
}
#: Pip package of each module of :data:`REQUIREMENTS`.
PIP_NAMES = {"tf2onnx": "tf2onnx", "onnx": "onnx", "jax2onnx": "jax2onnx", "onnxscript": "onnxscript",
             "tensorflow": "tensorflow-cpu"}
#: Largest |Keras - artifact| accepted by the check of :func:`export_model`.
CHECK_ATOL = 1e-5


class ExportUnavailable(ImportError):
    """The format cannot be exported on this backend, or a package it needs is missing (says what to install)."""


def check_export_support(fmt, backend):
    """Raise :class:`ExportUnavailable` unless ``fmt`` can be exported on ``backend`` here.

    Raises:
        ValueError: an unknown format (echoes it).
        ExportUnavailable: a (format, backend) pair Keras cannot export, or missing packages.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {sorted(FORMATS)}, got {fmt!r}")
    needs = REQUIREMENTS.get((fmt, backend))
    if needs is None:
        raise ExportUnavailable(
            f"{fmt} export is not available on the {backend} backend (Keras exports a SavedModel from PyTorch "
            "only through torch_xla); run it with KERAS_BACKEND=tensorflow: the weights files are "
            "backend-neutral")
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportUnavailable(
            f"{fmt} export on the {backend} backend needs {', '.join(missing)}: pip install "
            + " ".join(PIP_NAMES[m] for m in missing) + ' (or pip install -e ".[export]")')


def export_model(weights, path, *, model=None, fmt="onnx", crop=None, optimize=True, check=True,
                 overwrite=False):
    """Export ``weights`` of the registered ``model`` to ``path`` as ``fmt``; returns a summary dict.

    Args:
        weights: weights file (any format of :func:`clci_keras.models.load_weights`).
        path: the artifact: an ``.onnx`` file, or the SavedModel folder.
        model: registered model name; default: the weights' model card's, else ``"clci_net"``.
        fmt: ``"onnx"`` or ``"savedmodel"`` (:data:`FORMATS`).
        crop: crop window (the input size); default: the card's, else ``"clci"`` (224 x 176).
        optimize: export the exact zero-state ConvLSTM rewrite (no ONNX loop, 19 % fewer FLOPs
            for CLCI-Net); ``False`` exports the model as trained, layer for layer.
        check: run a seeded batch of 2 slices through Keras and the artifact (ONNX Runtime,
            if installed; TensorFlow for a SavedModel) and refuse a difference above :data:`CHECK_ATOL`.
        overwrite: replace an existing ``path``.

    Returns:
        ``{"path", "format", "backend", "model", "crop", "input_shape", "seconds", "bytes",
        "max_abs_diff" (None when not checked), "card"}``.

    Raises:
        ValueError: unknown format or crop, bad weights, a card the model does not fit,
            an existing ``path`` without ``overwrite``, or a failed check.
        OSError: the output cannot be written (one line naming it, backend errors included);
            :class:`clci_keras.fileio.OutputInUseError`: another export writes it.
        ExportUnavailable: (an ``ImportError``) the backend cannot export ``fmt`` or a package is missing.
    """
    path, weights = os.fspath(path).rstrip("/" + os.sep), os.fspath(weights)
    if not path:
        raise ValueError("the export output path is empty")
    fileio.check_not_an_input(path, [weights], what="export output")
    fileio.check_not_an_input(card_path(path), [weights], what="export's model card")
    fileio.check_writable_folder(os.path.dirname(os.path.abspath(path)))
    # one export per output, refused at once: before TensorFlow's start-up and the model build
    with fileio.exclusive(path, what="export output"):
        fileio.remove_leftovers(path, card_path(path))  # what killed exports of it left
        return _export_locked(weights, path, model, fmt, crop, optimize, check, overwrite)


def _export_locked(weights, path, model, fmt, crop, optimize, check, overwrite):
    """:func:`export_model` while holding its output's lock."""
    import keras

    from clci_keras.inference.predict import build_inference_model, card_settings

    backend = keras.backend.backend()
    check_export_support(fmt, backend)
    if os.path.lexists(path) and not overwrite:
        raise ValueError(f"{path}: exists (pass --overwrite to replace it)")
    settings = card_settings(weights, model=model)
    net = build_inference_model(settings["model"], weights, precision="fp32", crop=crop or settings["crop"],
                                optimize=optimize)
    start = time.perf_counter()
    net(check_batch(net.input_shape[1:], n=1), training=False)  # Keras exports only models called once
    # The artifact is exported, checked and given its card while still a temporary; the card is
    # published first and the artifact last, so an artifact under its name is a checked one with
    # its card (a card alone, left by a run killed between the two, is replaced by the next run).
    writer = fileio.atomic_path(path, durable=True) if fmt == "onnx" else fileio.atomic_folder(path, durable=True)
    with writer as tmp:
        try:
            with _quiet_tf2onnx() if fmt == "onnx" else contextlib.nullcontext():
                net.export(tmp, format=FORMATS[fmt], verbose=False)
        except Exception as e:  # noqa: BLE001 - a backend's error while writing: one line naming the output
            err = _write_error(e, path)
            if err is e:
                raise
            raise err from e
        seconds = time.perf_counter() - start
        diff = _check(net, tmp, fmt) if check else None
        if diff is not None and not diff <= CHECK_ATOL:
            raise ValueError(f"{path}: the exported model differs from Keras by {diff:.3g} (> {CHECK_ATOL:g}); "
                             "do not use it (nothing was written)")
        info = {"path": os.path.abspath(path), "format": fmt, "backend": backend, "model": settings["model"],
                "crop": _crop_of(net), "input_shape": list(net.input_shape[1:]), "seconds": round(seconds, 1),
                "bytes": _size(tmp), "max_abs_diff": diff, "optimized": bool(optimize)}
        info["card"] = _write_export_card(weights, settings, info)
    return info


def _write_error(exc, path):
    """A backend's exception while writing ``path`` as one ``OSError`` naming it (``exc`` itself
    when it is a bad-model ``ValueError``, an ``ImportError`` or not a write failure).

    A full disk, a read-only file system or an I/O error in the message becomes that
    error (:func:`clci_keras.fileio.write_error`); any other TensorFlow ``OpError``
    (``ResourceExhaustedError``, ``UnknownError``... raised by its file writers)
    becomes ``PATH: cannot write it: NAME: first line of its message``.
    """
    err = fileio.write_error(exc, path)
    if err is not exc:
        return err
    tf = __import__("sys").modules.get("tensorflow")
    op_error = getattr(getattr(tf, "errors", None), "OpError", None)
    if op_error is not None and isinstance(exc, op_error):
        lines = str(getattr(exc, "message", None) or exc).strip().splitlines()
        return OSError(errno.EIO, f"cannot write it: {type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": "),
                       path)
    return exc


@contextlib.contextmanager
def _quiet_tf2onnx():
    """tf2onnx logs every optional graph rewrite it skips (with a traceback); the check judges the result."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _crop_of(net):
    from clci_keras.inference.predict import model_crop

    return model_crop(net)


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def check_batch(input_shape, n=2, seed=0):
    """The seeded float32 batch the export check feeds: ``n`` slices of ``input_shape`` in [0, 1.5)."""
    return np.random.default_rng(seed).uniform(0.0, 1.5, (n, *input_shape)).astype(np.float32)


def run_exported(path, fmt, x):
    """Outputs of the exported artifact at ``path`` for the batch ``x`` (None: no runtime installed)."""
    if fmt == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            return None
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    if importlib.util.find_spec("tensorflow") is None:
        return None
    import tensorflow as tf

    loaded = tf.saved_model.load(path)  # kept: the function needs the object's variables alive
    return loaded.serve(tf.constant(x)).numpy()


def _check(net, path, fmt):
    """max |Keras - artifact| on :func:`check_batch` (None when the artifact cannot be run here)."""
    x = check_batch(net.input_shape[1:])
    if fmt == "onnx" and net.input_shape[0] is not None:
        x = x[: net.input_shape[0]]
    got = run_exported(path, fmt, x)
    if got is None:
        return None
    want = np.asarray(net.predict(x, verbose=0, batch_size=len(x)), dtype=np.float32)
    return float(np.max(np.abs(np.asarray(got, dtype=np.float32) - want)))


def _write_export_card(weights, settings, info):
    """The weights' card (or one made from what is known) with an ``export`` section, beside the artifact."""
    import keras

    card = settings["cards"].get(weights)
    if card is None:
        scheme, where = weights_intensity(weights)
        card = make_card(architecture=info["model"], input_shape=info["input_shape"], crop=info["crop"],
                         intensity=scheme or "r1.1", description="exported without a model card of the weights",
                         intensity_source=where if scheme else "assumed (no training record of the weights)")
    export = {k: info[k] for k in ("format", "backend", "optimized", "max_abs_diff", "seconds", "bytes")}
    export.update(file=os.path.basename(info["path"]), from_weights=os.path.basename(weights),
                  weights_sha256=sha256(weights), keras_format=FORMATS[info["format"]],
                  software=software_versions(keras.backend.backend()),
                  io="float32 (batch, H, W, 1) cropped, intensity-scaled slices -> probabilities")
    return write_card(info["path"], {**card, "export": export})
