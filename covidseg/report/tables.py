"""The report's metric tables: per backbone x input on a test set (internal or external), a point estimate,
the spread over runs and a patient-bootstrap interval; a per-source breakdown; the split sizes."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from covidseg.models.metrics import DISPLAY_NAMES, METRIC_NAMES
from covidseg.report.collect import compared_groups, finished, select_jobs
from covidseg.report.pooling import TestSet
from covidseg.stats import bootstrap_patient_metric, prob_columns
from covidseg.stats.binary import PROPORTIONS, proportion_counts, wilson_interval

LUNG_ENERGY = ("lung_energy", "Lung energy")
# Metrics of the per-source breakdown (binary tasks; with more classes accuracy only).
SOURCE_METRICS = ("auroc", "recall", "specificity")
# Every bootstrap starts from this seed, so a report is reproducible to the last digit.
BOOT_SEED = 0


def metric_prefix(name: str | None) -> str:
    """Where a job's metrics.json keeps a test set's metrics: test/<m> or external/<name>/<m>."""
    return "test/" if name is None else f"external/{name}/"


def fmt(x: Any, digits: int = 3) -> str:
    """`x` with `digits` decimals; "–" for a missing value (None or nan)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def is_binary(test_set: TestSet) -> bool:
    """Whether the test set's predictions have two classes (two prob_ columns)."""
    return len(prob_columns(next(iter(test_set.tables.values())))) == 2


def count_text(values: list[int]) -> str:
    """One count, or the range when the tables differ (e.g. test splits of different seeds)."""
    return str(min(values)) if min(values) == max(values) else f"{min(values)}–{max(values)}"


def _spread(runs: pd.DataFrame, column: str) -> tuple[float, float]:
    values = runs[column].astype(float).dropna() if column in runs else pd.Series(dtype=float)
    mean = float(values.mean()) if len(values) else math.nan
    return mean, float(values.std(ddof=1)) if len(values) > 1 else math.nan


def metric_cell(runs: pd.DataFrame, test_set: TestSet, metric: str, prefix: str, n_boot: int) -> dict:
    """estimate (bootstrapped metrics: the mean over the test set's tables), std over the runs' own test
    metrics, and the patient-bootstrap interval (nan where the metric is not bootstrapped).

    Macro metrics of more than two classes are not bootstrapped: their estimate is the runs' mean as logged.

    Args:
        runs: the model's finished jobs behind the test set's tables.
        test_set: the model's prediction tables on the test set.
        metric: a name of METRIC_NAMES.
        prefix: where metrics.json keeps the test set's metrics (metric_prefix).
        n_boot: bootstrap resamples.

    Returns:
        {"estimate", "std", "ci_low", "ci_high"}.
    """
    mean, std = _spread(runs, prefix + metric)
    if metric != "acc" and not is_binary(test_set):  # macro metrics of >2 classes: as logged, no interval
        return {"estimate": mean, "std": std, "ci_low": math.nan, "ci_high": math.nan, "interval": "none"}
    tables = list(test_set.tables.values())
    boot = bootstrap_patient_metric(tables, metric, n_boot, BOOT_SEED)
    if math.isnan(std):  # e.g. metrics.json lacks the key: the spread of the tables themselves
        std = boot["std"]
    cell = {
        "estimate": boot["estimate"],
        "std": std,
        "ci_low": boot["ci_low"],
        "ci_high": boot["ci_high"],
        "interval": "bootstrap",
        "boot_low": boot["ci_low"],
        "boot_high": boot["ci_high"],
    }
    if len(tables) == 1 and metric in PROPORTIONS and is_binary(test_set):
        # One run's share of images: a Wilson interval keeps its coverage on a small set and at 0 or 1,
        # where the percentile bootstrap shrinks to a point.
        table = tables[0]
        k, n = proportion_counts(metric, table["target"], table[prob_columns(table)[1]])
        low, high = wilson_interval(k, n)
        cell.update(ci_low=low, ci_high=high, interval="wilson", successes=k, trials=n)
    return cell


def summary_table(
    jobs: pd.DataFrame, test_sets: dict[tuple[str, str], TestSet], n_boot: int, name: str | None = None
) -> pd.DataFrame:
    """Per backbone x input: seeds, folds, images, patients and a metric_cell per metric; lung energy
    (mean ± std over runs) on the internal test set.

    Args:
        jobs: the sweep's jobs.
        test_sets: the prediction tables of each (backbone, input); models without any are left out.
        n_boot: bootstrap resamples.
        name: the external set; None for the internal test set.
    """
    ok = finished(jobs)
    prefix = metric_prefix(name)
    records = []
    for backbone, input_ in compared_groups(jobs):
        test_set = test_sets.get((backbone, input_))
        if test_set is None or not test_set.tables:
            continue
        runs = select_jobs(ok, backbone, input_)
        runs = runs[runs["job"].isin({j for names in test_set.jobs.values() for j in names})]
        tables = list(test_set.tables.values())
        record: dict[str, Any] = {
            "backbone": backbone,
            "input": input_,
            "seeds": runs["seed"].nunique(),
            "folds": None if runs["folds"].isna().all() else int(runs["folds"].max()),
            "runs": len(runs),
            "images": count_text([len(t) for t in tables]),
            "patients": count_text([t["patient_id"].nunique() for t in tables]),
        }
        for metric in METRIC_NAMES:
            record[prefix + metric] = metric_cell(runs, test_set, metric, prefix, n_boot)
        if name is None and LUNG_ENERGY[0] in runs:
            mean, std = _spread(runs, LUNG_ENERGY[0])
            record[LUNG_ENERGY[0]] = {"estimate": mean, "std": std, "ci_low": math.nan, "ci_high": math.nan}
        records.append(record)
    return pd.DataFrame(records)


def interval_cell(cell: Any) -> str:
    """A summary cell as Markdown: "estimate ± std<br>[low, high]", leaving out what is nan, with the counts
    (k/n) of a Wilson interval; "–" if none."""
    if not isinstance(cell, dict) or math.isnan(cell["estimate"]):
        return "–"
    text = fmt(cell["estimate"]) + ("" if math.isnan(cell["std"]) else f" ± {fmt(cell['std'])}")
    if cell.get("interval") == "wilson":
        text += f" ({cell['successes']}/{cell['trials']})"
    if not math.isnan(cell["ci_low"]):
        text += f"<br>[{fmt(cell['ci_low'])}, {fmt(cell['ci_high'])}]"
    return text


def summary_records(summary: pd.DataFrame, test_set: str) -> list[dict[str, Any]]:
    """The summary table's cells as flat rows (test set, backbone, input, metric, estimate, std, the
    interval shown and its kind, the patient-bootstrap interval, Wilson's counts) for summary.csv."""
    records = []
    for _, row in summary.iterrows():
        for column, cell in row.items():
            if not isinstance(cell, dict):
                continue
            records.append(
                {
                    "test_set": test_set,
                    "backbone": row["backbone"],
                    "input": row["input"],
                    "metric": str(column).rsplit("/", 1)[-1],
                    "runs": row["runs"],
                    **{k: cell.get(k, math.nan) for k in ("estimate", "std", "ci_low", "ci_high")},
                    "interval": cell.get("interval", "none"),
                    **{k: cell.get(k, math.nan) for k in ("boot_low", "boot_high", "successes", "trials")},
                }
            )
    return records


def markdown_summary(summary: pd.DataFrame, name: str | None = None) -> str:
    """The summary table (summary_table) as Markdown, the lung energy column on the internal test set only."""
    prefix = metric_prefix(name)
    columns = [(prefix + m, DISPLAY_NAMES[m]) for m in METRIC_NAMES]
    if name is None:
        columns.append(LUNG_ENERGY)
    with_folds = summary["folds"].notna().any()
    header = ["Backbone", "Input", "Seeds", *(["Folds"] if with_folds else []), *(n for _, n in columns)]
    rows = [
        [
            r["backbone"],
            r["input"],
            r["seeds"],
            *([fmt(r["folds"], 0) if pd.notna(r["folds"]) else "–"] if with_folds else []),
            *(interval_cell(r.get(key)) for key, _ in columns),
        ]
        for _, r in summary.iterrows()
    ]
    return markdown_table(header, rows)


def source_table(test_sets: dict[tuple[str, str], TestSet], n_boot: int) -> str | None:
    """Per model and source (the predictions' `source` column): images, patients and the metrics of
    SOURCE_METRICS (mean over the model's runs, patient-bootstrap interval); None without a source column
    or with a single source."""
    filled = [t for t in test_sets.values() if t.tables]
    if not filled or "source" not in next(iter(filled[0].tables.values())):
        return None
    sources = {str(s) for t in filled for table in t.tables.values() for s in table["source"].dropna()}
    if len(sources) < 2:  # the breakdown would repeat the set's own table
        return None
    metrics = SOURCE_METRICS if is_binary(filled[0]) else ("acc",)
    rows = []
    for (backbone, input_), test_set in test_sets.items():
        tables = list(test_set.tables.values())
        if not tables or "source" not in tables[0]:
            continue
        for source in sorted(tables[0]["source"].dropna().astype(str).unique()):
            parts = [t[t["source"].astype(str) == source] for t in tables]
            cells = []
            for metric in metrics:
                boot = bootstrap_patient_metric(parts, metric, n_boot, BOOT_SEED)
                ci = f"<br>[{fmt(boot['ci_low'])}, {fmt(boot['ci_high'])}]" if boot["n_valid"] else ""
                cells.append(fmt(boot["estimate"]) + ci)
            rows.append([backbone, input_, source, len(parts[0]), parts[0]["patient_id"].nunique(), *cells])
    header = ["Backbone", "Input", "Source", "Images", "Patients", *(DISPLAY_NAMES[m] for m in metrics)]
    return markdown_table(header, rows)


def markdown_splits(jobs: pd.DataFrame) -> str:
    """The split sizes (images and patients) of each seed (and fold) as a Markdown table."""
    ok = finished(jobs)
    columns = [
        c
        for c in ("n_train", "n_val", "n_test", "patients_train", "patients_val", "patients_test")
        if c in ok
    ]
    if ok["fold"].notna().any():
        sizes = ok.groupby(["seed", "fold"])[columns].first().astype(int)
        return markdown_table(["Seed", "Fold", *columns], [[*key, *row] for key, row in sizes.iterrows()])
    sizes = ok.groupby("seed")[columns].first().astype(int)
    return markdown_table(["Seed", *columns], [[seed, *row] for seed, row in sizes.iterrows()])
