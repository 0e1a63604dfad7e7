"""What the classifier and the segmenter share: optimizer and scheduler set-up from config factories."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch


class BaseTask(L.LightningModule):
    """A LightningModule whose optimizer and scheduler come from `_partial_` config factories.

    The factories are not hyperparameters: a checkpoint rebuilds the network without them.
    """

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer] | None,
        scheduler: Callable[..., Any] | None,
        scheduler_monitor: str,
        default_lr: float,
    ):
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.default_lr = default_lr

    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=self.default_lr))
        optimizer = factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        # monitor is only read by ReduceLROnPlateau-like schedulers; the others step once per epoch.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.scheduler_monitor, "interval": "epoch"},
        }
