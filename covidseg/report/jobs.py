"""A finished job reloaded for the report: its classifier, its test images as it saw them and their lung
masks, and how much of its Grad-CAM falls inside the lungs (lung energy)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from covidseg.data.datamodule import CXRDataModule
from covidseg.data.datasets import ArrayDataset
from covidseg.data.store import ArrayView
from covidseg.data.transforms import masks_as_seen
from covidseg.errors import UserError
from covidseg.explain.job_arrays import lung_energy_summary, stored_lung_energy
from covidseg.masks import images_and_masks, mask_source
from covidseg.models.classifier import Classifier, load_classifier
from covidseg.outputs import layout


@dataclass(frozen=True, eq=False)
class JobTestData:
    """A job's classifier and test split. Arrays are indexed like the test dataset.

    unmasked_images: the test images before masking (uint8, N x H x W; at the load size for masked input).
    lung_masks: their 0/1 lung masks at the same size, None for a raw-input job without a segmenter.
    masks_seen(indices): the lung masks of those test images in the classifier's frame (cropped like its
    input, at its image size), computed for the indices asked for only; None without lung masks.
    """

    model: Classifier
    datamodule: CXRDataModule
    unmasked_images: ArrayView | np.ndarray
    lung_masks: ArrayView | None
    masks_seen: Callable[[np.ndarray], np.ndarray] | None

    @property
    def test(self) -> ArrayDataset:
        """The test images exactly as the classifier saw them, normalised."""
        return self.datamodule.datasets["test"]


def job_test_data(job_dir: Path, cache_dir: str | None = None) -> JobTestData:
    """The classifier of a job and its test images exactly as it saw them, plus their lung masks."""
    model = load_classifier(job_dir / layout.CHECKPOINTS / layout.BEST)
    resolved = job_dir / layout.CONFIG_RESOLVED
    if not resolved.is_file():
        raise UserError(f"{resolved} is missing; it is written by covidseg-train at the start of every run.")
    cfg = OmegaConf.load(resolved)
    data = OmegaConf.to_container(cfg.data)
    data["cache_dir"] = cache_dir or data["cache_dir"]
    # A raw-only sweep without a segmenter has no masks, hence no lung energy.
    masks = mask_source(cfg.segmenter, data["cache_dir"], data["input"], optional=True)
    datamodule = CXRDataModule.from_record(
        data, split_file=str(job_dir / layout.SPLITS), evaluate_on="test", limit=None, masks=masks
    )
    datamodule.setup("test")
    table = datamodule.table[datamodule.table["split"] == "test"]
    if datamodule.input == "raw":  # the unmasked images are the ones the model saw
        unmasked = np.asarray(datamodule.datasets["test"].images[:])
        if masks is None:
            return JobTestData(model, datamodule, unmasked, None, None)
        # masks are still needed to measure where the CAM looks
        lungs = masks.masks_for(list(table["file"]), list(table["digest"]), size=datamodule.image_size)
        return JobTestData(model, datamodule, unmasked, lungs, lambda idx: lungs[idx])
    unmasked, lungs = images_and_masks(masks, datamodule, table)

    def seen(indices: np.ndarray) -> np.ndarray:
        crop, margin, size = datamodule.crop_to_lungs, datamodule.crop_margin, datamodule.image_size
        return masks_as_seen(lungs[indices], crop, margin, size)

    return JobTestData(model, datamodule, unmasked, lungs, seen)


def job_lung_energy(job_dir: Path, max_images: int, cache_dir: str | None = None) -> dict[str, Any]:
    """Mean share of Grad-CAM mass inside the lung mask over (up to max_images of) a job's test images.

    The job left it in <job>/lung_energy.json (keyed by max_images); computed and kept there for older
    jobs and other numbers of images."""
    stored = stored_lung_energy(job_dir, max_images)
    if stored is not None:
        return stored
    job = job_test_data(job_dir, cache_dir)
    if job.masks_seen is None:
        raise UserError(f"no lung masks for {job_dir} (segmenter.ckpt_path does not exist)")
    result = lung_energy_summary(job.model, job.datamodule, job.masks_seen, max_images)
    (job_dir / layout.LUNG_ENERGY).write_text(json.dumps(result))
    return result
