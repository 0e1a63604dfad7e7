"""ROC and precision-recall curves of binary prediction tables on fixed grids, pooled over tables (seeds or
runs) and banded by the patient bootstrap of ``covidseg.stats.bootstrap``.

Curves of several tables are averaged vertically: each table's true-positive rate is read at the same
false-positive rates (ROC), its precision at the same recalls (PR: at the highest threshold reaching that
recall), and the values are averaged. Under
image weights (how often a resample drew each image) every threshold's counts are weighted sums, so a
thousand resampled curves are a few cumulative sums.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from covidseg.stats.bootstrap import resample_patients
from covidseg.stats.predictions import check_predictions, prob_columns
from covidseg.stats.seeds import check_confidence

GRID = np.linspace(0.0, 1.0, 101)
CURVES = ("roc", "pr")


def _cut_counts(frame: pd.DataFrame) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(R x images) weights -> weighted true and false positives (R x cuts) at every distinct threshold,
    highest first; a cut sits after each block of tied probabilities (images of one probability go
    together)."""
    columns = prob_columns(frame)
    if len(columns) != 2:
        raise ValueError(f"ROC and PR curves need binary predictions, got columns {columns}")
    prob = frame[columns[1]].to_numpy(dtype=float)
    positive = frame["target"].to_numpy().astype(int) == 1
    order = np.argsort(-prob, kind="stable")
    ends = np.flatnonzero(np.r_[prob[order][1:] != prob[order][:-1], True])
    pos = positive[order]

    def counts(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = weights[:, order]
        return np.cumsum(w * pos, axis=1)[:, ends], np.cumsum(w * ~pos, axis=1)[:, ends]

    return counts


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.broadcast_shapes(num.shape, den.shape), np.nan), where=den > 0)


def _search(rows: np.ndarray, grid: np.ndarray, side: str) -> np.ndarray:
    """np.searchsorted of `grid` in every (non-decreasing) row; a row at a time keeps memory at R x cuts."""
    return np.stack([np.searchsorted(row, grid, side) for row in rows])


def _roc(tp: np.ndarray, fp: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """True-positive rate at each false-positive rate of `grid`, the ROC points joined by straight lines
    (ties give the diagonal segment whose area counts one half, as in the AUROC)."""
    zeros = np.zeros((len(tp), 1))
    tpr = np.concatenate([zeros, _divide(tp, tp[:, -1:])], axis=1)
    fpr = np.concatenate([zeros, _divide(fp, fp[:, -1:])], axis=1)
    # The last point at or left of each grid value, and the next one to interpolate to.
    left = _search(fpr, grid, "right") - 1
    right = np.minimum(left + 1, fpr.shape[1] - 1)
    x0, x1 = np.take_along_axis(fpr, left, 1), np.take_along_axis(fpr, right, 1)
    y0, y1 = np.take_along_axis(tpr, left, 1), np.take_along_axis(tpr, right, 1)
    share = _divide(grid[None, :] - x0, x1 - x0)
    curve = np.where(x1 > x0, y0 + np.nan_to_num(share) * (y1 - y0), y0)
    curve[(tp[:, -1] == 0) | (fp[:, -1] == 0)] = np.nan  # a resample without one of the classes
    return curve


def _pr(tp: np.ndarray, fp: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Precision at the highest threshold that reaches each recall of `grid` (recall 0: the first threshold
    that calls a positive). Not the interpolated envelope, which would hide a model that ranks the negatives
    first behind a flat line at the final precision."""
    recall = _divide(tp, tp[:, -1:])
    precision = _divide(tp, tp + fp)
    first = np.minimum(_search(recall, np.maximum(grid, 1e-12), "left"), recall.shape[1] - 1)
    curve = np.take_along_axis(precision, first, 1)
    curve[tp[:, -1] == 0] = np.nan  # a resample without positives
    return curve


def curve_scorer(
    frame: pd.DataFrame, kind: str, grid: np.ndarray = GRID
) -> Callable[[np.ndarray], np.ndarray]:
    """A table's ROC ("roc") or PR ("pr") curve on `grid` under image weights: (R x images) -> (R x grid).

    Args:
        frame: a binary prediction table (target and two prob_ columns).
        kind: "roc" (true-positive rate at each false-positive rate) or "pr" (precision at each recall).
        grid: the false-positive rates or recalls, increasing in [0, 1].

    Returns:
        The scorer; a resample without positives (or, for ROC, without negatives) gives nan rows.
    """
    if kind not in CURVES:
        raise ValueError(f"Unknown curve {kind!r}; use one of {list(CURVES)}")
    check_predictions(frame)
    counts, draw = _cut_counts(frame), _roc if kind == "roc" else _pr
    return lambda weights: draw(*counts(weights), grid)


def bootstrap_curve(
    frames: Sequence[pd.DataFrame],
    kind: str,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    grid: np.ndarray = GRID,
) -> pd.DataFrame:
    """The mean ROC or PR curve of prediction tables (one per seed or run) with a pointwise patient-bootstrap
    band: each resample draws the patients (``resample_patients``), every table's curve is recomputed and
    averaged, and each grid point gets the percentile interval of those means.

    Args:
        frames: binary prediction tables (path, patient_id, target, prob_<class>...).
        kind: "roc" or "pr" (curve_scorer).
        n_boot: resamples, at least 1.
        seed: the seed of the resamples.
        confidence: the band's pointwise coverage.
        grid: where the curves are read.

    Returns:
        One row per grid value: x (false-positive rate or recall), y (the mean curve), ci_low, ci_high.
    """
    check_confidence(confidence)
    if not frames:
        raise ValueError("A curve needs at least one prediction table")
    scorers = [curve_scorer(f, kind, grid) for f in frames]
    estimate = np.mean([s(np.ones((1, len(f))))[0] for s, f in zip(scorers, frames)], axis=0)
    boots = resample_patients(
        list(frames), lambda ws: np.mean([s(w) for s, w in zip(scorers, ws)], axis=0), n_boot, seed
    )
    alpha = 1.0 - confidence
    valid = ~np.isnan(boots).all(axis=1)
    if valid.any():
        low, high = np.nanquantile(boots[valid], [alpha / 2.0, 1.0 - alpha / 2.0], axis=0)
    else:
        low = high = np.full(len(grid), np.nan)
    return pd.DataFrame({"x": grid, "y": estimate, "ci_low": low, "ci_high": high})
