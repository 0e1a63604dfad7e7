"""covidseg-report <multirun dir>: the raw-vs-segmented comparison of a sweep, with honest statistics.

build_report writes report.md (text and tables around the figures) and results.csv, and logs them to
the sweep's W&B group; `main` is the command line.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from covidseg.cli import FAILED_FILE
from covidseg.errors import UserError
from covidseg.report.collect import collect_jobs, finished
from covidseg.report.figures import plot_cam_gallery, plot_confusions, plot_curves
from covidseg.report.jobs import job_lung_energy
from covidseg.report.tables import (
    markdown_bootstrap,
    markdown_paired,
    markdown_splits,
    markdown_summary,
    paired_comparisons,
    summary_table,
)

log = logging.getLogger("covidseg.report")


def build_report(
    sweep_dir: str | Path,
    cam_images: int = 8,
    energy_images: int = 64,
    n_boot: int = 2000,
    cache_dir: str | None = None,
) -> Path:
    """Read every job of a sweep and write report.md, results.csv and the figures into the sweep folder."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} does not exist. Give the folder of a `covidseg-train -m` sweep.")
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
    jobs.to_csv(sweep_dir / "results.csv", index=False)
    if not ok_mask.any():
        raise UserError(f"No job of {sweep_dir} finished; see results.csv and each job's {FAILED_FILE}.")
    summary = summary_table(jobs)
    across, boot = paired_comparisons(jobs, n_boot)
    curve_files = plot_curves(jobs, sweep_dir)
    plot_confusions(jobs, sweep_dir)
    plot_cam_gallery(jobs, sweep_dir, cam_images, cache_dir)
    failed = jobs[~ok_mask]
    text = _report_text(sweep_dir, jobs, summary, across, boot, curve_files, failed, energy_images)
    (sweep_dir / "report.md").write_text(text)
    _log_to_wandb(sweep_dir, jobs, curve_files)
    return sweep_dir / "report.md"


def _report_text(
    sweep_dir: Path,
    jobs: pd.DataFrame,
    summary: pd.DataFrame,
    across: pd.DataFrame,
    boot: pd.DataFrame,
    curve_files: list[str],
    failed: pd.DataFrame,
    energy_images: int,
) -> str:
    ok = finished(jobs)
    first = ok.iloc[0]
    settings = OmegaConf.load(Path(first["dir"]) / ".hydra" / "config.yaml")
    parts = [
        "# covidseg comparison: raw vs lung-segmented input\n",
        f"Sweep `{sweep_dir}`: {len(jobs)} job(s), {len(ok)} finished, {len(failed)} failed. "
        f"Classes {settings.data.classes} (positive: {settings.data.classes[-1]}), image size "
        f"{settings.data.image_size}, {settings.trainer.max_epochs} epoch(s) max, patient-level split "
        f"{dict(settings.data.split_ratios)}. Reproduce with `covidseg-report {sweep_dir}`.\n",
        "## Test metrics (mean ± std over seeds, [95 % t-interval])\n",
        "Lung energy: mean share of the Grad-CAM mass (for the predicted class) inside the predicted lung "
        f"mask, over up to {energy_images} test images per model (1.0 = the model looks only at the lungs; "
        "an all-zero CAM has no share and is left out). "
        + (
            f"For reference, the lung masks cover {jobs['lung_area'].mean():.3f} of these images "
            "on average: a CAM "
            "spread evenly over the image would score that.\n"
            if "lung_area" in jobs
            else "\n"
        ),
        markdown_summary(summary),
        "",
        "## Does segmentation help? Segmented − raw, paired by seed\n",
        "Paired t-test over seeds (same seed = same patient split and initialisation).\n",
        markdown_paired(across) if len(across) else "_No backbone has both raw and segmented runs._",
        "",
        "Per seed, a paired bootstrap over test **patients** (whole patients resampled):\n",
        markdown_bootstrap(boot) if len(boot) else "_None._",
        "",
        "## Split sizes (images and patients)\n",
        markdown_splits(jobs),
        "",
        "## Training curves (mean over seeds, band ±1 std)\n",
        *[f"![{name}]({name})" for name in curve_files],
        "",
        "## Confusion matrices (best seed by F1)\n",
        "![confusion](confusion.png)",
        "",
        "## Grad-CAM / Grad-CAM++ gallery\n",
        "Each row: a test image, its predicted lung mask, then for every backbone the raw and the segmented "
        "model's heat maps for the positive class over the image that model saw.\n",
        "![cam gallery](cam_gallery.png)",
        "",
    ]
    if len(failed):
        parts += ["## Failed jobs\n", "| Job | Backbone | Input | Seed | Error |", "|---|---|---|---|---|"]
        parts += [
            f"| {r['job']} | {r['backbone']} | {r['input']} | {r['seed']} | "
            f"{str(r.get('error', '')).replace('|', '/')[:300]} |"
            for _, r in failed.iterrows()
        ]
    return "\n".join(parts) + "\n"


def _log_to_wandb(sweep_dir: Path, jobs: pd.DataFrame, curve_files: list[str]) -> None:
    """Log the report and its figures to the sweep's W&B group (offline without an API key)."""
    cfg = OmegaConf.load(Path(jobs.iloc[0]["dir"]) / ".hydra" / "config.yaml")
    if "wandb" not in (cfg.get("logger") or {}):
        return
    import wandb

    from covidseg.tracking import wandb_mode

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
                    for name in [*curve_files, "confusion.png", "cam_gallery.png"]
                    if (sweep_dir / name).is_file()
                },
            }
        )
        artifact = wandb.Artifact(f"report-{group}".replace("/", "-"), type="report")
        artifact.add_file(str(sweep_dir / "report.md"))
        run.log_artifact(artifact)
    finally:
        run.finish()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="covidseg-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="folder of a covidseg-train multirun (its hydra.sweep.dir)")
    parser.add_argument("--cam-images", type=positive_int, default=8, help="test images in cam_gallery.png")
    parser.add_argument(
        "--energy-images", type=positive_int, default=64, help="test images per model for lung energy"
    )
    parser.add_argument(
        "--n-boot", type=positive_int, default=2000, help="bootstrap resamples over test patients"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        path = build_report(args.sweep_dir, args.cam_images, args.energy_images, args.n_boot)
    except UserError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    print(f"Wrote {path}")
