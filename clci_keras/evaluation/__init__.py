"""Per-patient 3D evaluation: metrics and whole-patient prediction."""
from clci_keras.evaluation.metrics import (
    ATLAS2_NAMES,
    COUNT_NAMES,
    SCORE_NAMES,
    atlas2_scores,
    lesion_counts,
    segmentation_scores,
    summarize,
)

__all__ = ["ATLAS2_NAMES", "COUNT_NAMES", "SCORE_NAMES", "atlas2_scores", "lesion_counts", "segmentation_scores", "summarize",
           "evaluate_run", "evaluate_model", "predict_subject", "evaluate_published"]


def __getattr__(name):  # the TF-dependent part is imported on first use
    if name in ("evaluate_run", "predict_subject", "evaluate_model"):
        from clci_keras.evaluation import evaluate

        return getattr(evaluate, name)
    if name == "evaluate_published":
        from clci_keras.evaluation import published

        return published.evaluate_published
    raise AttributeError(f"module 'clci_keras.evaluation' has no attribute {name!r}")
