"""Fitting any covidseg LightningModule from a Hydra config: loggers, callbacks, trainer, then evaluation."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, Checkpoint
from omegaconf import DictConfig, OmegaConf

from covidseg.checkpoints import AtomicCheckpointIO, read_checkpoint, safe_loading
from covidseg.models.divergence import DivergenceCheck
from covidseg.runs.resume_callback import ResumableState, keep_csv_history
from covidseg.runs.tracking import finish_wandb


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Every entry of a config group that has a `_target_` (callbacks, loggers), built."""
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


VAL_SCORES_KEY = "covidseg_val_scores"  # in every checkpoint: the validation scores of its epoch


class ValidationScores(Callback):
    """Stores the latest validation scores (val/*) in every checkpoint written, so the scores of the epoch
    kept as best.ckpt can be read back after fit, whatever metric chose it and whatever loggers ran."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[VAL_SCORES_KEY] = val_scores(trainer.callback_metrics)


def val_scores(metrics: dict[str, Any]) -> dict[str, float]:
    """The validation scores (val/*) among Lightning's logged metrics, as floats."""
    return {k: float(v) for k, v in metrics.items() if k.startswith("val/")}


def best_checkpoint_callback(trainer: L.Trainer) -> Checkpoint | None:
    """The checkpoint callback that chooses best.ckpt: the first with a monitor (callbacks.last_checkpoint
    has none, it keeps the latest epoch)."""
    monitored = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    return monitored[0] if monitored else trainer.checkpoint_callback


def fit_and_evaluate(
    cfg: DictConfig,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    group: str | None,
    tags: list[str],
    evaluate: Callable[[L.Trainer, str | None, dict[str, Any]], dict[str, Any]],
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """Build loggers, callbacks and trainer from cfg, fit, then `evaluate(trainer, best_ckpt, fit_info)`.

    Shared by the classifier and the segmenter. A fit whose loss or weights become NaN or infinite stops
    with a UserError naming the epoch (covidseg.models.divergence.DivergenceCheck), before anything is
    evaluated. The W&B run is always finished (failed if this raised).
    Under multi-process training (DDP) only rank 0 evaluates, and returns {} on the other ranks.

    Args:
        cfg: the job's config (trainer, logger, callbacks, tags).
        model: the LightningModule to fit.
        datamodule: its data.
        group: the W&B group of the run.
        tags: W&B tags added to cfg.tags.
        evaluate: tests and writes the results; fit_info holds best_epoch, epochs_run, best_ckpt,
            train_seconds, resumed_at_epoch and the validation scores (val/*) of the best checkpoint's epoch
            (of the last validation when no checkpoint was kept, e.g. fast_dev_run).
        resume_from: a last.ckpt to continue from (resume=true); every checkpoint carries what that needs
            (covidseg.runs.resume_callback.ResumableState).

    Returns:
        What `evaluate` returns ({} on ranks other than 0).
    """
    config = OmegaConf.to_container(cfg, resolve=True)  # as the job started: the W&B group is set below
    resumed_at = None
    if resume_from is not None:
        resumed_at = int(read_checkpoint(resume_from, "Start a new run without resume=true.")["epoch"]) + 1
    if "wandb" in (cfg.logger or {}):
        cfg.logger.wandb.group = group
        cfg.logger.wandb.tags = [*cfg.tags, *tags]
    loggers = instantiate_all(cfg.logger)
    failed = True
    try:
        trainer: L.Trainer = instantiate(
            cfg.trainer,
            logger=loggers or False,
            callbacks=[
                DivergenceCheck(),  # a NaN loss or weight stops the fit (UserError), never a result
                *instantiate_all(cfg.callbacks),
                ValidationScores(),
                ResumableState(config),
            ],
            plugins=[AtomicCheckpointIO()],
        )
        if resumed_at is not None:
            keep_csv_history(loggers, resumed_at - 1)
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        start = time.perf_counter()
        with safe_loading():  # last.ckpt is read by Lightning here, with the same restrictions
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        seconds = time.perf_counter() - start
        chooser = best_checkpoint_callback(trainer)
        best = chooser.best_model_path if chooser else ""
        kept = read_checkpoint(best, "This run just wrote it.") if best else {}
        fit_info = {
            "best_epoch": int(kept["epoch"]) if best else trainer.current_epoch,
            "epochs_run": 1 if trainer.fast_dev_run else trainer.current_epoch,
            "best_ckpt": best,
            "train_seconds": round(seconds, 2),
            **kept.get(VAL_SCORES_KEY, val_scores(trainer.callback_metrics)),
            "resumed_at_epoch": resumed_at,  # train_seconds covers the epochs from here on
        }
        if trainer.world_size > 1:
            # Test on one device: under DDP a DistributedSampler would split (and pad) the test set.
            trainer.strategy.barrier()
            rank = trainer.global_rank
            torch.distributed.destroy_process_group()  # else torchmetrics would sync with finished ranks
            if rank != 0:
                failed = False
                return {}
            trainer = L.Trainer(
                accelerator=cfg.trainer.accelerator,
                devices=1,
                precision=cfg.trainer.precision,
                logger=False,
                enable_checkpointing=False,
                default_root_dir=cfg.trainer.default_root_dir,
            )
        metrics = evaluate(trainer, best or None, fit_info)
        for logger in loggers:
            logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        failed = False
    finally:
        finish_wandb(loggers, failed)
    return metrics
