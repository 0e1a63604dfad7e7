"""Seed-level statistics: how much a result moves when the same recipe is retrained.

Seeds are paired because raw and segmented runs share a seed (same split and initialisation); with
folds, the runs of one fold are paired the same way.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

ArrayLike = Sequence[float] | np.ndarray | pd.Series


def check_confidence(confidence: float) -> None:
    """Refuse a confidence level outside (0, 1).

    Raises:
        ValueError: `confidence` is not strictly between 0 and 1.
    """
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
    check_confidence(confidence)
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
    check_confidence(confidence)
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
