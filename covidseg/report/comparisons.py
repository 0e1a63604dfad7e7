"""Does segmentation help? Every other input against raw for the same model, paired twice: over runs
(a paired t-test over the jobs that share a seed, and with folds a fold: the same split and
initialisation) and over test patients (a paired patient bootstrap pooled over the runs' predictions,
with DeLong's test beside it for AUROC).
A model is a backbone at one image size and number of epochs (collect.model_names): jobs trained at other
settings are not paired, and unpaired_models names them."""

from __future__ import annotations

import math

import pandas as pd

from covidseg.errors import UserError
from covidseg.masks.area import format_p
from covidseg.models.metrics import DISPLAY_NAMES, METRIC_NAMES
from covidseg.report.collect import differing_settings, finished, run_key, select_jobs
from covidseg.report.pooling import TestSet
from covidseg.report.tables import (
    BOOT_SEED,
    LUNG_ENERGY,
    count_text,
    fmt,
    is_binary,
    markdown_table,
    metric_prefix,
)
from covidseg.stats import bootstrap_pooled_difference, paired_difference
from covidseg.stats.delong import delong_pooled_difference

# The inputs compared against raw, in report order.
COMPARED_INPUTS = ("segmented", "lungs_removed")


def paired_runs(jobs: pd.DataFrame, name: str | None = None) -> pd.DataFrame:
    """Per backbone and compared input: paired_difference of each metric over the (seed, fold) runs that
    both inputs finished (the metrics each job logged on the test set `name`; None = internal)."""
    ok = finished(jobs)
    prefix = metric_prefix(name)
    metrics = [(prefix + m, DISPLAY_NAMES[m]) for m in METRIC_NAMES]
    metrics += [LUNG_ENERGY] if name is None else []
    rows = []
    for backbone in dict.fromkeys(ok["model"]):
        raw = {run_key(r): r for _, r in select_jobs(ok, backbone, "raw").iterrows()}
        for input_ in COMPARED_INPUTS:
            other = {run_key(r): r for _, r in select_jobs(ok, backbone, input_).iterrows()}
            keys = sorted(set(raw) & set(other))
            for key, label in metrics:
                if not keys or key not in ok:
                    continue
                result = paired_difference(
                    [float(raw[k][key]) for k in keys], [float(other[k][key]) for k in keys]
                )
                if result["n"]:
                    rows.append({"backbone": backbone, "input": input_, "metric": label, **result})
    return pd.DataFrame(rows)


def unpaired_models(jobs: pd.DataFrame) -> list[str]:
    """Report lines naming, per backbone and compared input, the raw and compared models left without a
    partner of the same image size and epochs, hence not paired; none when the jobs share both."""
    if not differing_settings(jobs):
        return []
    ok = finished(jobs)
    lines = []
    for backbone in dict.fromkeys(ok["backbone"]):
        mine = ok[ok["backbone"] == backbone]
        raw = set(mine.loc[mine["input"] == "raw", "model"])
        for input_ in COMPARED_INPUTS:
            other = set(mine.loc[mine["input"] == input_, "model"])
            alone = [f"`{m}` raw" for m in sorted(raw - other)]
            alone += [f"`{m}` {input_}" for m in sorted(other - raw)]
            if raw and other and alone:
                lines.append(f"- {backbone}, {input_} − raw: {', '.join(alone)}")
    return lines


def paired_bootstrap(test_sets: dict[tuple[str, str], TestSet], n_boot: int) -> pd.DataFrame:
    """Per backbone and compared input: the paired patient bootstrap of each metric, pooled over the
    tables (seeds, or runs of an external set) that both inputs have, and for AUROC DeLong's test of the same
    pooled difference (``p_delong``). Binary tasks: every metric; more classes: accuracy."""
    rows = []
    for backbone in dict.fromkeys(b for b, _ in test_sets):
        raw = test_sets.get((backbone, "raw"))
        for input_ in COMPARED_INPUTS:
            other = test_sets.get((backbone, input_))
            if raw is None or other is None:
                continue
            keys = sorted(set(raw.tables) & set(other.tables))
            if not keys:
                continue
            pairs = [(raw.tables[k], other.tables[k]) for k in keys]
            for metric in METRIC_NAMES if is_binary(raw) else ("acc",):
                try:
                    result = bootstrap_pooled_difference(pairs, metric, n_boot, BOOT_SEED)
                except ValueError as err:
                    jobs_a = [j for k in keys for j in raw.jobs[k]]
                    jobs_b = [j for k in keys for j in other.jobs[k]]
                    raise UserError(
                        f"{backbone}: raw jobs {jobs_a} and {input_} jobs {jobs_b} share seeds (and folds) "
                        f"but not their test images, so they cannot be paired: {err}"
                    ) from None
                if metric == "auroc":
                    result["p_delong"] = _delong_p(pairs)
                rows.append(
                    {
                        "backbone": backbone,
                        "input": input_,
                        "metric": DISPLAY_NAMES[metric],
                        "patients": count_text(result["n_patients"]),
                        **result,
                    }
                )
    return pd.DataFrame(rows)


def _delong_p(pairs: list[tuple[pd.DataFrame, pd.DataFrame]]) -> float:
    """DeLong's p of the pooled AUROC difference; nan where a test set has fewer than two images of a
    class (DeLong's variance needs two)."""
    try:
        return delong_pooled_difference(pairs)["p_value"]
    except ValueError:
        return math.nan


def comparison_table(boot: pd.DataFrame, across: pd.DataFrame) -> tuple[str, list[str]]:
    """One Markdown table of the comparisons of a test set: per backbone, compared input and metric, the
    paired patient bootstrap (raw, compared, Δ, interval, p), DeLong's p for AUROC and, where two or more
    runs are paired, the paired t-test's interval and p over runs.

    Args:
        boot: paired_bootstrap's rows.
        across: paired_runs' rows (paired_difference per metric).

    Returns:
        The table ("" without rows) and the names of metrics left out because no resample defined them
        (e.g. precision of a model that calls nothing positive).
    """
    t_rows = {(r["backbone"], r["input"], r["metric"]): r for _, r in across.iterrows() if r["n"] >= 2}
    with_t = bool(t_rows)
    header = ["Backbone", "Compared input", "Metric", "Raw", "Compared", "Δ", "95 % CI (patients)"]
    header += ["p (bootstrap)", "p (DeLong)", *(["95 % t-interval (runs)", "p (paired t)"] if with_t else [])]
    rows, undefined = [], []
    keys = [(r["backbone"], r["input"], r["metric"]) for _, r in boot.iterrows()] if len(boot) else []
    boot_rows = dict(zip(keys, (r for _, r in boot.iterrows())))
    keys += [k for k in t_rows if k not in boot_rows]  # lung energy: over runs only
    for key in keys:
        b, t = boot_rows.get(key), t_rows.get(key)
        if b is not None and not b["n_valid"]:  # e.g. precision of a model that never calls a positive
            undefined.append(key[2])
            continue
        if b is not None:
            delong = b.get("p_delong", math.nan)
            cells = [fmt(b["metric_a"]), fmt(b["metric_b"]), _signed(b["observed"])]
            cells += [f"[{_signed(b['ci_low'])}, {_signed(b['ci_high'])}]", format_p(b["p_value"])]
            cells.append("" if pd.isna(delong) else format_p(delong))
        else:  # lung energy: over runs only
            cells = [fmt(t["mean_a"]), fmt(t["mean_b"]), _signed(t["mean_diff"]), "", "", ""]
        if with_t and t is not None:
            cells += [f"[{_signed(t['ci_low'])}, {_signed(t['ci_high'])}]", format_p(t["p_value"])]
        elif with_t:
            cells += ["", ""]
        rows.append([*key, *cells])
    return (markdown_table(header, rows) if rows else ""), list(dict.fromkeys(undefined))


def _signed(x: float) -> str:
    """A difference with its sign (+0.012, −0.094)."""
    text = fmt(x)
    return text if text == "–" else ("+" + text if x >= 0 else "−" + text[1:])
