"""DeLong's test for AUROCs measured on the same images (DeLong, DeLong & Clarke-Pearson, Biometrics 1988),
in the fast form of Sun & Xu (IEEE Signal Processing Letters 21(11), 2014): the structural components come
from mid-ranks, O(n log n) per model instead of the O(m x n) pairs.

An AUROC is the mean of psi(x_i, y_j) over (positive i, negative j) pairs, psi = 1 when the positive scores
higher, 1/2 on a tie. Its structural components are each positive's mean psi over the negatives (V10) and
each negative's mean over the positives (V01); the covariance of two models' AUROCs on the same images is
cov(V10) / m + cov(V01) / n. Images are the unit: DeLong assumes them independent, which images of one
patient are not (the patient bootstrap of ``covidseg.stats.bootstrap`` resamples patients instead).

No maintained Python package provides it (scikit-learn and scipy do not); the tests check it against the
O(m x n) definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from covidseg.stats.predictions import align, prob_columns
from covidseg.stats.seeds import ArrayLike, check_confidence


def _components(targets: ArrayLike, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROC per model and the structural components V10 (models x positives), V01 (models x negatives).

    probs: models x images, the positive-class probability of each model."""
    y = np.asarray(targets).ravel().astype(int)
    if probs.shape[-1] != y.size:
        raise ValueError(f"targets and probabilities differ in length: {y.size} vs {probs.shape[-1]}")
    pos, neg = probs[:, y == 1], probs[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least two images of each class, got {m} positive and {n} negative")
    # Sun & Xu, algorithm 2: a positive's rank among all images minus its rank among the positives counts
    # the negatives below it (ties one half); likewise for the negatives.
    ranks_all = sps.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (ranks_all[:, :m] - sps.rankdata(pos, axis=1)) / n
    v01 = 1.0 - (ranks_all[:, m:] - sps.rankdata(neg, axis=1)) / m
    return v10.mean(axis=1), v10, v01


def delong_covariance(targets: ArrayLike, probs: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The AUROCs of several models on the same images and DeLong's estimate of their covariance.

    Args:
        targets: 1 for the positive class, 0 otherwise, one per image.
        probs: models x images (or one model's images): each model's positive-class probability.

    Returns:
        (aurocs, covariance): k values and a k x k matrix; the diagonal is each AUROC's variance.

    Raises:
        ValueError: lengths differ, or a class has fewer than two images.
    """
    scores = np.atleast_2d(np.asarray(probs, dtype=float))
    aurocs, v10, v01 = _components(targets, scores)
    covariance = np.atleast_2d(np.cov(v10)) / v10.shape[1] + np.atleast_2d(np.cov(v01)) / v01.shape[1]
    return aurocs, covariance


def _normal_test(estimate: float, variance: float, confidence: float) -> dict[str, float]:
    """Two-sided z-test of estimate = 0 and its normal interval; a zero variance gives p 1 for a zero
    estimate (the models rank every pair alike) and p 0 otherwise."""
    se = math.sqrt(max(variance, 0.0))
    half = float(sps.norm.ppf(0.5 + confidence / 2.0)) * se
    if se > 0:
        z = estimate / se
        p_value = float(2.0 * sps.norm.sf(abs(z)))
    else:
        z = 0.0 if estimate == 0 else math.copysign(math.inf, estimate)
        p_value = 1.0 if estimate == 0 else 0.0
    return {"se": se, "z": z, "p_value": p_value, "ci_low": estimate - half, "ci_high": estimate + half}


def delong_test(
    targets: ArrayLike, prob_a: ArrayLike, prob_b: ArrayLike, confidence: float = 0.95
) -> dict[str, Any]:
    """DeLong's paired test of AUROC(b) - AUROC(a) for two models scored on the same images.

    Args:
        targets: 1 for the positive class, 0 otherwise, one per image.
        prob_a: model a's positive-class probabilities, in the order of `targets`.
        prob_b: model b's, in the same order.
        confidence: the coverage of the normal interval of the difference.

    Returns:
        ``auroc_a``, ``auroc_b``, ``difference`` (b - a), ``se``, ``z``, ``p_value`` (two-sided),
        ``ci_low``/``ci_high``, ``n_positive``, ``n_negative``.
    """
    check_confidence(confidence)
    aurocs, cov = delong_covariance(targets, np.stack([np.ravel(prob_a), np.ravel(prob_b)]).astype(float))
    contrast = np.array([-1.0, 1.0])
    difference = float(aurocs[1] - aurocs[0])
    y = np.asarray(targets).ravel().astype(int)
    return {
        "auroc_a": float(aurocs[0]),
        "auroc_b": float(aurocs[1]),
        "difference": difference,
        **_normal_test(difference, float(contrast @ cov @ contrast), confidence),
        "n_positive": int((y == 1).sum()),
        "n_negative": int((y == 0).sum()),
    }


def delong_pooled_difference(
    pairs: Sequence[tuple[pd.DataFrame, pd.DataFrame]], confidence: float = 0.95
) -> dict[str, Any]:
    """DeLong's test of the mean AUROC difference (b - a) over pairs of prediction tables, as
    ``bootstrap_pooled_difference`` pools them (one pair per seed, or per run on an external set).

    Pairs tested on the same images form one DeLong contrast over all their models (their AUROCs are
    correlated, and DeLong's covariance says how); pairs on other images (another seed's test split) are
    taken as independent, their variances added. Binary tables: target and two prob_ columns.

    Args:
        pairs: (a, b) prediction tables of the same images, e.g. one pair per seed.
        confidence: the coverage of the normal interval of the difference.

    Returns:
        ``observed`` (mean AUROC difference), ``se``, ``z``, ``p_value`` (two-sided), ``ci_low``/``ci_high``,
        ``n_pairs``.

    Raises:
        ValueError: no pair, tables that are not binary or a pair's tables of different images.
    """
    check_confidence(confidence)
    if not pairs:
        raise ValueError("DeLong's test needs at least one pair of prediction tables")
    groups: dict[tuple, list[tuple[pd.DataFrame, pd.DataFrame]]] = {}
    for a, b in pairs:
        a, b = align(a, b)
        if len(prob_columns(a)) != 2:
            raise ValueError(f"DeLong's test needs binary predictions, got columns {prob_columns(a)}")
        groups.setdefault(tuple(a["path"]), []).append((a, b))
    observed, variance = 0.0, 0.0
    for aligned in groups.values():
        reference = aligned[0][0]
        # Every table of a group is aligned on the same sorted paths, hence in one image order.
        column = prob_columns(reference)[1]
        probs = np.stack([t[column].to_numpy(dtype=float) for pair in aligned for t in pair])
        aurocs, cov = delong_covariance(reference["target"].to_numpy(), probs)
        contrast = np.tile([-1.0, 1.0], len(aligned)) / len(pairs)
        observed += float(contrast @ aurocs)
        variance += float(contrast @ cov @ contrast)
    return {"observed": observed, **_normal_test(observed, variance, confidence), "n_pairs": len(pairs)}
