"""Statistics for the raw-vs-segmented report: seed-level intervals and tests, patient bootstrap, metrics.

Two sources of uncertainty are reported separately:

* across training runs (``mean_ci``, ``paired_difference`` in ``seeds``): how much the result moves when
  the same recipe is retrained; runs are paired because raw and segmented runs share a seed (same split
  and init) and, with folds, a fold;
* across test patients (``bootstrap_patient_metric``, ``bootstrap_pooled_difference``,
  ``bootstrap_patient_difference`` in ``bootstrap``): how much the result would move on another test
  set drawn from the same population. Images of one patient are correlated, so the patient (not the
  image) is the unit that is resampled; several seeds' (or jobs') predictions pool into one interval.

Beside them: DeLong's test for paired AUROCs (``delong``), Wilson intervals for proportions (``binary``),
ROC / precision-recall curves with patient-bootstrap bands (``curves``) and calibration (``calibration``).

The binary metrics (``binary``) are plain numpy, recomputed from predictions.csv. Positive class =
index 1 (covid), predicted positive by ``covidseg.models.metrics.predicted_positive`` (``prob > threshold``,
the rule of the torchmetrics metrics logged during training).
"""

from covidseg.stats.binary import BINARY_METRICS, accuracy, auroc, f1, precision, recall, specificity
from covidseg.stats.bootstrap import (
    MetricArg,
    bootstrap_patient_difference,
    bootstrap_patient_metric,
    bootstrap_pooled_difference,
    weighted_metric,
)
from covidseg.stats.predictions import align, check_predictions, prob_columns
from covidseg.stats.seeds import ArrayLike, mean_ci, paired_difference

__all__ = [
    "BINARY_METRICS",
    "ArrayLike",
    "MetricArg",
    "accuracy",
    "align",
    "auroc",
    "bootstrap_patient_difference",
    "bootstrap_patient_metric",
    "bootstrap_pooled_difference",
    "check_predictions",
    "f1",
    "mean_ci",
    "paired_difference",
    "precision",
    "prob_columns",
    "recall",
    "specificity",
    "weighted_metric",
]
