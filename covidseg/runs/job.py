"""What every Hydra entry point shares: clear errors for user mistakes, sweeps that survive a failed job."""

from __future__ import annotations

import functools
import json
import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from covidseg.errors import UserError
from covidseg.outputs import file_system_error
from covidseg.paths import CONF_DIR, register_resolvers
from covidseg.runs.checks import check_config
from covidseg.runs.folder_lock import RunFolderLock
from covidseg.runs.objective import check_optimized_metric, failed_value, objective
from covidseg.runs.overrides import check_command_line
from covidseg.runs.resume_plan import ResumeMismatch, plan_resume

log = logging.getLogger("covidseg")

FAILED_FILE = "failed.json"
RESOLVED_CONFIG = (
    "config_resolved.yaml"  # the job's config with every interpolation resolved (absolute paths)
)


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def user_error(err: BaseException) -> UserError | None:
    """The UserError behind `err`, also when Hydra's instantiate wrapped it."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__ or err.__context__
    return None


STALE_OUTPUTS = (
    "metrics.json",
    "predictions.csv",
    FAILED_FILE,
    "lung_energy.json",
    "cam_gallery.npz",
    "mask_stats.csv",
    "masks_overview.png",
    "segmentation_scores.csv",
)


def clear_stale_outputs(folder: Path) -> None:
    """A re-run into the same folder (e.g. `make study` twice) must not leave the last run's results."""
    for name in STALE_OUTPUTS:
        (folder / name).unlink(missing_ok=True)


def run_job(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run one job and return what `task` returns (a sweeper's objective). A UserError ends a single run
    with its message (exit 2), no traceback.

    In a multirun, any failure is written to `<job dir>/failed.json` (error + traceback), the job returns
    the worst value of an Optuna study's direction (covidseg.runs.objective.failed_value; None for other
    sweepers) and the sweep goes on with the next job; `covidseg-report` lists failed jobs.
    With resume=true (covidseg.runs.resume_plan), a finished job is not run again; its metrics.json gives
    the value.
    One job at a time in a folder (covidseg.runs.folder_lock): a second job started in it exits 2 naming
    the first.
    """
    try:
        lock = RunFolderLock(run_dir())
    except UserError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    with lock:
        return _run_locked_job(task, cfg)


def _run_locked_job(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    try:
        resume = plan_resume(cfg, run_dir(), run_dir() / RESOLVED_CONFIG, sweep_job=in_multirun())
    except UserError as err:
        # Also in a sweep: one re-launched with other settings is not the sweep it claims to resume.
        log.error("%s", err)
        raise SystemExit(2) from None
    if resume is not None and resume.finished is not None:  # what the job returned when it ran
        return objective(resume.finished, cfg.get("optimized_metric"))
    clear_stale_outputs(run_dir())
    try:
        check_config(cfg)
        return task(cfg)
    except Exception as err:
        # Other data than a resumed run's stop a sweep too, as other settings do (plan_resume, above).
        if not in_multirun() or isinstance(user_error(err), ResumeMismatch):
            cause = user_error(err) or file_system_error(err)
            if cause is not None:
                log.error("%s", cause)
                raise SystemExit(2) from None
            raise
        record = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        (run_dir() / FAILED_FILE).write_text(json.dumps(record, indent=2))
        log.error("Job failed, sweep continues (details in %s): %s", run_dir() / FAILED_FILE, record["error"])
        return failed_value()


def hydra_entry(config_name: str, task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """A console-script `main` that composes conf/<config_name>.yaml (plus command-line overrides)
    and runs `task` on it through run_job; the task's return value is the job's return value for Hydra's
    sweeper. The config path is absolute (CONF_DIR, inside the installed package); users add their own
    config folders with --config-dir or hydra.searchpath. A command line whose overrides do not compose
    (a mistyped option or config name) exits 2 with one line naming the close match
    (covidseg.runs.overrides)."""
    register_resolvers()

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def main(cfg: DictConfig) -> Any:
        return run_job(task, cfg)

    @functools.wraps(main)
    def checked_main() -> Any:
        check_command_line(config_name)
        return main()

    return checked_main


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
        failed = {job.name: _failure(job) for job in jobs if not (job / "metrics.json").is_file()}
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
    record = job / FAILED_FILE
    if record.is_file():
        return json.loads(record.read_text()).get("error", "see " + str(record))
    return "no metrics.json (killed, or still running)"
