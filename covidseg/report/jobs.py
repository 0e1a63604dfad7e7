"""A finished job reloaded for the report: its classifier, its test images as it saw them and their lung
masks, and how much of its Grad-CAM falls inside the lungs (lung energy)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from covidseg.cli import RESOLVED_CONFIG
from covidseg.data.datamodule import CXRDataModule
from covidseg.data.datasets import ArrayDataset, model_input
from covidseg.data.transforms import masks_as_seen, resize_mask
from covidseg.errors import UserError
from covidseg.explain import cam_maps, lung_energy
from covidseg.masks import images_and_masks, mask_source
from covidseg.models.classifier import Classifier, load_classifier


@dataclass(frozen=True, eq=False)
class JobTestData:
    """A job's classifier and test split. Arrays are indexed like the test dataset.

    unmasked_images: the test images before masking (uint8, N x H x W; at the load size for masked input).
    lung_masks: their 0/1 lung masks at the same size, None for a raw-input job without a segmenter.
    masks_as_seen: the lung masks in the classifier's frame (cropped like its input, at its image size).
    """

    model: Classifier
    datamodule: CXRDataModule
    unmasked_images: np.ndarray
    lung_masks: np.ndarray | None
    masks_as_seen: np.ndarray | None

    @property
    def test(self) -> ArrayDataset:
        """The test images exactly as the classifier saw them, normalised."""
        return self.datamodule.datasets["test"]


def job_test_data(job_dir: Path, cache_dir: str | None = None) -> JobTestData:
    """The classifier of a job and its test images exactly as it saw them, plus their lung masks."""
    model = load_classifier(job_dir / "checkpoints" / "best.ckpt")
    resolved = job_dir / RESOLVED_CONFIG
    if not resolved.is_file():
        raise UserError(f"{resolved} is missing; it is written by covidseg-train at the start of every run.")
    cfg = OmegaConf.load(resolved)
    data = OmegaConf.to_container(cfg.data)
    data["cache_dir"] = cache_dir or data["cache_dir"]
    # A raw-only sweep without a segmenter has no masks, hence no lung energy.
    masks = mask_source(cfg.segmenter, data["cache_dir"], data["input"], optional=True)
    datamodule = CXRDataModule.from_record(
        data, split_file=str(job_dir / "splits.csv"), evaluate_on="test", limit=None, masks=masks
    )
    datamodule.setup("test")
    table = datamodule.table[datamodule.table["split"] == "test"]
    if datamodule.input == "raw":  # the unmasked images are the ones the model saw
        unmasked = np.asarray(datamodule.datasets["test"].images[:])
        if masks is None:
            return JobTestData(model, datamodule, unmasked, None, None)
        # masks are still needed to measure where the CAM looks
        lungs = masks.masks_for(list(table["file"]), list(table["digest"]), size=datamodule.image_size)
        return JobTestData(model, datamodule, unmasked, lungs, lungs)
    unmasked, lungs = images_and_masks(masks, datamodule, table)
    seen = masks_as_seen(lungs, datamodule.crop_to_lungs, datamodule.crop_margin, datamodule.image_size)
    return JobTestData(model, datamodule, unmasked, lungs, seen)


def job_lung_energy(job_dir: Path, max_images: int, cache_dir: str | None = None) -> dict[str, Any]:
    """Mean share of Grad-CAM mass inside the lung mask over (up to max_images of) a job's test images.

    Cached in <job>/lung_energy.json (keyed by max_images)."""
    cache = job_dir / "lung_energy.json"
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("max_images") == max_images and "lung_area" in stored:
            return stored
    job = job_test_data(job_dir, cache_dir)
    if job.masks_as_seen is None:
        raise UserError(f"no lung masks for {job_dir} (segmenter.ckpt_path does not exist)")
    test = job.test
    n = min(max_images, len(test))
    picks = np.linspace(0, len(test) - 1, num=n).round().astype(int)
    energies, areas = [], []
    for start in range(0, n, 16):
        idx = picks[start : start + 16]
        x = model_input(test.images[idx], job.datamodule.mean, job.datamodule.std)
        # The predicted class is explained: where the model looked for the decision it made.
        cams = cam_maps(job.model.net, x, target_class=None, binary=job.model.binary)
        for cam, i in zip(cams, idx):
            mask = resize_mask(job.masks_as_seen[i], cam.shape[-1])
            energies.append(lung_energy(cam, mask))
            areas.append(float(mask.mean()))
    values = [e for e in energies if not math.isnan(e)]
    # lung_area is what a CAM spread evenly over the image would score: the baseline to compare with.
    result = {
        "lung_energy": float(np.mean(values)) if values else math.nan,
        "lung_area": float(np.mean(areas)),
        "n_images": len(values),
        "max_images": max_images,
    }
    cache.write_text(json.dumps(result))
    return result
