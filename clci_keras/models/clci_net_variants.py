"""Registry entries for CLCI-Net and its ablation variants (paper, Table 2)."""
from clci_keras.models.clci_net import CLCI_Net
from clci_keras.models.registry import register_model

_REF = "Yang et al., CLCI-Net, MICCAI 2019 (arXiv:1907.07008)"

register_model(
    "clci_net",
    CLCI_Net,
    description="CLCI-Net: CLF encoder, CLF-ASPP, ConvLSTM context inference",
    reference=_REF,
    table="Table 1 and Table 2: CLCI-Net",
)
register_model(
    "baseline",
    CLCI_Net,
    options=dict(aspp=False, clf=False, inference=False),
    description="Baseline: CLCI-Net with ASPP, CLF and context inference off (U-Net of the same depth)",
    reference=_REF,
    table="Table 1 and Table 2: Baseline",
)
register_model(
    "clci_aspp",
    CLCI_Net,
    options=dict(aspp=True, clf=False, inference=False),
    description="Baseline + ASPP (plain ASPP: no CLF branches, no context inference)",
    reference=_REF,
    table="Table 2: Baseline + ASPP",
)
register_model(
    "clci_aspp_clf",
    CLCI_Net,
    options=dict(aspp=True, clf=True, inference=False),
    description="Baseline + CLF-ASPP + CLF encoder (no context inference)",
    reference=_REF,
    table="Table 2: Baseline + ASPP + CLF",
)
