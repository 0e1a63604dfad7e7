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
from hydra.types import RunMode
from omegaconf import DictConfig

from covidseg.errors import UserError
from covidseg.outputs import file_system_error, layout
from covidseg.paths import CONF_DIR, register_resolvers
from covidseg.runs.checks import check_config
from covidseg.runs.folder_lock import RunFolderLock
from covidseg.runs.objective import failed_value, objective
from covidseg.runs.overrides import check_command_line
from covidseg.runs.resume_plan import ResumeMismatch, plan_resume

log = logging.getLogger("covidseg")


def run_dir() -> Path:
    """This Hydra job's output folder (hydra.run.dir, or the job's folder of a sweep)."""
    return Path(HydraConfig.get().runtime.output_dir)


def in_multirun() -> bool:
    """Whether this is a job of a Hydra multirun (-m), not a single run."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def user_error(err: BaseException) -> UserError | None:
    """The UserError behind `err`, also when Hydra's instantiate wrapped it."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__ or err.__context__
    return None


STALE_OUTPUTS = (
    layout.METRICS,
    layout.PREDICTIONS,
    layout.FAILED,
    layout.LUNG_ENERGY,
    layout.CAM_GALLERY,
    layout.MASK_STATS,
    layout.MASKS_OVERVIEW,
    layout.SEGMENTATION_SCORES,
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
        resume = plan_resume(cfg, run_dir(), run_dir() / layout.CONFIG_RESOLVED, sweep_job=in_multirun())
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
        (run_dir() / layout.FAILED).write_text(json.dumps(record, indent=2))
        log.error(
            "Job failed, sweep continues (details in %s): %s", run_dir() / layout.FAILED, record["error"]
        )
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
