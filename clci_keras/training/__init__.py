"""Training: the CLCI-Net / X-Net protocol (Adam 1e-4, Dice loss, Keras callbacks).

Importing this package imports neither TensorFlow nor Keras (``clci-keras
train --help`` reads :class:`TrainConfig` only); every other name is imported
when first used.
"""
from clci_keras.training.config import TrainConfig

_TRAINER = ("train", "compile_model", "configure_batch_norm", "set_seed", "load_training_split")
_MANIFEST = ("read_manifest", "add_to_manifest", "sha256")

__all__ = ["TrainConfig", *_TRAINER, *_MANIFEST]


def __getattr__(name):
    if name in _TRAINER:
        from clci_keras.training import trainer

        return getattr(trainer, name)
    if name in _MANIFEST:
        from clci_keras.models import manifest

        return getattr(manifest, name)
    raise AttributeError(f"module 'clci_keras.training' has no attribute {name!r}")
