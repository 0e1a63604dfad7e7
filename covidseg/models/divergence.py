"""A diverged model is an error, not a result: NaN or infinite losses, weights and outputs stop the job where
they appear, with a message that says so.

Without these checks a run whose learning rate is far too high trains on to the end, keeps a NaN epoch's
checkpoint, and writes a complete metrics.json (NaN probabilities make every threshold test false, so the
model "predicts" the negative class and even reports an AUROC). Training stops in the epoch that diverged
(DivergenceCheck, for the classifier and the segmenter alike); a checkpoint with NaN weights is refused when
it is loaded (covidseg.checkpoints.load_module, through which eval, predict and export all go); outputs are
checked where they are turned into results (testing, predicting, export parity).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from covidseg.errors import UserError


def non_finite(tensors: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point tensors in `tensors` (a state_dict) that hold a NaN or an infinity.

    One synchronisation for all of them: the per-tensor flags are stacked on their device first.
    """
    floating = {k: t for k, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point()}
    if not floating:
        return []
    finite = torch.stack([torch.isfinite(t).all() for t in floating.values()]).cpu()
    return [name for name, ok in zip(floating, finite.tolist()) if not ok]


def check_finite_outputs(probs: np.ndarray | torch.Tensor, names: list[str], source: str) -> None:
    """Refuse network outputs that are NaN or infinite (one row per image, named by `names` if given).

    With finite weights (checked when a checkpoint is loaded) this is a numerical overflow, e.g. of a
    half-precision run, and every such row would be reported as the negative class.
    """
    array = probs.detach().float().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if array.size == 0:  # no readable image: nothing to check (the caller says so)
        return
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    if bad.any():
        example = f" (e.g. {names[int(np.flatnonzero(bad)[0])]})" if len(names) == len(array) else ""
        raise UserError(
            f"{source} gives NaN or infinite outputs for {int(bad.sum())} of {len(array)} image(s)"
            f"{example}, so there is no result to report. Its weights are finite: run it in full "
            "precision (trainer.precision=32-true), or retrain with a lower learning rate "
            "(model.optimizer.lr)."
        )


class DivergenceCheck(Callback):
    """Stops a fit with a UserError naming the epoch and the learning rate as soon as the training loss, the
    validation loss, a weight or a batch-norm statistic is NaN or infinite.

    Checked after every validation (before the checkpoint callbacks, which Lightning always runs last, so
    a diverged epoch is never saved) and at every training epoch's end (runs that validate less often). The
    training loss of each batch is folded into one flag on the training device: no synchronisation per batch.
    A loss can stay finite while the weights have run off (batch norm rescales huge activations in training
    mode), which is why the weights, buffers and validation loss are checked too.
    """

    def __init__(self) -> None:
        self._finite: torch.Tensor | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finite = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            finite = torch.isfinite(loss.detach()).all()
            self._finite = finite if self._finite is None else self._finite & finite

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer, pl_module)

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Raise the UserError if anything has diverged so far."""
        problems = []
        if self._finite is not None and not bool(self._finite):
            problems.append("the training loss")
        for key, value in trainer.callback_metrics.items():
            if key.endswith("/loss") and not key.startswith("train/") and not torch.isfinite(value).all():
                problems.append(f"{key} (now {float(value)})")
        weights = non_finite(pl_module.state_dict())
        if weights:
            problems.append(f"{len(weights)} weight tensor(s) (e.g. {weights[0]})")
        if problems:
            raise UserError(diverged_message(trainer, pl_module, problems))


def diverged_message(trainer: L.Trainer, pl_module: L.LightningModule, problems: list[str]) -> str:
    """One line: where training diverged, what is non-finite, and what to change."""
    groups = trainer.optimizers[0].param_groups if trainer.optimizers else [{}]
    lr = groups[0].get("initial_lr", groups[0].get("lr"))
    default = getattr(pl_module, "default_lr", None)
    if lr is None:
        lower = "lower model.optimizer.lr"
    else:
        suggested = min(lr / 10, default) if default else lr / 10
        lower = f"lower it, e.g. model.optimizer.lr={suggested:g}"
    rate = f"model.optimizer.lr={lr:g}" if lr is not None else "model.optimizer.lr"
    return (
        f"Training diverged in epoch {trainer.current_epoch} (step {trainer.global_step}): "
        f"{' and '.join(problems)} became NaN or infinite. The likely cause is a learning rate too high for "
        f"this model and data ({rate}): {lower}, or clip gradients with trainer.gradient_clip_val=1.0. "
        "The run stopped without metrics.json; its checkpoints are not results."
    )
