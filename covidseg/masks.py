"""Lung masks for the classifier: predicted once per image and segmenter, cached, applied, checked.

A mask is cached under `<cache>/masks/<key>.npy` with key = SHA-1 of (image content, segmenter
checkpoint content, mask resolution, post-processing settings): a second run, or every job of a sweep
after the first, reads masks instead of running the segmenter, and a new checkpoint or new settings
give new masks. Writes go to a temporary file and are renamed, so concurrent jobs never see partial
masks (two jobs may both compute a missing mask; the result is identical).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from covidseg.data.images import ImageCache, atomic_save, file_digest

log = logging.getLogger(__name__)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """0/1 mask to (size, size): interpolate then threshold at 0.5, so thin borders stay faithful."""
    if mask.shape == (size, size):
        return mask
    resized = Image.fromarray(mask.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)
    return (np.asarray(resized) >= 0.5).astype(np.uint8)


def lung_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the mask's bounding box grown by `margin` x image size; whole
    image if the mask is empty."""
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return 0, h, 0, w
    pad_y, pad_x = int(round(margin * h)), int(round(margin * w))
    return (max(0, rows[0] - pad_y), min(h, rows[-1] + 1 + pad_y),
            max(0, cols[0] - pad_x), min(w, cols[-1] + 1 + pad_x))


def crop_to_box(array: np.ndarray, mask: np.ndarray, margin: float) -> np.ndarray:
    """`array` cropped to the lung box of `mask` (same shape) grown by `margin`."""
    top, bottom, left, right = lung_box(mask, margin)
    return array[top:bottom, left:right]


def apply_masks(images: np.ndarray, masks: np.ndarray, mode: str, crop_to_lungs: bool = False,
                crop_margin: float = 0.05, background: int = 0, out_size: int | None = None) -> np.ndarray:
    """segmented = image inside the lungs, `background` outside; lungs_removed = the complement.

    With crop_to_lungs, each image is cropped to its lung box (+ margin) and resized to `out_size`
    (default: the input size); load images at a larger size first so the crop keeps detail.
    """
    if mode not in ("segmented", "lungs_removed"):
        raise ValueError(f"unknown mask mode {mode!r}")
    keep = masks.astype(bool) if mode == "segmented" else ~masks.astype(bool)
    out = np.where(keep, images, np.uint8(background)).astype(np.uint8)
    size = out_size or images.shape[-1]
    if not crop_to_lungs:
        return out if size == images.shape[-1] else np.stack([_resize(o, size) for o in out])
    return np.stack([_resize(crop_to_box(image, mask, crop_margin), size) for image, mask in zip(out, masks)])


def masks_as_seen(masks: np.ndarray, crop_to_lungs: bool, crop_margin: float, size: int) -> np.ndarray:
    """Lung masks in the classifier's frame: cropped like the images (crop_to_lungs) and resized to `size`."""
    out = [resize_mask(crop_to_box(mask, mask, crop_margin) if crop_to_lungs else mask, size) for mask in masks]
    return np.stack(out) if out else np.zeros((0, size, size), np.uint8)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


class MaskSource:
    """Predicts, caches and serves lung masks from one segmenter checkpoint."""

    def __init__(self, ckpt_path: str | Path, cache_dir: str | Path, postprocess: Mapping[str, Any] | None = None,
                 batch_size: int = 16, background: int = 0, min_area_fraction: float = 0.08,
                 max_area_fraction: float = 0.65, device: str | None = None):
        from covidseg.segmentation import load_segmenter

        self.ckpt_path = Path(ckpt_path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Loading (not running) the network up front checks the checkpoint before any training starts.
        self.model = load_segmenter(self.ckpt_path).to(self.device).eval()
        self.ckpt_digest = file_digest(self.ckpt_path)
        hp = self.model.hparams
        self.image_size, self.mean, self.std = int(hp.image_size), float(hp.mean), float(hp.std)
        self.postprocess = dict(postprocess if postprocess is not None else hp.postprocess or {})
        self.model.postprocess_settings = self.postprocess
        self.batch_size, self.background = int(batch_size), int(background)
        self.min_area, self.max_area = float(min_area_fraction), float(max_area_fraction)
        self.cache_dir = Path(cache_dir)
        self.hits = self.misses = self.network_calls = 0
        settings = json.dumps({"size": self.image_size, "post": self.postprocess}, sort_keys=True)
        self._settings_key = f"{self.ckpt_digest}:{settings}"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], cache_dir: str | Path) -> MaskSource:
        """From the `segmenter` config group (ckpt_path, postprocess, batch_size, background, area bounds);
        settings the group does not give keep the constructor's defaults."""
        keys = ("postprocess", "batch_size", "background", "min_area_fraction", "max_area_fraction")
        return cls(cfg["ckpt_path"], cache_dir, **{k: cfg[k] for k in keys if k in cfg})

    def _path(self, image_digest: str) -> Path:
        key = hashlib.sha1(f"{image_digest}:{self._settings_key}".encode()).hexdigest()
        return self.cache_dir / "masks" / key[:2] / f"{key}.npy"

    def masks_for(self, files: Sequence[str], digests: Sequence[str] | None = None,
                  size: int | None = None) -> np.ndarray:
        """0/1 masks (N, size, size) for image files; predicted in batches only for cache misses."""
        digests = list(digests) if digests is not None else [file_digest(f) for f in files]
        masks: list[np.ndarray | None] = []
        missing = []
        for i, digest in enumerate(digests):
            path = self._path(digest)
            try:
                masks.append(np.load(path) if path.is_file() else None)
            except (OSError, ValueError):
                masks.append(None)  # damaged entry: predict again
            if masks[-1] is None:
                missing.append(i)
        self.hits += len(files) - len(missing)
        self.misses += len(missing)
        if missing:
            log.info("Predicting %d lung mask(s) with %s (%d cached)", len(missing), self.ckpt_path,
                     len(files) - len(missing))
            predicted = self._predict([files[i] for i in missing])
            for i, mask in zip(missing, predicted):
                atomic_save(self._path(digests[i]), mask)
                masks[i] = mask
        size = size or self.image_size
        return np.stack([resize_mask(m, size) for m in masks]) if masks else np.zeros((0, size, size), np.uint8)

    def _predict(self, files: Sequence[str]) -> list[np.ndarray]:
        images, _, _ = ImageCache(self.cache_dir, self.image_size).load_many(list(files))
        out: list[np.ndarray] = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = torch.from_numpy(images[start:start + self.batch_size]).unsqueeze(1).float().div(255.0)
                batch = ((batch - self.mean) / self.std).to(self.device)
                self.network_calls += 1
                out.extend(self.model.predict_masks(batch))
        return out

    def stats(self) -> dict[str, Any]:
        return {"segmenter_ckpt": str(self.ckpt_path), "segmenter_sha1": self.ckpt_digest,
                "mask_cache_hits": self.hits, "mask_cache_misses": self.misses}

    def quality_report(self, table: pd.DataFrame, images: np.ndarray, masks: np.ndarray, out_dir: str | Path,
                       per_class: int = 6, seed: int = 0) -> pd.DataFrame:
        """mask_stats.csv (lung area fraction per image, implausible ones flagged, also in the log) and
        masks_overview.png (a sample of each class with the predicted lung contour; up to half of each
        row are flagged images, marked "!")."""
        from covidseg.segmentation import overlay_grid

        out_dir = Path(out_dir)
        area = masks.reshape(len(masks), -1).mean(axis=1)
        stats = table[["path", "label", "patient_id"]].copy()
        stats["lung_area_fraction"] = area.round(4)
        stats["implausible"] = (area < self.min_area) | (area > self.max_area)
        stats.to_csv(out_dir / "mask_stats.csv", index=False)
        flagged = stats[stats["implausible"]]
        if len(flagged):
            log.warning("%d of %d lung mask(s) have an implausible area fraction (outside [%.2f, %.2f]); "
                        "see mask_stats.csv and masks_overview.png, e.g. %s", len(flagged), len(stats),
                        self.min_area, self.max_area, list(flagged["path"][:5]))
        rng = np.random.default_rng(seed)
        picks: list[int] = []
        for _, group in stats.groupby("label", sort=True):
            # Up to half the row shows flagged masks, the rest a random sample of typical ones.
            flagged_rows = list(group.index[group["implausible"]])[: per_class // 2]
            typical = list(rng.permutation(group.index[~group["implausible"]]))
            picks.extend((flagged_rows + typical)[:per_class])
        titles = [f"{stats.at[i, 'label']} {stats.at[i, 'lung_area_fraction']:.2f}" + (" !" if stats.at[i, "implausible"] else "")
                  for i in picks]
        overlay_grid([images[i] for i in picks], [masks[i] for i in picks], None, out_dir / "masks_overview.png",
                     titles=titles, columns=per_class)
        return stats


def images_and_masks(source: MaskSource, table: pd.DataFrame, cache_dir: str | Path,
                     size: int) -> tuple[np.ndarray, np.ndarray]:
    """Unmasked uint8 images (from the decoded-image cache) and 0/1 lung masks of table's rows (columns
    `file`, `digest`), both (N, size, size): what a data module masked, rebuilt without keeping it around."""
    files = list(table["file"])
    images, _, _ = ImageCache(cache_dir, size).load_many(files)
    return images, source.masks_for(files, list(table["digest"]), size=size)
