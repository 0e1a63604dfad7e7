"""Binary metrics from a prediction table's columns, in plain numpy so thousands of resamples stay cheap.

Positive class = index 1 (covid), predicted positive by ``covidseg.models.metrics.predicted_positive``
(``prob > threshold``, the rule of the torchmetrics metrics logged during training).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import stats as sps

from covidseg.models.metrics import POSITIVE_THRESHOLD, predicted_positive
from covidseg.stats.seeds import ArrayLike


def _binary_counts(
    targets: ArrayLike, prob_positive: ArrayLike, threshold: float
) -> tuple[int, int, int, int]:
    y = np.asarray(targets).ravel().astype(int)
    p = np.asarray(prob_positive, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"targets and probabilities differ in length: {y.size} vs {p.size}")
    pred = predicted_positive(p, threshold)
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))
    return tp, fp, fn, tn


def _ratio(num: int, den: int) -> float:
    # zero_division=0, as torchmetrics (used during training) and scikit-learn do by default.
    return num / den if den else 0.0


def accuracy(targets: ArrayLike, prob_positive: ArrayLike, threshold: float = POSITIVE_THRESHOLD) -> float:
    """Share of images classified correctly (nan on an empty input)."""
    tp, fp, fn, tn = _binary_counts(targets, prob_positive, threshold)
    total = tp + fp + fn + tn
    return (tp + tn) / total if total else math.nan


def precision(targets: ArrayLike, prob_positive: ArrayLike, threshold: float = POSITIVE_THRESHOLD) -> float:
    """TP / (TP + FP); 0 when nothing is predicted positive (torchmetrics' convention)."""
    tp, fp, _, _ = _binary_counts(targets, prob_positive, threshold)
    return _ratio(tp, tp + fp)


def recall(targets: ArrayLike, prob_positive: ArrayLike, threshold: float = POSITIVE_THRESHOLD) -> float:
    """Sensitivity, TP / (TP + FN); 0 when there are no positives."""
    tp, _, fn, _ = _binary_counts(targets, prob_positive, threshold)
    return _ratio(tp, tp + fn)


def specificity(targets: ArrayLike, prob_positive: ArrayLike, threshold: float = POSITIVE_THRESHOLD) -> float:
    """TN / (TN + FP); 0 when there are no negatives."""
    _, fp, _, tn = _binary_counts(targets, prob_positive, threshold)
    return _ratio(tn, tn + fp)


def f1(targets: ArrayLike, prob_positive: ArrayLike, threshold: float = POSITIVE_THRESHOLD) -> float:
    """Harmonic mean of precision and recall, 2TP / (2TP + FP + FN); 0 when that is 0/0."""
    tp, fp, fn, _ = _binary_counts(targets, prob_positive, threshold)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def auroc(targets: ArrayLike, prob_positive: ArrayLike, threshold: float = POSITIVE_THRESHOLD) -> float:
    """Area under the ROC curve by the Mann-Whitney rank formula (ties count one half).

    Threshold-free; ``threshold`` is accepted only so all helpers share one signature.
    nan when one of the two classes is absent (AUROC is undefined then).
    """
    y = np.asarray(targets).ravel().astype(int)
    p = np.asarray(prob_positive, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"targets and probabilities differ in length: {y.size} vs {p.size}")
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = sps.rankdata(p)  # average ranks for ties
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# The metrics that are a share of images (successes / trials), with what counts as a trial.
PROPORTIONS = {
    "acc": lambda tp, fp, fn, tn: (tp + tn, tp + fp + fn + tn),
    "precision": lambda tp, fp, fn, tn: (tp, tp + fp),
    "recall": lambda tp, fp, fn, tn: (tp, tp + fn),
    "specificity": lambda tp, fp, fn, tn: (tn, tn + fp),
}


def proportion_counts(
    metric: str, targets: ArrayLike, prob_positive: ArrayLike, threshold: float = POSITIVE_THRESHOLD
) -> tuple[int, int]:
    """(successes, trials) behind a proportion metric of PROPORTIONS, e.g. recall: (TP, TP + FN).

    Args:
        metric: acc, precision, recall or specificity.
        targets: 1 for the positive class, 0 otherwise.
        prob_positive: the positive-class probability of each image.
        threshold: the operating point (``predicted_positive``).
    """
    if metric not in PROPORTIONS:
        raise ValueError(f"{metric!r} is not a proportion; use one of {list(PROPORTIONS)}")
    return PROPORTIONS[metric](*_binary_counts(targets, prob_positive, threshold))


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy's ``binomtest(...).proportion_ci(method="wilson")``),
    which keeps its coverage on small sets and at 0 % or 100 %, where a percentile bootstrap collapses to a
    point; (nan, nan) without trials.

    Args:
        successes: e.g. true positives.
        trials: e.g. all positives.
        confidence: the interval's coverage.
    """
    if trials == 0:
        return math.nan, math.nan
    test = sps.binomtest(int(successes), int(trials))
    ci = test.proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


# Keyed by covidseg.models.metrics.METRIC_NAMES, the names the classifier logs (test/<name>).
BINARY_METRICS: dict[str, Callable[..., float]] = {
    "acc": accuracy,
    "precision": precision,
    "recall": recall,
    "specificity": specificity,
    "f1": f1,
    "auroc": auroc,
}
