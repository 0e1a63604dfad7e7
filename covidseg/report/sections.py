"""The report's words: what every table and interval covers, written from the sweep's own numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from covidseg.masks.area import P_VALUE, SMALLER_BY, AreaByClass, area_by_class, markdown_table
from covidseg.outputs import layout, read_csv
from covidseg.report.collect import MODEL_SETTINGS, differing_settings
from covidseg.report.pooling import TestSet

THRESHOLD_NOTE = (
    "An image counts as positive when the positive-class probability is above 0.5 "
    "(`covidseg.models.metrics.predicted_positive`, the rule of the metrics logged during training). "
    "Resamples in which a metric is undefined (e.g. recall when no covid patient was drawn) are left out "
    "of its interval; on the full set 0/0 counts as 0, as in the logged metrics."
)


def _counts(summary: pd.DataFrame) -> str:
    images, patients = set(summary["images"]), set(summary["patients"])
    if len(images) == 1 and len(patients) == 1:
        return f"{images.pop()} images, {patients.pop()} patients"
    return "images and patients: see Split sizes"


def _multiclass_note(binary: bool) -> str:
    if binary:
        return ""
    return (
        " With more than two classes only accuracy is bootstrapped; the macro-averaged metrics show the "
        "mean ± std of what each job logged, without an interval."
    )


def training_settings(jobs: pd.DataFrame) -> str:
    """The image size and epochs of the sweep's jobs for the report's first paragraph; where the jobs differ
    in them, that they do and that each setting makes a model of its own."""
    sizes, epochs = (" / ".join(map(str, dict.fromkeys(jobs[s]))) for s in MODEL_SETTINGS)
    text = f"image size {sizes}, {epochs} epoch(s) max"
    differing = differing_settings(jobs)
    if not differing:
        return text
    what = " and ".join({"image_size": "image size", "max_epochs": "epochs"}[s] for s in differing)
    example = jobs["model"].iloc[0]
    return (
        f"{text} (**the jobs differ in {what}**: each backbone at each of these settings is a model of its "
        f"own, named so, e.g. `{example}`, and only the raw and segmented jobs of one model are paired)"
    )


def unpaired_note(lines: list[str]) -> list[str]:
    """The comparison's note on models left unpaired (comparisons.unpaired_models); nothing without any."""
    if not lines:
        return []
    return [
        "Not paired: these raw and compared jobs of one backbone were trained at another image size or "
        "number of epochs than any job of the other input, so their difference would mix the two; compare "
        "their rows in the table above with that in mind.\n",
        *lines,
        "",
    ]


def internal_metrics_heading(folds: bool) -> str:
    """The heading of the internal test metrics; cross-validated sweeps pool the out-of-fold predictions."""
    if folds:
        return (
            "## Test metrics (pooled out-of-fold predictions, ± std over folds, "
            "[95 % patient-bootstrap interval])\n"
        )
    return "## Test metrics (mean ± std over seeds, [95 % patient-bootstrap interval])\n"


def internal_interval_note(summary: pd.DataFrame, folds: int | None, n_boot: int, binary: bool) -> str:
    """What a cell of the internal metrics table means: its mean, ± std and bootstrap interval.

    Args:
        summary: the internal summary table (its `seeds` column and counts).
        folds: K of a cross-validated sweep; None for train/val/test splits.
        n_boot: bootstrap resamples.
        binary: two classes (otherwise a note on the multiclass AUROC is added).
    """
    seeds = int(summary["seeds"].max())
    if folds:
        text = (
            "Each cell: the metric of the pooled out-of-fold predictions "
            f"({folds} folds, {_counts(summary)}: every image tested once, by the model that did not "
            "train on it"
            + (f"; averaged over {seeds} seeds" if seeds > 1 else "")
            + f") ± the std of the folds' own test metrics ({folds} folds"
            + (f" × {seeds} seeds" if seeds > 1 else "")
            + "), and in brackets a 95 % patient-bootstrap interval on the pooled predictions: whole "
            f"patients resampled with replacement, {n_boot} resamples"
            + (", one draw shared by the seeds since they tested the same images" if seeds > 1 else "")
            + ", the pooled metric recomputed; percentile interval."
        )
    else:
        text = (
            f"Each cell: the metric averaged over {seeds} seed(s) (each seed's model on its own test split; "
            f"{_counts(summary)} per seed) ± its std over seeds (how much retraining with another seed and "
            "split moves it), and in brackets a 95 % patient-bootstrap interval: test patients resampled "
            f"with replacement within each seed's test split (whole patients), {n_boot} resamples, each "
            "seed's metric recomputed and averaged over seeds; percentile interval."
        )
    return (
        text
        + " The interval covers which test patients happened to be drawn, given these trained models; the "
        "± std shows the spread over retraining. " + THRESHOLD_NOTE + _multiclass_note(binary) + "\n"
    )


def comparison_heading(folds: bool, inputs: set[str]) -> str:
    """The heading of the segmented − raw comparison (and lungs_removed − raw when the sweep has it)."""
    others = " (and lungs_removed − raw)" if "lungs_removed" in inputs else ""
    paired = "paired by seed and fold" if folds else "paired by seed"
    return f"## Does segmentation help? Segmented − raw{others}, {paired}\n"


def paired_t_note(folds: bool, external: bool) -> str:
    """What the paired t-test pairs (seeds, or seed × fold runs) and what its Δ and interval are."""
    unit = "runs (seed × fold)" if folds else "seeds"
    what = "on this set" if external else "on their test split"
    return (
        f"Paired t-test over {unit}: the raw and the compared job of one seed"
        + (" and fold" if folds else "")
        + f" share the patient split and the initialisation. Δ is the mean of the per-run differences of "
        f"the metric each job logged {what}; the 95 % t-interval is over those runs and, with few of "
        "them, can be wide.\n"
    )


def bootstrap_note(folds: bool, external: bool, n_boot: int) -> str:
    """What the pooled paired patient bootstrap resamples and what its interval covers."""
    if external:
        pooled = (
            "every run (seed" + (" and fold" if folds else "") + "; one draw of the set's patients for all)"
        )
    elif folds:
        pooled = "every seed (the pooled out-of-fold predictions of its K folds)"
    else:
        pooled = "every seed (its test split)"
    return (
        f"Pooled paired patient bootstrap: for {pooled}, the raw and the compared model are scored on the "
        f"same resampled patients and the difference averaged; {n_boot} resamples, 95 % percentile "
        "interval, two-sided p = 2 × the smaller share of resampled differences on one side of 0. It covers "
        "which patients were drawn, not retraining.\n"
    )


def external_intro(
    name: str, test_sets: dict[tuple[str, str], TestSet], folder: str | None, folds: bool
) -> str:
    """The opening line of an external set's section: images, classes and patients the runs were tested on.

    Args:
        name: the external set (its folder name).
        test_sets: the models' prediction tables on it; the first gives the counts.
        folder: the set's folder, if known.
        folds: whether the runs are seed × fold.
    """
    table = next(t for s in test_sets.values() for t in s.tables.values())
    classes = ""
    if "label" in table:
        counts = table["label"].value_counts()
        classes = " (" + ", ".join(f"{n} {label}" for label, n in counts.items()) + ")"
    where = f" from `{folder}`" if folder else ""
    return (
        f"Every run ({'seed and fold' if folds else 'seed'}) tested its best checkpoint on all "
        f"{len(table)} images{classes} of "
        f"{table['patient_id'].nunique()} patients of `{name}`{where}, a set no training image comes from.\n"
    )


def external_interval_note(n_boot: int, binary: bool) -> str:
    """What a cell of an external set's metrics table means: mean ± std over runs and bootstrap interval."""
    return (
        "Each cell: the metric averaged over the runs ± its std over runs, and in brackets a 95 % "
        f"patient-bootstrap interval: the set's patients resampled with replacement, {n_boot} resamples, "
        "one draw shared by all runs (they saw the same images), each run's metric recomputed and averaged; "
        "percentile interval. It covers the choice of these patients, not retraining. "
        + THRESHOLD_NOTE
        + _multiclass_note(binary)
        + "\n"
    )


def source_note(n_boot: int) -> str:
    """What the per-source table of an external set shows."""
    return (
        "Per `source` of the set's metadata: images, patients and the metric averaged over the runs, with "
        f"a 95 % patient-bootstrap interval ({n_boot} resamples, patients of that source only). AUROC "
        "needs both classes within a source (– otherwise).\n"
    )


def failed_jobs(failed: pd.DataFrame, settings: tuple[str, ...] = ("backbone", "input")) -> list[str]:
    """The report's lines listing the failed jobs with their errors (cut to 300 characters).

    Args:
        failed: the failed jobs (collect_jobs rows: job, seed, error and the `settings` columns; fold).
        settings: the columns that say which model a job was, shown capitalised.
    """
    folds = "fold" in failed and failed["fold"].notna().any()
    names = [c.capitalize() for c in settings]
    header = "| " + " | ".join(["Job", *names, "Seed", *(["Fold"] if folds else []), "Error"]) + " |"
    lines = ["## Failed jobs\n", header, "|" + "---|" * (3 + len(settings) + int(folds))]
    for _, r in failed.iterrows():
        fold = [("–" if pd.isna(r["fold"]) else str(r["fold"]))] if folds else []
        error = str(r.get("error", "")).replace("|", "/")[:300]
        cells = [str(r["job"]), *(str(r[c]) for c in settings), str(r["seed"]), *fold, error]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def sweep_mask_area(ok: pd.DataFrame, positive: str) -> AreaByClass | None:
    """The lung area per class of the first finished masked job's mask_stats.csv (every masked job of one
    sweep uses one segmenter on one data set), None without one."""
    for job_dir in ok.loc[ok["input"] != "raw", "dir"]:
        path = Path(job_dir) / layout.MASK_STATS
        if path.is_file():
            return area_by_class(read_csv(path), positive)
    return None


def mask_area_section(summary: AreaByClass) -> list[str]:
    """The report's "Lung mask area per class" section: what it shows, the verdict and the table."""
    rel = summary.relative_difference
    size = f"{100 * rel:.0f} % smaller than" if rel >= 0 else f"{-100 * rel:.0f} % larger than"
    p = "n/a (too few images)" if math.isnan(summary.p_value) else f"{summary.p_value:.3g}"
    return [
        "## Lung mask area per class\n",
        "Share of each image the predicted lung mask covers (mask_stats.csv of a masked job; every image of "
        "the data set). Systematically smaller masks of the positive class mean the segmenter leaves "
        f"diseased lung outside its mask; here the positive class's median is {size} the others' "
        f"(Mann-Whitney p = {p}; the report warns from {100 * SMALLER_BY:.0f} % smaller and "
        f"p < {P_VALUE}).\n",
        markdown_table(summary),
        "",
    ]
