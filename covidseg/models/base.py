"""What the classifier and the segmenter share: optimizer and scheduler set-up from config factories."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR

from covidseg.errors import UserError

SCHEDULER_INTERVALS = ("epoch", "step")


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_share: float = 0.1, final_share: float = 0.0
) -> LambdaLR:
    """Linear warm-up over the first `warmup_share` of the optimizer steps, then cosine decay of the learning
    rate down to `final_share` of it at the last step. For `model.scheduler_interval: step`.

    Warm-up keeps the first updates small while the batch-norm statistics and Adam's moment estimates of a
    network trained from scratch are still noise; the decay lets the last epochs settle instead of jumping
    between solutions, so the epoch kept as best depends less on luck.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        total_steps: optimizer steps of the whole fit (at least 1 is used).
        warmup_share: the share of the steps spent warming up, in [0, 1).
        final_share: the learning rate at the last step, as a share of the optimizer's, in [0, 1].

    Raises:
        UserError: a share is out of its range.
    """
    if not 0 <= warmup_share < 1 or not 0 <= final_share <= 1:
        raise UserError(
            f"model.scheduler: warmup_share must be in [0, 1) and final_share in [0, 1], got "
            f"{warmup_share} and {final_share}. Set e.g. model.scheduler.warmup_share=0.1."
        )
    total = max(1, int(total_steps))
    warmup = round(warmup_share * total)

    # A plain function, not a callable object: LambdaLR then stores nothing of it in the checkpoint.
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_share + (1 - final_share) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


class BaseTask(L.LightningModule):
    """A LightningModule whose optimizer and scheduler come from `_partial_` config factories.

    The factories are not hyperparameters: a checkpoint rebuilds the network without them.
    `scheduler_interval` says when the scheduler steps: "epoch" (it may read `scheduler_monitor`, as
    ReduceLROnPlateau does) or "step" (after every optimizer step; the factory is then also given
    `total_steps`, the optimizer steps of the whole fit, as warmup_cosine and OneCycleLR take them).
    """

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer] | None,
        scheduler: Callable[..., Any] | None,
        scheduler_monitor: str,
        default_lr: float,
        scheduler_interval: str = "epoch",
    ):
        super().__init__()
        if scheduler_interval not in SCHEDULER_INTERVALS:
            raise UserError(
                f"model.scheduler_interval must be one of {list(SCHEDULER_INTERVALS)}, got "
                f"{scheduler_interval!r}. Set e.g. model.scheduler_interval=step."
            )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.scheduler_interval = scheduler_interval
        self.default_lr = default_lr

    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=self.default_lr))
        optimizer = factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        steps = (
            {"total_steps": int(self.trainer.estimated_stepping_batches)}
            if self.scheduler_interval == "step"
            else {}
        )
        try:
            scheduler = self.scheduler_factory(optimizer=optimizer, **steps)
        except TypeError as err:
            # Typically two configs' scheduler keys merged (recipe=stable over model=classifier_plateau).
            raise UserError(
                f"model.scheduler cannot be built ({err}). If a recipe and model=classifier_plateau both "
                f"set a scheduler, use one of them; a step scheduler needs model.scheduler_interval=step."
            ) from err
        # monitor is only read by ReduceLROnPlateau-like schedulers.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": self.scheduler_monitor,
                "interval": self.scheduler_interval,
            },
        }
