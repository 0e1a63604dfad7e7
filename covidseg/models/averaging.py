"""An exponential moving average (EMA) of the weights, sized to the run (Lightning's WeightAveraging).

Validation, the checkpoints (best.ckpt's `state_dict`) and the test all use the averaged weights; the raw
weights travel in the checkpoint's `current_model_state` only so that a resumed fit could go on.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_avg_fn

from covidseg.errors import UserError


class EMA(WeightAveraging):
    """EMA of all weights and batch-norm statistics, updated after every optimizer step.

    `horizon` is the share of the fit's optimizer steps the average spans (its time constant,
    1 / (1 - decay)), at least `min_steps`. A fixed decay such as Lightning's EMAWeightAveraging default of
    0.999 spans 1000 steps, more than a whole quick study (about 110 steps): the average would barely leave
    the initial weights.
    """

    def __init__(self, horizon: float = 0.1, min_steps: int = 5):
        if not 0 < horizon <= 1:
            raise UserError(f"callbacks.ema.horizon must be in (0, 1], got {horizon}. Set e.g. 0.1.")
        super().__init__()
        self.horizon = horizon
        self.min_steps = min_steps
        self.decay: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            steps = float(trainer.estimated_stepping_batches)
            if not math.isfinite(steps):
                raise UserError("The weight EMA needs a finite fit: set trainer.max_epochs (e.g. 12).")
            span = max(float(self.min_steps), self.horizon * steps)
            self.decay = 1.0 - 1.0 / span
            self._kwargs["avg_fn"] = get_ema_avg_fn(self.decay)
            # Callbacks are set up before the model moves to its device: without this the average would
            # stay on the CPU and every step would copy all weights off the GPU.
            if self._device is None:
                self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Testing a checkpoint after the fit (trainer.test(ckpt_path=best)): its state_dict already holds the
        # averaged weights. WeightAveraging's hook would load the raw weights (current_model_state) into the
        # model instead, so the test would not measure the weights best.ckpt was chosen for.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
