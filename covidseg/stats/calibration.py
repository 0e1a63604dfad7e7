"""Calibration of a binary classifier's positive-class probability: Brier score, expected calibration
error (ECE) and the reliability curve they summarise.

A model can rank images well (high AUROC) and still state probabilities that are far from the observed
frequencies; a reader who acts on "p(covid) = 0.9" needs the latter. The ECE here uses equal-width bins
on [0, 1] and weights each bin by its share of images (Guo et al., 2017, "On Calibration of Modern Neural
Networks"); the Brier score is the mean squared difference between probability and outcome.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from covidseg.stats.seeds import ArrayLike

DEFAULT_BINS = 10


def _checked(targets: ArrayLike, prob_positive: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(targets).ravel().astype(float)
    p = np.asarray(prob_positive, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"targets and probabilities differ in length: {y.size} vs {p.size}")
    if y.size == 0:
        raise ValueError("no predictions to measure calibration on")
    if not np.all(np.isin(y, (0.0, 1.0))):
        raise ValueError("calibration needs binary targets (0 or 1)")
    if not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError("probabilities must lie in [0, 1] (NaN is not a probability)")
    return y, p


def brier_score(targets: ArrayLike, prob_positive: ArrayLike) -> float:
    """Mean squared difference between the positive-class probability and the outcome (0 or 1).

    Args:
        targets: 1 for the positive class, 0 otherwise.
        prob_positive: the model's probability of the positive class, one per target.

    Returns:
        0 for perfect, certain predictions; 0.25 for a constant 0.5.
    """
    y, p = _checked(targets, prob_positive)
    return float(np.mean((p - y) ** 2))


def reliability_curve(
    targets: ArrayLike, prob_positive: ArrayLike, n_bins: int = DEFAULT_BINS
) -> pd.DataFrame:
    """Observed frequency of the positive class against the mean stated probability, per probability bin.

    Args:
        targets: 1 for the positive class, 0 otherwise.
        prob_positive: the model's probability of the positive class, one per target.
        n_bins: equal-width bins on [0, 1]; a probability on an inner edge falls in the upper bin, 1.0 in
            the last.

    Returns:
        one row per non-empty bin: bin_low, bin_high, n, mean_predicted, observed (fraction positive).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y, p = _checked(targets, prob_positive)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    frame = pd.DataFrame({"bin": index, "p": p, "y": y})
    grouped = frame.groupby("bin").agg(n=("y", "size"), mean_predicted=("p", "mean"), observed=("y", "mean"))
    grouped.insert(0, "bin_high", edges[grouped.index + 1])
    grouped.insert(0, "bin_low", edges[grouped.index])
    return grouped.reset_index(drop=True)


def expected_calibration_error(
    targets: ArrayLike, prob_positive: ArrayLike, n_bins: int = DEFAULT_BINS
) -> float:
    """Share-weighted mean gap between stated probability and observed frequency over the bins of
    `reliability_curve`.

    Args:
        targets: 1 for the positive class, 0 otherwise.
        prob_positive: the model's probability of the positive class, one per target.
        n_bins: equal-width bins on [0, 1].

    Returns:
        0 for a perfectly calibrated model; at most 1.
    """
    curve = reliability_curve(targets, prob_positive, n_bins)
    weights = curve["n"] / curve["n"].sum()
    return float(np.sum(weights * (curve["mean_predicted"] - curve["observed"]).abs()))
