"""The trainer's callbacks: resume point, atomic best checkpoint, TensorBoard scalars, and how
the steps run (eagerly, or traced with the variables built beforehand).

All run on every Keras backend; none needs TensorFlow.
"""
from __future__ import annotations

import os

import keras
import numpy as np

from clci_keras import fileio
from clci_keras.models import keras_private
from clci_keras.models.layers import debias_steps, set_debias_steps
from clci_keras.models.seeding import seed_generators
from clci_keras.run_layout import STATE_FILE, WEIGHTS_FILE
from clci_keras.training import run_folder as rf

#: Callback attributes saved with the resume point (``BackupAndRestore`` keeps none).
RESUME_FIELDS = {
    "ReduceLROnPlateau": ("wait", "best", "cooldown_counter"),
    "EarlyStopping": ("wait", "best", "best_epoch", "stopped_epoch"),
    "AtomicModelCheckpoint": ("best",),
}


def _to_float(value):
    """A scalar of any backend (tensor, variable, NumPy or Python number) as a Python float."""
    return float(np.asarray(keras.ops.convert_to_numpy(value)).item())


def _finite_or_none(value):
    value = float(value)
    return value if np.isfinite(value) else None  # None: +-inf, as the callback initialised it


class ResumePoint(keras.callbacks.Callback):
    """The resume point of ``run_dir``, written at each epoch end and restored at the start.

    Each epoch's point is a complete folder ``backup/epoch_NNNN`` (weights with
    the optimiser state, the ``tracked`` callbacks' states, learning rate,
    dropout RNG states, Keras-2 BatchNormalization debiasing steps), committed
    by :func:`clci_keras.training.run_folder.commit_resume_point`. A process
    killed at any moment leaves the previous point intact
    (``keras.callbacks.BackupAndRestore`` overwrites its one weights file in
    place, so a kill during that write loses the run). A run's last epoch (the planned
    last, or early stopping's) writes no point: the run then exports and deletes its
    backup, and a kill before that redoes the epoch. Put it last, so that it
    saves the states after the other callbacks updated them, and pass
    ``fit(initial_epoch=run_folder.resume_point(run_dir)[0])``: the callback
    restores the state, ``fit`` starts at that epoch.
    """

    def __init__(self, run_dir, tracked=()):
        super().__init__()
        self.run_dir = run_dir
        self.tracked = list(tracked)

    def on_train_begin(self, logs=None):
        _, folder = rf.resume_point(self.run_dir)  # its epoch: fit(initial_epoch=...)
        if folder is None:
            return
        model = self.model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(os.path.join(folder, WEIGHTS_FILE))
            state = fileio.read_json(os.path.join(folder, STATE_FILE))
        except Exception as e:  # h5py/OSError/JSON errors: name the file
            raise rf.ResumeError(f"{folder}: cannot restore the resume point ({type(e).__name__}: {e})") from e
        for cb in self.tracked:
            for field, value in state.get(type(cb).__name__, {}).items():
                if value is not None:
                    setattr(cb, field, value)
        if "learning_rate" in state:
            model.optimizer.learning_rate = state["learning_rate"]
        gens = seed_generators(model)
        for key, value in state.get("seed_generators", {}).items():
            if key in gens:
                gens[key].state.assign(np.asarray(value, dtype=gens[key].state.dtype))
        set_debias_steps(model, state.get("bn_debias_steps", {}))

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.params.get("epochs", np.inf) or self.model.stop_training:
            return  # the run ends here
        state = {"epoch": epoch + 1}
        for cb in self.tracked:
            fields = RESUME_FIELDS.get(type(cb).__name__, ())
            state[type(cb).__name__] = {f: _finite_or_none(getattr(cb, f)) for f in fields
                                        if getattr(cb, f, None) is not None}
        state["learning_rate"] = _to_float(self.model.optimizer.learning_rate)
        state["seed_generators"] = {k: keras.ops.convert_to_numpy(g.state.value).tolist()
                                    for k, g in seed_generators(self.model).items()}
        state["bn_debias_steps"] = debias_steps(self.model)

        def write(folder):
            self.model.save_weights(os.path.join(folder, WEIGHTS_FILE))
            fileio.write_json(os.path.join(folder, STATE_FILE), state, indent=None)

        rf.commit_resume_point(self.run_dir, epoch + 1, write)


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that writes ``NAME.weights.h5`` atomically and durably.

    Keras saves to a temporary ``.XXXXXXXX.NAME.partial.weights.h5`` beside the
    target (:func:`clci_keras.fileio.temporary`), which is published
    (:func:`clci_keras.fileio.publish`: flushed, renamed to ``NAME.weights.h5``)
    once complete: a process killed while saving leaves the previous checkpoint
    intact. Temporaries a killed process left are removed when training begins.
    """

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        fileio.remove_temporaries(os.path.dirname(os.path.abspath(self.filepath)),
                                  of=os.path.basename(self.filepath))

    def __init__(self, filepath, *args, save_freq="epoch", **kwargs):
        if save_freq != "epoch":
            raise ValueError(f"AtomicModelCheckpoint saves at epoch ends only, got save_freq={save_freq!r}")
        super().__init__(filepath, *args, save_freq=save_freq, **kwargs)

    def on_epoch_end(self, epoch, logs=None):
        template, logs = self.filepath, logs or {}
        try:  # the name Keras gives the file (its placeholders filled as ModelCheckpoint fills them)
            final = template.format(epoch=epoch + 1, **logs)
        except KeyError as e:
            raise KeyError(f'Failed to format this callback filepath: "{template}". Reason: {e}') from e
        # Empty until Keras decides to save (an HDF5 or .keras file is never empty).
        with fileio.atomic_path(final, durable=True, tag="partial", skip_empty=True) as tmp:
            self.filepath = tmp.replace("{", "{{").replace("}", "}}")  # Keras formats it
            try:
                super().on_epoch_end(epoch, logs)
            finally:
                self.filepath = template


class ScalarLogs(keras.callbacks.Callback):
    """Per-epoch scalars in TensorBoard's format, on every backend.

    Writes what ``keras.callbacks.TensorBoard`` writes by default for the
    epochs (``LOG_DIR/train`` and ``LOG_DIR/validation``, tags ``epoch_loss``,
    ``epoch_dice_coef``, ``epoch_learning_rate``) through
    ``tensorboard.summary.Writer``, which needs no TensorFlow; Keras' callback
    imports TensorFlow (departure: no graph, which that callback also writes).
    """

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self._writers = {}

    def _writer(self, part):
        if part not in self._writers:
            from tensorboard.summary import Writer

            self._writers[part] = Writer(os.path.join(self.log_dir, part))
        return self._writers[part]

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            part, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            self._writer(part).add_scalar(f"epoch_{name}", _to_float(value), step=epoch)
        for w in self._writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        for w in self._writers.values():
            w.close()
        self._writers = {}


class TrainEagerly(keras.callbacks.Callback):
    """Runs the training and validation steps eagerly (no ``tf.function``): ``TrainConfig.eager``.

    Same operations, same results up to float rounding; worth it for a few steps only, where
    tracing the step costs more than running it.
    """

    def on_train_begin(self, logs=None):
        self.model.run_eagerly = True
        self.model.make_train_function(force=True)


class BuildBeforeFirstStep(keras.callbacks.Callback):
    """Creates the optimizer and the compiled metric variables before the first step.

    Without a ``tf.distribute`` strategy Keras creates them while tracing the training step,
    and TensorFlow then traces that step a second time; built beforehand, it is traced once.
    Same variables, same initial values: the run is unchanged. (Under a strategy Keras builds
    them beforehand itself.)
    """

    def on_train_begin(self, logs=None):
        model = self.model
        try:
            x = np.zeros((1, *model.input_shape[1:]), "float32")
            y = np.zeros((1, *model.output_shape[1:]), "float32")
            keras_private.symbolic_build(model, (x, y, None))  # Keras' own pre-build (used for strategies)
        except Exception:  # an optimisation only: Keras builds them when tracing
            pass
