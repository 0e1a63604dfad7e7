"""covidseg-report on a covidseg-train-segmenter sweep (experiment=segmenter_compare): which lung segmenter
is right on which lungs.

A model is an architecture x encoder (and image size / epochs where the jobs differ); its seeds are pooled.
A population is a group of test images: all of them, each mask set, and each value of a `source` or
`finding` column where the data has one (the groups of inference.segmenter_scores). Per population and
model, Dice, IoU and HD95 come from the jobs' segmentation_scores.csv (one row per test image; each job's
mean is its metrics.json value): the mean over seeds with a Student-t interval over seeds (stats.mean_ci,
as the classifier report's seed statistics), and a patient-bootstrap interval of the same mean
(stats.bootstrap_patient_metric: whole patients resampled; a set without patient_id counts each image as
its own patient, as its split does; seeds with other test patients are resampled independently).

build_segmenter_report writes report.md, results.csv (one row per job), dice_distribution.png and
worst_cases_<population>.png (report.segmenter_figures) into the sweep folder.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from covidseg.errors import UserError
from covidseg.inference.segmenter_scores import BREAKDOWN_COLUMNS, SCORES
from covidseg.outputs import layout, write_csv
from covidseg.report.collect import REPORT_FIX, finished, job_configs, job_outcome, model_names
from covidseg.report.sections import failed_jobs
from covidseg.report.segmenter_figures import plot_dice_distribution, plot_worst_cases
from covidseg.report.tables import BOOT_SEED, count_text, fmt, markdown_table
from covidseg.stats import bootstrap_patient_metric, mean_ci
from covidseg.stats.bootstrap import MEAN_OF

log = logging.getLogger("covidseg.report")
SEGMENTER_TARGET = "covidseg.models.segmenter.Segmenter"
SCORE_NAMES = {"dice": "Dice", "iou": "IoU", "hd95": "HD95 (px)"}


@dataclass(frozen=True)
class Population:
    """A group of test images: `column` == `value` in segmentation_scores.csv (None: every image)."""

    label: str
    column: str | None = None
    value: str | None = None

    def select(self, scores: pd.DataFrame) -> pd.DataFrame:
        """The rows of a job's per-image scores that belong to the population."""
        if self.column is None:
            return scores
        if self.column not in scores:
            return scores.iloc[:0]
        return scores[scores[self.column].fillna("").astype(str) == self.value]

    @property
    def slug(self) -> str:
        """The label as a file-name part."""
        return re.sub(r"[^A-Za-z0-9]+", "_", self.label).strip("_")


def is_segmenter_sweep(sweep_dir: Path) -> bool:
    """Whether a sweep's jobs are segmenter runs: a job's config builds the Segmenter or a job wrote
    segmentation_scores.csv."""
    for config_file in sweep_dir.glob("*/.hydra/config.yaml"):
        if (config_file.parents[1] / layout.SEGMENTATION_SCORES).is_file():
            return True
        if OmegaConf.select(OmegaConf.load(config_file), "model._target_", default=None) == SEGMENTER_TARGET:
            return True
    return False


def collect_segmenter_jobs(sweep_dir: Path) -> pd.DataFrame:
    """One row per job folder: job, dir, network (arch · encoder), model (collect.model_names), seed,
    image size, epochs, status and metrics.json's scalars (or the error).

    Raises:
        UserError: no job folder, or two jobs of one model and seed.
    """
    rows = []
    for config_file in job_configs(sweep_dir):
        cfg = OmegaConf.load(config_file)
        row: dict[str, Any] = {
            "job": config_file.parents[1].name,
            "dir": str(config_file.parents[1]),
            "arch": cfg.segmenter.arch,
            "encoder": cfg.segmenter.encoder,
            "network": f"{cfg.segmenter.arch} · {cfg.segmenter.encoder}",
            "seed": int(cfg.seed),
            "image_size": OmegaConf.select(cfg, "data.image_size", default=None),
            "max_epochs": OmegaConf.select(cfg, "trainer.max_epochs", default=None),
        }
        rows.append({**row, **job_outcome(config_file.parents[1])})
    jobs = pd.DataFrame(rows)
    jobs.insert(jobs.columns.get_loc("network") + 1, "model", model_names(jobs, "network"))
    repeated = jobs[jobs[["model", "seed"]].duplicated(keep=False)]
    if len(repeated):
        raise UserError(
            f"{sweep_dir}: jobs {list(repeated['job'])} share architecture, encoder, seed, image size and "
            "epochs; the report compares segmenters over seeds only. Sweep other settings in separate "
            "folders."
        )
    return jobs


def read_scores(job_dir: str | Path) -> pd.DataFrame:
    """A job's segmentation_scores.csv as a bootstrap table: `path` (set/image, unique) and `patient_id`
    (set:patient, or the image itself where the set has no patient_id)."""
    scores = pd.read_csv(
        Path(job_dir) / layout.SEGMENTATION_SCORES,
        dtype={"patient_id": str, **dict.fromkeys(BREAKDOWN_COLUMNS, str)},
    )
    scores["path"] = scores["set"].astype(str) + "/" + scores["image"].astype(str)
    patient = scores["patient_id"] if "patient_id" in scores else pd.Series(pd.NA, index=scores.index)
    scores["patient_id"] = (scores["set"].astype(str) + ":" + patient).fillna(scores["path"])
    return scores


def populations(tables: list[pd.DataFrame]) -> list[Population]:
    """All test images, each mask set (in order of appearance), each source and finding value (sorted)."""
    every = pd.concat(tables, ignore_index=True)
    found = [Population("all test images")]
    found += [Population(f"set {name}", "set", str(name)) for name in dict.fromkeys(every["set"])]
    for column in BREAKDOWN_COLUMNS:
        if column in every:
            values = sorted(set(every[column].dropna().astype(str)) - {""})
            found += [Population(f"{column} {value}", column, value) for value in values]
    return found


def population_table(
    ok: pd.DataFrame, scores: dict[str, pd.DataFrame], population: Population, n_boot: int
) -> pd.DataFrame:
    """Per model with test images in the population: seeds, images, patients, and per score (SCORES) the
    mean over seeds, its std and t-interval over seeds (`t_low`, `t_high`) and its patient-bootstrap
    interval (`boot_low`, `boot_high`); `dice_per_image`: every image's Dice, pooled over seeds."""
    records = []
    for model in dict.fromkeys(ok["model"]):
        runs = ok[ok["model"] == model]
        tables = [t for job in runs["job"] if len(t := population.select(scores[job]))]
        if not tables:
            continue
        record: dict[str, Any] = {
            "model": model,
            "seeds": len(tables),
            "images": count_text([len(t) for t in tables]),
            "patients": count_text([t["patient_id"].nunique() for t in tables]),
            "dice_per_image": pd.concat(tables)["dice"].to_numpy(),
        }
        for score in SCORES:
            seeds = mean_ci([t[score].mean() for t in tables])
            boot = bootstrap_patient_metric(tables, MEAN_OF + score, n_boot, BOOT_SEED)
            record[score] = {
                "mean": seeds["mean"],
                "std": seeds["std"],
                "t_low": seeds["ci_low"],
                "t_high": seeds["ci_high"],
                "boot_low": boot["ci_low"],
                "boot_high": boot["ci_high"],
            }
        records.append(record)
    return pd.DataFrame(records)


def score_cell(cell: dict[str, float], digits: int) -> str:
    """ "mean ± std<br>seeds [t-interval]<br>patients [bootstrap interval]", leaving out what is nan."""
    text = fmt(cell["mean"], digits) + ("" if math.isnan(cell["std"]) else f" ± {fmt(cell['std'], digits)}")
    if not math.isnan(cell["t_low"]):
        text += f"<br>seeds [{fmt(cell['t_low'], digits)}, {fmt(cell['t_high'], digits)}]"
    if not math.isnan(cell["boot_low"]):
        text += f"<br>patients [{fmt(cell['boot_low'], digits)}, {fmt(cell['boot_high'], digits)}]"
    return text


def markdown_population(table: pd.DataFrame) -> str:
    """A population_table as Markdown (HD95 with one decimal)."""
    header = ["Model", "Seeds", "Images", "Patients", *SCORE_NAMES.values()]
    rows = [
        [r["model"], r["seeds"], r["images"], r["patients"]]
        + [score_cell(r[s], 1 if s == "hd95" else 3) for s in SCORES]
        for _, r in table.iterrows()
    ]
    return markdown_table(header, rows)


def best_model(table: pd.DataFrame) -> tuple[str, float]:
    """The model of highest mean Dice over seeds in a population_table, and that Dice."""
    best = table.loc[table["dice"].map(lambda c: c["mean"]).idxmax()]
    return str(best["model"]), float(best["dice"]["mean"])


def cost_table(ok: pd.DataFrame) -> str:
    """Per model: parameters, inference ms per test image and training minutes (mean ± std over seeds)."""

    def spread(values: pd.Series, digits: int) -> str:
        summary = mean_ci(values.astype(float))
        return fmt(summary["mean"], digits) + (
            "" if math.isnan(summary["std"]) else f" ± {fmt(summary['std'], digits)}"
        )

    columns = ("n_parameters", "ms_per_image", "train_seconds", "best_epoch")
    ok = ok.assign(**{c: math.nan for c in columns if c not in ok})  # jobs from before these keys
    rows = [
        [
            model,
            fmt(runs["n_parameters"].iloc[0] / 1e6, 2),
            spread(runs["ms_per_image"], 1),
            spread(runs["train_seconds"] / 60, 1),
            spread(runs["best_epoch"], 1),
        ]
        for model, runs in ok.groupby("model", sort=False)
    ]
    return markdown_table(["Model", "Parameters (M)", "ms / image", "Training (min)", "Best epoch"], rows)


def build_segmenter_report(sweep_dir: Path, worst_images: int, n_boot: int, cache_dir: str | None) -> Path:
    """Read every job of a segmenter sweep and write report.md, results.csv and the figures into it.

    Args:
        sweep_dir: the folder of a `covidseg-train-segmenter -m` sweep.
        worst_images: test images per population in the worst-case galleries.
        n_boot: patient-bootstrap resamples.
        cache_dir: the image cache for reloading the test images; None: each job's data.cache_dir.

    Returns:
        The path of report.md.

    Raises:
        UserError: no job of the sweep finished.
    """
    jobs = collect_segmenter_jobs(sweep_dir)
    write_csv(jobs, sweep_dir / layout.RESULTS, REPORT_FIX)
    ok = finished(jobs)
    scored = [(Path(d) / layout.SEGMENTATION_SCORES).is_file() for d in ok["dir"]]
    if not all(scored):  # jobs from before segmentation_scores.csv: no images to pool or resample
        unscored = [job for job, has in zip(ok["job"], scored) if not has]
        log.warning("Jobs %s have no %s; left out of the report", unscored, layout.SEGMENTATION_SCORES)
    ok = ok[scored]
    if not len(ok):
        raise UserError(f"No job of {sweep_dir} finished; see results.csv and each job's {layout.FAILED}.")
    scores = {job: read_scores(d) for job, d in zip(ok["job"], ok["dir"])}
    tables = {p: population_table(ok, scores, p, n_boot) for p in populations(list(scores.values()))}
    tables = {p: t for p, t in tables.items() if len(t)}
    plot_dice_distribution({p.label: t for p, t in tables.items()}, sweep_dir / "dice_distribution.png")
    galleries, loaded = {}, {}
    for population, table in tables.items():
        model = best_model(table)[0]
        runs = ok[ok["model"] == model]
        picked = {job: population.select(scores[job]) for job in runs["job"]}
        path = sweep_dir / f"worst_cases_{population.slug}.png"
        if plot_worst_cases(
            runs, picked, worst_images, path, f"{population.label}: {model}", cache_dir, loaded
        ):
            galleries[population] = (model, path.name)
    text = _report_text(sweep_dir, jobs, ok, tables, galleries, worst_images, n_boot)
    (sweep_dir / layout.REPORT).write_text(text)
    return sweep_dir / layout.REPORT


def _report_text(
    sweep_dir: Path,
    jobs: pd.DataFrame,
    ok: pd.DataFrame,
    tables: dict[Population, pd.DataFrame],
    galleries: dict[Population, tuple[str, str]],
    worst_images: int,
    n_boot: int,
) -> str:
    failed = jobs[jobs["status"] != "ok"]
    best = "; ".join(
        f"{p.label}: **{m}** ({d:.3f})" for p, (m, d) in ((p, best_model(t)) for p, t in tables.items())
    )
    sizes = sorted({str(s) for s in ok["image_size"]})
    epochs = sorted({str(e) for e in ok["max_epochs"]})
    parts = [
        "# covidseg segmenter comparison: Dice, IoU and HD95 per population\n",
        f"Sweep `{sweep_dir}`: {len(jobs)} job(s), {len(ok)} finished, {len(failed)} failed. "
        f"Models: {', '.join(dict.fromkeys(ok['model']))}; seeds {sorted(set(ok['seed']))}; "
        f"{'/'.join(sizes)} px; {'/'.join(epochs)} epochs. Reproduce with `covidseg-report {sweep_dir}`.\n",
        f"Best model by mean Dice per population: {best}.\n",
        "Each cell: the mean over seeds of each seed's mean over its test images ± the std over seeds; "
        "`seeds`: a 95 % Student-t interval over seeds (how much retraining moves it; none with one seed); "
        f"`patients`: a 95 % patient-bootstrap interval ({n_boot} resamples of whole test patients, each "
        "image of a set without patient_id its own patient; percentile interval). Dice and IoU on "
        "post-processed masks (higher is better); HD95 (lower is better): the 95 % Hausdorff distance "
        "between predicted and hand-drawn lung boundaries in pixels at the model's image size, an empty "
        "prediction counted as the image diagonal.\n",
    ]
    for population, table in tables.items():
        parts += [f"## {population.label}\n", markdown_population(table), ""]
    parts += [
        "## Per-image Dice\n",
        "Every test image's Dice, pooled over seeds: a box (quartiles, median) per model and population, "
        "with the images as points.\n",
        "![dice distribution](dice_distribution.png)",
        "",
        "## Worst cases\n",
        f"The {worst_images} lowest-Dice test images of each population's best model (over its seeds): "
        "its predicted contour red, the hand-drawn one green; titles give the image, its Dice and the "
        "seed.\n",
    ]
    for population, (model, name) in galleries.items():
        parts += [f"### {population.label}: {model}\n", f"![worst cases {population.label}]({name})", ""]
    if not galleries:
        parts += ["_No gallery: no model could be reloaded (see the warnings of covidseg-report)._", ""]
    parts += [
        "## Parameters and speed\n",
        "ms / image: wall time of the test pass's predictions (forward pass and post-processing, on each "
        "job's own device, without data loading or scoring) per test image; jobs sharing a machine slow "
        "each other down.\n",
        cost_table(ok),
        "",
    ]
    if len(failed):
        parts += failed_jobs(failed, ("arch", "encoder"))
    return "\n".join(parts) + "\n"
