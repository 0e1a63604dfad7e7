"""Stage 1: the lung segmenter (any segmentation-models-pytorch architecture/encoder), its
post-processing and metrics."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from scipy import ndimage

from covidseg.checkpoints import load_module
from covidseg.errors import UserError
from covidseg.models.base import BaseTask
from covidseg.models.pretrained import load_encoder_weights
from covidseg.paths import missing_segmenter_hint

log = logging.getLogger(__name__)


# -- post-processing and metrics --------------------------------------------------------------------
def postprocess(
    prob: np.ndarray,
    threshold: float = 0.5,
    keep_components: int = 2,
    fill_holes: bool = True,
    dilate_px: int = 0,
) -> np.ndarray:
    """Binary lung mask from a probability map: threshold, keep the `keep_components` largest connected
    components (two lungs; 0 keeps all), fill holes (opacities inside a lung), then optionally dilate
    by `dilate_px` pixels so lung borders are not cut off when the mask is applied.

    Args:
        prob: the lung probability of each pixel (H, W).
        threshold: lung where prob >= threshold.
        keep_components: how many of the largest components to keep; 0 keeps all.
        fill_holes: fill enclosed background (the gap between the lungs reaches the border and stays).
        dilate_px: radius in pixels of the disk the mask is dilated by; 0: none.

    Returns:
        uint8 0/1 mask (H, W).
    """
    mask = np.asarray(prob) >= threshold
    if keep_components and mask.any():
        labels, count = ndimage.label(mask)
        if count > keep_components:
            sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
            keep = 1 + np.argsort(sizes)[::-1][:keep_components]
            mask = np.isin(labels, keep)
    if fill_holes:
        # The gap between the lungs reaches the image border, so it is not a hole and stays open.
        mask = ndimage.binary_fill_holes(mask)
    if dilate_px:
        disk = _disk(int(dilate_px))
        mask = ndimage.binary_dilation(mask, structure=disk)
    return mask.astype(np.uint8)


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two binary masks (both empty counts as a perfect match)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    inter = float(np.logical_and(pred, truth).sum())
    total = float(pred.sum() + truth.sum())
    union = float(np.logical_or(pred, truth).sum())
    if total == 0:
        return 1.0, 1.0
    return 2 * inter / total, inter / union


def hausdorff95(preds: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """95 % Hausdorff distance of each pair of binary masks (N, H, W), in pixels of these masks (for the
    segmenter's metrics: its image_size), from MONAI (symmetric, Euclidean, 95th percentile of the boundary
    distances both ways).

    MONAI gives nan or inf when a mask is empty; defined here instead: both empty -> 0 (a perfect match, as
    dice_iou counts it); one empty -> the image diagonal sqrt(H^2 + W^2), the largest distance two pixels of
    the image can have, so a missed (or invented) lung counts as the worst boundary instead of vanishing
    from a mean. Callers count the empty predictions beside it (covidseg.inference.segmenter_scores).
    """
    # Imported here: monai's package import takes seconds, and only the segmenter's test needs it.
    from monai.metrics import compute_hausdorff_distance

    preds, truths = np.asarray(preds).astype(bool), np.asarray(truths).astype(bool)
    height, width = preds.shape[1:]
    has_pred, has_truth = preds.any(axis=(1, 2)), truths.any(axis=(1, 2))
    out = np.where(has_pred == has_truth, 0.0, float(np.hypot(height, width)))
    both = np.flatnonzero(has_pred & has_truth)
    if len(both):
        with warnings.catch_warnings():  # deprecation notices from inside MONAI, nothing to act on here
            warnings.simplefilter("ignore")
            distances = compute_hausdorff_distance(
                torch.from_numpy(preds[both, None]),
                torch.from_numpy(truths[both, None]),
                include_background=True,  # one channel, the lung: MONAI would otherwise drop it
                percentile=95,
            )
        out[both] = distances.reshape(-1).double().numpy()
    return out


# -- model ----------------------------------------------------------------------------------------
def create_segmentation_net(
    arch: str, encoder: str, encoder_weights: str | None, encoder_weights_file: str | None = None
) -> torch.nn.Module:
    """smp.create_model with one input channel and one output (lung logit); readable errors.

    `encoder_weights_file` (segmenter.encoder_weights_file): the encoder starts from the weights in that
    local file (e.g. an ImageNet resnet18 saved from timm or torchvision) instead of smp's download.

    Args:
        arch: segmenter.arch, an smp architecture (e.g. Unet).
        encoder: segmenter.encoder, an smp encoder ('tu-<timm name>' for timm's).
        encoder_weights: smp's pretrained weights to download (e.g. imagenet); None: random start.
        encoder_weights_file: a local weights file for the encoder; needs `encoder_weights` None.

    Raises:
        UserError: both weight options set, an unknown architecture or encoder, or a weights file that does
            not fit the encoder.
    """
    if encoder_weights_file is not None and encoder_weights is not None:
        raise UserError(
            f"segmenter.encoder_weights={encoder_weights} and segmenter.encoder_weights_file both set; "
            "set segmenter.encoder_weights=null to start from the file."
        )
    try:
        net = smp.create_model(
            arch, encoder_name=encoder, encoder_weights=encoder_weights, in_channels=1, classes=1
        )
    except KeyError as err:
        # smp's KeyError text lists the valid names; say which option it is about.
        option = "segmenter.arch" if "architecture" in str(err) else "segmenter.encoder"
        raise UserError(f"{option}: {err.args[0]} (timm encoders work as 'tu-<timm name>').") from err
    if encoder_weights_file is not None:
        load_encoder_weights(net.encoder, encoder_weights_file, "segmenter.encoder_weights_file")
    return net


class Segmenter(BaseTask):
    """Lung segmentation network trained with Dice + BCE; metrics are computed on post-processed masks."""

    def __init__(
        self,
        arch: str = "Unet",
        encoder: str = "resnet18",
        encoder_weights: str | None = None,
        image_size: int = 256,
        mean: float = 0.5,
        std: float = 0.25,
        postprocess: Mapping[str, Any] | None = None,
        loss_weights: Mapping[str, float] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_monitor: str = "val/loss",
        scheduler_interval: str = "epoch",
        encoder_weights_file: str | None = None,
    ):
        super().__init__(optimizer, scheduler, scheduler_monitor, 1e-3, scheduler_interval)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = create_segmentation_net(arch, encoder, encoder_weights, encoder_weights_file)
        self.postprocess_settings = dict(postprocess or {})
        self.loss_weights = dict(loss_weights or {"dice": 1.0, "bce": 1.0})
        self.dice_loss = smp.losses.DiceLoss(mode="binary", from_logits=True)
        self.scores: dict[str, list[tuple[float, float]]] = {"val": [], "test": []}
        # Per test image, in loader order: dice, iou, hd95, empty prediction (test_results).
        self.test_outputs: list[np.ndarray] = []
        # Wall time of the last test run's predictions (test_predict_seconds' docstring).
        self._test_predict_seconds = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The training loss: weighted sum of the soft Dice loss and binary cross-entropy (loss_weights)."""
        return self.loss_weights.get("dice", 0.0) * self.dice_loss(logits, mask) + self.loss_weights.get(
            "bce", 0.0
        ) * F.binary_cross_entropy_with_logits(logits, mask)

    def predict_masks(self, x: torch.Tensor) -> np.ndarray:
        """Post-processed 0/1 masks (N, H, W) for a normalised batch."""
        probs = torch.sigmoid(self(x).float()).squeeze(1).cpu().numpy()
        return np.stack([postprocess(p, **self.postprocess_settings) for p in probs])

    def training_step(self, batch, batch_idx):
        x, mask = batch
        loss = self.loss(self(x), mask)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, mask = batch
        start = time.perf_counter()
        logits = self(x)
        probs = torch.sigmoid(logits.float()).squeeze(1).cpu().numpy()  # .cpu() waits for the device
        preds = [postprocess(p, **self.postprocess_settings) for p in probs]
        if stage == "test":
            self._test_predict_seconds += time.perf_counter() - start
        self.log(f"{stage}/loss", self.loss(logits, mask), on_step=False, on_epoch=True, batch_size=len(x))
        truth = mask.squeeze(1).cpu().numpy()
        for p, t in zip(preds, truth):
            self.scores[stage].append(dice_iou(p, t))
        if stage == "test":  # the boundary metric costs ~30 ms per 256 px image: not for every validation
            preds = np.stack(preds)
            dice, iou = np.array(self.scores[stage][-len(preds) :]).T
            empty = ~preds.any(axis=(1, 2))
            self.test_outputs.append(np.stack([dice, iou, hausdorff95(preds, truth), empty], axis=1))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def _log_scores(self, stage: str) -> None:
        scores = np.array(self.scores[stage]).reshape(-1, 2)
        if len(scores):
            self.log(f"{stage}/dice", float(scores[:, 0].mean()), prog_bar=stage == "val")
            self.log(f"{stage}/iou", float(scores[:, 1].mean()))
        self.scores[stage] = []

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_start(self) -> None:
        self.test_outputs = []
        self._test_predict_seconds = 0.0

    @property
    def test_predict_seconds(self) -> float:
        """Wall time of the last test run's predictions on the model's device: the forward pass of every
        test batch (already on the device), sigmoid, the copy to the CPU and post-processing (what
        predict_masks does), without data loading, the loss and the scores (HD95 alone costs ~30 ms per
        image). The first batch's warm-up (memory allocation, cuDNN algorithm choice) is included."""
        return self._test_predict_seconds

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def test_results(self) -> dict[str, np.ndarray]:
        """Per-image scores of the last test run, in the test loader's order: dice, iou, hd95 (pixels at
        image_size, hausdorff95's conventions) and empty_prediction (post-processed mask all 0)."""
        rows = np.concatenate(self.test_outputs) if self.test_outputs else np.zeros((0, 4))
        scores = {name: rows[:, i] for i, name in enumerate(("dice", "iou", "hd95"))}
        return {**scores, "empty_prediction": rows[:, 3].astype(bool)}


def load_segmenter(ckpt_path: str | Path) -> Segmenter:
    """A trained Segmenter from its checkpoint, on CPU; the encoder's starting weights (download or
    segmenter.encoder_weights_file) are not read again, the checkpoint holds the trained ones."""
    return load_module(
        Segmenter,
        ckpt_path,
        missing_segmenter_hint(),
        encoder_weights=None,
        encoder_weights_file=None,
    )
