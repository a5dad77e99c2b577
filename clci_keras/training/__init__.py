"""Training: the CLCI-Net / X-Net protocol (Adam 1e-4, Dice loss, Keras callbacks).

TensorFlow is imported only when a function that needs it runs.
"""
from clci_keras.training.config import TrainConfig
from clci_keras.models.manifest import read_manifest, register_weights, sha256

__all__ = [
    "TrainConfig",
    "train",
    "compile_model",
    "make_strategy",
    "set_seed",
    "read_manifest",
    "register_weights",
    "sha256",
    "load_split",
]


def __getattr__(name):
    if name in ("train", "compile_model", "make_strategy", "set_seed", "load_split"):
        from clci_keras.training import trainer as _train

        return getattr(_train, name)
    raise AttributeError(f"module 'clci_keras.training' has no attribute {name!r}")
