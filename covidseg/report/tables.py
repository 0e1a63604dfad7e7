"""The report's tables: test metrics per backbone x input over seeds, segmented - raw paired by seed
(t-test over seeds, bootstrap over test patients), and the split sizes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from covidseg.metrics import DISPLAY_NAMES, METRIC_NAMES
from covidseg.report.collect import compared_groups, finished, select_jobs
from covidseg.stats import bootstrap_patient_difference, mean_ci, paired_difference

# results.csv column and its name in the report: the classifier's test metrics, then lung energy.
REPORT_METRICS = [
    *((f"test/{name}", DISPLAY_NAMES[name]) for name in METRIC_NAMES),
    ("lung_energy", "Lung energy"),
]
# Patient-bootstrapped metrics (segmented - raw per seed); with more than two classes only accuracy.
BOOTSTRAP_BINARY = ("f1", "recall", "auroc")
BOOTSTRAP_MULTICLASS = ("acc",)


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per backbone x input: the number of seeds and mean_ci of every report metric over them."""
    ok = finished(jobs)
    records = []
    for backbone, input_ in compared_groups(jobs):
        group = select_jobs(ok, backbone, input_)
        record: dict[str, Any] = {"backbone": backbone, "input": input_, "seeds": len(group)}
        for key, _ in REPORT_METRICS:
            if key in group:
                record[key] = mean_ci(group[key].astype(float).to_numpy())
        records.append(record)
    return pd.DataFrame(records)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _interval_cell(s: Any) -> str:
    if not isinstance(s, dict) or s["n"] == 0:
        return "–"
    if s["n"] == 1:
        return _fmt(s["mean"])
    return f"{_fmt(s['mean'])} ± {_fmt(s['std'])}<br>[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]"


def markdown_summary(summary: pd.DataFrame) -> str:
    header = ["Backbone", "Input", "Seeds", *(name for _, name in REPORT_METRICS)]
    rows = [
        [r["backbone"], r["input"], r["seeds"], *(_interval_cell(r.get(key)) for key, _ in REPORT_METRICS)]
        for _, r in summary.iterrows()
    ]
    return markdown_table(header, rows)


def paired_comparisons(jobs: pd.DataFrame, n_boot: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Segmented - raw per backbone: paired t-test across seeds, and a patient bootstrap per seed."""
    ok = finished(jobs)
    across, boot = [], []
    for backbone in dict.fromkeys(ok["backbone"]):
        raw = select_jobs(ok, backbone, "raw").set_index("seed")
        seg = select_jobs(ok, backbone, "segmented").set_index("seed")
        seeds = sorted(set(raw.index) & set(seg.index))
        if not seeds:
            continue
        for key, name in REPORT_METRICS:
            if key not in raw or key not in seg:
                continue
            result = paired_difference(raw.loc[seeds, key].astype(float), seg.loc[seeds, key].astype(float))
            across.append({"backbone": backbone, "metric": name, "seeds": len(seeds), **result})
        for seed in seeds:
            a = pd.read_csv(Path(raw.loc[seed, "dir"]) / "predictions.csv")
            b = pd.read_csv(Path(seg.loc[seed, "dir"]) / "predictions.csv")
            binary = sum(c.startswith("prob_") for c in a.columns) == 2
            for metric in BOOTSTRAP_BINARY if binary else BOOTSTRAP_MULTICLASS:
                result = bootstrap_patient_difference(a, b, metric, n_boot=n_boot, seed=seed)
                boot.append({"backbone": backbone, "seed": seed, "metric": metric, **result})
    return pd.DataFrame(across), pd.DataFrame(boot)


def markdown_difference(
    frame: pd.DataFrame,
    ids: dict[str, str],
    values: tuple[str, str, str],
    labels: tuple[str, str, str],
    extra: dict[str, str] | None = None,
) -> str:
    """A segmented - raw table: identifying columns, raw, segmented, the difference, its CI and p value.

    ids/extra map headers to columns; values name the raw, segmented and difference columns; labels
    are the headers of the difference, the CI and the p value."""
    header = [*ids, "Raw", "Segmented", *labels, *(extra or {})]
    rows = [
        [
            *(r[c] for c in ids.values()),
            *(_fmt(r[c]) for c in values),
            f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]",
            _fmt(r["p_value"]),
            *(r[c] for c in (extra or {}).values()),
        ]
        for _, r in frame.iterrows()
    ]
    return markdown_table(header, rows)


def markdown_paired(across: pd.DataFrame) -> str:
    ids = {"Backbone": "backbone", "Metric": "metric", "Seeds": "seeds"}
    labels = ("Δ (seg − raw)", "95 % CI", "p (paired t)")
    return markdown_difference(across, ids, ("mean_a", "mean_b", "mean_diff"), labels)


def markdown_bootstrap(boot: pd.DataFrame) -> str:
    ids = {"Backbone": "backbone", "Seed": "seed", "Metric": "metric"}
    labels = ("Δ", "95 % CI (patients)", "p (bootstrap)")
    return markdown_difference(
        boot, ids, ("metric_a", "metric_b", "observed"), labels, {"Patients": "n_patients"}
    )


def markdown_splits(jobs: pd.DataFrame) -> str:
    ok = finished(jobs)
    columns = [
        c
        for c in ("n_train", "n_val", "n_test", "patients_train", "patients_val", "patients_test")
        if c in ok
    ]
    sizes = ok.groupby("seed")[columns].first().astype(int)
    return markdown_table(["Seed", *columns], [[seed, *row] for seed, row in sizes.iterrows()])
