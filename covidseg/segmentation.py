"""Stage 1: the lung segmenter (any segmentation-models-pytorch architecture/encoder), its data,
post-processing and metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from covidseg.data.datamodule import build_augmentation
from covidseg.data.images import ImageCache
from covidseg.data.split import SPLITS, split_by_patient
from covidseg.errors import UserError, load_checkpoint
from covidseg.paths import cache_dir as default_cache_dir

log = logging.getLogger(__name__)


# -- post-processing and metrics --------------------------------------------------------------------
def postprocess(prob: np.ndarray, threshold: float = 0.5, keep_components: int = 2, fill_holes: bool = True,
                dilate_px: int = 0) -> np.ndarray:
    """Binary lung mask from a probability map: threshold, keep the `keep_components` largest connected
    components (two lungs; 0 keeps all), fill holes (opacities inside a lung), then optionally dilate
    by `dilate_px` pixels so lung borders are not cut off when the mask is applied."""
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
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
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


# -- data -----------------------------------------------------------------------------------------
def read_mask_manifest(root: str | Path) -> pd.DataFrame:
    """Rows of `<root>/metadata.csv` with columns image,mask (paths relative to root)."""
    root = Path(root)
    csv = root / "metadata.csv"
    if not csv.is_file():
        raise UserError(f"{csv} does not exist. A mask set is a folder with metadata.csv (image,mask); "
                        "set data.root or COVIDSEG_DATA_DIR.")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = [c for c in ("image", "mask") if c not in table.columns]
    if missing:
        raise UserError(f"{csv} lacks column(s) {missing}; it has {list(table.columns)}. Add image,mask columns.")
    table["image_file"] = [str(root / p) for p in table["image"]]
    table["mask_file"] = [str(root / p) for p in table["mask"]]
    absent = [p for p in [*table["image_file"], *table["mask_file"]] if not Path(p).is_file()]
    if absent:
        raise UserError(f"{len(absent)} file(s) listed in {csv} do not exist, e.g. {absent[:3]}. Fix the paths.")
    return table


class ImageMaskDataset(Dataset):
    """uint8 images and 0/1 masks in memory; the same random transform is applied to both."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, mean: float, std: float,
                 transform: v2.Transform | None = None):
        self.images = torch.from_numpy(images).unsqueeze(1)
        self.masks = torch.from_numpy(masks).unsqueeze(1)
        self.mean, self.std, self.transform = mean, std, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i].float().div_(255.0)
        mask = tv_tensors.Mask(self.masks[i])
        if self.transform is not None:
            image, mask = self.transform(tv_tensors.Image(image), mask)
            image = image.as_subclass(torch.Tensor).clamp_(0.0, 1.0)
        return (image - self.mean) / self.std, mask.as_subclass(torch.Tensor).float()


class LungMaskDataModule(L.LightningDataModule):
    """Image/mask pairs (one patient per image), split train/val/test deterministically by seed."""

    def __init__(self, root: str, image_size: int = 256, batch_size: int = 8, num_workers: int = 0,
                 split_ratios: Mapping[str, float] | None = None, seed: int = 0, limit: int | None = None,
                 augment: Mapping[str, Any] | None = None, mean: float = 0.5, std: float = 0.25,
                 cache_dir: str | None = None, evaluate_all: bool = False):
        super().__init__()
        self.root = Path(root)
        self.image_size, self.batch_size, self.num_workers = int(image_size), int(batch_size), int(num_workers)
        self.split_ratios = dict(split_ratios or {"train": 0.7, "test": 0.2, "val": 0.1})
        self.seed, self.limit = int(seed), (int(limit) if limit else None)
        self.augmentation = build_augmentation(**dict(augment or {}))
        self.mean, self.std = float(mean), float(std)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.evaluate_all = evaluate_all
        self.table: pd.DataFrame | None = None
        self.datasets: dict[str, ImageMaskDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        table = read_mask_manifest(self.root)
        if self.limit:
            table = table.sample(n=min(self.limit, len(table)), random_state=self.seed).sort_index()
        table = table.reset_index(drop=True)
        if self.evaluate_all:
            table["split"] = "test"
        else:
            table["split"] = split_by_patient(table.assign(patient_id=table["image"], label="lung"),
                                              self.split_ratios, self.seed)
        cache = ImageCache(self.cache_dir, self.image_size)
        images, _, _ = cache.load_many(list(table["image_file"]))
        masks, _, _ = cache.load_many(list(table["mask_file"]))
        peaks = masks.reshape(len(masks), -1).max(axis=1)
        if (peaks == 0).any():
            empty = list(table["mask"][peaks == 0][:3])
            raise UserError(f"{int((peaks == 0).sum())} mask(s) in {self.root} are empty (all 0), e.g. {empty}. "
                            "Masks must mark lung pixels with a non-zero value; fix or remove those rows.")
        # 0/1 and 0/255 masks both work: threshold at half of each mask's own maximum.
        masks = (masks > peaks[:, None, None] / 2).astype(np.uint8)
        self.table = table
        for split in SPLITS:
            rows = (table["split"] == split).to_numpy()
            transform = self.augmentation if split == "train" else None
            self.datasets[split] = ImageMaskDataset(images[rows], masks[rows], self.mean, self.std, transform)
        log.info("Mask data %s: %s", self.root, {s: len(d) for s, d in self.datasets.items()})

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        if len(self.datasets[split]) == 0:
            raise UserError(f"The {split} split of {self.root} is empty; use more images or other split ratios.")
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


# -- model ----------------------------------------------------------------------------------------
def create_segmentation_net(arch: str, encoder: str, encoder_weights: str | None) -> torch.nn.Module:
    """smp.create_model with one input channel and one output (lung logit); readable errors."""
    try:
        return smp.create_model(arch, encoder_name=encoder, encoder_weights=encoder_weights, in_channels=1, classes=1)
    except KeyError as err:
        # smp's KeyError text lists the valid names; say which option it is about.
        option = "segmenter.arch" if "architecture" in str(err) else "segmenter.encoder"
        raise UserError(f"{option}: {err.args[0]} (timm encoders work as 'tu-<timm name>').") from err


class Segmenter(L.LightningModule):
    """Lung segmentation network trained with Dice + BCE; metrics are computed on post-processed masks."""

    def __init__(self, arch: str = "Unet", encoder: str = "resnet18", encoder_weights: str | None = None,
                 image_size: int = 256, mean: float = 0.5, std: float = 0.25,
                 postprocess: Mapping[str, Any] | None = None, loss_weights: Mapping[str, float] | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 scheduler: Callable[..., Any] | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = create_segmentation_net(arch, encoder, encoder_weights)
        self.postprocess_settings = dict(postprocess or {})
        self.loss_weights = dict(loss_weights or {"dice": 1.0, "bce": 1.0})
        self.dice_loss = smp.losses.DiceLoss(mode="binary", from_logits=True)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scores: dict[str, list[tuple[float, float]]] = {"val": [], "test": []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.loss_weights.get("dice", 0.0) * self.dice_loss(logits, mask)
                + self.loss_weights.get("bce", 0.0) * F.binary_cross_entropy_with_logits(logits, mask))

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
        logits = self(x)
        self.log(f"{stage}/loss", self.loss(logits, mask), on_step=False, on_epoch=True, batch_size=len(x))
        probs = torch.sigmoid(logits.float()).squeeze(1).cpu().numpy()
        truth = mask.squeeze(1).cpu().numpy()
        for p, t in zip(probs, truth):
            self.scores[stage].append(dice_iou(postprocess(p, **self.postprocess_settings), t))

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

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        optimizer = factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer=optimizer)}


def load_segmenter(ckpt_path: str | Path) -> Segmenter:
    return load_checkpoint(Segmenter, ckpt_path, "Train a segmenter with `make segmenter` (or "
                           "covidseg-train-segmenter) and/or set segmenter.ckpt_path=<.../checkpoints/best.ckpt>.")


# -- figures --------------------------------------------------------------------------------------
def overlay_grid(images: Sequence[np.ndarray], predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray] | None,
                 path: str | Path, titles: Sequence[str] | None = None, columns: int = 6) -> None:
    """A contact sheet: each image with the predicted (red) and, if given, true (green) lung contours."""
    from covidseg.plots import pyplot

    plt = pyplot()
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, ax in enumerate(axes.ravel()[:n]):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        if truth is not None and truth[i].any():
            ax.contour(truth[i], levels=[0.5], colors="lime", linewidths=0.8)
        if predicted[i].any():
            ax.contour(predicted[i], levels=[0.5], colors="red", linewidths=0.8)
        if titles:
            ax.set_title(titles[i], fontsize=7)
    legend = "red: predicted" + ("   green: hand-drawn" if truth is not None else "")
    fig.suptitle(legend, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
