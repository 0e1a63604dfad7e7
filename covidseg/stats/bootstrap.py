"""Patient bootstrap: how much a result would move on another test set drawn from the same population.

Images of one patient are correlated, so the patient (not the image) is the unit that is resampled:
a resample draws a test set's patients with replacement and keeps every image of each drawn patient (a
patient drawn twice counts twice). Metrics are computed from image weights (how often each image was
drawn), the same as on the resampled rows, so thousands of resamples run as a few matrix products.

Several prediction tables pool into one statistic, the mean of their metrics: one table per seed (each
seed tested on its own split, or on all K folds' pooled out-of-fold predictions) or one per job on an
external set. Tables that list the same patients are scored on one shared draw (they were tested on the
very same set); tables with other patients are resampled independently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from covidseg.models.metrics import predicted_positive
from covidseg.stats.binary import PROPORTIONS
from covidseg.stats.predictions import align, check_predictions, prob_columns
from covidseg.stats.seeds import check_confidence

MetricArg = str | Callable[[pd.DataFrame], float]
# Resamples scored at once: bounds memory to CHUNK x images per table.
CHUNK = 256
NAMED_BINARY = ("acc", "precision", "recall", "specificity", "f1", "auroc")
MEAN_OF = "mean:"  # "mean:<column>": the mean of a per-image score (segmentation_scores.csv's dice, hd95)


# ------------------------------------------------------------------------------------ weighted metrics


def _ratio(num: np.ndarray, den: np.ndarray, zero_division: float = math.nan) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.shape(num), zero_division), where=den > 0)


_RATIOS = {  # tp, fp, fn, tn -> (numerator, denominator), as covidseg.stats.binary defines them
    **PROPORTIONS,
    "f1": lambda tp, fp, fn, tn: (2 * tp, 2 * tp + fp + fn),
}


def _weighted_auroc(positive: np.ndarray, prob: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Mann-Whitney AUROC with image weights: a (positive, negative) pair counts w_pos * w_neg, ties half."""
    order = np.argsort(prob, kind="stable")
    sorted_prob, pos = prob[order], positive[order]
    pos_at = np.flatnonzero(pos)
    # Every positive's tie block in sorted order: negatives before `start` score lower, those up to `end` tie.
    start = np.searchsorted(sorted_prob, sorted_prob[pos_at], side="left")
    end = np.searchsorted(sorted_prob, sorted_prob[pos_at], side="right")

    def score(weights: np.ndarray) -> np.ndarray:
        w = weights[:, order]
        neg_w = w * ~pos
        below = np.concatenate([np.zeros((len(w), 1)), np.cumsum(neg_w, axis=1)], axis=1)
        lower, tied = below[:, start], below[:, end] - below[:, start]
        pairs = (w[:, pos_at] * (lower + 0.5 * tied)).sum(axis=1)
        return _ratio(pairs, w[:, pos_at].sum(axis=1) * neg_w.sum(axis=1))

    return score


def weighted_metric(
    metric: MetricArg, frame: pd.DataFrame, zero_division: float = 0.0
) -> Callable[[np.ndarray], np.ndarray]:
    """The metric of a prediction table under image weights: (R x images) weights -> R values.

    Names are those of ``covidseg.models.metrics.METRIC_NAMES``: binary tables (two prob_ columns) use
    ``target`` and the second prob_ column (class index 1) with ``predicted_positive``; tables with more
    classes know only ``"acc"`` (argmax); ``"mean:<column>"`` (MEAN_OF), any table: a per-image score's mean.
    A callable takes a prediction frame (resampled rows) and returns a float. ``zero_division``: precision,
    recall, specificity and F1 when they are 0/0 (0 as torchmetrics logs them; the bootstrap uses nan,
    leaving out resamples where the metric is undefined). AUROC with one class only is nan.
    """
    if callable(metric):
        return _callable_metric(metric, frame)
    if not isinstance(metric, str):
        raise TypeError(f"metric must be a name or a callable, got {type(metric).__name__}")
    if metric.startswith(MEAN_OF):
        values = frame[metric.removeprefix(MEAN_OF)].to_numpy(dtype=float)
        return lambda weights: _ratio(weights @ values, weights.sum(axis=1))
    key, cols = metric.lower(), prob_columns(frame)
    y = frame["target"].to_numpy().astype(int)
    if len(cols) == 2 and key in NAMED_BINARY:
        prob = frame[cols[1]].to_numpy(dtype=float)
        if key == "auroc":
            return _weighted_auroc(y == 1, prob)
        pred, pos = predicted_positive(prob), y == 1
        cells = np.stack([pred & pos, pred & ~pos, ~pred & pos, ~pred & ~pos], axis=1).astype(float)
        ratio = _RATIOS[key]
        return lambda weights: _ratio(*ratio(*(weights @ cells).T), zero_division)
    if len(cols) > 2 and key == "acc":
        correct = (frame[cols].to_numpy(dtype=float).argmax(axis=1) == y).astype(float)
        return lambda weights: _ratio(weights @ correct, weights.sum(axis=1))
    if len(cols) < 2:
        raise ValueError(f"Named metrics need prob_<class> columns for every class, found {cols}")
    known = list(NAMED_BINARY) if len(cols) == 2 else ["acc"]
    raise ValueError(
        f"Unknown metric {metric!r} for {len(cols)} classes; use one of {known} or pass a "
        "callable(frame) -> float"
    )


def _callable_metric(metric: Callable[[pd.DataFrame], float], frame: pd.DataFrame):
    rows = np.arange(len(frame))

    def score(weights: np.ndarray) -> np.ndarray:
        picks = (np.repeat(rows, w.astype(int)) for w in weights)
        return np.array([float(metric(frame.iloc[idx].reset_index(drop=True))) for idx in picks])

    return score


# ------------------------------------------------------------------------------------------- resampling


def resample_patients(
    tables: list[pd.DataFrame], statistic: Callable[[list[np.ndarray]], np.ndarray], n_boot: int, seed: int
) -> np.ndarray:
    """The statistic of n_boot patient resamples (module docstring: tables of the same patients share a draw).

    Args:
        tables: prediction tables with a patient_id column.
        statistic: gets one (R x images) weight matrix per table (how often each image was drawn in each of
            R resamples) and returns R values, or R rows of values (e.g. a curve on a grid).
        n_boot: resamples.
        seed: the seed of the draws.

    Returns:
        n_boot values, or n_boot rows.
    """
    codes, draw_of, patient_sets = [], [], {}
    for table in tables:
        code, patients = pd.factorize(table["patient_id"], sort=True)
        codes.append(code)
        draw_of.append(patient_sets.setdefault(tuple(patients), len(patient_sets)))
    sizes = [len(patients) for patients in patient_sets]
    rng = np.random.default_rng(seed)
    values = []
    for first in range(0, n_boot, CHUNK):
        r = min(CHUNK, n_boot - first)
        counts = []
        for n in sizes:  # how often each patient is drawn, one row per resample
            drawn = rng.integers(0, n, size=(r, n)) + n * np.arange(r)[:, None]
            counts.append(np.bincount(drawn.ravel(), minlength=r * n).reshape(r, n).astype(float))
        values.append(np.asarray(statistic([counts[d][:, c] for d, c in zip(draw_of, codes)]), dtype=float))
    return np.concatenate(values)


def _percentile(values: np.ndarray, confidence: float) -> tuple[float, float, np.ndarray]:
    valid = values[~np.isnan(values)]
    if not valid.size:
        return math.nan, math.nan, valid
    alpha = 1.0 - confidence
    low, high = np.quantile(valid, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high), valid


def _as_list(frames: pd.DataFrame | Sequence[pd.DataFrame]) -> list[pd.DataFrame]:
    listed = [frames] if isinstance(frames, pd.DataFrame) else list(frames)
    if not listed:
        raise ValueError("The bootstrap needs at least one prediction table")
    return listed


def _on_all_rows(metric: MetricArg, table: pd.DataFrame) -> float:
    """The metric on the whole table, 0/0 counted as 0 (the metrics logged during training)."""
    return float(weighted_metric(metric, table)(np.ones((1, len(table))))[0])


def _check_args(n_boot: int, confidence: float) -> None:
    check_confidence(confidence)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")


def bootstrap_patient_metric(
    frames: pd.DataFrame | Sequence[pd.DataFrame],
    metric: MetricArg,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The mean of a metric over prediction tables (one per seed, or per job), with a patient bootstrap.

    Each resample draws every table's patients with replacement (see the module docstring: one shared
    draw for tables of the same patients), recomputes each table's metric and averages over tables.
    A resample in which a metric is undefined (0/0, e.g. recall when no positive patient was drawn, or
    AUROC with one class) is left out rather than counted as 0.

    Args:
        frames: one prediction table or several (path, patient_id, target, prob_<class>...).
        metric: a name of METRIC_NAMES, or a function of a prediction table (weighted_metric).
        n_boot: resamples, at least 1.
        seed: the seed of the resamples.
        confidence: the interval's coverage, strictly between 0 and 1.

    Returns:
        ``estimate`` (that mean on the full tables), ``values`` (each table's metric), ``std`` (their
        sample std; nan for one table), ``ci_low``/``ci_high`` (percentile interval), ``n_boot``, ``n_valid``
        (resamples with the metric defined), ``n_tables``, ``n_images``, ``n_patients`` (per table).

    Raises:
        ValueError: bad `n_boot` or `confidence`, or a table lacking a column or listing an image twice.
    """
    _check_args(n_boot, confidence)
    tables = _as_list(frames)
    for i, table in enumerate(tables):
        check_predictions(table, f"table {i}")
    values = [_on_all_rows(metric, t) for t in tables]
    scorers = [weighted_metric(metric, t, zero_division=math.nan) for t in tables]
    boots = resample_patients(
        tables, lambda ws: np.mean([s(w) for s, w in zip(scorers, ws)], axis=0), n_boot, seed
    )
    low, high, valid = _percentile(boots, confidence)
    return {
        "estimate": float(np.mean(values)),
        "values": values,
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
        "ci_low": low,
        "ci_high": high,
        "n_boot": int(n_boot),
        "n_valid": int(valid.size),
        "n_tables": len(tables),
        "n_images": [len(t) for t in tables],
        "n_patients": [int(t["patient_id"].nunique()) for t in tables],
    }


def bootstrap_pooled_difference(
    pairs: Sequence[tuple[pd.DataFrame, pd.DataFrame]],
    metric: MetricArg,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Paired patient bootstrap of mean(metric(b) - metric(a)) over pairs of models (a, b) that were
    tested on the same images (e.g. raw and segmented of one seed). Within a pair both models are scored
    on the same resample; pairs are resampled as ``bootstrap_patient_metric`` resamples tables.

    Args:
        pairs: (a, b) prediction tables of the same images, e.g. one pair per seed.
        metric: a name of METRIC_NAMES, or a function of a prediction table.
        n_boot: resamples, at least 1.
        seed: the seed of the resamples.
        confidence: the interval's coverage, strictly between 0 and 1.

    Returns:
        ``observed`` (the mean difference on the full tables), ``metric_a``, ``metric_b`` (means over
        pairs), ``ci_low``/``ci_high`` (percentile interval), ``p_value`` (two-sided: 2 * min(share <= 0,
        share >= 0), capped at 1), ``n_boot``, ``n_valid``, ``n_pairs``, ``n_images``, ``n_patients`` (lists).

    Raises:
        ValueError: no pair, bad `n_boot` or `confidence`, or a pair's tables of different images.
    """
    _check_args(n_boot, confidence)
    if not pairs:
        raise ValueError("The paired bootstrap needs at least one pair of prediction tables")
    aligned = [align(a, b) for a, b in pairs]
    m_a = float(np.mean([_on_all_rows(metric, a) for a, _ in aligned]))
    m_b = float(np.mean([_on_all_rows(metric, b) for _, b in aligned]))
    undefined = math.nan
    scorers = [
        (weighted_metric(metric, a, undefined), weighted_metric(metric, b, undefined)) for a, b in aligned
    ]

    def difference(ws: list[np.ndarray]) -> np.ndarray:
        return np.mean([sb(w) - sa(w) for (sa, sb), w in zip(scorers, ws)], axis=0)

    boots = resample_patients([a for a, _ in aligned], difference, n_boot, seed)
    low, high, valid = _percentile(boots, confidence)
    if valid.size:
        p_value = min(1.0, 2.0 * min(float(np.mean(valid <= 0)), float(np.mean(valid >= 0))))
    else:
        p_value = math.nan
    return {
        "observed": m_b - m_a,
        "metric_a": m_a,
        "metric_b": m_b,
        "ci_low": low,
        "ci_high": high,
        "p_value": float(p_value),
        "n_boot": int(n_boot),
        "n_valid": int(valid.size),
        "n_pairs": len(aligned),
        "n_images": [len(a) for a, _ in aligned],
        "n_patients": [int(a["patient_id"].nunique()) for a, _ in aligned],
    }


def bootstrap_patient_difference(
    pred_a: pd.DataFrame,
    pred_b: pd.DataFrame,
    metric: MetricArg,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Patient-level paired bootstrap of metric(model b) - metric(model a) on one shared test set:
    ``bootstrap_pooled_difference`` with one pair; ``n_patients`` and ``n_images`` are plain counts.

    Args:
        pred_a: model a's predictions.
        pred_b: model b's predictions on the same images.
        metric: a name of METRIC_NAMES, or a function of a prediction table.
        n_boot: resamples, at least 1.
        seed: the seed of the resamples.
        confidence: the interval's coverage, strictly between 0 and 1.
    """
    result = bootstrap_pooled_difference([(pred_a, pred_b)], metric, n_boot, seed, confidence)
    result.update(n_patients=result["n_patients"][0], n_images=result["n_images"][0])
    del result["n_pairs"]
    return result
