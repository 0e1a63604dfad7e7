"""The project's one metric vocabulary and its one rule for calling a probability positive.

Bottom layer (imports nothing from covidseg): the classifier's torchmetrics, the statistics recomputed
from predictions.csv and the report all name metrics by ``METRIC_NAMES``, logged as ``<stage>/<name>``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRIC_NAMES = ("acc", "precision", "recall", "specificity", "f1", "auroc")
DISPLAY_NAMES = {
    "acc": "Accuracy",
    "precision": "Precision",
    "recall": "Recall",
    "specificity": "Specificity",
    "f1": "F1",
    "auroc": "AUROC",
}

# Binary tasks only: the probability of the positive class (index 1, the last of data.classes) above
# which an image is called positive. torchmetrics' binary metrics default to the same 0.5.
POSITIVE_THRESHOLD = 0.5


def predicted_positive(
    prob: float | Sequence[float] | np.ndarray, threshold: float = POSITIVE_THRESHOLD
) -> np.ndarray:
    """Boolean array: which positive-class probabilities count as a positive prediction.

    Strictly greater, as torchmetrics' binary metrics do (``preds > threshold`` in
    ``torchmetrics.functional.classification.stat_scores._binary_stat_scores_format``), so a probability of
    exactly the threshold is negative in the statistics as it is in the metrics logged during training.
    """
    return np.asarray(prob, dtype=float) > threshold
