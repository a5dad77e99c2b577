"""Per-patient 3D evaluation: metrics and whole-patient prediction."""
from clci_keras.evaluation.metrics import (
    COUNT_NAMES,
    SCORE_NAMES,
    lesion_counts,
    segmentation_scores,
    summarize,
)

__all__ = ["COUNT_NAMES", "SCORE_NAMES", "lesion_counts", "segmentation_scores", "summarize",
           "evaluate_run", "predict_subject"]


def __getattr__(name):  # the TF-dependent part is imported on first use
    if name in ("evaluate_run", "predict_subject", "evaluate_model"):
        from clci_keras.evaluation import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module 'clci_keras.evaluation' has no attribute {name!r}")
