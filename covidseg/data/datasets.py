"""In-memory datasets and the loader logic every covidseg data module shares."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from covidseg.data.split import SPLITS
from covidseg.errors import UserError


class ArrayDataset(Dataset):
    """uint8 images (N, H, W) in memory, each with a target: a class index (N,) or a 0/1 mask (N, H, W).

    Out come normalised float images (1, H, W) and the target; a mask target goes through the same random
    transform as its image (so augmentation never separates a lung from its mask) and comes out as float.
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        mean: float,
        std: float,
        transform: v2.Transform | None = None,
    ):
        self.images = torch.from_numpy(np.asarray(images)).unsqueeze(1)
        self.targets = torch.from_numpy(targets if targets.ndim == 3 else targets.astype(np.int64))
        self.is_mask = self.targets.ndim == 3
        if self.is_mask:
            self.targets = self.targets.unsqueeze(1)
        self.mean, self.std = mean, std
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float().div_(255.0)
        target = self.targets[index]
        if self.transform is not None:
            if self.is_mask:
                image, target = self.transform(tv_tensors.Image(image), tv_tensors.Mask(target))
                image, target = image.as_subclass(torch.Tensor), target.as_subclass(torch.Tensor)
            else:
                image = self.transform(image)
            image = image.clamp_(0.0, 1.0)
        return (image - self.mean) / self.std, target.float() if self.is_mask else target


class ArrayDataModule(L.LightningDataModule):
    """Loaders over `self.datasets[split]`; subclasses fill the datasets in `setup`."""

    def __init__(self, batch_size: int, num_workers: int):
        super().__init__()
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.datasets: dict[str, ArrayDataset] = {}

    def describe_empty(self, split: str) -> str:
        """Why a split can be empty and what to do; shown when a loader of an empty split is asked for."""
        return f"The {split} split is empty; use more images or other split ratios."

    def _loader(self, split: str, shuffle: bool = False, sampler: Any = None) -> DataLoader:
        dataset = self.datasets[split]
        if len(dataset) == 0:
            raise UserError(self.describe_empty(split))
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def split_sizes(self) -> dict[str, int]:
        return {s: len(self.datasets[s]) for s in SPLITS if s in self.datasets}
