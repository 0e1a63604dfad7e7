"""What every Hydra entry point shares: clear errors for user mistakes, sweeps that survive a failed job."""

from __future__ import annotations

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
from omegaconf import DictConfig

from covidseg.config_checks import check_config
from covidseg.errors import UserError
from covidseg.paths import CONF_DIR, register_resolvers
from covidseg.resume import plan_resume

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
    "mask_stats.csv",
    "masks_overview.png",
)


def clear_stale_outputs(folder: Path) -> None:
    """A re-run into the same folder (e.g. `make study` twice) must not leave the last run's results."""
    for name in STALE_OUTPUTS:
        (folder / name).unlink(missing_ok=True)


def run_job(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run one job. A UserError ends a single run with its message (exit 2), no traceback.

    In a multirun, any failure is written to `<job dir>/failed.json` (error + traceback) and the
    sweep goes on with the next job; `covidseg-report` lists failed jobs.
    With resume=true (covidseg.resume), a finished job returns its metrics.json without running again.
    """
    try:
        resume = plan_resume(cfg, run_dir(), run_dir() / RESOLVED_CONFIG, sweep_job=in_multirun())
    except UserError as err:
        # Also in a sweep: one re-launched with other settings is not the sweep it claims to resume.
        log.error("%s", err)
        raise SystemExit(2) from None
    if resume is not None and resume.finished is not None:
        return resume.finished
    clear_stale_outputs(run_dir())
    try:
        check_config(cfg)
        return task(cfg)
    except Exception as err:
        if not in_multirun():
            cause = user_error(err)
            if cause is not None:
                log.error("%s", cause)
                raise SystemExit(2) from None
            raise
        record = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        (run_dir() / FAILED_FILE).write_text(json.dumps(record, indent=2))
        log.error("Job failed, sweep continues (details in %s): %s", run_dir() / FAILED_FILE, record["error"])
        return None


def hydra_entry(config_name: str, task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """A console-script `main` that composes conf/<config_name>.yaml (plus command-line overrides) and runs
    `task` on it through run_job."""
    register_resolvers()

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def main(cfg: DictConfig) -> Any:
        return run_job(task, cfg)

    return main


class SweepSummary(Callback):
    """Ends a multirun with one line per failed job and a count, and exits 1 if any job failed.

    Jobs record their own outcome (metrics.json or failed.json), so this also works with launchers
    that run jobs in other processes or on other machines sharing the sweep folder.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted((p.parent for p in sweep.glob("*/.hydra")), key=lambda p: (len(p.name), p.name))
        failed = {job.name: _failure(job) for job in jobs if not (job / "metrics.json").is_file()}
        print(
            f"Sweep {sweep}: {len(jobs) - len(failed)} of {len(jobs)} job(s) finished, {len(failed)} failed."
        )
        for name, why in failed.items():
            print(f"  job {name} failed: {why}")
        if failed:
            raise SystemExit(1)


def _failure(job: Path) -> str:
    record = job / FAILED_FILE
    if record.is_file():
        return json.loads(record.read_text()).get("error", "see " + str(record))
    return "no metrics.json (killed, or still running)"
