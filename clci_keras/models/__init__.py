"""Models: CLCI-Net, its ablation variants and the paper's comparison methods."""
from clci_keras.models.clci_net import CLCI_Net
from clci_keras.models.layers import BilinearUpsampling, SequenceConcat, hard_sigmoid_keras2
from clci_keras.models.losses import bce_dice_loss, dice_coef, dice_coef_loss
from clci_keras.models.predictor import lesion_probability, predict_slices
from clci_keras.models.registry import build_model, get_model_spec, list_models, register_model
from clci_keras.models.weights import load_weights, save_weights_legacy

__all__ = [
    "CLCI_Net",
    "BilinearUpsampling",
    "SequenceConcat",
    "hard_sigmoid_keras2",
    "bce_dice_loss",
    "dice_coef",
    "dice_coef_loss",
    "lesion_probability",
    "predict_slices",
    "build_model",
    "get_model_spec",
    "list_models",
    "register_model",
    "load_weights",
    "save_weights_legacy",
]
