"""The report's words around its tables, written from the sweep's own numbers (the Methods section, which
says once what every table and interval covers, is in report.methods)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from covidseg.masks.area import P_VALUE, SMALLER_BY, AreaByClass, area_by_class, markdown_table, p_clause
from covidseg.outputs import layout, read_csv
from covidseg.report.collect import MODEL_SETTINGS, differing_settings
from covidseg.report.pooling import TestSet


def split_counts(summary: pd.DataFrame) -> str:
    """The images and patients of each model's test set(s), e.g. "40 images, 39 patients"."""
    images, patients = set(summary["images"]), set(summary["patients"])
    if len(images) == 1 and len(patients) == 1:
        return f"{images.pop()} images, {patients.pop()} patients per seed"
    return "images and patients: see Split sizes"


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
    """The report's "Lung mask area per class" section: the verdict in one sentence and the table."""
    rel = summary.relative_difference
    size = f"{100 * rel:.0f} % smaller than" if rel >= 0 else f"{-100 * rel:.0f} % larger than"
    return [
        "## Lung mask area per class\n",
        f"The positive class's median lung-mask area is {size} the other classes' (Mann-Whitney "
        f"{p_clause(summary.p_value)}; the report warns from {100 * SMALLER_BY:.0f} % smaller and "
        f"p < {P_VALUE}).\n",
        markdown_table(summary),
        "",
    ]
