"""uint8 datasets and the loader logic every covidseg data module shares.

Batches travel as uint8 (a quarter of float32's bytes, pinned when the trainer runs on a GPU) and become model
inputs on the device, after the transfer: `model_input` (uint8 -> [0, 1] -> augmentation -> (x - mean) / std)
is the one conversion, used by the data modules' `on_after_batch_transfer` and by every consumer that feeds
a model outside a trainer (Grad-CAM, report figures, prediction overlays, segmenter overlays).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from covidseg.data.augment import Augmentation, build_augmentation
from covidseg.data.device_batches import DeviceBatches, fits_on_device
from covidseg.data.split import SPLITS
from covidseg.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]


def model_input(
    images: Any,
    mean: float,
    std: float,
    device: torch.device | str | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, 1, H, W) (array, array view or tensor) as the network's float input
    (N, 1, H, W): scaled to [0, 1], passed through `augment` (training only), then (x - mean) / std.

    Args:
        images: uint8 images; a read-only numpy array (a memory map) is copied first.
        mean: the normalisation mean, on the [0, 1] scale.
        std: the normalisation standard deviation, on the [0, 1] scale.
        device: where the batch goes before the float conversion (uint8 moves 4x fewer bytes); None: stays.
        augment: applied to the [0, 1] images before normalisation; None outside training.

    Raises:
        TypeError: the images are not uint8.
    """
    if not isinstance(images, torch.Tensor):
        array = np.asarray(images)
        images = torch.from_numpy(array if array.flags.writeable else array.copy())  # e.g. a read-only map
    x = images
    if x.dtype != torch.uint8:
        raise TypeError(f"model_input takes uint8 images, got {x.dtype}")
    x = x.to(device, non_blocking=True) if device is not None else x
    x = (x.unsqueeze(1) if x.ndim == 3 else x).float().div_(255.0)
    if augment is not None:
        x = augment(x)
    return x.sub_(mean).div_(std)  # x is this function's own copy (uint8 -> float always copies)


class ArrayDataset(Dataset):
    """uint8 images (N, H, W), each with a target: a class index (N,) or a 0/1 mask (N, H, W).

    `images` (and mask targets) may be any numpy-like array (an in-memory array or a view on a memory-mapped
    store); an item is a uint8 image (1, H, W) and its target (int64 class, uint8 mask (1, H, W)). A batch is
    read with one fancy-index read (`__getitems__`, which torch's DataLoader calls) and comes out collated;
    loaders over it therefore use `keep_batch` as collate_fn (`array_loader` does).
    """

    def __init__(self, images: Any, targets: Any):
        self.images = images
        self.is_mask = np.ndim(targets) == 3
        self.targets = targets if self.is_mask else torch.tensor(np.asarray(targets), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Batch:
        image, target = self.__getitems__([index])
        return image[0], target[0]

    def __getitems__(self, indices: list[int]) -> Batch:
        index = np.asarray(indices, dtype=np.int64)
        # Sorted reads are sequential on a memory-mapped store; the batch is put back in sampler order.
        order = np.argsort(index, kind="stable")
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        images = torch.from_numpy(np.ascontiguousarray(np.asarray(self.images[index[order]])[back]))
        if self.is_mask:
            masks = np.ascontiguousarray(np.asarray(self.targets[index[order]])[back])
            return images.unsqueeze(1), torch.from_numpy(masks).unsqueeze(1)
        return images.unsqueeze(1), self.targets[torch.from_numpy(index)]


def keep_batch(batch: Batch) -> Batch:
    """collate_fn for ArrayDataset loaders: `__getitems__` already returns the collated batch."""
    return batch


def array_loader(
    dataset: ArrayDataset,
    batch_size: int,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of uint8 (images, targets) batches over an ArrayDataset.

    Args:
        dataset: the images and targets; read one batch at a time (keep_batch collates nothing).
        batch_size: images per batch.
        shuffle: whether each epoch visits the images in a new order (not with `sampler`).
        sampler: e.g. a WeightedRandomSampler; None: DataLoader's sequential or random sampler.
        num_workers: worker processes (auto_workers chooses); kept alive between epochs when > 0.
        pin_memory: page-locked batches, for faster copies to a GPU.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        collate_fn=keep_batch,
    )


def auto_workers(images: Any, on_gpu: bool) -> int:
    """data.num_workers=auto: no worker processes when a batch is one index into an in-memory array (a
    worker would only add a copy and a pickle through a pipe); a few when a GPU trains on a memory-mapped
    store, so that page-cache misses (disk reads) overlap with the GPU's work. The augmentation runs on the
    device, so workers never do more than read."""
    if isinstance(images, np.ndarray) and not isinstance(images, np.memmap):
        return 0
    return min(4, max(1, (os.cpu_count() or 2) - 1)) if on_gpu else 0


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run a batch's preparation on one thread when it happens on the CPU. Its operations are small and
    memory-bound: split over an OpenMP team on a busy machine they wait for the slowest thread (measured
    on 2 shared cores: 86 ms per 32 images at 112 px with 2 threads, 5 ms with 1)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ArrayDataModule(L.LightningDataModule):
    """Loaders over `self.datasets[split]`; subclasses fill the datasets in `setup`.

    `num_workers`: an integer or "auto" (auto_workers). `on_device`: true, false or "auto" (true on a
    single GPU when the uint8 arrays fit comfortably in its free memory): keep the arrays on the device and
    index batches there (DeviceBatches) instead of loading them through a DataLoader.
    """

    def __init__(
        self,
        batch_size: int,
        num_workers: int | str,
        mean: float = 0.5,
        std: float = 0.25,
        augment: Mapping[str, Any] | None = None,
        on_device: bool | str = "auto",
    ):
        super().__init__()
        if num_workers != "auto" and (not isinstance(num_workers, int) or num_workers < 0):
            raise UserError(f"data.num_workers must be an integer >= 0 or auto, got {num_workers!r}.")
        if on_device not in (True, False, "auto"):
            raise UserError(f"data.on_device must be true, false or auto, got {on_device!r}.")
        self.batch_size, self.num_workers, self.on_device = int(batch_size), num_workers, on_device
        self.mean, self.std = float(mean), float(std)
        self.augmentation: Augmentation | None = build_augmentation(**dict(augment or {}))
        self.datasets: dict[str, ArrayDataset] = {}

    def describe_empty(self, split: str) -> str:
        """Why a split can be empty and what to do; shown when a loader of an empty split is asked for."""
        return f"The {split} split is empty; use more images or other split ratios."

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _keeps_on_device(self) -> bool:
        trainer = getattr(self, "trainer", None)
        if self.on_device is True and trainer is not None and trainer.world_size > 1:
            raise UserError(
                "data.on_device=true indexes one device's copy of the data, it cannot share it out between "
                f"{trainer.world_size} processes; set data.on_device=auto (a DataLoader then splits it)."
            )
        if self.on_device != "auto":
            return bool(self.on_device)
        if trainer is None or trainer.world_size > 1 or self._device().type != "cuda":
            return False
        return fits_on_device(list(self.datasets.values()), self._device())

    def _loader(self, split: str, shuffle: bool = False, sampler: Any = None) -> DataLoader | DeviceBatches:
        dataset = self.datasets[split]
        if len(dataset) == 0:
            raise UserError(self.describe_empty(split))
        if self._keeps_on_device():
            if sampler is None:
                sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
            return DeviceBatches(dataset, self.batch_size, sampler, self._device())
        on_gpu = self._device().type == "cuda"
        workers = auto_workers(dataset.images, on_gpu) if self.num_workers == "auto" else self.num_workers
        return array_loader(dataset, self.batch_size, shuffle, sampler, workers, pin_memory=on_gpu)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 (images, targets) on the device -> model inputs; augmented only while training."""
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and batch[0].dtype == torch.uint8):
            return batch
        with one_cpu_thread(batch[0].device):
            return self._prepare(batch)

    def _prepare(self, batch: Batch) -> Batch:
        images, targets = batch
        training = self.augmentation is not None and self.trainer is not None and self.trainer.training
        if not training:
            x = model_input(images, self.mean, self.std)
            return x, (targets.float() if targets.ndim == 4 else targets)
        if targets.ndim != 4:
            return model_input(images, self.mean, self.std, augment=self.augmentation), targets
        params = self.augmentation.draw(images)
        x = model_input(images, self.mean, self.std, augment=lambda u: self.augmentation.apply(u, params))
        return x, self.augmentation.apply_to_masks(targets.float(), params)

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("test")

    def split_sizes(self) -> dict[str, int]:
        """The number of images in each split that has a dataset, in train, val, test order."""
        return {s: len(self.datasets[s]) for s in SPLITS if s in self.datasets}
