"""covidseg-report <multirun dir>: the raw-vs-segmented comparison of a sweep, with honest statistics.

build_report writes report.md (the internal test split, pooled over folds with data.folds, then every
external set) and results.csv, logged to the sweep's W&B group; a segmenter sweep gets report.segmenter's."""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from covidseg.errors import UserError
from covidseg.outputs import layout, write_csv
from covidseg.report.collect import (
    REPORT_FIX,
    collect_jobs,
    compared_groups,
    external_sets,
    finished,
    uses_folds,
)
from covidseg.report.comparisons import (
    markdown_bootstrap,
    markdown_paired,
    paired_bootstrap,
    paired_runs,
    unpaired_models,
)
from covidseg.report.figures import plot_cam_gallery, plot_confusions, plot_curves, plot_external_auroc
from covidseg.report.jobs import job_lung_energy
from covidseg.report.pooling import TestSet, external_tables, internal_tables, pooled_summary
from covidseg.report.sections import (
    bootstrap_note,
    comparison_heading,
    external_interval_note,
    external_intro,
    failed_jobs,
    internal_interval_note,
    internal_metrics_heading,
    mask_area_section,
    paired_t_note,
    source_note,
    sweep_mask_area,
    training_settings,
    unpaired_note,
)
from covidseg.report.segmenter import build_segmenter_report, is_segmenter_sweep
from covidseg.report.tables import is_binary, markdown_splits, markdown_summary, source_table, summary_table
from covidseg.runs.job import FAILED_FILE

log = logging.getLogger("covidseg.report")


@dataclass
class TestSetReport:
    """What the report shows for one test set: the models' tables, the summary and the comparisons."""

    test_sets: dict[tuple[str, str], TestSet]
    summary: pd.DataFrame
    across: pd.DataFrame
    boot: pd.DataFrame
    sources: str | None = None

    def auroc_cells(self, column: str) -> dict[tuple[str, str], dict]:
        """The summary's AUROC cell of `column` per (backbone, input), for the external AUROC figure."""
        return {(r["backbone"], r["input"]): r[column] for _, r in self.summary.iterrows()}


def build_report(
    sweep_dir: str | Path,
    cam_images: int = 8,
    energy_images: int = 64,
    n_boot: int = 2000,
    cache_dir: str | None = None,
    worst_images: int = 8,
) -> Path:
    """Read every job of a sweep and write report.md, results.csv and the figures into the sweep folder;
    a sweep of covidseg-train-segmenter gets the segmenter report (report.segmenter) instead.

    Args:
        sweep_dir: the folder of a `covidseg-train -m` sweep.
        cam_images: test images per model in cam_gallery.png.
        energy_images: test images per job for the lung energy.
        n_boot: bootstrap resamples of the confidence intervals and paired comparisons.
        cache_dir: the image cache for CAMs (or worst cases) computed here; None: each job's data.cache_dir.
        worst_images: test images per population in a segmenter report's worst-case galleries.

    Returns:
        The path of report.md.

    Raises:
        UserError: `sweep_dir` does not exist, or no job of it finished.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} does not exist. Give the folder of a `covidseg-train -m` sweep.")
    if is_segmenter_sweep(sweep_dir):
        return build_segmenter_report(sweep_dir, worst_images, n_boot, cache_dir)
    jobs = collect_jobs(sweep_dir)
    ok_mask = jobs["status"] == "ok"
    for index in jobs.index[ok_mask]:
        try:
            energy = job_lung_energy(Path(jobs.at[index, "dir"]), energy_images, cache_dir)
            jobs.loc[index, "lung_energy"], jobs.loc[index, "lung_area"] = (
                energy["lung_energy"],
                energy["lung_area"],
            )
        except UserError as err:
            log.warning("No lung energy for job %s: %s", jobs.at[index, "job"], err)
            jobs.loc[index, "lung_energy"] = math.nan
    write_csv(jobs, sweep_dir / layout.RESULTS, REPORT_FIX)
    if not ok_mask.any():
        raise UserError(f"No job of {sweep_dir} finished; see results.csv and each job's {FAILED_FILE}.")
    groups = compared_groups(jobs)
    internal = _test_set_report(jobs, {g: internal_tables(jobs, *g) for g in groups}, n_boot, None)
    external = {}
    for name in external_sets(jobs):
        test_sets = {g: external_tables(jobs, *g, name) for g in groups}
        if any(s.tables for s in test_sets.values()):
            external[name] = _test_set_report(jobs, test_sets, n_boot, name)
        else:  # metrics.json values alone carry no patients to resample
            log.warning(
                "External set %s: no job wrote predictions_%s.csv; left out of the report", name, name
            )
    figures = plot_curves(jobs, sweep_dir)
    plot_confusions(jobs, sweep_dir)
    figures.append("confusion.png")
    if plot_cam_gallery(jobs, sweep_dir, cam_images, cache_dir):
        figures.append("cam_gallery.png")
    if external:
        cells = {"internal test": internal.auroc_cells("test/auroc")}
        cells.update({name: r.auroc_cells(f"external/{name}/auroc") for name, r in external.items()})
        figures.append(plot_external_auroc(cells, sweep_dir))
    text = _report_text(sweep_dir, jobs, internal, external, figures, energy_images, n_boot)
    (sweep_dir / layout.REPORT).write_text(text)
    _log_to_wandb(sweep_dir, jobs, figures)
    return sweep_dir / layout.REPORT


def _test_set_report(
    jobs: pd.DataFrame, test_sets: dict[tuple[str, str], TestSet], n_boot: int, name: str | None
) -> TestSetReport:
    test_sets = {g: s for g, s in test_sets.items() if s.tables}
    return TestSetReport(
        test_sets,
        summary_table(jobs, test_sets, n_boot, name),
        paired_runs(jobs, name),
        paired_bootstrap(test_sets, n_boot),
        source_table(test_sets, n_boot) if name is not None else None,
    )


def _comparison(
    result: TestSetReport, folds: bool, external: bool, n_boot: int, unpaired: list[str]
) -> list[str]:
    # What was paired: jobs (seed x fold) for the t-test; for the bootstrap, pooled seeds internally.
    t_unit, boot_unit = "Runs" if folds else "Seeds", "Runs" if folds and external else "Seeds"
    if not len(result.across):
        none = "_No model has both raw and segmented (or lungs_removed) runs._"
        return [none, "", *unpaired_note(unpaired)]
    return [
        *unpaired_note(unpaired),
        paired_t_note(folds, external),
        markdown_paired(result.across, t_unit),
        "",
        bootstrap_note(folds, external, n_boot),
        markdown_bootstrap(result.boot, boot_unit) if len(result.boot) else "_None._",
        "",
    ]


def _report_text(
    sweep_dir: Path,
    jobs: pd.DataFrame,
    internal: TestSetReport,
    external: dict[str, TestSetReport],
    figures: list[str],
    energy_images: int,
    n_boot: int,
) -> str:
    ok = finished(jobs)
    failed = jobs[jobs["status"] != "ok"]
    first = ok.iloc[0]
    settings = OmegaConf.load(Path(first["dir"]) / ".hydra" / "config.yaml")
    folds = int(ok["folds"].max()) if uses_folds(jobs) else None
    binary = is_binary(next(iter(internal.test_sets.values())))
    unpaired = unpaired_models(jobs)
    split = (
        f"patient-level {folds}-fold cross-validation (data.folds={folds}; each job tests one fold)"
        if folds
        else f"patient-level split {dict(settings.data.split_ratios)}"
    )
    mask_area = sweep_mask_area(ok, settings.data.classes[-1])
    parts = [
        "# covidseg comparison: raw vs lung-segmented input\n",
        f"Sweep `{sweep_dir}`: {len(jobs)} job(s), {len(ok)} finished, {len(failed)} failed. "
        f"Classes {settings.data.classes} (positive: {settings.data.classes[-1]}), "
        f"{training_settings(jobs)}, {split}. "
        + (f"External test sets: {', '.join(f'`{n}`' for n in external)}. " if external else "")
        + f"Reproduce with `covidseg-report {sweep_dir}`.\n",
    ]
    if folds:
        parts += [
            "## Pooled out-of-fold test set\n",
            f"The test predictions of the {folds} folds of one backbone × input × seed are pooled, so every "
            "image is tested once, by the model that did not see it in training:\n",
            *pooled_summary(internal.test_sets),
            "",
        ]
    if mask_area is not None and mask_area.warning():
        parts += [f"> **Warning: the masks may remove the finding.** {mask_area.warning()}\n"]
    parts += [
        internal_metrics_heading(bool(folds)),
        internal_interval_note(internal.summary, folds, n_boot, binary),
        "Lung energy (mean ± std over runs, no interval): mean share of the Grad-CAM mass (for the "
        f"predicted class) inside the predicted lung mask, over up to {energy_images} test images per model "
        "(1.0 = the model looks only at the lungs; an all-zero CAM has no share and is left out). "
        + (
            f"For reference, the lung masks cover {jobs['lung_area'].mean():.3f} of these images "
            "on average: a CAM spread evenly over the image would score that.\n"
            if "lung_area" in jobs
            else "\n"
        ),
        markdown_summary(internal.summary),
        "",
        comparison_heading(bool(folds), set(ok["input"])),
        *_comparison(internal, bool(folds), False, n_boot, unpaired),
    ]
    for name, result in external.items():
        parts += [
            f"## External test set `{name}`\n",
            external_intro(name, result.test_sets, _external_folder(ok, name), bool(folds)),
            external_interval_note(n_boot, binary),
            markdown_summary(result.summary, name),
            "",
            f"### Segmented − raw on `{name}`\n",
            *_comparison(result, bool(folds), True, n_boot, unpaired),
        ]
        if result.sources:
            parts += [f"### Per source on `{name}`\n", source_note(n_boot), result.sources, ""]
    if external:
        parts += ["## Internal vs external AUROC\n", "![external auroc](external_auroc.png)", ""]
    if mask_area is not None:
        parts += mask_area_section(mask_area)
    parts += [
        "## Split sizes (images and patients)\n",
        markdown_splits(jobs),
        "",
        "## Training curves (mean over runs, band ±1 std)\n",
        *[f"![{name}]({name})" for name in figures if name.startswith("curves")],
        "",
        "## Confusion matrices (best run by F1)\n",
        "![confusion](confusion.png)",
        "",
        "## Grad-CAM / Grad-CAM++ gallery\n",
        "Each row: a test image, its predicted lung mask, then for every backbone the raw and the segmented "
        "model's heat maps for the positive class over the image that model saw.\n",
        "![cam gallery](cam_gallery.png)"
        if "cam_gallery.png" in figures
        else "_No gallery: no model could be reloaded (see the warnings of covidseg-report)._",
        "",
    ]
    if len(failed):
        parts += failed_jobs(failed)
    return "\n".join(parts) + "\n"


def _external_folder(ok: pd.DataFrame, name: str) -> str | None:
    """The folder of external set `name`, as the first job that evaluated it recorded (external_sets)."""
    for job_dir in ok["dir"]:
        path = Path(job_dir) / layout.METRICS
        folder = json.loads(path.read_text()).get("external_sets", {}).get(name)
        if folder:
            return str(folder)
    return None


def _log_to_wandb(sweep_dir: Path, jobs: pd.DataFrame, figures: list[str]) -> None:
    """Log the report and its figures to the sweep's W&B group (offline without an API key)."""
    cfg = OmegaConf.load(Path(jobs.iloc[0]["dir"]) / ".hydra" / "config.yaml")
    if "wandb" not in (cfg.get("logger") or {}):
        return
    import wandb

    from covidseg.runs.tracking import wandb_mode

    group = cfg.get("group") or sweep_dir.name
    run = wandb.init(
        project=cfg.logger.wandb.project,
        group=group,
        job_type="report",
        name=f"report-{group}",
        dir=str(sweep_dir),
        mode=wandb_mode(),
    )
    try:
        table = jobs.drop(columns=["dir"]).astype(str)
        run.log(
            {
                "results": wandb.Table(dataframe=table),
                **{
                    name: wandb.Image(str(sweep_dir / name))
                    for name in figures
                    if (sweep_dir / name).is_file()
                },
            }
        )
        artifact = wandb.Artifact(f"report-{group}".replace("/", "-"), type="report")
        artifact.add_file(str(sweep_dir / layout.REPORT))
        run.log_artifact(artifact)
    finally:
        run.finish()


def positive_int(text: str) -> int:
    """argparse type of a count option: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="covidseg-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="folder of a covidseg-train(-segmenter) multirun (hydra.sweep.dir)")
    parser.add_argument("--cam-images", type=positive_int, default=8, help="test images in cam_gallery.png")
    parser.add_argument(
        "--energy-images", type=positive_int, default=64, help="test images per model for lung energy"
    )
    parser.add_argument(
        "--n-boot", type=positive_int, default=2000, help="bootstrap resamples over test patients"
    )
    parser.add_argument("--worst-images", type=positive_int, default=8, help="segmenter: worst cases shown")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        path = build_report(
            args.sweep_dir, args.cam_images, args.energy_images, args.n_boot, None, args.worst_images
        )
    except UserError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    print(f"Wrote {path}")
