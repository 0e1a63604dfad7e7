"""Calibration and the operating point in the report: Brier score and ECE per model and test set (from the
predictions, so every sweep has them), and, where the jobs chose a threshold on validation
(metrics.json's operating_point/* and <set>/op/*, <set>/sens@spec*, <set>/spec@sens*), that threshold and
the metrics at it. Sweeps from before operating points get the calibration table only."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from covidseg.report.collect import finished, select_jobs
from covidseg.report.pooling import TestSet
from covidseg.report.tables import BOOT_SEED, fmt, is_binary, markdown_table
from covidseg.stats import bootstrap_patient_metric, prob_columns
from covidseg.stats.binary import proportion_counts, wilson_interval
from covidseg.stats.calibration import expected_calibration_error

THRESHOLD_KEY, RULE_KEY = "operating_point/threshold", "operating_point/rule"
# Per test set (after its prefix): the metrics at the chosen threshold, then those read off the ROC curve.
AT_THRESHOLD = {"op/recall": "Sensitivity", "op/specificity": "Specificity", "op/precision": "Precision"}
ON_THE_CURVE = {
    "sens@spec0.90": "Sens. @ 90 % spec.",
    "sens@spec0.95": "Sens. @ 95 % spec.",
    "spec@sens0.90": "Spec. @ 90 % sens.",
}
_SQUARED_ERROR = "_squared_error"


def _positive(table: pd.DataFrame) -> np.ndarray:
    return table[prob_columns(table)[1]].to_numpy(dtype=float)


def _runs(jobs: pd.DataFrame, model: str, input_: str, test_set: TestSet) -> pd.DataFrame:
    runs = select_jobs(finished(jobs), model, input_)
    return runs[runs["job"].isin({j for names in test_set.jobs.values() for j in names})]


def calibration_cells(test_set: TestSet, n_boot: int) -> dict[str, Any]:
    """Brier score (mean over the tables, patient-bootstrap interval) and ECE (mean over the tables)."""
    tables = [
        t.assign(**{_SQUARED_ERROR: (_positive(t) - t["target"]) ** 2}) for t in test_set.tables.values()
    ]
    brier = bootstrap_patient_metric(tables, "mean:" + _SQUARED_ERROR, n_boot, BOOT_SEED)
    ece = float(np.mean([expected_calibration_error(t["target"], _positive(t)) for t in tables]))
    return {
        "brier": brier["estimate"],
        "brier_low": brier["ci_low"],
        "brier_high": brier["ci_high"],
        "ece": ece,
    }


def has_operating_point(jobs: pd.DataFrame, prefix: str) -> bool:
    """Whether the jobs' metrics.json hold a chosen threshold and the metrics at it on this test set."""
    return THRESHOLD_KEY in jobs and f"{prefix}op/recall" in jobs and jobs[f"{prefix}op/recall"].notna().any()


def _mean_std(runs: pd.DataFrame, column: str) -> tuple[float, float]:
    values = pd.to_numeric(runs[column], errors="coerce").dropna() if column in runs else pd.Series()
    if not len(values):
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _op_cell(runs: pd.DataFrame, test_set: TestSet, prefix: str, key: str) -> str:
    """A metric at the operating point: mean ± std over runs; one run: its count and Wilson interval."""
    mean, std = _mean_std(runs, prefix + key)
    if math.isnan(mean):
        return "–"
    tables = list(test_set.tables.values())
    if len(runs) == 1 and len(tables) == 1 and key in AT_THRESHOLD:
        threshold = float(runs.iloc[0][THRESHOLD_KEY])
        k, n = proportion_counts(
            key.removeprefix("op/"), tables[0]["target"], _positive(tables[0]), threshold
        )
        low, high = wilson_interval(k, n)
        return f"{fmt(mean)} ({k}/{n})<br>[{fmt(low)}, {fmt(high)}]"
    return fmt(mean) + ("" if math.isnan(std) else f" ± {fmt(std)}")


def calibration_table(
    sets: list[tuple[str, str, dict[tuple[str, str], TestSet]]], jobs: pd.DataFrame, n_boot: int
) -> tuple[str, list[dict[str, Any]]]:
    """The "Calibration" table: per test set and model, Brier score [interval] and ECE.

    Args:
        sets: (label, metrics.json prefix, the models' prediction tables) per test set, internal first.
        jobs: the sweep's jobs.
        n_boot: bootstrap resamples of the Brier interval.

    Returns:
        The Markdown table ("" for tasks with more than two classes) and its rows for summary.csv.
    """
    rows, records = [], []
    for label, _, test_sets in sets:
        for (model, input_), test_set in test_sets.items():
            if not test_set.tables or not is_binary(test_set):
                continue
            cells = calibration_cells(test_set, n_boot)
            rows.append(
                [
                    label,
                    model,
                    input_,
                    f"{fmt(cells['brier'])}<br>[{fmt(cells['brier_low'])}, {fmt(cells['brier_high'])}]",
                    fmt(cells["ece"]),
                ]
            )
            base = {"test_set": label, "backbone": model, "input": input_, "runs": len(test_set.tables)}
            records.append(
                {**base, "metric": "brier", "estimate": cells["brier"], "ci_low": cells["brier_low"]}
                | {"ci_high": cells["brier_high"], "interval": "bootstrap"}
            )
            records.append({**base, "metric": "ece", "estimate": cells["ece"], "interval": "none"})
    table = markdown_table(["Test set", "Backbone", "Input", "Brier [95 % CI]", "ECE"], rows) if rows else ""
    return table, records


def operating_point_table(
    sets: list[tuple[str, str, dict[tuple[str, str], TestSet]]], jobs: pd.DataFrame
) -> tuple[str, list[str]]:
    """The "Operating point" table where the jobs chose one: per test set and model, the threshold and the
    metrics at it and on the ROC curve (metrics.json, mean over runs).

    Args:
        sets: (label, metrics.json prefix, the models' prediction tables) per test set, internal first.
        jobs: the sweep's jobs.

    Returns:
        The Markdown table ("" when no job chose an operating point) and the rules the jobs used.
    """
    rows = []
    for label, prefix, test_sets in sets:
        if not has_operating_point(jobs, prefix):
            continue
        for (model, input_), test_set in test_sets.items():
            runs = _runs(jobs, model, input_, test_set)
            if not len(runs) or runs[f"{prefix}op/recall"].isna().all():
                continue
            mean, std = _mean_std(runs, THRESHOLD_KEY)
            threshold = fmt(mean) + ("" if math.isnan(std) else f" ± {fmt(std)}")
            cells = [_op_cell(runs, test_set, prefix, key) for key in [*AT_THRESHOLD, *ON_THE_CURVE]]
            rows.append([label, model, input_, threshold, *cells])
    if not rows:
        return "", []
    rules = [str(r) for r in dict.fromkeys(jobs[RULE_KEY].dropna())] if RULE_KEY in jobs else []
    header = ["Test set", "Backbone", "Input", "Threshold", *AT_THRESHOLD.values(), *ON_THE_CURVE.values()]
    return markdown_table(header, rows), rules
