"""Training configuration: the original protocol's values, every one overridable.

Sources of the defaults:

* CLCI-Net (repository YH0517/CLCI_Net, ``CLCI_Net.py``): ``Adam(lr=1e-4)`` and
  the Dice loss ``1 - (2Σtp + 1)/(Σt² + Σp² + 1)``.
* X-Net training script (Andrewsher/X-Net ``main.py``), the protocol CLCI-Net's
  authors share: batch 8, up to 100 epochs, ``steps_per_epoch = slices // 8``,
  validation batches of 9 whole-patient slices, best-on-``val_loss`` weight
  checkpoint, ``ReduceLROnPlateau(factor=0.2, patience=3, min_delta=1e-3)``,
  ``EarlyStopping(patience=5, min_delta=0)``, CSV log and TensorBoard, 5-fold
  cross-validation over 229 subjects in file order.
"""
from __future__ import annotations

import dataclasses

from clci_keras.data.constants import DEFAULT_CROP
from clci_keras.data.reader import INPUT_MODES, parse_slice_spec
from clci_keras.fileio import write_json
from clci_keras.models.choices import BN_UPDATES, LOSSES
from clci_keras.precision import check_precision, read_legacy_precision

STRATEGIES = ("default", "mirrored", "multiworker")
#: ``export`` values: the best weights on ``monitor``, or the last epoch's.
EXPORTS = ("best", "last")
#: ``eager`` values: traced steps, eager steps, or eager for a run of at most
#: :data:`EAGER_MAX_STEPS` training steps.
EAGER_MODES = (False, True, "auto")
#: ``eager="auto"`` runs the steps eagerly when ``epochs * steps_per_epoch`` (``steps_per_epoch``
#: given) is at most this: a few-step run, never the protocol's.
EAGER_MAX_STEPS = 4
#: The fields that say which run this is: :func:`clci_keras.training.train`'s own arguments
#: (``clci-keras train --model --h5 --split --out --fold``); every other field is a training option.
RUN_FIELDS = ("model", "h5", "split", "out_dir", "fold")


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (written to ``RUN_DIR/config.json``)."""

    model: str = "clci_net"
    h5: str = ""
    split: str = ""
    out_dir: str = ""
    fold: int | None = None
    crop: str = DEFAULT_CROP
    # optimisation (CLCI-Net)
    loss: str = "dice"
    learning_rate: float = 1e-4
    # protocol (X-Net main.py)
    batch_size: int = 8
    # slices per forward and backward pass (None: the whole batch, as the original); smaller, the
    # gradients of batch_size / micro_batch micro-batches are averaged into one Adam update per batch
    # (Keras's gradient accumulation): a step's memory falls with it, but BatchNormalization's
    # statistics and the Dice loss then come from each micro-batch (a departure: docs/training.md)
    micro_batch: int | None = None
    val_batch_size: int = 9
    epochs: int = 100
    steps_per_epoch: int | None = None  # None: training slices // batch_size
    # dry run (None: the protocol): one epoch of at most `max_steps` training steps and at most
    # `max_steps` validation batches; recorded so that such a run is never taken for a real one
    max_steps: int | None = None
    monitor: str = "val_loss"
    reduce_lr_factor: float = 0.2
    reduce_lr_patience: int = 3
    reduce_lr_min_delta: float = 1e-3
    reduce_lr_min_lr: float = 0.0
    early_stopping_patience: int = 5
    early_stopping_min_delta: float = 0.0
    # data selection (see clci_keras.data.reader)
    train_slices: str = "all"
    val_slices: str = "all"
    # input (clci_keras.data.reader.INPUT_MODES): "memory" (X-Net's global shuffle), "stream"
    # (whole-subject reads, shuffled within windows of subjects) or "auto" (memory when the subjects
    # fit `max_memory_gb`, default half the RAM); the resolved plan is fixed at the first start
    input_mode: str = "auto"
    max_memory_gb: float | None = None
    stream_buffer_subjects: int | None = None  # None: from the budget (clci_keras.data.reader.plan_input)
    # which weights are exported at the end: best on `monitor` or the last epoch
    export: str = "best"
    # BatchNorm momentum override (None keeps the architecture's 0.99)
    bn_momentum: float | None = None
    # BatchNorm moving-statistics update (clci_keras.models.choices.BN_UPDATES)
    bn_update: str = "keras2"
    init_weights: str | None = None
    # reproducibility / hardware
    seed: int = 0
    deterministic: bool = True
    strategy: str = "default"
    devices: list | None = None  # mirrored only; None = all local GPUs (or the CPU)
    # "fp32", "bf16" or "fp16" (clci_keras.precision.PRECISIONS); train() runs bf16 as fp32 on a
    # CPU that only emulates it (clci_keras.precision.resolve_precision)
    precision: str = "fp32"
    jit: bool = False
    # steps run eagerly (no tf.function; EAGER_MODES): tracing a network's training step costs
    # TensorFlow more than a few steps take, so "auto" runs a few-step run eagerly (not on JAX,
    # which compiles every operation of an eager step apart, nor under a strategy)
    eager: bool | str = False
    # logging / outputs
    tensorboard: bool = True
    verbose: str | int = "auto"
    manifest: str | None = None
    weights_name: str | None = None

    #: fields that may differ when a run is resumed
    RESUMABLE_CHANGES = ("epochs", "verbose", "tensorboard", "manifest", "out_dir", "devices", "eager")

    def validate(self):
        """Raise ``ValueError`` naming the first bad value."""
        if not self.h5:
            raise ValueError("`h5` (the HDF5 data file) is required")
        if not self.out_dir:
            raise ValueError("`out_dir` (the run folder) is required")
        if not self.split:
            raise ValueError("`split` (the split file: clci-keras split) is required")
        for name in ("batch_size", "val_batch_size", "epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {name}={v!r}")
        v = self.micro_batch
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1 or self.batch_size % v):
            raise ValueError(f"`micro_batch` must be a positive divisor of batch_size={self.batch_size}, "
                             f"got micro_batch={v!r}")
        if v is not None and v < self.batch_size and self.strategy != "default":
            raise ValueError(f"`micro_batch` runs with strategy='default' only, got strategy={self.strategy!r}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"`steps_per_epoch` must be >= 1 or None, got {self.steps_per_epoch!r}")
        if self.max_steps is not None and (isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int)
                                           or self.max_steps < 1):
            raise ValueError(f"`max_steps` must be a positive integer or None, got {self.max_steps!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}")
        check_precision(self.precision)
        if self.export not in EXPORTS:
            raise ValueError(f"`export` must be one of {EXPORTS}, got {self.export!r}")
        if self.bn_momentum is not None and not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(f"`bn_momentum` must be in [0, 1), got {self.bn_momentum!r}")
        if self.bn_update not in BN_UPDATES:
            raise ValueError(f"`bn_update` must be one of {BN_UPDATES}, got {self.bn_update!r}")
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"`input_mode` must be one of {INPUT_MODES}, got {self.input_mode!r}")
        if not (isinstance(self.eager, bool) or isinstance(self.eager, str) and self.eager in EAGER_MODES):
            raise ValueError(f"`eager` must be one of {EAGER_MODES}, got {self.eager!r}")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise ValueError(f"`max_memory_gb` must be > 0, got {self.max_memory_gb!r}")
        v = self.stream_buffer_subjects
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"`stream_buffer_subjects` must be a positive integer or None, got {v!r}")
        parse_slice_spec(self.train_slices)
        parse_slice_spec(self.val_slices)
        return self

    @property
    def micro_steps(self):
        """Forward and backward passes per batch (``batch_size / micro_batch``; 1 without micro-batches)."""
        return self.batch_size // self.micro_batch if self.micro_batch else 1

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        """The config of ``d`` (a ``config.json``'s values).

        Older files' ``mixed_precision`` (``off``, ``bf16``, ``fp16``) is read as ``precision``.
        """
        d = dict(d)
        if "mixed_precision" in d and "precision" not in d:
            d["precision"] = read_legacy_precision(d.pop("mixed_precision"))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(names)}")
        return cls(**d)

    def save(self, path):
        """Write the values as JSON to ``path`` (atomically and durably: a resume compares them)."""
        write_json(path, self.to_dict(), sort_keys=True, durable=True)

    def differences(self, other):
        """Names of fields that differ from ``other``, except the resumable ones."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in self.RESUMABLE_CHANGES and a[k] != b.get(k)]
