"""What a resumed training needs beyond Lightning's checkpoint to continue exactly as if never stopped.

`trainer.fit(ckpt_path=last.ckpt)` restores the weights, optimizer, schedulers, epoch and the callbacks' own
state (best checkpoint, early-stopping counter). It does not restore:
- the global random generators (torch, NumPy, Python): they draw the shuffling order of the train loader
  and the augmentation parameters, so a resumed run would see other batches;
- `trainer.should_stop`: a run stopped early and killed while testing would train another epoch;
- the ReduceLROnPlateau step of the epoch the checkpoint was written in: Lightning writes last.ckpt in
  `on_train_epoch_end`, before it steps plateau schedulers, and skips that step on resume.
`ResumableState` writes all three into every checkpoint, as tensors and plain numbers so that the file still
loads with `weights_only=True`, and puts them back when a fit resumes. It also records the job's resolved
config and the data the fit sees (covidseg.runs.resume_plan.RUN_RECORD_KEY), so that a resume can check
that it
continues this checkpoint's run on this checkpoint's data.
"""

from __future__ import annotations

import csv
import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, Logger

from covidseg.runs.resume_plan import RUN_RECORD_KEY, data_record

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "covidseg_resume"


def capture_random_state() -> dict[str, Any]:
    """The global torch, NumPy and Python generators' states (and CUDA's, where used) as tensors/lists."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any]) -> None:
    """Set the global generators to a `capture_random_state()` result."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _plateau_monitors(trainer: L.Trainer) -> dict[str, float]:
    """The current value of every metric an epoch-wise ReduceLROnPlateau scheduler watches."""
    values = {}
    for config in trainer.lr_scheduler_configs:
        value = trainer.callback_metrics.get(config.monitor) if config.reduce_on_plateau else None
        if value is not None and config.interval == "epoch":
            values[config.monitor] = float(value)
    return values


class ResumableState(L.Callback):
    """Saves the random state, `should_stop` and a pending plateau step into every checkpoint and restores
    them when `trainer.fit(ckpt_path=...)` resumes (see the module's docstring).

    The random state is put back as soon as the checkpoint is loaded: Lightning creates the train loader's
    iterator (which already draws the shuffling order and augments the first batch) before any hook of the
    fit loop runs. Nothing in between draws random numbers (the sanity check runs in isolate_rng).
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        """config: the job's resolved config (plain containers), recorded in every checkpoint."""
        self.pending: dict[str, Any] | None = None
        self.config = config
        self.data: dict[str, Any] | None = None

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "random": capture_random_state(),
            "should_stop": bool(trainer.should_stop),
            "epoch": int(trainer.current_epoch),
            "plateau_monitors": _plateau_monitors(trainer),
        }
        if self.data is None:  # the data module's table is set up once, before fit
            self.data = data_record(trainer.datamodule)
        checkpoint[RUN_RECORD_KEY] = {"config": self.config, "data": self.data}

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            log.warning(
                "The checkpoint holds no random state (written before covidseg saved it): the resumed run "
                "continues, but with other batches and augmentations than an uninterrupted one."
            )
            return
        restore_random_state(state["random"])
        self.pending = state

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The optimizer and scheduler states are loaded by now (after on_load_checkpoint).
        state, self.pending = self.pending, None
        if state is None:
            return
        for config in trainer.lr_scheduler_configs:
            value = state["plateau_monitors"].get(config.monitor)
            due = (state["epoch"] + 1) % config.frequency == 0
            if config.reduce_on_plateau and config.interval == "epoch" and value is not None and due:
                pl_module.lr_scheduler_step(config.scheduler, torch.tensor(value))
        if state["should_stop"]:
            trainer.should_stop = True


def keep_csv_history(loggers: list[Logger], last_epoch: int) -> None:
    """Keep the interrupted attempt's CSV rows up to `last_epoch` (the checkpoint's) when a fit resumes.

    Lightning's CSV writer deletes an existing metrics.csv when it starts; the rows are written back and
    the writer continues below their columns. Rows of epochs after the checkpoint are dropped: the resumed
    run logs those epochs again.
    """
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            columns = sorted(reader.fieldnames or [])  # the writer keeps its columns sorted
            rows = [row for row in reader if not row.get("epoch") or float(row["epoch"]) <= last_epoch]
        writer = logger.experiment  # creating the writer deletes the file
        with path.open("w", newline="") as file:
            out = csv.DictWriter(file, fieldnames=columns)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = columns
