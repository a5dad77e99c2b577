"""Training: the CLCI-Net / X-Net protocol (Adam 1e-4, Dice loss, Keras callbacks).

Importing this package imports neither TensorFlow nor Keras (``clci-keras
train --help`` reads :class:`TrainConfig` only); every other name is imported
when first used.
"""
from clci_keras.training.config import TrainConfig

_TRAINER = ("train", "compile_model", "make_strategy", "set_seed", "load_training_split")
_MANIFEST = ("read_manifest", "add_to_manifest", "sha256")
#: Old names: ``{old: new}`` (a DeprecationWarning names the new one).
_DEPRECATED = {"load_split": "load_training_split"}

__all__ = ["TrainConfig", *_TRAINER, *_MANIFEST]


def __getattr__(name):
    if name in _DEPRECATED:
        import warnings

        warnings.warn(f"clci_keras.training.{name} is deprecated; use {_DEPRECATED[name]} "
                      "(clci_keras.data.load_split reads split files)", DeprecationWarning, stacklevel=2)
        name = _DEPRECATED[name]
    if name in _TRAINER:
        from clci_keras.training import trainer

        return getattr(trainer, name)
    if name in _MANIFEST or name == "register_weights":  # register_weights: deprecated, warns when called
        from clci_keras.models import manifest

        return getattr(manifest, name)
    raise AttributeError(f"module 'clci_keras.training' has no attribute {name!r}")
