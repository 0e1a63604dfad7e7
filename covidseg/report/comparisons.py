"""Does segmentation help? Every other input against raw for the same model, paired twice: over runs
(a paired t-test over the jobs that share a seed, and with folds a fold: the same split and
initialisation) and over test patients (a paired patient bootstrap pooled over the runs' predictions).
A model is a backbone at one image size and number of epochs (collect.model_names): jobs trained at other
settings are not paired, and unpaired_models names them."""

from __future__ import annotations

import pandas as pd

from covidseg.errors import UserError
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
    tables (seeds, or runs of an external set) that both inputs have. Binary tasks: every metric; more
    classes: accuracy."""
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


def _difference_table(
    frame: pd.DataFrame,
    count: tuple[str, str],
    values: tuple[str, str, str],
    labels: tuple[str, str, str],
    extra: tuple[str, str] | None = None,
) -> str:
    """Backbone, compared input, metric, a count (header, column), raw, compared, the difference, its
    interval, a p value and an optional last (header, column)."""
    header = ["Backbone", "Compared input", "Metric", count[0], "Raw", "Compared", *labels]
    rows = [
        [
            r["backbone"],
            r["input"],
            r["metric"],
            r[count[1]],
            *(fmt(r[c]) for c in values),
            f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]",
            fmt(r["p_value"]),
            *([r[extra[1]]] if extra else []),
        ]
        for _, r in frame.iterrows()
    ]
    return markdown_table(header + ([extra[0]] if extra else []), rows)


def markdown_paired(across: pd.DataFrame, unit: str) -> str:
    """The paired t-test table; `unit` names what was paired (Seeds, or Runs: seed x fold)."""
    labels = ("Δ (compared − raw)", "95 % t-interval", "p (paired t)")
    return _difference_table(across, (unit, "n"), ("mean_a", "mean_b", "mean_diff"), labels)


def markdown_bootstrap(boot: pd.DataFrame, unit: str) -> str:
    """The pooled paired patient-bootstrap table; `unit` names the pooled tables (Seeds, or Runs)."""
    labels = ("Δ", "95 % CI (patients)", "p (bootstrap)")
    values = ("metric_a", "metric_b", "observed")
    return _difference_table(boot, (unit, "n_pairs"), values, labels, ("Patients", "patients"))
