"""clci_keras: CLCI-Net (Yang et al., MICCAI 2019) in Keras 3.

Top-level names are imported lazily so that ``import clci_keras`` (and the
command line's ``--help``) does not import TensorFlow.
"""
from clci_keras.version import __version__

_LAZY = {
    "CLCI_Net": "clci_keras.models",
    "build_model": "clci_keras.models",
    "list_models": "clci_keras.models",
    "get_model_spec": "clci_keras.models",
    "register_model": "clci_keras.models",
    "load_weights": "clci_keras.models",
    "save_weights_legacy": "clci_keras.models",
    "dice_coef": "clci_keras.models",
    "dice_coef_loss": "clci_keras.models",
    "bce_dice_loss": "clci_keras.models",
    "predict_volume": "clci_keras.inference",
    "list_weights": "clci_keras.models.catalog",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clci_keras' has no attribute {name!r}")
