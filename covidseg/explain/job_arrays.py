"""Where a classifier looks, measured by the job that trained it and kept for covidseg-report.

A training job ends with its best model and its test data in memory; reloading both per job is most of the
report's time. So the job writes, next to metrics.json:
- lung_energy.json: the mean share of Grad-CAM mass inside the lungs over `energy_images` test images, and
  the lung area share a CAM spread evenly would score (`lung_energy_summary`);
- cam_gallery.npz: what cam_gallery.png shows of it for `cam_images` fixed test images (`gallery_arrays`).
The report reads them when they were made with the numbers it asks for, and computes them itself (same
functions, reloaded model) for older runs without them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from covidseg.data.datamodule import CXRDataModule
from covidseg.data.datasets import ArrayDataset, model_input
from covidseg.data.transforms import masks_as_seen, resize_mask
from covidseg.explain.gradcam import cam_maps, lung_energy, resolve_target_layer
from covidseg.masks import MaskSource, images_and_masks
from covidseg.models.classifier import Classifier
from covidseg.outputs import layout

log = logging.getLogger(__name__)

CAM_METHODS = (("gradcam", "Grad-CAM"), ("gradcam++", "Grad-CAM++"))


def energy_picks(n_test: int, max_images: int) -> np.ndarray:
    """Test-set indices lung energy is measured on: up to `max_images`, spread evenly over the test set."""
    return np.linspace(0, n_test - 1, num=min(max_images, n_test)).round().astype(int)


def seen_image(test: ArrayDataset, index: int) -> np.ndarray:
    """Test image `index` as the classifier saw it (uint8, masked and cropped as its input was)."""
    return np.asarray(test.images[index])


def inputs_for_test_images(datamodule: CXRDataModule, indices: Sequence[int]) -> torch.Tensor:
    """The network inputs of those test images, normalised as in training (no augmentation)."""
    test = datamodule.datasets["test"]
    return model_input(test.images[np.asarray(indices)], datamodule.mean, datamodule.std)


def cam_batch(datamodule: CXRDataModule) -> int:
    """Images per Grad-CAM pass: half a training batch, at most 16. pytorch-grad-cam keeps the whole graph
    through its backward (retain_graph), where a training step frees it as it goes: a pass of n images
    costs about what a step of 2n does (measured at 448 px), so memory peaks in training, not here."""
    return max(1, min(16, datamodule.batch_size // 2))


def lung_energy_summary(
    model: Classifier,
    datamodule: CXRDataModule,
    masks_seen: Callable[[np.ndarray], np.ndarray],
    max_images: int,
) -> dict[str, Any]:
    """Mean share of Grad-CAM mass inside the lung mask over (up to max_images of) the test images.

    The predicted class is explained; `lung_area` (the mean lung share of the image) is what a CAM spread
    evenly would score, the baseline to compare with.

    Args:
        model: the tested classifier.
        datamodule: the job's data, set up; its test split is measured.
        masks_seen: masks_seen(indices) -> the lung masks of those test images in the classifier's frame.
        max_images: test images measured at most (energy_picks).

    Returns:
        {"lung_energy", "lung_area", "n_images" (maps with lung mass defined), "max_images"}.
    """
    picks = energy_picks(len(datamodule.datasets["test"]), max_images)
    lungs = np.asarray(masks_seen(picks))  # max_images masks at most
    layer = resolve_target_layer(model.net, None)  # found once, not per batch: a search costs a forward pass
    energies, areas = [], []
    step = cam_batch(datamodule)
    for start in range(0, len(picks), step):
        idx = picks[start : start + step]
        x = inputs_for_test_images(datamodule, idx)
        # The predicted class is explained: where the model looked for the decision it made.
        cams = cam_maps(model.net, x, target_class=None, target_layer=layer, binary=model.binary)
        for cam, lung in zip(cams, lungs[start : start + step]):
            mask = resize_mask(lung, cam.shape[-1])
            energies.append(lung_energy(cam, mask))
            areas.append(float(mask.mean()))
    values = [e for e in energies if not math.isnan(e)]
    # lung_area is what a CAM spread evenly over the image would score: the baseline to compare with.
    return {
        "lung_energy": float(np.mean(values)) if values else math.nan,
        "lung_area": float(np.mean(areas)),
        "n_images": len(values),
        "max_images": max_images,
    }


def stored_lung_energy(job_dir: Path, max_images: int) -> dict[str, Any] | None:
    """The job's lung_energy.json if it was measured on `max_images` images, else None."""
    path = job_dir / layout.LUNG_ENERGY
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    return stored if stored.get("max_images") == max_images and "lung_area" in stored else None


def gallery_picks(targets: np.ndarray, k: int) -> list[int]:
    """The gallery's test images: the first ceil(k / classes) of each class, positive class first, k in all.
    Jobs that share a split pick the same images."""
    classes = np.unique(targets)
    picks: list[int] = []
    for cls in classes[::-1]:
        picks.extend(np.flatnonzero(targets == cls)[: -(-k // len(classes))].tolist())
    return picks[:k]


def gallery_arrays(
    model: Classifier,
    datamodule: CXRDataModule,
    labels: np.ndarray,
    unmasked: Callable[[list[int]], tuple[np.ndarray, np.ndarray | None]],
    k: int,
) -> dict[str, np.ndarray]:
    """What cam_gallery.png shows of one model, for its `k` gallery test images: picks, labels, the images
    unmasked and as seen, lung masks (when there are), the positive probability and both CAMs of the
    positive class (uint8, 0..255: shown as heat maps).

    Args:
        model: the tested classifier.
        datamodule: the job's data, set up.
        labels: the label of each test image, in test order.
        unmasked: unmasked(picks) -> the images before masking and their lung masks (or None).
        k: gallery images (gallery_picks).
    """
    test = datamodule.datasets["test"]
    picks = gallery_picks(test.targets.numpy(), k)
    x = inputs_for_test_images(datamodule, picks)
    step = cam_batch(datamodule)
    chunks = [x[start : start + step] for start in range(0, len(x), step)]
    positive = len(model.class_names) - 1 if model.binary else None
    model.eval()
    with torch.no_grad():
        probs = np.concatenate(
            [model.probabilities(model(c.to(model.device)))[:, -1].float().cpu().numpy() for c in chunks]
        )
    images, lungs = unmasked(picks)
    arrays = {
        "k": np.array(k),
        "picks": np.array(picks),
        "labels": np.asarray(labels)[picks].astype(str),
        "unmasked": np.asarray(images),
        "seen": np.stack([seen_image(test, i) for i in picks]),
        "probs": probs,
    }
    if lungs is not None:
        arrays["lung_masks"] = np.asarray(lungs)
    layer = resolve_target_layer(model.net, None)
    for method, _ in CAM_METHODS:
        maps = np.concatenate(
            [
                cam_maps(model.net, c, positive, method=method, target_layer=layer, binary=model.binary)
                for c in chunks
            ]
        )
        arrays[method] = (maps * 255).round().astype(np.uint8)  # shown as a heat map: 256 levels suffice
    return arrays


def stored_gallery(job_dir: Path, k: int) -> dict[str, np.ndarray] | None:
    """The job's cam_gallery.npz if it holds `k` images, else None."""
    path = job_dir / layout.CAM_GALLERY
    if not path.is_file():
        return None
    with np.load(path) as stored:
        arrays = {name: stored[name] for name in stored.files}
    return arrays if int(arrays["k"]) == k else None


def lungs_seen(masks: MaskSource, datamodule: CXRDataModule, rows: pd.DataFrame) -> np.ndarray:
    """The lung masks of a data module's `rows` in its classifier's frame (cropped like its input for
    crop_to_lungs, at its image size); also for raw input, to measure where a raw model looks."""
    files, digests = list(rows["file"]), list(rows["digest"])
    if datamodule.input == "raw":
        return masks.masks_for(files, digests, size=datamodule.image_size)
    lungs = masks.masks_for(files, digests, size=datamodule.load_size)
    return masks_as_seen(lungs, datamodule.crop_to_lungs, datamodule.crop_margin, datamodule.image_size)


def write_job_cams(
    out_dir: Path,
    model: Classifier,
    datamodule: CXRDataModule,
    masks: MaskSource | None,
    energy_images: int,
    cam_images: int,
) -> None:
    """At the end of a training job (model = the tested weights): lung_energy.json (not without `masks`: a raw
    run without a segmenter has no lung masks) and cam_gallery.npz; 0 images skips either.

    Args:
        out_dir: the job's folder.
        model: the classifier with the tested weights.
        datamodule: the job's data, set up; nothing is written for an empty test split.
        masks: the lung masks (also for raw input, when a segmenter exists); None: no lung energy.
        energy_images: test images measured for lung_energy.json.
        cam_images: gallery images in cam_gallery.npz.
    """
    test = datamodule.datasets["test"]
    if not len(test):
        return
    rows = datamodule.table[datamodule.table["split"] == "test"].reset_index(drop=True)
    if masks is not None and energy_images > 0:
        energy = lung_energy_summary(
            model, datamodule, lambda idx: lungs_seen(masks, datamodule, rows.iloc[idx]), energy_images
        )
        (out_dir / layout.LUNG_ENERGY).write_text(json.dumps(energy))
    if cam_images > 0:

        def unmasked(picks: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
            if datamodule.input != "raw":
                return images_and_masks(masks, datamodule, rows.iloc[picks])
            seen = np.stack([seen_image(test, i) for i in picks])  # raw: what it saw is unmasked
            return seen, None if masks is None else lungs_seen(masks, datamodule, rows.iloc[picks])

        arrays = gallery_arrays(model, datamodule, rows["label"].to_numpy(), unmasked, cam_images)
        np.savez_compressed(out_dir / layout.CAM_GALLERY, **arrays)
