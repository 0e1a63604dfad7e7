"""The jobs of a sweep: one row per job folder with its settings, status and metrics, and the groups
(model x input) the report compares. A job is one (backbone, input, seed, fold); `fold` is empty
without patient-level K-fold cross-validation (data.folds).

A model is a backbone trained at one image size for one number of epochs (trainer.max_epochs): when the
sweep's jobs differ in these, each (backbone, image size, epochs) is a model of its own, named so
(`model` column, e.g. "resnet18 · 224 px"), so that jobs trained differently are never averaged together
or paired as raw vs segmented."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from covidseg.errors import UserError
from covidseg.outputs import layout

INPUT_ORDER = ["raw", "segmented", "lungs_removed"]
# What a report that cannot write into the sweep folder tells the user to do.
REPORT_FIX = "copy the sweep folder to a writable disk and run covidseg-report on the copy"


def job_configs(sweep_dir: Path) -> list[Path]:
    """The .hydra/config.yaml of every job folder of a sweep, in Hydra's job order.

    Raises:
        UserError: the folder holds no job folder.
    """
    found = sorted(sweep_dir.glob("*/.hydra/config.yaml"), key=lambda p: _job_key(p.parents[1].name))
    if not found:
        raise UserError(
            f"{sweep_dir} holds no job folders (<job>/.hydra/config.yaml). Give the folder of a "
            "`covidseg-train -m` sweep (hydra.sweep.dir), e.g. logs/train/multiruns/<date>."
        )
    return found


def job_outcome(job: Path) -> dict[str, Any]:
    """A job's `status` (ok: it wrote metrics.json; failed) with its scalar metrics, or its `error`."""
    if (job / layout.METRICS).is_file():
        metrics = json.loads((job / layout.METRICS).read_text())
        return {"status": "ok", **{k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}}
    if (job / layout.FAILED).is_file():
        return {"status": "failed", "error": json.loads((job / layout.FAILED).read_text())["error"]}
    return {"status": "failed", "error": "no metrics.json (job killed or still running)"}


def collect_jobs(sweep_dir: Path) -> pd.DataFrame:
    """One row per job folder (a folder with .hydra/config.yaml): its settings, status and metrics.

    Raises:
        UserError: the jobs were trained on different classes, or two jobs are the same model, input, seed
            and fold.
    """
    rows, classes = [], {}
    for config_file in job_configs(sweep_dir):
        job = config_file.parents[1]
        cfg = OmegaConf.load(config_file)
        classes.setdefault(tuple(cfg.data.classes), []).append(job.name)
        row: dict[str, Any] = {
            "job": job.name,
            "dir": str(job),
            "backbone": cfg.model.backbone,
            "input": cfg.data.input,
            "seed": int(cfg.seed),
            "image_size": cfg.data.get("image_size"),
            "max_epochs": OmegaConf.select(cfg, "trainer.max_epochs", default=None),
        }
        row.update(job_outcome(job))
        if row["status"] == "ok":
            confusion = json.loads((job / layout.METRICS).read_text()).get("test/confusion")
            row["test/confusion"] = json.dumps(confusion)
        # The config says which fold a job was, also for jobs that failed before writing metrics.
        folds = cfg.data.get("folds")
        row.update(
            folds=int(folds) if folds else None, fold=int(cfg.data.get("fold") or 0) if folds else None
        )
        rows.append(row)
    if len(classes) > 1:
        listed = "; ".join(f"{list(c)} in jobs {names}" for c, names in classes.items())
        raise UserError(
            f"{sweep_dir}: the jobs were trained on different classes ({listed}); a report compares models "
            "of "
            "one task. Report each task's jobs from a folder of their own."
        )
    jobs = pd.DataFrame(rows)
    jobs["folds"], jobs["fold"] = jobs["folds"].astype("Int64"), jobs["fold"].astype("Int64")
    jobs.insert(jobs.columns.get_loc("backbone") + 1, "model", model_names(jobs))
    keys = jobs[["model", "input", "seed", "fold"]].fillna({"fold": -1})
    repeated = jobs[keys.duplicated(keep=False)]
    if len(repeated):
        raise UserError(
            f"{sweep_dir}: jobs {list(repeated['job'])} share backbone/input/seed/fold (and image size and "
            "epochs); the report compares backbones x input over seeds (and folds) only. Sweep other "
            "settings in separate folders."
        )
    return jobs


# The settings that make jobs of one backbone different models, and how a model's name shows them.
MODEL_SETTINGS = {"image_size": "{} px", "max_epochs": "{} epochs"}


def differing_settings(jobs: pd.DataFrame) -> list[str]:
    """The MODEL_SETTINGS in which the sweep's jobs differ."""
    return [s for s in MODEL_SETTINGS if jobs[s].astype(str).nunique() > 1]


def model_names(jobs: pd.DataFrame, network: str = "backbone") -> list[str]:
    """Each job's model: its `network` column (the backbone; a segmenter's architecture and encoder),
    followed by its image size and epochs where the jobs differ in them."""
    differing = differing_settings(jobs)
    return [
        " · ".join([str(job[network]), *(MODEL_SETTINGS[s].format(job[s]) for s in differing)])
        for _, job in jobs.iterrows()
    ]


def _job_key(name: str) -> tuple[int, str]:
    # Hydra numbers jobs 0, 1, ..., 10: numeric order, not text order.
    return (int(name), "") if name.isdigit() else (sys.maxsize, name)


def finished(jobs: pd.DataFrame) -> pd.DataFrame:
    """The jobs that wrote their metrics."""
    return jobs[jobs["status"] == "ok"]


def select_jobs(ok: pd.DataFrame, model: str, input_: str) -> pd.DataFrame:
    """The jobs (one per seed, or per seed and fold) of one model (model_names) x input."""
    return ok[(ok["model"] == model) & (ok["input"] == input_)]


def run_key(job: pd.Series) -> tuple[int, int]:
    """(seed, fold) of a job, fold -1 without folds: raw and segmented jobs with one key share a split."""
    return int(job["seed"]), -1 if pd.isna(job["fold"]) else int(job["fold"])


def uses_folds(jobs: pd.DataFrame) -> bool:
    """Whether any finished job of the sweep is one fold of a K-fold cross-validation."""
    return bool(finished(jobs)["folds"].notna().any())


def external_sets(jobs: pd.DataFrame) -> list[str]:
    """Names of the external test sets in the finished jobs' metrics.json (external/<name>/<metric>) or
    predictions_<name>.csv files, in order of appearance."""
    names = [c.split("/")[1] for c in jobs.columns if c.startswith("external/") and c.count("/") == 2]
    for job_dir in finished(jobs)["dir"]:
        names += [
            p.stem.removeprefix("predictions_") for p in sorted(Path(job_dir).glob("predictions_*.csv"))
        ]
    return list(dict.fromkeys(names))


def compared_groups(jobs: pd.DataFrame) -> list[tuple[str, str]]:
    """(model, input) of the groups with a finished job: models in sweep order, then INPUT_ORDER."""
    ok = finished(jobs)
    models = list(dict.fromkeys(ok["model"]))
    inputs = [i for i in INPUT_ORDER if i in set(ok["input"])]
    return [(m, i) for m in models for i in inputs if len(select_jobs(ok, m, i))]
