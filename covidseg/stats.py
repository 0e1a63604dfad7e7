"""Statistics for the raw-vs-segmented report: seed-level intervals and tests, patient bootstrap, metrics.

Two sources of uncertainty are reported separately:

* across training seeds (``mean_ci``, ``paired_difference``): how much the result moves when the same
  recipe is retrained; seeds are paired because raw and segmented runs share a seed (same split and init);
* across test patients (``bootstrap_patient_difference``): how much the result would move on another
  test set drawn from the same population. Images of one patient are correlated, so the patient (not the
  image) is the unit that is resampled.

The binary metric helpers are plain numpy so that thousands of bootstrap resamples stay cheap.
Positive class = index 1 (covid), predicted positive by ``covidseg.metrics.predicted_positive``
(``prob > threshold``, the rule of the torchmetrics metrics logged during training).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from covidseg.metrics import POSITIVE_THRESHOLD, predicted_positive

ArrayLike = Sequence[float] | np.ndarray | pd.Series


# --------------------------------------------------------------------------------------------- seed-level


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def _t_interval(mean: float, std: float, n: int, confidence: float) -> tuple[float, float]:
    if n < 2 or not math.isfinite(std):
        return math.nan, math.nan
    half = float(sps.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def mean_ci(values: ArrayLike, confidence: float = 0.95) -> dict[str, float]:
    """Mean over seeds with a Student-t interval, the honest interval for a handful of seeds.

    NaNs (e.g. a run whose metric was undefined) are dropped and ``n`` counts what is left.
    With one value the sample std and the interval are undefined (nan); with none the mean is too.
    Returns ``{"n", "mean", "std", "ci_low", "ci_high"}``; ``std`` is the sample std (ddof=1).
    """
    _check_confidence(confidence)
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n >= 2 else math.nan
    low, high = _t_interval(mean, std, n, confidence)
    return {"n": n, "mean": mean, "std": std, "ci_low": low, "ci_high": high}


def paired_difference(a: ArrayLike, b: ArrayLike, confidence: float = 0.95) -> dict[str, Any]:
    """Seed-paired comparison of b against a (e.g. a = raw, b = segmented; same seed order in both).

    Pairing removes the seed-to-seed variation shared by both arms, which is why this is preferred to two
    independent intervals. Pairs with a NaN on either side are dropped.

    Returns ``n``, ``differences`` (b - a, per kept pair), ``mean_a``, ``mean_b``, ``mean_diff``,
    ``std_diff``, ``ci_low``/``ci_high`` (Student-t on the differences), ``t_stat`` and ``p_value`` of a
    two-sided paired t-test (``scipy.stats.ttest_rel``). ``p_value`` is nan with fewer than two pairs
    and 1.0 when every difference is exactly 0; differences all equal to the same non-zero value give
    t = ±inf, p = 0.
    """
    _check_confidence(confidence)
    xa = np.asarray(a, dtype=float).ravel()
    xb = np.asarray(b, dtype=float).ravel()
    if xa.shape != xb.shape:
        raise ValueError(
            f"paired_difference needs one value per seed on both sides, got {xa.size} and {xb.size}"
        )
    keep = ~(np.isnan(xa) | np.isnan(xb))
    xa, xb = xa[keep], xb[keep]
    d = xb - xa
    n = int(d.size)
    summary = mean_ci(d, confidence)
    if n < 2:
        t_stat, p_value = math.nan, math.nan
    elif np.all(d == 0):
        t_stat, p_value = 0.0, 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = sps.ttest_rel(xb, xa)
        t_stat, p_value = float(res.statistic), float(res.pvalue)
    return {
        "n": n,
        "differences": d.tolist(),
        "mean_a": float(xa.mean()) if n else math.nan,
        "mean_b": float(xb.mean()) if n else math.nan,
        "mean_diff": summary["mean"],
        "std_diff": summary["std"],
        "ci_low": summary["ci_low"],
        "ci_high": summary["ci_high"],
        "t_stat": t_stat,
        "p_value": p_value,
    }


# --------------------------------------------------------------------------------------------- metrics


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


# Keyed by covidseg.metrics.METRIC_NAMES, the names the classifier logs (test/<name>).
BINARY_METRICS: dict[str, Callable[..., float]] = {
    "acc": accuracy,
    "precision": precision,
    "recall": recall,
    "specificity": specificity,
    "f1": f1,
    "auroc": auroc,
}


# --------------------------------------------------------------------------------------------- bootstrap

MetricArg = str | Callable[[pd.DataFrame], float]


def _prob_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if str(c).startswith("prob_")]


def _align(pred_a: pd.DataFrame, pred_b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both frames ordered by path, after checking they describe the very same test images."""
    for name, frame in (("pred_a", pred_a), ("pred_b", pred_b)):
        missing = [c for c in ("path", "patient_id", "target") if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{name} lacks column(s) {missing}; expected path, label, patient_id, target, prob_<class>..."
            )
        dup = frame["path"][frame["path"].duplicated()]
        if len(dup):
            raise ValueError(f"{name} lists {len(dup)} image(s) more than once, e.g. {dup.iloc[:3].tolist()}")
    paths_a, paths_b = set(pred_a["path"]), set(pred_b["path"])
    if paths_a != paths_b:
        only_a = sorted(paths_a - paths_b)
        only_b = sorted(paths_b - paths_a)
        raise ValueError(
            "The two prediction tables do not list the same test images: "
            f"{len(only_a)} only in pred_a (e.g. {only_a[:3]}), {len(only_b)} only in pred_b (e.g. "
            f"{only_b[:3]}). "
            "Compare models evaluated on the same test split."
        )
    a = pred_a.sort_values("path", kind="stable").reset_index(drop=True)
    b = pred_b.sort_values("path", kind="stable").reset_index(drop=True)
    for col in ("target", "patient_id"):
        if not (a[col].to_numpy() == b[col].to_numpy()).all():
            bad = a["path"][a[col].to_numpy() != b[col].to_numpy()].iloc[:3].tolist()
            raise ValueError(f"The two prediction tables disagree on {col!r} for the same images, e.g. {bad}")
    if _prob_columns(a) != _prob_columns(b):
        raise ValueError(
            f"The two prediction tables have different class columns: {_prob_columns(a)} vs "
            f"{_prob_columns(b)}"
        )
    return a, b


def _array_metric(metric: str, frame: pd.DataFrame) -> Callable[[np.ndarray], float]:
    """A fast metric on row indices for a named metric; the data are pulled out of pandas once."""
    key = metric.lower()
    cols = _prob_columns(frame)
    y = frame["target"].to_numpy().astype(int)
    if len(cols) == 2 and key in BINARY_METRICS:
        fn = BINARY_METRICS[key]
        p = frame[cols[1]].to_numpy(dtype=float)  # positive class = index 1
        return lambda idx: fn(y[idx], p[idx])
    if len(cols) > 2 and key == "acc":
        pred = frame[cols].to_numpy(dtype=float).argmax(axis=1)
        return lambda idx: float(np.mean(pred[idx] == y[idx])) if len(idx) else math.nan
    if len(cols) < 2:
        raise ValueError(f"Named metrics need prob_<class> columns for every class, found {cols}")
    known = list(BINARY_METRICS) if len(cols) == 2 else ["acc"]
    raise ValueError(
        f"Unknown metric {metric!r} for {len(cols)} classes; use one of {known} or pass a "
        "callable(frame) -> float"
    )


def bootstrap_patient_difference(
    pred_a: pd.DataFrame,
    pred_b: pd.DataFrame,
    metric: MetricArg,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Patient-level bootstrap of metric(model b) - metric(model a) on one shared test set.

    Both models are scored on the same resample each time (a paired bootstrap), and whole patients are
    drawn with replacement so that correlated images of one patient never split across the resample.

    ``metric`` is a name from ``BINARY_METRICS`` (binary: uses ``target`` and the second ``prob_`` column,
    i.e. class index 1; more classes: only ``"acc"``, on the argmax) or a callable taking a
    prediction frame (same columns, resampled rows) and returning a float.

    Returns ``observed`` (difference on the full test set), ``metric_a``, ``metric_b``, ``ci_low``/``ci_high``
    (percentile interval), ``p_value`` (two-sided: 2 * min(share <= 0, share >= 0), capped at 1),
    ``n_boot``, ``n_valid`` (resamples where both metrics were defined; the rest are ignored),
    ``n_patients`` and ``n_images``.
    """
    _check_confidence(confidence)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    a, b = _align(pred_a, pred_b)

    if isinstance(metric, str):
        score_a, score_b = _array_metric(metric, a), _array_metric(metric, b)
    elif callable(metric):
        score_a = lambda idx: float(metric(a.iloc[idx].reset_index(drop=True)))  # noqa: E731
        score_b = lambda idx: float(metric(b.iloc[idx].reset_index(drop=True)))  # noqa: E731
    else:
        raise TypeError(f"metric must be a name or a callable, got {type(metric).__name__}")

    codes, patients = pd.factorize(a["patient_id"], sort=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(patients) + 1))
    groups = [order[bounds[i] : bounds[i + 1]] for i in range(len(patients))]

    all_idx = np.arange(len(a))
    m_a, m_b = score_a(all_idx), score_b(all_idx)
    observed = m_b - m_a

    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot, dtype=float)
    for i in range(n_boot):
        drawn = rng.integers(0, len(groups), size=len(groups))
        idx = np.concatenate([groups[j] for j in drawn])
        diffs[i] = score_b(idx) - score_a(idx)
    valid = diffs[~np.isnan(diffs)]

    if valid.size:
        alpha = 1.0 - confidence
        low, high = np.quantile(valid, [alpha / 2.0, 1.0 - alpha / 2.0])
        p_value = min(1.0, 2.0 * min(float(np.mean(valid <= 0)), float(np.mean(valid >= 0))))
    else:
        low = high = p_value = math.nan
    return {
        "observed": float(observed),
        "metric_a": float(m_a),
        "metric_b": float(m_b),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": float(p_value),
        "n_boot": int(n_boot),
        "n_valid": int(valid.size),
        "n_patients": len(patients),
        "n_images": len(a),
    }
