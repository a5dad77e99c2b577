"""Every use of Keras's private API, in one place (checked with Keras 3.15.1).

Keras 3 has no public equivalent for the three items below; everything else the
project once took from Keras's private API now goes through public API (a
layer walk over ``Model.layers`` instead of ``Layer._flatten_layers``,
``fit(initial_epoch=...)`` instead of setting ``Model._initial_epoch``,
``ModelCheckpoint.on_epoch_end`` instead of overriding ``_save_model`` and
``_get_file_path``). tests/test_keras_private.py fails, naming the item, when a
Keras release removes or changes one of them; each item's docstring says what
breaks and what to do then.

A leaf module: it imports Keras (never loaded by ``import clci_keras``) and
nothing of the package.
"""
from __future__ import annotations

import contextlib
import inspect

import keras

#: Keras versions with which every item below was read and tested.
CHECKED_KERAS = "3.15.1"


@contextlib.contextmanager
def untracked():
    """Attributes set on a layer inside this block are not tracked by Keras.

    Why private: :class:`clci_keras.models.layers.BatchNormalization` keeps its
    debiasing step count in a ``keras.Variable`` that must be in
    ``layer.variables`` (so every backend updates it in a traced step) but not
    in ``layer.weights``, weight files or parameter counts. Keras tracks every
    variable assigned to a layer attribute; ``keras.src.utils.tracking.
    DotNotTrackScope`` is the only switch, and it has no public alias
    (``keras.utils`` does not export it).

    If a release removes it: weight files would gain one ``debias_step`` per
    BatchNormalization and no longer load into Keras 2's layout; keep the
    variable in a container Keras does not inspect instead.
    """
    from keras.src.utils import tracking

    with tracking.DotNotTrackScope():
        yield


def symbolic_build(model, data_batch):
    """Create ``model``'s optimizer, compiled-loss and compiled-metric variables from a batch.

    Why private: ``Trainer._symbolic_build(data_batch=...)`` is what ``fit``
    itself runs under a ``tf.distribute`` strategy; called before the first
    step without one, TensorFlow traces the training step once instead of
    twice. ``optimizer.build`` is public but the compiled loss and metrics have
    no public build. Returns False (and does nothing) when this Keras has no
    such method: it is an optimisation only, the run is the same without it.
    """
    build = getattr(model, "_symbolic_build", None)
    if build is None:
        return False
    build(data_batch=data_batch)
    return True


class FirstBatchForSymbolicBuild:
    """Mixin for a ``keras.Model`` subclass: choose the batch that ``fit`` pre-builds from.

    Why private: under a ``tf.distribute`` strategy ``fit`` calls
    ``Trainer._maybe_symbolic_build(iterator=..., data_batch=...)``, which takes
    the first element of a distributed iterator; that element is a
    ``PerReplica`` value, whose shapes Keras cannot read. The subclass defines
    :meth:`symbolic_build_batch` (public name), which returns one replica's
    batch; this mixin is the only place that overrides the private hook.

    If a release renames the hook: the override is silently not called and
    ``fit`` fails on the ``PerReplica`` batch under ``MirroredStrategy``.
    """

    def symbolic_build_batch(self, iterator, data_batch):  # pragma: no cover - overridden
        return data_batch

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            data_batch = self.symbolic_build_batch(iterator, data_batch)
        return super()._maybe_symbolic_build(iterator=None, data_batch=data_batch)


def problems():
    """What this Keras lacks of the items above, one line each (empty when all are there)."""
    out = []
    try:
        from keras.src.utils import tracking

        if not callable(getattr(tracking, "DotNotTrackScope", None)):
            raise ImportError("no DotNotTrackScope")
    except ImportError as e:
        out.append(f"untracked: keras.src.utils.tracking.DotNotTrackScope is gone ({e})")
    checked = [("_symbolic_build", ("iterator", "data_batch"))]
    if keras.backend.backend() == "tensorflow":  # the hook is TensorFlow's trainer's (tf_distribute only)
        checked.append(("_maybe_symbolic_build", ("iterator", "data_batch")))
    for name, params in checked:
        method = getattr(keras.Model, name, None)
        item = "symbolic_build" if name == "_symbolic_build" else "FirstBatchForSymbolicBuild"
        if method is None:
            out.append(f"{item}: keras.Model.{name} is gone")
            continue
        found = tuple(p for p in inspect.signature(method).parameters if p != "self")
        if found != params:
            out.append(f"{item}: keras.Model.{name} takes {found}, not {params}")
    return out
