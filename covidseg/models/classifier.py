"""Stage 2: any timm backbone as a chest X-ray classifier (LightningModule) and its metrics."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    AUROC,
    Accuracy,
    ConfusionMatrix,
    F1Score,
    Precision,
    Recall,
    Specificity,
)

from covidseg.checkpoints import load_module, operating_point
from covidseg.errors import UserError
from covidseg.models.base import BaseTask
from covidseg.models.metrics import POSITIVE_THRESHOLD, predicted_positive
from covidseg.models.pretrained import check_overlap, read_weights, weights_path

log = logging.getLogger(__name__)


def check_backbone(name: str) -> None:
    """Fail fast, with close matches, on a name timm does not know."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else " See timm.list_models() for the names."
        raise UserError(f"model.backbone={name!r} is not a timm model.{hint}")


def create_backbone(
    name: str,
    pretrained: bool,
    num_outputs: int,
    in_chans: int,
    pretrained_file: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """timm.create_model with a readable error for unknown names.

    `pretrained_file` (model.pretrained_file): start from the weights in that local file instead of timm's
    download (timm's `pretrained_cfg_overlay=dict(file=...)`); timm adapts the first convolution to
    `in_chans` and drops the file's classification head when the number of outputs differs.

    Args:
        name: model.backbone, a timm model name.
        pretrained: start from timm's pretrained weights (ignored with `pretrained_file`).
        num_outputs: outputs of the classification head (1 logit for two classes).
        in_chans: input channels (1: grayscale).
        pretrained_file: a local weights file; None: timm's weights or none.
        **kwargs: more timm.create_model arguments (e.g. drop_rate).

    Raises:
        UserError: an unknown name, or a weights file that does not fit the architecture.
    """
    check_backbone(name)
    if pretrained_file is None:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=num_outputs, in_chans=in_chans, **kwargs
        )
    option = "model.pretrained_file"
    # Read once here too: timm loads it without checking that any name matches (strict=False once the
    # head is dropped), so weights of another architecture would silently leave the network random.
    state = read_weights(pretrained_file, option)
    try:
        net = timm.create_model(
            name,
            pretrained=True,
            pretrained_cfg_overlay={"file": str(weights_path(pretrained_file, option))},
            num_classes=num_outputs,
            in_chans=in_chans,
            **kwargs,
        )
    except RuntimeError as err:  # e.g. size mismatches from load_state_dict
        message = " ".join(str(err).split())[:300]
        raise UserError(
            f"{option}={pretrained_file} does not fit model.backbone={name} ({message}). "
            "Give weights of the same architecture."
        ) from err
    heads = net.pretrained_cfg.get("classifier") or ()
    heads = [heads] if isinstance(heads, str) else heads
    check_overlap(net.state_dict(), state, option, ignore=[f"{h}." for h in heads])
    return net


def metric_task(num_classes: int) -> dict[str, Any]:
    """torchmetrics' task arguments: binary (positive = class 1) or multiclass."""
    return {"task": "binary"} if num_classes == 2 else {"task": "multiclass", "num_classes": num_classes}


def classification_metrics(num_classes: int) -> MetricCollection:
    """Accuracy, precision, recall (sensitivity), specificity, F1 and AUROC; macro-averaged for >2 classes.

    For two classes the positive class is the second one in data.classes (default: covid).
    """
    task = metric_task(num_classes)
    kw = task if num_classes == 2 else {**task, "average": "macro"}
    return MetricCollection(
        {
            "acc": Accuracy(**task, **({} if num_classes == 2 else {"average": "micro"})),
            "precision": Precision(**kw),
            "recall": Recall(**kw),
            "specificity": Specificity(**kw),
            "f1": F1Score(**kw),
            "auroc": AUROC(**kw),
        }
    )


class Classifier(BaseTask):
    """timm backbone + loss + metrics. Two classes use one logit and binary cross-entropy (as the
    study did); more classes use softmax cross-entropy. `class_weights` (one per class) re-weight
    the loss against class imbalance."""

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        class_names: Sequence[str] = ("normal", "covid"),
        in_chans: int = 1,
        drop_rate: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_monitor: str = "val/loss",
        class_weights: Sequence[float] | None = None,
        data_config: Mapping[str, Any] | None = None,
        scheduler_interval: str = "epoch",
        pretrained_file: str | None = None,
    ):
        super().__init__(optimizer, scheduler, scheduler_monitor, 0.002, scheduler_interval)
        # The optimizer/scheduler factories are not needed to rebuild the model from a checkpoint.
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.binary = self.num_classes == 2
        self.net = create_backbone(
            backbone,
            pretrained,
            1 if self.binary else self.num_classes,
            in_chans,
            pretrained_file=pretrained_file,
            drop_rate=drop_rate,
        )
        weights = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.train_metrics = classification_metrics(self.num_classes).clone(prefix="train/")
        self.val_metrics = classification_metrics(self.num_classes).clone(prefix="val/")
        self.test_metrics = classification_metrics(self.num_classes).clone(prefix="test/")
        self.test_confusion = ConfusionMatrix(**metric_task(self.num_classes))
        self.test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        # Each stage's (logits, targets, loss) per batch of the running epoch (see _step).
        self._epoch_outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        # The validation epochs (sanity check excluded) in which every image got the same class: a collapsed
        # model.
        self.single_class_epochs = 0
        # The operating point of the checkpoint loaded (covidseg.checkpoints.operating_point); None before.
        self.stored_point: dict[str, Any] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, num_classes) class probabilities from the network's raw output."""
        if self.binary:
            p = torch.sigmoid(logits.float().squeeze(1))
            return torch.stack([1 - p, p], dim=1)
        return torch.softmax(logits.float(), dim=1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the logits (binary with one logit), weighted by the class weights if any."""
        if self.binary:
            pos_weight = None
            if self.class_weights is not None:
                pos_weight = (self.class_weights[1] / self.class_weights[0]).reshape(1)
            return F.binary_cross_entropy_with_logits(
                logits.float().squeeze(1), target.float(), pos_weight=pos_weight
            )
        return F.cross_entropy(logits.float(), target, weight=self.class_weights)

    def _metric_input(self, probs: torch.Tensor) -> torch.Tensor:
        return probs[:, 1] if self.binary else probs

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        # Metrics, the logged loss and the predicted-class counts are computed once per epoch from what is
        # kept here: per batch, torchmetrics' checks and updates and Lightning's logging are a few hundred
        # small operations and several device synchronisations, a third of a small network's step on a GPU.
        self._epoch_outputs.setdefault(stage, []).append((logits.detach(), y, loss.detach()))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        """(N, num_classes) class probabilities of a batch of images, or of (images, targets) pairs."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.probabilities(self(x))

    def _end_epoch(self, stage: str, metrics: MetricCollection) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Log `stage`/loss (the mean over images, as Lightning's batch-size-weighted epoch mean) and the
        metrics of the epoch's batches; returns their class probabilities and targets (None: no batches)."""
        outputs = self._epoch_outputs.pop(stage, [])
        metrics.reset()
        if not outputs:
            return None
        probs = self.probabilities(torch.cat([logits for logits, _, _ in outputs]))
        targets = torch.cat([y for _, y, _ in outputs])
        sizes = torch.tensor([len(y) for _, y, _ in outputs], dtype=torch.float32, device=probs.device)
        loss = (torch.stack([loss.float() for _, _, loss in outputs]) * sizes).sum() / sizes.sum()
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test")
        metrics.update(self._metric_input(probs), targets)
        self.log_dict(metrics.compute(), prog_bar=False)
        metrics.reset()
        return probs, targets

    # An epoch starts with nothing kept: an interrupted one (an exception, a stopped fit) leaves its batches.
    def on_train_epoch_start(self) -> None:
        self._epoch_outputs.pop("train", None)

    def on_validation_epoch_start(self) -> None:
        self._epoch_outputs.pop("val", None)

    def on_train_epoch_end(self) -> None:
        self._end_epoch("train", self.train_metrics)

    def on_validation_epoch_end(self) -> None:
        ended = self._end_epoch("val", self.val_metrics)
        counts = predicted_counts(ended[0], self.num_classes) if ended else torch.zeros(self.num_classes)
        # Every process predicts its share of the validation images; the classes seen are the union.
        counts = self.all_gather(counts.long().to(self.device)).reshape(-1, self.num_classes).sum(0)
        if self.trainer.sanity_checking or counts.sum() == 0:
            return
        single = int((counts > 0).sum() == 1)
        self.single_class_epochs += single
        self.log("val/single_class", float(single))

    def on_test_epoch_start(self) -> None:
        self._epoch_outputs.pop("test", None)
        self.test_outputs = []
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        ended = self._end_epoch("test", self.test_metrics)
        if ended:
            probs, targets = ended
            self.test_confusion.update(self._metric_input(probs), targets)
            self.test_outputs = [(probs.cpu(), targets.cpu())]

    # The counter is no weight, so Lightning does not save it: a resumed fit (resume=true) would restart it.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["single_class_epochs"] = self.single_class_epochs

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.single_class_epochs = int(checkpoint.get("single_class_epochs", 0))
        self.stored_point = operating_point(checkpoint)

    def decision_point(self) -> dict[str, Any] | None:
        """The operating point that turns p(positive class) into a class: the one stored in the loaded
        checkpoint (chosen on validation after training); for a checkpoint without one (from before covidseg
        stored it) the old rule p > 0.5, said in the log. None for more than two classes (argmax).
        """
        if not self.binary:
            return None
        if self.stored_point is not None:
            return dict(self.stored_point)
        log.warning(
            "The checkpoint stores no operating point (written before covidseg chose one on validation, "
            "or not the run's best.ckpt): the fixed threshold %s is used.",
            POSITIVE_THRESHOLD,
        )
        return {
            "rule": "fixed",
            "threshold": POSITIVE_THRESHOLD,
            "positive_class": self.class_names[-1],
            "chosen_on": "default",
        }

    def test_results(self) -> dict[str, Any]:
        """The confusion matrix (rows = true class) and the per-image probabilities of the last test run."""
        probs = (
            torch.cat([p for p, _ in self.test_outputs])
            if self.test_outputs
            else torch.zeros(0, self.num_classes)
        )
        targets = (
            torch.cat([t for _, t in self.test_outputs])
            if self.test_outputs
            else torch.zeros(0, dtype=torch.long)
        )
        return {"confusion": self.test_confusion.compute().cpu().tolist(), "probs": probs, "targets": targets}


def predicted_counts(probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How many of the images (rows of class probabilities) are predicted as each class: the positive
    class by covidseg.models.metrics' threshold rule for two classes, the most probable one for more."""
    if num_classes == 2:
        positive = torch.from_numpy(predicted_positive(probs[:, 1].float().cpu().numpy()))
        predicted = positive.long()
    else:
        predicted = probs.argmax(dim=1).cpu()
    return torch.bincount(predicted, minlength=num_classes)


def load_classifier(ckpt_path: str | Path) -> Classifier:
    """A trained Classifier from its checkpoint, on CPU; a missing or foreign file is a UserError.

    The checkpoint holds the trained weights, so the starting weights (a download for pretrained=true,
    model.pretrained_file) are not read again: evaluation works offline and after that file is gone.
    """
    return load_module(
        Classifier,
        ckpt_path,
        "Give ckpt_path=<train run>/checkpoints/best.ckpt.",
        pretrained=False,
        pretrained_file=None,
    )
