"""Batches indexed from arrays kept on the device, for data sets that fit in its memory (data.on_device).

On a GPU a DataLoader's per-batch costs (the fetch, pinning, a host-to-device copy) can exceed the step of a
small network; with the uint8 arrays on the device a batch is one index operation there. The order comes
from the same sampler a DataLoader would use, so both paths draw the same batches from the same generators.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

# The arrays may take this share of the device's free memory; the rest is the network's working space.
DEVICE_SHARE = 0.25


def array_bytes(datasets: Sequence[Any]) -> int:
    """Bytes of the uint8 images (and mask targets) of ArrayDatasets."""
    total = 0
    for dataset in datasets:
        total += int(np.prod(np.shape(dataset.images)))
        if dataset.is_mask:
            total += int(np.prod(np.shape(dataset.targets)))
    return total


def fits_on_device(datasets: Sequence[Any], device: torch.device) -> bool:
    """Whether the datasets' arrays take at most DEVICE_SHARE of the CUDA device's free memory."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return array_bytes(datasets) <= DEVICE_SHARE * free


class DeviceBatches:
    """An iterable of uint8 (images (B, 1, H, W), targets) batches of an ArrayDataset whose arrays are
    copied to `device` once; each pass takes its order from `sampler` (RandomSampler, WeightedRandomSampler,
    SequentialSampler), drawn when the pass starts, as a DataLoader draws it."""

    def __init__(self, dataset: Any, batch_size: int, sampler: Sampler, device: torch.device | str):
        self.batch_size, self.order_sampler, self.device = int(batch_size), sampler, torch.device(device)
        self.images = torch.from_numpy(np.ascontiguousarray(np.asarray(dataset.images))).to(self.device)
        targets = dataset.targets
        self.targets = torch.as_tensor(np.asarray(targets) if dataset.is_mask else targets).to(self.device)
        if dataset.is_mask:
            self.targets = self.targets.unsqueeze(1)
        self.dataset = dataset
        # (not named `sampler`: Lightning would take this for a DataLoader and look for its batch_sampler)

    def __len__(self) -> int:
        return -(-len(self.order_sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A DataLoader's iterator draws one number (its workers' base seed) from the global generator when it
        # is created and its sampler draws the order on the first next(); Lightning creates the iterator just
        # before that first next() (and calls iter() on other iterables once more, only to check them). Both
        # draws happen here on the first next(), so the global generator's sequence (hence the augmentation)
        # is the same on both paths.
        torch.empty((), dtype=torch.int64).random_()
        order = torch.as_tensor(list(self.order_sampler), dtype=torch.int64).to(self.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.images[index].unsqueeze(1), self.targets[index]
