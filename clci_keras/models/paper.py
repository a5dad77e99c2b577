"""The paper's Tables 1 and 2: which models, which ablation switches, the published numbers.

Defined here once, beside the model registry (as keras-hub keeps a model
family's metadata in its ``*_presets.py``); everything else derives from it:

* the registry's ``ModelSpec.table`` (:func:`table_of`);
* the ablation variants' builder options (:mod:`clci_keras.models.clci_net_variants`,
  :func:`ablation_options`);
* the workflows' model lists (``clci_keras.experiments.TABLE1_MODELS`` /
  ``TABLE2_MODELS``: :data:`TABLE1_MODELS`, :data:`TABLE2_MODELS`);
* the reports (:mod:`clci_keras.reports.tables`: :data:`TABLE1`, :data:`TABLE2`,
  :data:`METRICS`, :data:`PAPER`).

Source: H. Yang et al., "CLCI-Net: Cross-Level Fusion and Context Inference
Networks for Lesion Segmentation of Chronic Stroke", MICCAI 2019
(arXiv:1907.07008), Table 1 (comparison with five methods) and Table 2
(ablation); ATLAS R1.1, 229 subjects, 5-fold cross-validation.

This module imports nothing (no Keras): the CLI and the reports read it cheaply.
"""
from __future__ import annotations

#: The paper, as cited by the model registry.
REFERENCE = "Yang et al., CLCI-Net, MICCAI 2019 (arXiv:1907.07008)"
#: What the paper's numbers were measured on, as the tables' captions say.
PAPER = "Yang et al., MICCAI 2019, ATLAS R1.1 (229 subjects), 5-fold CV"

#: The paper's metrics in table order: (key in our summaries, column title, decimals).
#: VOE and RVD in %, RVD signed.
METRICS = (("dsc", "DSC", 3), ("precision", "Precision", 3), ("recall", "Recall", 3),
           ("voe", "VOE", 1), ("rvd", "RVD", 1))

#: Table 1: (method, registered model name, published values in :data:`METRICS` order).
TABLE1 = (
    ("FCN-8s", "fcn8s", (0.337, 0.485, 0.334, 76.5, 19.6)),
    ("PSPNet", "pspnet", (0.375, 0.502, 0.361, 73.5, 13.6)),
    ("DeepLabv3+", "deeplabv3plus", (0.507, 0.586, 0.527, 62.1, 32.5)),
    ("DenseUnet", "denseunet", (0.543, 0.614, 0.553, 58.8, 25.6)),
    ("Baseline", "baseline", (0.540, 0.632, 0.544, 58.7, 31.7)),
    ("CLCI-Net", "clci_net", (0.581, 0.649, 0.581, 54.6, 25.4)),
)

#: The ablation's switches, in Table 2's column order: keyword arguments of
#: :func:`clci_keras.models.clci_net.CLCI_Net`.
SWITCHES = ("aspp", "clf", "inference")

#: Table 2 (ablation): (label, registered model name, switches in :data:`SWITCHES` order).
_ABLATION = (
    ("Baseline", "baseline", (False, False, False)),
    ("+ ASPP", "clci_aspp", (True, False, False)),
    ("+ ASPP + CLF", "clci_aspp_clf", (True, True, False)),
    ("+ ASPP + CLF + Inference (CLCI-Net)", "clci_net", (True, True, True)),
)

#: Published values by model name (Table 1's; Table 2's first and last rows are the same runs).
PUBLISHED = {model: values for _, model, values in TABLE1}

#: Table 2: (label, model name, switches, published values). The first and last
#: rows equal Table 1's Baseline and CLCI-Net rows; the intermediate rows'
#: published values are not transcribed here (None).
TABLE2 = tuple((label, model, switches, PUBLISHED.get(model)) for label, model, switches in _ABLATION)

#: The models of Table 1 and Table 2, in table order.
TABLE1_MODELS = tuple(model for _, model, _ in TABLE1)
TABLE2_MODELS = tuple(model for _, model, _, _ in TABLE2)


def ablation_options(model):
    """The :func:`~clci_keras.models.clci_net.CLCI_Net` options of Table 2's row ``model``.

    The full model (every switch on: ``CLCI_Net``'s defaults) has none, so
    that its registered options, recorded in a run's ``config.json`` as
    ``builder_options``, stay ``{}``; the others have all three switches.

    Raises:
        ValueError: ``model`` is not a row of Table 2.
    """
    for _, name, switches, _ in TABLE2:
        if name == model:
            return {} if all(switches) else dict(zip(SWITCHES, switches))
    raise ValueError(f"{model!r} is not a row of Table 2 ({', '.join(TABLE2_MODELS)})")


def table_of(model):
    """Which paper table row(s) ``model`` reproduces, e.g. ``"Table 1: FCN-8s"``; ``""`` for none."""
    label1 = {name: label for label, name, _ in TABLE1}.get(model)
    label2 = {name: label for label, name, _, _ in TABLE2}.get(model)
    if label1 and label2:
        return f"Table 1 and Table 2: {label1}"
    if label1:
        return f"Table 1: {label1}"
    if label2:  # "+ ASPP" is a step from the first row: "Baseline + ASPP"
        return f"Table 2: {TABLE2[0][0]} {label2}" if label2.startswith("+") else f"Table 2: {label2}"
    return ""
