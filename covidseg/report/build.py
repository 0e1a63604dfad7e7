"""covidseg-report <multirun dir>: the raw-vs-segmented comparison of a sweep, with honest statistics.

build_report writes report.md (a summary first, then the internal test split, pooled over folds with
data.folds, every external set, calibration and the operating point, and the Methods once at the end),
report.html (the same, figures inlined), results.csv (one row per job), summary.csv and comparisons.csv
(every number of the tables) and a model card per model, logged to the sweep's W&B group; a segmenter sweep
gets report.segmenter's."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from covidseg.errors import UserError
from covidseg.outputs import layout, write_csv
from covidseg.report.calibration import calibration_table, operating_point_table
from covidseg.report.collect import REPORT_FIX, collect_jobs, compared_groups, external_sets, finished
from covidseg.report.comparisons import paired_bootstrap, paired_runs
from covidseg.report.curves import figure_name, plot_calibration, plot_roc_pr
from covidseg.report.figures import plot_cam_gallery, plot_confusions, plot_curves, plot_external_auroc
from covidseg.report.html import write_html
from covidseg.report.jobs import job_lung_energy
from covidseg.report.model_card import write_model_cards
from covidseg.report.pooling import TestSet, external_tables, internal_tables
from covidseg.report.sections import sweep_mask_area
from covidseg.report.segmenter import build_segmenter_report, is_segmenter_sweep
from covidseg.report.summary import findings
from covidseg.report.tables import metric_prefix, source_table, summary_records, summary_table
from covidseg.report.text import ReportContent, TestSetReport, report_text

log = logging.getLogger("covidseg.report")


def build_report(
    sweep_dir: str | Path,
    cam_images: int = 8,
    energy_images: int = 64,
    n_boot: int = 2000,
    cache_dir: str | None = None,
    worst_images: int = 8,
) -> Path:
    """Read every job of a sweep and write report.md, report.html, results.csv, summary.csv,
    comparisons.csv, the model cards and the figures into the sweep folder; a sweep of
    covidseg-train-segmenter gets the segmenter report (report.segmenter) instead.

    Args:
        sweep_dir: the folder of a `covidseg-train -m` sweep.
        cam_images: test images per model in cam_gallery.png.
        energy_images: test images per job for the lung energy.
        n_boot: bootstrap resamples of the confidence intervals, comparisons and curve bands.
        cache_dir: the image cache for CAMs (or worst cases) computed here; None: each job's data.cache_dir.
        worst_images: test images per population in a segmenter report's worst-case galleries.

    Returns:
        The path of report.md.

    Raises:
        UserError: `sweep_dir` does not exist, no job of it finished, or its jobs have different classes.
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
        raise UserError(f"No job of {sweep_dir} finished; see results.csv and each job's {layout.FAILED}.")
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
    reports = [internal, *external.values()]
    ok = finished(jobs)
    classes = list(OmegaConf.load(Path(ok.iloc[0]["dir"]) / layout.HYDRA_CONFIG).data.classes)
    figures = _figures(jobs, sweep_dir, reports, classes[-1], cam_images, cache_dir, n_boot)
    mask_area = sweep_mask_area(ok, classes[-1])
    sets = [(r.label, metric_prefix(r.name), r.test_sets) for r in reports]
    calibration, calibration_rows = calibration_table(sets, jobs, n_boot)
    operating_point, rules = operating_point_table(sets, jobs)
    failed = int((~ok_mask).sum())
    found = findings([r.set_result() for r in reports], classes, mask_area, failed, bool(operating_point), ok)
    cards = write_model_cards(jobs, list(external), found, sweep_dir, n_boot)
    content = ReportContent(
        internal, external, figures, found, calibration, operating_point, rules, mask_area, cards
    )
    (sweep_dir / layout.REPORT).write_text(report_text(sweep_dir, jobs, content, energy_images, n_boot))
    _write_tables(sweep_dir, reports, calibration_rows)
    write_html(
        sweep_dir / layout.REPORT, sweep_dir / layout.REPORT_HTML, f"covidseg report: {sweep_dir.name}"
    )
    _log_to_wandb(sweep_dir, jobs, figures)
    return sweep_dir / layout.REPORT


def _test_set_report(
    jobs: pd.DataFrame, test_sets: dict[tuple[str, str], TestSet], n_boot: int, name: str | None
) -> TestSetReport:
    test_sets = {g: s for g, s in test_sets.items() if s.tables}
    return TestSetReport(
        name,
        test_sets,
        summary_table(jobs, test_sets, n_boot, name),
        paired_runs(jobs, name),
        paired_bootstrap(test_sets, n_boot),
        source_table(test_sets, n_boot) if name is not None else None,
    )


def _figures(
    jobs: pd.DataFrame,
    sweep_dir: Path,
    reports: list[TestSetReport],
    positive: str,
    cam_images: int,
    cache_dir: str | None,
    n_boot: int,
) -> list[str]:
    """Every figure of the report; each test set's ROC / PR figure is also kept on its TestSetReport."""
    figures = plot_curves(jobs, sweep_dir)
    plot_confusions(jobs, sweep_dir)
    figures.append("confusion.png")
    if plot_cam_gallery(jobs, sweep_dir, cam_images, cache_dir):
        figures.append("cam_gallery.png")
    for report in reports:
        report.roc_pr = plot_roc_pr(
            report.test_sets, report.label, sweep_dir, figure_name("roc_pr", report.name), n_boot
        )
        figures += [report.roc_pr] if report.roc_pr else []
    calibration = plot_calibration({r.label: r.test_sets for r in reports}, positive, sweep_dir)
    figures += [calibration] if calibration else []
    if len(reports) > 1:
        cells = {r.label: r.auroc_cells(metric_prefix(r.name) + "auroc") for r in reports}
        figures.append(plot_external_auroc(cells, sweep_dir))
    return figures


# comparisons.csv's columns: the paired patient bootstrap (and DeLong), then the paired t-test over runs.
_BOOT_COLUMNS = {
    "metric_a": "raw",
    "metric_b": "compared",
    "observed": "difference",
    "p_value": "p_bootstrap",
    "n_pairs": "paired_tables",
}
_T_COLUMNS = {
    "n": "t_runs",
    "mean_a": "t_raw",
    "mean_b": "t_compared",
    "mean_diff": "t_difference",
    "std_diff": "t_std",
    "ci_low": "t_ci_low",
    "ci_high": "t_ci_high",
    "p_value": "p_t",
}


def _write_tables(sweep_dir: Path, reports: list[TestSetReport], calibration_rows: list[dict]) -> None:
    """summary.csv (every cell of the metric and calibration tables) and comparisons.csv (every paired
    comparison: bootstrap, DeLong and, over runs, the t-test)."""
    cells = [row for r in reports for row in summary_records(r.summary, r.label)] + calibration_rows
    write_csv(pd.DataFrame(cells), sweep_dir / layout.SUMMARY, REPORT_FIX)
    frames = []
    for r in reports:
        boot = r.boot.drop(columns=["n_images", "n_patients"], errors="ignore").rename(columns=_BOOT_COLUMNS)
        across = r.across.drop(columns=["differences"], errors="ignore").rename(columns=_T_COLUMNS)
        keys = ["backbone", "input", "metric"]
        if len(boot) and len(across):  # the bootstrap's rows in order, then those over runs only
            merged = boot.merge(across, on=keys, how="left")
            only_runs = ~across.set_index(keys).index.isin(boot.set_index(keys).index)
            merged = pd.concat([merged, across[only_runs]], ignore_index=True)
        else:
            merged = boot if len(boot) else across
        frames.append(merged.assign(test_set=r.label))
    table = pd.concat(frames, ignore_index=True)
    if len(table):
        table = table[["test_set", *[c for c in table.columns if c != "test_set"]]]
    write_csv(table, sweep_dir / layout.COMPARISONS, REPORT_FIX)


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
