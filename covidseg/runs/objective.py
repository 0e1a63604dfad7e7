"""The one number a training job hands to a hyperparameter search: `optimized_metric` of its metrics.json.

Hydra's sweepers read the return value of the job's task function. covidseg-train returns the metric the
config names (e.g. val/auroc, test/f1 or external/external-actualmed/auroc). A failed job
(covidseg.runs.job.run_job) or an undefined score (NaN) returns the worst value of the study's direction, -inf
when maximising, +inf when minimising: Optuna records a trial worse than any other, TPE learns to avoid
its region, and the study goes on. (NaN is no option: hydra-optuna-sweeper 1.2/1.3 stops the whole study
when a job returns NaN.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from covidseg.errors import UserError
from covidseg.models.metrics import METRIC_NAMES

LOWER_IS_BETTER = ("loss",)


def metric_choices(cfg: DictConfig) -> list[str]:
    """Every name `optimized_metric` may take for this config: val/<metric> (the best checkpoint's
    validation scores), test/<metric>, and external/<folder name>/<metric> for each data.external folder."""
    names = [*METRIC_NAMES, "loss"]
    choices = [f"{stage}/{m}" for stage in ("val", "test") for m in names]
    external = OmegaConf.select(cfg, "data.external", default=None) or []
    choices += [f"external/{Path(str(f)).name}/{m}" for f in external for m in METRIC_NAMES]
    return choices


def check_optimized_metric(cfg: DictConfig, direction: str | None = None) -> None:
    """A UserError before any training when `optimized_metric` names nothing this run will measure, or
    when an Optuna study's direction (given, else this job's hydra.sweeper.direction) contradicts it: a
    loss must be minimised, a score maximised."""
    name = cfg.get("optimized_metric")
    if name is None:
        return
    choices = metric_choices(cfg)
    if name not in choices:
        raise UserError(
            f"optimized_metric={name!r} is not measured by this run. Choose one of {choices} "
            "(external/<folder>/<metric> needs that folder in data.external)."
        )
    direction = str(direction).lower() if direction is not None else _sweeper_direction()
    if direction not in ("minimize", "maximize"):
        return
    wanted = "minimize" if name.rsplit("/", 1)[1] in LOWER_IS_BETTER else "maximize"
    if direction != wanted:
        raise UserError(
            f"optimized_metric={name} should be {wanted}d, but hydra.sweeper.direction={direction}. "
            f"Set hydra.sweeper.direction={wanted}."
        )


def _sweeper_direction() -> str | None:
    """The Optuna sweeper's direction in this job's Hydra config, if a single-objective study runs it."""
    if not HydraConfig.initialized():
        return None
    direction = OmegaConf.select(HydraConfig.get(), "sweeper.direction", default=None)
    return str(direction).lower() if isinstance(direction, str) else None


def failed_value() -> float | None:
    """What a failed job reports to the sweeper: the worst value for this job's Optuna study (-inf when
    it maximises, +inf when it minimises); None outside a study (Hydra's basic sweeper ignores it)."""
    direction = _sweeper_direction()
    if direction is None:
        return None
    return -math.inf if direction == "maximize" else math.inf


def objective(metrics: Mapping[str, Any], name: str | None) -> float | None:
    """metrics[name] as a float for the sweeper; None when nothing is optimised (optimized_metric=null) or on
    a DDP rank that did not evaluate (empty metrics). An undefined score (NaN, e.g. the AUROC of a split
    with one class) counts as a failed job: failed_value()."""
    if name is None or not metrics:
        return None
    if name not in metrics:
        raise UserError(
            f"optimized_metric={name!r} is not in this run's metrics.json "
            f"(it has {sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))})."
        )
    value = float(metrics[name])
    return failed_value() if math.isnan(value) else value
