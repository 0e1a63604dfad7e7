"""`resume=true`: continue an interrupted training run in its own folder, or skip it if it finished.

Checked before the job runs (covidseg.runs.job.run_job), before anything in the folder is touched:
- the config the first attempt recorded (config_resolved.yaml) must be this job's, apart from `resume` and
  where caches and logs live: a run continued with other settings would be neither of the two;
- a job whose metrics.json is complete has finished and is not run again (a re-launched sweep skips it);
- otherwise the job continues from checkpoints/last.ckpt. A sweep job without one starts from epoch 0 (it
  never got that far); a single run without one is an error (a wrong hydra.run.dir, most likely).
- last.ckpt itself records the config and the data it was trained with (RUN_RECORD_KEY, written by
  covidseg.runs.resume_callback.ResumableState): its config must be this job's too (config_resolved.yaml
  belongs
  to the folder, which another run may have used since), and once the data are set up (covidseg.train)
  every image, label, patient, content digest and split must be the recorded ones, in the same order.
  Otherwise the job stops naming what changed: a run continued on other data, or with images it trained
  on now in its test split, would report a result that no run ever had.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from covidseg.checkpoints import read_checkpoint
from covidseg.errors import UserError
from covidseg.models.metrics import METRIC_NAMES
from covidseg.outputs import layout
from covidseg.runs.checks import check_config

log = logging.getLogger(__name__)

RESUME_KEY = "resume"
RUN_RECORD_KEY = "covidseg_run"  # in every checkpoint: {"config": resolved config, "data": data_record()}
DATA_COLUMNS = ("path", "label", "patient_id", "digest", "split")  # what data_record keeps of every image
START_AGAIN = "Start a new run (without resume=true) in another hydra.run.dir / hydra.sweep.dir"
# Not settings of the run: where logs and caches live may differ between machines that resume it.
IGNORED_KEYS = (RESUME_KEY, "paths.log_dir")
SEGMENTER_KEY = "segmenter.ckpt_path"
IGNORED_LEAVES = ("cache_dir",)
MAX_SHOWN = 6
_ABSENT = "(absent)"


class ResumeMismatch(UserError):
    """resume=true in a folder whose run had other settings or data: the job is not the run it claims to
    continue (a sweep stops on it too, covidseg.runs.job.run_job)."""


@dataclass(frozen=True)
class Resume:
    """What a job with resume=true does: continue from `checkpoint`, start from epoch 0 (neither set), or
    nothing (`finished`: the metrics.json of a finished job)."""

    checkpoint: Path | None = None
    finished: dict[str, Any] | None = None


def resume_requested(cfg: DictConfig) -> bool:
    """Whether the config sets resume=true (absent counts as false)."""
    return bool(OmegaConf.select(cfg, RESUME_KEY, default=False))


def last_checkpoint(cfg: DictConfig, out_dir: Path) -> Path:
    """Where this job writes last.ckpt (conf/callbacks: last_checkpoint, in model_checkpoint's folder)."""
    folder = OmegaConf.select(cfg, "callbacks.last_checkpoint.dirpath", default=None) or OmegaConf.select(
        cfg, "callbacks.model_checkpoint.dirpath", default=None
    )
    return Path(folder or out_dir / layout.CHECKPOINTS) / layout.LAST


def checkpoint_to_resume(cfg: DictConfig, out_dir: Path) -> Path | None:
    """last.ckpt if this job resumes and one exists, else None (train from epoch 0)."""
    last = last_checkpoint(cfg, out_dir)
    return last if resume_requested(cfg) and last.is_file() else None


def plan_resume(cfg: DictConfig, out_dir: Path, recorded_config: Path, sweep_job: bool) -> Resume | None:
    """None without resume=true; else what to do (see the module's docstring).

    Args:
        cfg: the job's config.
        out_dir: the job's folder.
        recorded_config: the config the interrupted run recorded at its start, checked against `cfg`.
        sweep_job: a job of a sweep, which starts from epoch 0 when it has no last.ckpt yet.

    Raises:
        UserError: a different or missing recorded config, a single run without last.ckpt, or an
            unreadable last.ckpt (or one written under other settings).
    """
    if not resume_requested(cfg):
        return None
    check_config(cfg)  # resolves every interpolation, with a clear error for a bad one
    last = last_checkpoint(cfg, out_dir)
    if recorded_config.is_file():
        check_same_config(recorded_config, cfg)
    elif last.is_file():
        raise UserError(
            f"resume=true: {recorded_config} is missing, so the settings of the run in {out_dir} cannot be "
            "checked against this one's. Start a new run (without resume=true) in another hydra.run.dir."
        )
    finished = finished_metrics(out_dir)
    if finished is not None:
        log.info("resume=true: %s has finished (metrics.json), nothing to do.", out_dir)
        return Resume(finished=finished)
    if last.is_file():
        checkpoint = read_checkpoint(last, "Start a new run without resume=true.")
        check_checkpoint_config(checkpoint, last, cfg)
        log.info("resume=true: continuing %s after epoch %d (%s)", out_dir, checkpoint["epoch"], last)
        return Resume(checkpoint=last)
    if sweep_job:
        log.info("resume=true: %s has no %s yet, training from epoch 0.", out_dir, layout.LAST)
        return Resume()
    raise UserError(
        f"resume=true but {last} does not exist: {out_dir} holds no interrupted run to continue. Give the "
        "hydra.run.dir of the interrupted run, or leave out resume=true to train from epoch 0."
    )


def finished_metrics(out_dir: Path) -> dict[str, Any] | None:
    """The folder's metrics.json if it is complete (every test metric), else None."""
    try:
        metrics = json.loads((out_dir / layout.METRICS).read_text())
    except (OSError, ValueError):
        return None
    complete = isinstance(metrics, dict) and all(f"test/{m}" in metrics for m in METRIC_NAMES)
    return metrics if complete else None


def check_same_config(recorded_config: Path, cfg: DictConfig) -> None:
    """A UserError naming every setting (up to MAX_SHOWN) that differs from the recorded run's."""
    recorded = OmegaConf.to_container(OmegaConf.load(recorded_config), resolve=False)
    keep_recorded_segmenter(cfg, recorded)
    current = OmegaConf.to_container(cfg, resolve=True)
    added = _added_keys(_flatten(recorded), _flatten(current))
    if added:  # logged once per resume here, not by each comparison (check_checkpoint_config compares too)
        log.info(
            "resume=true: settings the run did not have yet, taken as they are now: %s", ", ".join(added)
        )
    differences = config_differences(recorded, current)
    if not differences:
        return
    raise ResumeMismatch(
        f"resume=true: this job's settings differ from those the run in {recorded_config.parent} was "
        f"started with ({recorded_config.name}): {_listed(differences)}. Resume with the first attempt's "
        "overrides, or start a new run (without resume=true) in another hydra.run.dir / hydra.sweep.dir."
    )


def check_checkpoint_config(checkpoint: Mapping[str, Any], path: Path, cfg: DictConfig) -> None:
    """A UserError naming the settings in which the run that wrote `checkpoint` (its RUN_RECORD_KEY) differs
    from this job, e.g. a run started later in the same folder that crashed before its first checkpoint."""
    recorded = (checkpoint.get(RUN_RECORD_KEY) or {}).get("config")
    if recorded is None:
        log.warning("%s records no config (written before covidseg recorded one): not checked.", path)
        return
    differences = config_differences(recorded, OmegaConf.to_container(cfg, resolve=True))
    if differences:
        raise ResumeMismatch(
            f"resume=true: {path} was written by a run with other settings than this job's: "
            f"{_listed(differences)}. It is not this run's checkpoint (did another run use this folder?). "
            f"{START_AGAIN}."
        )


def data_record(datamodule: Any) -> dict[str, Any] | None:
    """The data a fit sees, for its checkpoints: DATA_COLUMNS of the data module's table, in its order, and
    the SHA-1 of the segmenter checkpoint that masks them (None for raw input). None for a data module
    without such a table (the segmenter's)."""
    table = getattr(datamodule, "table", None)
    if table is None or any(column not in table for column in DATA_COLUMNS):
        return None
    record = {column: [str(value) for value in table[column]] for column in DATA_COLUMNS}
    return {**record, "segmenter": getattr(getattr(datamodule, "masks", None), "ckpt_digest", None)}


def check_same_data(checkpoint_path: Path, datamodule: Any) -> None:
    """A UserError naming what differs between the data recorded in the checkpoint a job resumes from and
    the data module's now (set up, before anything is written); see the module's docstring."""
    checkpoint = read_checkpoint(checkpoint_path, "Start a new run without resume=true.")
    recorded = (checkpoint.get(RUN_RECORD_KEY) or {}).get("data")
    if recorded is None:
        log.warning("%s records no data (written before covidseg did): not checked.", checkpoint_path)
        return
    differences = data_differences(recorded, data_record(datamodule))
    if differences:
        raise ResumeMismatch(
            f"resume=true: the data in {datamodule.root} changed since the first attempt wrote "
            f"{checkpoint_path}: {_listed(differences)}. The run cannot go on with other data or another "
            f"split. {START_AGAIN}, or restore the data as they were."
        )


def data_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What changed between two data_record()s, with examples: the segmenter, images removed or added, then
    for the images in both, other labels, patients, content or split; or, if nothing else, their order."""
    old = {path: i for i, path in enumerate(recorded["path"])}
    new = {path: i for i, path in enumerate(current["path"])}
    differences = []
    if recorded.get("segmenter") != current.get("segmenter"):
        differences.append(
            f"the segmenter checkpoint (SHA-1 {recorded.get('segmenter')} then, {current.get('segmenter')} "
            "now): the lung masks would differ"
        )
    removed = [path for path in recorded["path"] if path not in new]
    added = [path for path in current["path"] if path not in old]
    if removed:
        differences.append(f"{len(removed)} image(s) removed or left out (e.g. {_examples(removed)})")
    if added:
        differences.append(f"{len(added)} image(s) added (e.g. {_examples(added)})")
    both = [path for path in current["path"] if path in old]
    names = {"label": "label", "patient_id": "patient id", "digest": "content (SHA-1)", "split": "split"}
    for column, name in names.items():
        changed = [p for p in both if recorded[column][old[p]] != current[column][new[p]]]
        if not changed:
            continue
        p = changed[0]
        example = f"{p!r}: {recorded[column][old[p]]} then, {current[column][new[p]]} now"
        if column == "digest":  # digests say nothing to a reader: the files are the example
            example = _examples(changed)
        differences.append(f"{len(changed)} image(s) with another {name} (e.g. {example})")
    if not differences and list(recorded["path"]) != list(current["path"]):
        differences.append("the same images in another order (the batches would differ)")
    return differences


def _examples(paths: list[str], count: int = 3) -> str:
    return ", ".join(repr(p) for p in paths[:count]) + (", ..." if len(paths) > count else "")


def _listed(differences: list[str]) -> str:
    shown = "; ".join(differences[:MAX_SHOWN])
    return shown + (f" and {len(differences) - MAX_SHOWN} more" if len(differences) > MAX_SHOWN else "")


def keep_recorded_segmenter(cfg: DictConfig, recorded: Mapping[str, Any]) -> None:
    """A resumed job keeps the segmenter its run started with unless the command line names one: the
    default (conf/segmenter/default.yaml) is the newest finished segmenter run, which may have changed since.

    Args:
        cfg: the job's config, changed in place (the job then uses the recorded checkpoint).
        recorded: the run's recorded (resolved) config.
    """
    old = (recorded.get("segmenter") or {}).get("ckpt_path")
    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    if (
        old is None
        or "segmenter" not in cfg
        or any(o.split("=", 1)[0].lstrip("+~") == SEGMENTER_KEY for o in given)
    ):
        return
    cfg.segmenter.ckpt_path = old


def config_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """'key: <recorded> then, <current> now' for every dotted key whose value differs, ignoring
    IGNORED_KEYS, keys ending in IGNORED_LEAVES, and keys the recorded config does not have: settings a
    later covidseg added (e.g. eval.threshold_rule), which the resumed job takes at their current values
    (check_same_config logs them); an override of a key that does not exist is refused before
    (covidseg.runs.checks)."""
    old, new = _flatten(recorded), _flatten(current)
    added = _added_keys(old, new)
    keys = sorted(
        key
        for key in old.keys() | new.keys()
        if key not in IGNORED_KEYS
        and key not in added
        and key.rsplit(".", 1)[-1] not in IGNORED_LEAVES
        and old.get(key, _ABSENT) != new.get(key, _ABSENT)
    )
    return [f"{key}: {_show(old.get(key, _ABSENT))} then, {_show(new.get(key, _ABSENT))} now" for key in keys]


def _added_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Flattened keys the recorded config lacks (settings a later covidseg added)."""
    return sorted(key for key in new.keys() - old.keys() if not any(k.startswith(key + ".") for k in old))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _show(value: Any) -> str:
    return value if value == _ABSENT else json.dumps(value, default=str)
