"""Experiment tracking: a W&B logger that works offline by default and always finishes its run."""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


def wandb_mode() -> str:
    """online if credentials exist (WANDB_API_KEY or a ~/.netrc entry from `wandb login`), else offline.

    WANDB_MODE, when set, wins.
    """
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def wandb_logger(
    project: str,
    save_dir: str,
    group: str | None = None,
    tags: Sequence[str] = (),
    mode: str | None = None,
    name: str | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """Lightning's WandbLogger (conf/logger/wandb), offline unless W&B credentials exist (wandb_mode).

    Args:
        project: the W&B project.
        save_dir: where W&B writes its files (created); offline runs are synced from there.
        group: the W&B group (fit_and_evaluate sets it).
        tags: the run's tags.
        mode: online, offline or disabled; None: wandb_mode (WANDB_MODE, else online with credentials).
        name: the run's name; None lets W&B choose.
        **kwargs: more WandbLogger arguments.
    """
    mode = mode or wandb_mode()
    if mode == "offline":
        log.info(
            "W&B runs offline (no API key); sync later with `wandb sync %s/wandb/offline-run-*`", save_dir
        )
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project, save_dir=save_dir, group=group, tags=list(tags), mode=mode, name=name, **kwargs
    )


def finish_wandb(loggers: Sequence[object], failed: bool) -> None:
    """Close every W&B run, marking it failed if the job raised, so runs never stay 'running'."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=1 if failed else 0)
