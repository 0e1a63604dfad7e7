"""The prediction tables the report's intervals come from, per model (backbone x input).

Internal test split: one table per seed, the job's predictions.csv; with patient-level K-fold
cross-validation the K folds' out-of-fold predictions of one seed pooled into one table, checked to hold
every image exactly once. External set <name>: one table per job (seed, fold), its predictions_<name>.csv;
every job predicts the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from covidseg.errors import UserError
from covidseg.outputs import layout, read_csv
from covidseg.report.collect import run_key, select_jobs

SIZE_COLUMNS = ("n_train", "n_val", "n_test")


@dataclass(frozen=True)
class TestSet:
    """One model's prediction tables on one test set, keyed like the tables to pair them across inputs.

    keys: seed (internal) or (seed, fold) (external); jobs: the job names behind each table."""

    tables: dict[object, pd.DataFrame]
    jobs: dict[object, list[str]]


def read_predictions(job: pd.Series, name: str | None) -> pd.DataFrame:
    """A finished job's predictions.csv (`name` None) or predictions_<name>.csv (external set `name`).

    Raises:
        UserError: the file is missing.
    """
    path = Path(job["dir"]) / layout.predictions_file(name)
    if not path.is_file():
        raise UserError(
            f"{path} is missing although job {job['job']} finished; rerun that job "
            "(covidseg-train writes it next to metrics.json)."
        )
    return read_csv(path)


def external_tables(jobs: pd.DataFrame, backbone: str, input_: str, name: str) -> TestSet:
    """(seed, fold) -> the job's predictions on external set `name`, for the jobs that evaluated it.

    Args:
        jobs: the sweep's jobs; only finished ones are read.
        backbone: the model's backbone.
        input_: the model's data.input (raw, segmented, lungs_removed).
        name: the external set (its folder name).
    """
    group = select_jobs(jobs[jobs["status"] == "ok"], backbone, input_)
    tables, names = {}, {}
    for _, job in group.iterrows():
        if (Path(job["dir"]) / layout.predictions_file(name)).is_file():
            tables[run_key(job)] = read_predictions(job, name)
            names[run_key(job)] = [job["job"]]
    return TestSet(tables, names)


def internal_tables(jobs: pd.DataFrame, backbone: str, input_: str) -> TestSet:
    """seed -> the test predictions of that seed; with folds, its K folds' out-of-fold predictions pooled.

    `jobs` is the whole sweep, failed jobs included, so that a missing fold can be named."""
    group = select_jobs(jobs, backbone, input_)
    ok = group[group["status"] == "ok"]
    tables, names = {}, {}
    for seed in sorted(ok["seed"].unique()):
        runs = group[group["seed"] == seed]
        if runs["folds"].isna().all():
            job = runs[runs["status"] == "ok"].iloc[0]
            tables[seed], names[seed] = read_predictions(job, None), [job["job"]]
        else:
            tables[seed], names[seed] = pool_folds(runs, f"{backbone} / {input_} / seed {seed}")
    return TestSet(tables, names)


def pool_folds(runs: pd.DataFrame, model: str) -> tuple[pd.DataFrame, list[str]]:
    """The out-of-fold test predictions of the K fold jobs of one model and seed, stacked.

    Refuses (UserError naming the jobs) a mix of fold and non-fold jobs, different K, a fold that is
    missing or failed, an image tested by two folds, or a pooled set that is not the whole data set."""
    if runs["folds"].isna().any() or runs["folds"].nunique() != 1:
        raise UserError(
            f"{model}: jobs {list(runs['job'])} mix data.folds settings ({list(runs['folds'])}); pool "
            "only the folds of one K-fold cross-validation (sweep data.fold=0,...,K-1 with one data.folds)."
        )
    k = int(runs["folds"].iloc[0])
    by_fold = {int(f): job for f, job in zip(runs["fold"], runs.itertuples())}
    missing = [f for f in range(k) if f not in by_fold]
    failed = [f"fold {f} (job {by_fold[f].job})" for f in sorted(by_fold) if by_fold[f].status != "ok"]
    if missing or failed:
        raise UserError(
            f"{model}: the out-of-fold predictions cannot be pooled: "
            + "; ".join(
                ([f"no job for fold(s) {missing} of data.folds={k}"] if missing else [])
                + ([f"{', '.join(failed)} did not finish"] if failed else [])
            )
            + ". Run the missing fold(s) into this sweep folder (data.fold=<i>), or report a sweep "
            "without them."
        )
    frames = []
    for f in range(k):
        job = runs[runs["fold"] == f].iloc[0]
        frames.append(read_predictions(job, None).assign(_job=job["job"]))
    pooled = pd.concat(frames, ignore_index=True)
    twice = pooled[pooled["path"].duplicated(keep=False)]
    if len(twice):
        first = twice.iloc[0]["path"]
        raise UserError(
            f"{model}: {twice['path'].nunique()} image(s) were tested by more than one fold, e.g. {first} "
            f"by jobs {sorted(twice[twice['path'] == first]['_job'])}; the folds must not overlap "
            "(one data.folds, one seed, the same data for every fold)."
        )
    expected = _dataset_sizes(runs)
    if len(expected) == 1 and len(pooled) != next(iter(expected)):
        raise UserError(
            f"{model}: the {k} folds tested {len(pooled)} images, but each job's data set holds "
            f"{next(iter(expected))} (n_train + n_val + n_test); jobs {list(runs['job'])} must test "
            "every image once."
        )
    return pooled.drop(columns="_job"), [str(j) for j in runs.sort_values("fold")["job"]]


def _dataset_sizes(runs: pd.DataFrame) -> set[int]:
    if not set(SIZE_COLUMNS) <= set(runs.columns):
        return set()
    sizes = runs[list(SIZE_COLUMNS)].dropna()
    return {int(v) for v in sizes.sum(axis=1)}


def pooled_summary(test_sets: dict[tuple[str, str], TestSet]) -> list[str]:
    """Lines for the report: how many images and patients the pooled out-of-fold sets hold."""
    described: dict[tuple, list[str]] = {}
    for (backbone, input_), test_set in test_sets.items():
        for seed, table in test_set.tables.items():
            counts = (len(table), table["patient_id"].nunique(), frozenset(table["path"]))
            described.setdefault(counts, []).append(f"{backbone} / {input_} / seed {seed}")
    lines = []
    for (images, patients, _), models in described.items():
        who = "every model and seed" if len(described) == 1 else ", ".join(models)
        lines.append(
            f"- {images} images, {patients} patients, each tested exactly once (checked: every fold "
            f"present, no image tested by two folds, as many images as the data set holds): {who}."
        )
    return lines
