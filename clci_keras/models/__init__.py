"""Models: CLCI-Net, its ablation variants and the paper's comparison methods.

The names below are imported lazily (on first use), so that importing a
submodule that needs no Keras (:mod:`clci_keras.models.paper`, the paper's
tables; :mod:`clci_keras.models.registry`) does not import Keras or TensorFlow.
"""
import importlib

_LAZY = {
    "CLCI_Net": "clci_keras.models.clci_net",
    "BilinearUpsampling": "clci_keras.models.layers",
    "SequenceConcat": "clci_keras.models.layers",
    "hard_sigmoid_keras2": "clci_keras.models.layers",
    "bce_dice_loss": "clci_keras.models.losses",
    "dice_coef": "clci_keras.models.losses",
    "dice_coef_loss": "clci_keras.models.losses",
    "lesion_probability": "clci_keras.models.predictor",
    "predict_slices": "clci_keras.models.predictor",
    "card_path": "clci_keras.models.card",
    "check_card": "clci_keras.models.card",
    "read_card": "clci_keras.models.card",
    "write_card": "clci_keras.models.card",
    "build_model": "clci_keras.models.registry",
    "get_model_spec": "clci_keras.models.registry",
    "list_models": "clci_keras.models.registry",
    "register_model": "clci_keras.models.registry",
    "draw_initial_state": "clci_keras.models.seeding",
    "build_with_weights": "clci_keras.models.weights",
    "load_weights": "clci_keras.models.weights",
    "save_weights_legacy": "clci_keras.models.weights",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clci_keras.models' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
