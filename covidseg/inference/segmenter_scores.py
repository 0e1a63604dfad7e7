"""The segmenter's test scores per image (segmentation_scores.csv) and their means in metrics.json: overall,
per mask set, and per value of a `source` or `finding` column where the data has one.

Keys (every score a mean over the group's test images; `n` and `empty_predictions` are counts):
- `test/dice`, `test/iou`, `test/hd95`, `test/empty_predictions`: all test images.
- `test/<set>/{dice,iou,hd95,empty_predictions,n}`: the images of one mask set (its folder name).
- `test/<column>/<value>/{dice,iou,hd95,empty_predictions,n}`: for column `source` and `finding`; images
  whose set has no such column (or an empty cell) are in no group.
Dice and IoU are computed on post-processed masks; HD95 is the 95 % Hausdorff distance in pixels at the
segmenter's image_size, with an empty prediction counted as the image diagonal (models.segmenter.hausdorff95).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SCORES = ("dice", "iou", "hd95")
BREAKDOWN_COLUMNS = ("source", "finding")
# Manifest columns carried into the per-image file (those a mask set has).
CONTEXT_COLUMNS = ("set", "image", "mask", "patient_id", "view", *BREAKDOWN_COLUMNS)


def score_rows(table: pd.DataFrame, results: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per tested image: its manifest context (CONTEXT_COLUMNS it has) and its scores.

    `table` holds the test rows in loader order; `results` is Segmenter.test_results()."""
    rows = table[[c for c in CONTEXT_COLUMNS if c in table.columns]].reset_index(drop=True)
    tested = len(results["dice"])
    if tested < len(rows):  # fast_dev_run / limit_test_batches: the loader is unshuffled, so a prefix
        log.warning("Only %d of %d test images were tested (limited test batches)", tested, len(rows))
        rows = rows.iloc[:tested].copy()
    for name in (*SCORES, "empty_prediction"):
        rows[name] = results[name]
    return rows


def summarize(rows: pd.DataFrame) -> dict[str, Any]:
    """metrics.json's score keys (module docstring) from score_rows' table."""
    metrics = _means(rows, "test")
    del metrics["test/n"]  # n_test says it, as before
    for name, group in rows.groupby("set", sort=False):
        metrics.update(_means(group, f"test/{name}"))
    for column in BREAKDOWN_COLUMNS:
        if column not in rows.columns:
            continue
        values = rows[column].fillna("").astype(str)
        for value, group in rows[values != ""].groupby(values[values != ""], sort=True):
            metrics.update(_means(group, f"test/{column}/{value}"))
    return metrics


def _means(rows: pd.DataFrame, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {f"{prefix}/{s}": float(rows[s].mean()) for s in SCORES}
    out[f"{prefix}/empty_predictions"] = int(rows["empty_prediction"].sum())
    out[f"{prefix}/n"] = len(rows)
    return out
