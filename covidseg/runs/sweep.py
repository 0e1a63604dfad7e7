"""The end of a multirun: one line per failed job and a count (SweepSummary, a Hydra callback that every
entry point's config registers), and an Optuna study's objective checked once before its first trial."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from covidseg.errors import UserError
from covidseg.outputs import layout
from covidseg.runs.objective import check_optimized_metric

log = logging.getLogger("covidseg")


OPTUNA_RESULTS = "optimization_results.yaml"  # written by the Optuna sweeper at the end of a study


class SweepSummary(Callback):
    """Ends a multirun with one line per failed job and a count, and exits 1 if any job failed.

    An Optuna study is the exception: a failed trial is one of its results (e.g. a backbone that does not
    fit in memory), reported to Optuna as the worst value, so a study that finished exits 0 with its failed
    trials listed and its best value; only a study in which every trial failed exits 1.

    Jobs record their own outcome (metrics.json or failed.json), so this also works with launchers
    that run jobs in other processes or on other machines sharing the sweep folder.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check what an Optuna study optimises once, before its first trial, instead of in every trial."""
        if not _is_optuna(config) or "optimized_metric" not in config:
            return
        try:
            check_optimized_metric(config, OmegaConf.select(config, "hydra.sweeper.direction"))
        except UserError as err:
            log.error("%s", err)
            raise SystemExit(2) from None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted((p.parent for p in sweep.glob("*/.hydra")), key=lambda p: (len(p.name), p.name))
        failed = {job.name: _failure(job) for job in jobs if not (job / layout.METRICS).is_file()}
        study = _is_optuna(config)
        kind = "Optuna study" if study else "Sweep"
        unit = "trial(s)" if study else "job(s)"
        print(
            f"{kind} {sweep}: {len(jobs) - len(failed)} of {len(jobs)} {unit} finished, {len(failed)} failed."
        )
        for name, why in failed.items():
            print(f"  job {name} failed: {why}")
        if study and len(failed) < len(jobs):
            _print_best(sweep / OPTUNA_RESULTS)
        elif failed:
            raise SystemExit(1)


def _is_optuna(config: DictConfig) -> bool:
    return "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).lower()


def _print_best(results: Path) -> None:
    if not results.is_file():
        print(f"  no {results} (the study did not finish)")
        raise SystemExit(1)
    best = OmegaConf.load(results)
    if "best_value" in best:
        print(f"  best value {best.best_value} with {OmegaConf.to_container(best.best_params)}")
    print(f"  results: {results}")


def _failure(job: Path) -> str:
    record = job / layout.FAILED
    if record.is_file():
        return json.loads(record.read_text()).get("error", "see " + str(record))
    return "no metrics.json (killed, or still running)"
