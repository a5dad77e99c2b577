"""Registry entries for CLCI-Net and its ablation variants (paper, Table 2).

One entry per row of :data:`clci_keras.models.paper.TABLE2`; the builder
options are that row's switches (:func:`~clci_keras.models.paper.ablation_options`).
"""
from clci_keras.models.clci_net import CLCI_Net
from clci_keras.models.paper import REFERENCE, TABLE2_MODELS, ablation_options
from clci_keras.models.registry import register_model

#: What each row's network is.
DESCRIPTIONS = {
    "clci_net": "CLCI-Net: CLF encoder, CLF-ASPP, ConvLSTM context inference",
    "baseline": "Baseline: CLCI-Net with ASPP, CLF and context inference off (U-Net of the same depth)",
    "clci_aspp": "Baseline + ASPP (plain ASPP: no CLF branches, no context inference)",
    "clci_aspp_clf": "Baseline + CLF-ASPP + CLF encoder (no context inference)",
}

for _name in TABLE2_MODELS:
    register_model(
        _name,
        CLCI_Net,
        options=ablation_options(_name),
        description=DESCRIPTIONS[_name],
        reference=REFERENCE,
    )
