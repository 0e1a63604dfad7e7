"""Stage 1 for the classifier: lung masks predicted once per image and segmenter, cached, checked.

Applying them to images is covidseg.data.transforms' job; this module makes and keeps them.

Masks are kept at rest like images (covidseg.data.store): one memory-mapped uint8 array per mask size
under `<cache>/mask_arrays/<size>/`, a row per key = SHA-1 of (image content, segmenter checkpoint
content, mask resolution, post-processing settings): a second run, or every job of a sweep after the
first, reads masks instead of running the segmenter, and a new checkpoint or new settings give new masks.
Rows are committed only once written, so concurrent jobs never see partial masks (two jobs may both
compute a missing mask; the first stored wins, the result is identical). Callers get lazy views. Masks
predicted from images decoded under older rules (covidseg.data.decoding.DECODER_VERSION) are not reused.

The loaded network is shared by every MaskSource of one process that reads the same checkpoint (same file
content, same device): the jobs of a sweep under Hydra's basic launcher run one after another in one
process and load the segmenter once; the checkpoint is hashed again only when its size or mtime changed.
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

from covidseg.data.datasets import model_input
from covidseg.data.decoding import DECODED
from covidseg.data.derived import derived_rows
from covidseg.data.images import ImageCache, file_digest
from covidseg.data.store import ArrayStore, ArrayView
from covidseg.data.transforms import resize_mask
from covidseg.errors import UserError
from covidseg.inference.overlays import overlay_grid
from covidseg.models.segmenter import Segmenter, load_segmenter
from covidseg.outputs import layout, write_csv

log = logging.getLogger(__name__)

# Resolved checkpoint path -> (size, mtime_ns, SHA-1): a file is hashed again only when it changed.
_CHECKPOINT_DIGESTS: dict[str, tuple[int, int, str]] = {}
# (resolved checkpoint path, SHA-1, device) -> the loaded network; one entry per path (the latest file).
_SEGMENTERS: dict[tuple[str, str, str], Segmenter] = {}


def checkpoint_digest(path: str | Path) -> str:
    """SHA-1 of a checkpoint file's content, remembered per process while its size and mtime stay the same."""
    path = Path(path)
    stat = path.stat()
    key = str(path.resolve())
    known = _CHECKPOINT_DIGESTS.get(key)
    if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
        return known[2]
    digest = file_digest(path)
    _CHECKPOINT_DIGESTS[key] = (stat.st_size, stat.st_mtime_ns, digest)
    return digest


def shared_segmenter(path: str | Path, device: str) -> tuple[Segmenter, str]:
    """The segmenter in checkpoint `path` on `device` (eval mode) and the checkpoint's SHA-1, loaded once per
    process and file content: a replaced checkpoint is loaded again, and its old network let go."""
    path = Path(path)
    if not path.is_file():
        load_segmenter(path)  # raises the UserError that says how to make a segmenter
    digest = checkpoint_digest(path)
    key = (str(path.resolve()), digest, device)
    if key not in _SEGMENTERS:
        for stale in [k for k in _SEGMENTERS if k[0] == key[0]]:
            del _SEGMENTERS[stale]
        _SEGMENTERS[key] = load_segmenter(path).to(device).eval()
    return _SEGMENTERS[key], digest


class MaskSource:
    """Predicts, caches and serves lung masks from one segmenter checkpoint."""

    def __init__(
        self,
        ckpt_path: str | Path,
        cache_dir: str | Path,
        postprocess: Mapping[str, Any] | None = None,
        batch_size: int = 16,
        background: int = 0,
        min_area_fraction: float = 0.08,
        max_area_fraction: float = 0.65,
        device: str | None = None,
    ):
        self.ckpt_path = Path(ckpt_path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Loading (not running) the network up front checks the checkpoint before any training starts.
        self.model, self.ckpt_digest = shared_segmenter(self.ckpt_path, self.device)
        hp = self.model.hparams
        self.image_size, self.mean, self.std = int(hp.image_size), float(hp.mean), float(hp.std)
        self.postprocess = dict(postprocess if postprocess is not None else hp.postprocess or {})
        self.batch_size, self.background = int(batch_size), int(background)
        self.min_area, self.max_area = float(min_area_fraction), float(max_area_fraction)
        self.cache_dir = Path(cache_dir)
        self.hits = self.misses = self.network_calls = 0
        settings = json.dumps({"size": self.image_size, "post": self.postprocess}, sort_keys=True)
        self._settings_key = f"{self.ckpt_digest}:{settings}"

    def mask_keys(self, digests: Sequence[str]) -> list[str]:
        """The key of each image's mask: image content + segmenter checkpoint content + settings."""
        return [hashlib.sha1(f"{d}:{self._settings_key}".encode()).hexdigest() for d in digests]

    def _store(self, size: int) -> ArrayStore:
        return ArrayStore(self.cache_dir / "mask_arrays" / str(size), (size, size), content=DECODED)

    def masks_for(
        self, files: Sequence[str], digests: Sequence[str] | None = None, size: int | None = None
    ) -> ArrayView:
        """0/1 masks (N, size, size) of image files, as a lazy view on the mask store; predicted in batches
        only for masks no store has (hits/misses count them), resized chunk by chunk for another size.

        Each batch is stored as soon as it is predicted, so an interrupted run keeps what it made.
        """
        files = list(files)
        digests = list(digests) if digests is not None else [file_digest(f) for f in files]
        keys = self.mask_keys(digests)
        size = size or self.image_size
        if size == self.image_size:
            return self._predicted(files, keys)
        counted = len(files)

        def resized(indices: list[int]) -> np.ndarray:
            nonlocal counted
            counted -= len(indices)  # _predicted counts these
            base = self._predicted([files[i] for i in indices], [keys[i] for i in indices])
            return np.stack([resize_mask(base[j], size) for j in range(len(indices))])

        view = derived_rows(self._store(size), keys, resized)
        self.hits += counted
        return view

    def _predicted(self, files: list[str], keys: list[str]) -> ArrayView:
        """Masks at the segmenter's size, predicted (batch by batch, stored at once) where missing."""
        store = self._store(self.image_size)
        found = store.rows_for(keys)
        missing = [i for i, row in enumerate(found) if row is None]
        self.hits += len(files) - len(missing)
        self.misses += len(missing)
        if missing:
            log.info(
                "Predicting %d lung mask(s) with %s (%d cached)",
                len(missing),
                self.ckpt_path,
                len(files) - len(missing),
            )
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            predicted = self._predict([files[i] for i in batch])
            for i, row in zip(batch, store.append([keys[i] for i in batch], predicted)):
                found[i] = row
        return store.view(found)

    def _predict(self, files: Sequence[str]) -> list[np.ndarray]:
        """Post-processed masks of one batch of image files (plain images: what the segmenter was trained
        on, whatever data.equalize the classifier uses)."""
        images, _, _ = ImageCache(self.cache_dir, self.image_size).load_many(list(files))
        self.network_calls += 1
        # The network may be shared with sources of other settings: set this source's before each use.
        self.model.postprocess_settings = self.postprocess
        with torch.no_grad():
            return list(self.model.predict_masks(model_input(images, self.mean, self.std, self.device)))

    def stats(self) -> dict[str, Any]:
        """The segmenter's path and SHA-1 and the mask cache's hits and misses, for metrics.json."""
        return {
            "segmenter_ckpt": str(self.ckpt_path),
            "segmenter_sha1": self.ckpt_digest,
            "mask_cache_hits": self.hits,
            "mask_cache_misses": self.misses,
        }

    def quality_report(
        self,
        table: pd.DataFrame,
        images: ArrayView | np.ndarray,
        masks: ArrayView | np.ndarray,
        out_dir: str | Path,
        per_class: int = 6,
        seed: int = 0,
    ) -> pd.DataFrame:
        """mask_stats.csv (lung area fraction per image, implausible ones flagged, also in the log) and
        masks_overview.png (a sample of each class with the predicted lung contour; up to half of each
        row are flagged images, marked "!").

        Args:
            table: the images' rows (path, label, patient_id), aligned with `images` and `masks`.
            images: the uint8 images the masks were predicted for.
            masks: their 0/1 lung masks.
            out_dir: the run folder.
            per_class: images shown per class (one row each).
            seed: the seed of the random sample of typical masks.

        Returns:
            The mask_stats.csv table.
        """
        out_dir = Path(out_dir)
        area = lung_area_fractions(masks)
        stats = table[["path", "label", "patient_id"]].copy()
        stats["lung_area_fraction"] = area.round(4)
        stats["implausible"] = (area < self.min_area) | (area > self.max_area)
        write_csv(stats, out_dir / layout.MASK_STATS)
        flagged = stats[stats["implausible"]]
        if len(flagged):
            log.warning(
                "%d of %d lung mask(s) have an implausible area fraction (outside [%.2f, %.2f]); "
                "see mask_stats.csv and masks_overview.png, e.g. %s",
                len(flagged),
                len(stats),
                self.min_area,
                self.max_area,
                list(flagged["path"][:5]),
            )
        rng = np.random.default_rng(seed)
        picks: list[int] = []
        for _, group in stats.groupby("label", sort=True):
            # Up to half the row shows flagged masks, the rest a random sample of typical ones.
            flagged_rows = list(group.index[group["implausible"]])[: per_class // 2]
            typical = list(rng.permutation(group.index[~group["implausible"]]))
            picks.extend((flagged_rows + typical)[:per_class])
        titles = [
            f"{stats.at[i, 'label']} {stats.at[i, 'lung_area_fraction']:.2f}"
            + (" !" if stats.at[i, "implausible"] else "")
            for i in picks
        ]
        overlay_grid(
            [images[i] for i in picks],
            [masks[i] for i in picks],
            None,
            out_dir / layout.MASKS_OVERVIEW,
            titles=titles,
            columns=per_class,
        )
        return stats


def lung_area_fractions(masks: ArrayView | np.ndarray, chunk: int = 256) -> np.ndarray:
    """Each mask's share of lung pixels, read a chunk of masks at a time."""
    parts = [
        np.asarray(masks[i : i + chunk]).reshape(-1, masks.shape[-1] ** 2).mean(axis=1)
        for i in range(0, len(masks), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def images_and_masks(source: MaskSource, datamodule: Any, rows: pd.DataFrame) -> tuple[ArrayView, ArrayView]:
    """The unmasked images of a data module's `rows` (as it decodes them) and their 0/1 lung masks, at its
    load size: what a segmented run masked, as lazy views on the stores instead of kept in memory."""
    masks = source.masks_for(list(rows["file"]), list(rows["digest"]), size=datamodule.load_size)
    return datamodule.decoded_images(rows), masks


def mask_source(
    segmenter: Mapping[str, Any],
    cache_dir: str | Path,
    input_mode: str = "segmented",
    ckpt_path: str | None = None,
    optional: bool = False,
) -> MaskSource | None:
    """The MaskSource a run needs, from the `segmenter` config group; `ckpt_path` overrides the group's.

    None for raw input, unless `optional` (the report measures where raw models look, when a segmenter
    exists); a missing checkpoint is an error only when the masks are needed. Settings the group does
    not give keep MaskSource's defaults.

    Args:
        segmenter: the `segmenter` config group (ckpt_path, postprocess, batch_size, background, ...).
        cache_dir: the cache folder of images and masks.
        input_mode: data.input (raw, segmented, lungs_removed).
        ckpt_path: the segmenter checkpoint to use instead of the group's.
        optional: give a source for raw input too, when the checkpoint exists.
    """
    if input_mode == "raw" and not optional:
        return None
    keys = ("postprocess", "batch_size", "background", "min_area_fraction", "max_area_fraction")
    settings = {k: segmenter[k] for k in keys if k in segmenter}
    path = ckpt_path or segmenter["ckpt_path"]
    if optional and input_mode == "raw" and not Path(path).is_file():
        return None
    return MaskSource(path, cache_dir, **settings)


def trained_mask_source(
    record: Mapping[str, Any], cache_dir: str | Path, input_mode: str, ckpt_path: str | None = None
) -> MaskSource | None:
    """The segmenter a classifier was trained with, from its record (the checkpoint's
    data_config["segmenter"]); None for raw input. `ckpt_path` points to a copy kept elsewhere.

    A missing file, or one whose SHA-1 differs from the one recorded at training, is a UserError: other
    masks would silently give other predictions. Records written before the SHA-1 was kept only warn.

    Args:
        record: the recorded segmenter settings (ckpt_path, sha1, postprocess, ...).
        cache_dir: the cache folder of images and masks.
        input_mode: the classifier's data.input.
        ckpt_path: overrides the recorded checkpoint path.
    """
    if input_mode == "raw":
        return None
    trained_with = record.get("ckpt_path")
    recorded = record.get("sha1")
    path = Path(ckpt_path or trained_with or "")
    fix = "Give segmenter.ckpt_path=<the segmenter the classifier was trained with>."
    if not path.is_file():
        raise UserError(
            f"The classifier was trained on data.input={input_mode} with lung masks from {trained_with} "
            f"(SHA-1 {recorded or 'not recorded'}); segmenter checkpoint {path} does not exist. {fix}"
        )
    digest = checkpoint_digest(path)
    if recorded is None:
        log.warning(
            "Cannot check that %s is the segmenter the classifier was trained with (no SHA-1 recorded)", path
        )
    elif digest != recorded:
        raise UserError(
            f"Segmenter {path} (SHA-1 {digest}) is not the one the classifier was trained with "
            f"({trained_with}, SHA-1 {recorded}): its masks, and so the predictions, would differ. {fix}"
        )
    return mask_source(record, cache_dir, input_mode, str(path))
