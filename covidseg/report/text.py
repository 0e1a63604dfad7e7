"""report.md's text, in reading order: what the sweep is, the summary (question, answer, warnings), then per
test set its metrics, comparisons and curves, calibration and the operating point, the other figures, the
split sizes, the Methods (what every number is, said once) and the failed jobs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from covidseg.masks.area import AreaByClass
from covidseg.outputs import layout
from covidseg.report.collect import finished, uses_folds
from covidseg.report.comparisons import comparison_table, unpaired_models
from covidseg.report.methods import methods_section
from covidseg.report.pooling import TestSet, pooled_summary
from covidseg.report.sections import (
    external_intro,
    failed_jobs,
    mask_area_section,
    split_counts,
    training_settings,
    unpaired_note,
)
from covidseg.report.summary import Finding, SetResult, summary_block
from covidseg.report.tables import is_binary, markdown_splits, markdown_summary, metric_prefix


@dataclass
class TestSetReport:
    """What the report shows for one test set: the models' tables, the summary and the comparisons."""

    name: str | None  # None: the internal test set
    test_sets: dict[tuple[str, str], TestSet]
    summary: pd.DataFrame
    across: pd.DataFrame
    boot: pd.DataFrame
    sources: str | None = None
    roc_pr: str | None = None  # its ROC / PR figure

    @property
    def label(self) -> str:
        """The set's name in tables and figures."""
        return "internal test" if self.name is None else self.name

    def set_result(self) -> SetResult:
        """The set as the summary reads it."""
        return SetResult(self.label, self.summary, self.boot, self.test_sets, metric_prefix(self.name))

    def auroc_cells(self, column: str) -> dict[tuple[str, str], dict]:
        """The summary's AUROC cell of `column` per (backbone, input), for the external AUROC figure."""
        return {(r["backbone"], r["input"]): r[column] for _, r in self.summary.iterrows()}


@dataclass
class ReportContent:
    """Everything report.md shows beyond the jobs themselves."""

    internal: TestSetReport
    external: dict[str, TestSetReport]
    figures: list[str]
    found: list[Finding]
    calibration: str
    operating_point: str
    rules: list[str]
    mask_area: AreaByClass | None = None
    cards: list[str] = field(default_factory=list)


def _question(jobs: pd.DataFrame, classes: list[str]) -> str:
    inputs = set(finished(jobs)["input"])
    others = [i for i in ("segmented", "lungs_removed") if i in inputs]
    what = {
        "segmented": "masking the image to the predicted lungs (segmented)",
        "lungs_removed": ("blacking out the lungs (lungs_removed, the shortcut control)"),
    }
    if not others:
        return f"none: every job of this sweep saw {', '.join(sorted(inputs))} input, so nothing is compared."
    compared = " and ".join(what[i] for i in others)
    return (
        f"does {compared} change how well the classifier separates {classes[-1]} from "
        f"{' and '.join(classes[:-1])}, compared with the raw image, on the internal test set and on data "
        "from elsewhere?"
    )


def _comparison(result: TestSetReport, unpaired: list[str], runs: int) -> list[str]:
    heading = "### Compared − raw" + ("" if result.name is None else f" on `{result.name}`") + "\n"
    if not len(result.boot) and not len(result.across):
        return [
            heading,
            "_No model has both raw and segmented (or lungs_removed) runs._",
            "",
            *unpaired_note(unpaired),
        ]
    table, undefined = comparison_table(result.boot, result.across)
    notes = []
    if runs < 2:
        notes.append(
            "One run per model: seed-level tests need ≥ 2 seeds (or folds), so only patients are resampled."
        )
    if undefined:
        notes.append(
            "Not compared (undefined in every resample, e.g. nothing called positive): "
            f"{', '.join(undefined)}."
        )
    return [heading, *unpaired_note(unpaired), table, "", *([" ".join(notes) + "\n"] if notes else [])]


def _set_section(
    result: TestSetReport, heading: str, intro: list[str], unpaired: list[str], runs: int
) -> list[str]:
    parts = [
        heading,
        *intro,
        markdown_summary(result.summary, result.name),
        "",
        *_comparison(result, unpaired, runs),
    ]
    if result.sources:
        parts += [f"### Per source on `{result.name}`\n", result.sources, ""]
    if result.roc_pr:
        parts += [f"![ROC and precision-recall curves on {result.label}]({result.roc_pr})", ""]
    return parts


def _opening(sweep_dir: Path, jobs: pd.DataFrame, content: ReportContent, classes: list[str]) -> str:
    """The first paragraph: what the sweep trained, on what, and the files beside the report."""
    ok, failed = finished(jobs), jobs[jobs["status"] != "ok"]
    settings = OmegaConf.load(Path(ok.iloc[0]["dir"]) / layout.HYDRA_CONFIG)
    folds = int(ok["folds"].max()) if uses_folds(jobs) else None
    split = f"patient-level {folds}-fold cross-validation" if folds else "patient-level train/val/test split"
    files = [layout.REPORT_HTML, layout.RESULTS, layout.SUMMARY, layout.COMPARISONS]
    files += [f"{layout.MODEL_CARDS}/"] if content.cards else []
    seeds = ok["seed"].nunique()
    return (
        f"Sweep `{sweep_dir}`: {len(jobs)} job(s), {len(ok)} finished"
        + (f", **{len(failed)} failed**" if len(failed) else "")
        + f". {', '.join(f'`{m}`' for m in dict.fromkeys(ok['model']))} on "
        f"{', '.join(dict.fromkeys(ok['input']))} input, {seeds} seed(s); {' vs '.join(classes)} (positive: "
        f"{classes[-1]}); {training_settings(jobs)}; {split} {dict(settings.data.split_ratios)}."
        + (
            f" External test sets: {', '.join(f'`{n}`' for n in content.external)}."
            if content.external
            else ""
        )
        + f" Files: {', '.join(files)}. Reproduce with `covidseg-report {sweep_dir}`.\n"
    )


def _calibration(content: ReportContent) -> list[str]:
    no_point = (
        "_No operating point: the jobs chose no threshold on validation; threshold metrics are at 0.5._\n"
    )
    return [
        "## Calibration and operating point\n",
        content.calibration,
        "",
        *([content.operating_point, ""] if content.operating_point else [no_point]),
        *(["![calibration](calibration.png)", ""] if "calibration.png" in content.figures else []),
    ]


def _figures(content: ReportContent) -> list[str]:
    gallery = (
        "![cam gallery](cam_gallery.png)"
        if "cam_gallery.png" in content.figures
        else "_No gallery: no model could be reloaded (see the warnings of covidseg-report)._"
    )
    return [
        "## Grad-CAM gallery\n",
        "Test images, their lung mask, and each model's heat map for the positive class over the image it "
        "saw.\n",
        gallery,
        "",
        "## Confusion matrices (best run by F1, threshold 0.5)\n",
        "![confusion](confusion.png)",
        "",
        "## Training curves (mean over runs, band ±1 std)\n",
        "![training curves](curves.png)",
        "",
    ]


def report_text(
    sweep_dir: Path, jobs: pd.DataFrame, content: ReportContent, energy_images: int, n_boot: int
) -> str:
    """report.md of a classifier sweep.

    Args:
        sweep_dir: the sweep folder.
        jobs: the sweep's jobs (collect_jobs, lung energy filled in).
        content: the test sets, figures, warnings and tables of the report.
        energy_images: test images per model for the lung energy.
        n_boot: bootstrap resamples.
    """
    ok, failed = finished(jobs), jobs[jobs["status"] != "ok"]
    classes = list(OmegaConf.load(Path(ok.iloc[0]["dir"]) / layout.HYDRA_CONFIG).data.classes)
    folds = int(ok["folds"].max()) if uses_folds(jobs) else None
    internal, external = content.internal, content.external
    binary = is_binary(next(iter(internal.test_sets.values())))
    unpaired = unpaired_models(jobs)
    runs = int(ok.groupby(["model", "input"]).size().min())
    results = [internal.set_result(), *(r.set_result() for r in external.values())]
    parts = [
        "# covidseg report: raw vs lung-segmented input\n",
        _opening(sweep_dir, jobs, content, classes),
        *summary_block(_question(jobs, classes), results, content.found),
    ]
    own = f"Each seed's model is tested on its own patient-level split: {split_counts(internal.summary)}.\n"
    intro = [*pooled_summary(internal.test_sets), ""] if folds else [own]
    parts += _set_section(internal, "## Internal test set\n", intro, unpaired, runs)
    for name, result in external.items():
        intro = [external_intro(name, result.test_sets, _external_folder(ok, name), bool(folds))]
        parts += _set_section(result, f"## External test set `{name}`\n", intro, unpaired, runs)
    parts += _calibration(content) if binary else []
    if external:
        parts += ["## Internal vs external AUROC\n", "![external auroc](external_auroc.png)", ""]
    if content.mask_area is not None:
        parts += mask_area_section(content.mask_area)
    parts += [*_figures(content), "## Split sizes (images and patients)\n", markdown_splits(jobs), ""]
    area = jobs["lung_area"].mean() if "lung_area" in jobs and jobs["lung_area"].notna().any() else None
    seeds = int(internal.summary["seeds"].max())
    parts += methods_section(folds, seeds, n_boot, binary, energy_images, area, content.rules)
    if len(failed):
        parts += ["", *failed_jobs(failed)]
    return "\n".join(parts) + "\n"


def _external_folder(ok: pd.DataFrame, name: str) -> str | None:
    """The folder of external set `name`, as the first job that evaluated it recorded (external_sets)."""
    for job_dir in ok["dir"]:
        folder = json.loads((Path(job_dir) / layout.METRICS).read_text()).get("external_sets", {}).get(name)
        if folder:
            return str(folder)
    return None
