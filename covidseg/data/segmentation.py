"""Lung segmentation data: a folder of image/mask pairs (metadata.csv: image,mask), one patient per image.

A pair is refused (a UserError naming the line of metadata.csv, the file and the fix) when either file is
not a usable image, when the mask has another size than its image (it would be stretched onto other
pixels), or when the mask has one value everywhere (all 0: no lung; all 255: no background).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidseg.data.datasets import ArrayDataModule, ArrayDataset
from covidseg.data.images import BadImage, ImageCache
from covidseg.data.split import DEFAULT_SPLIT_RATIOS, SPLITS, split_by_patient
from covidseg.data.store import ArrayView, take_rows
from covidseg.errors import UserError
from covidseg.paths import cache_dir as default_cache_dir
from covidseg.paths import missing_data_hint

log = logging.getLogger(__name__)


def _row(table: pd.DataFrame, column: str, path: str) -> int:
    """The position of the row whose `column` is `path`."""
    return int(np.flatnonzero(table[column].to_numpy() == path)[0])


def _size(width_height: tuple[int, int]) -> str:
    return f"{width_height[0]}x{width_height[1]} px"


def read_mask_manifest(root: str | Path) -> pd.DataFrame:
    """Rows of `<root>/metadata.csv` with columns image,mask (paths relative to root)."""
    root = Path(root)
    csv = root / "metadata.csv"
    if not csv.is_file():
        raise UserError(
            f"{csv} does not exist. A mask set is a folder with metadata.csv (image,mask). "
            f"{missing_data_hint()}"
        )
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = [c for c in ("image", "mask") if c not in table.columns]
    if missing:
        raise UserError(
            f"{csv} lacks column(s) {missing}; it has {list(table.columns)}. Add image,mask columns."
        )
    table["csv_line"] = table.index + 2  # the header is line 1; messages name the line
    table["image_file"] = [str(root / p) for p in table["image"]]
    table["mask_file"] = [str(root / p) for p in table["mask"]]
    absent = [p for p in [*table["image_file"], *table["mask_file"]] if not Path(p).is_file()]
    if absent:
        raise UserError(
            f"{len(absent)} file(s) listed in {csv} do not exist, e.g. {absent[:3]}. Fix the paths."
        )
    return table


class LungMaskDataModule(ArrayDataModule):
    """Image/mask pairs (one patient per image), split train/val/test deterministically by seed."""

    def __init__(
        self,
        root: str,
        image_size: int = 256,
        batch_size: int = 8,
        num_workers: int | str = "auto",
        split_ratios: Mapping[str, float] | None = None,
        seed: int = 0,
        limit: int | None = None,
        augment: Mapping[str, Any] | None = None,
        mean: float = 0.5,
        std: float = 0.25,
        cache_dir: str | None = None,
        evaluate_all: bool = False,
        on_device: bool | str = "auto",
    ):
        super().__init__(batch_size, num_workers, mean, std, augment, on_device)
        self.root = Path(root)
        self.image_size = int(image_size)
        self.split_ratios = dict(split_ratios or DEFAULT_SPLIT_RATIOS)
        self.seed, self.limit = int(seed), (int(limit) if limit else None)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.evaluate_all = evaluate_all
        self.table: pd.DataFrame | None = None

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
            table["split"] = split_by_patient(
                table.assign(patient_id=table["image"], label="lung"), self.split_ratios, self.seed
            )
        cache = ImageCache(self.cache_dir, self.image_size)
        images = self._load(cache, table, "image")
        masks = np.asarray(self._load(cache, table, "mask"))  # thresholded below, in memory
        self._check_sizes(cache, table)
        peaks = masks.reshape(len(masks), -1).max(axis=1)
        if (peaks == 0).any():
            empty = list(table["mask"][peaks == 0][:3])
            raise UserError(
                f"{int((peaks == 0).sum())} mask(s) in {self.root} are empty (all 0), e.g. {empty}. "
                "Masks must mark lung pixels with a non-zero value; fix or remove those rows."
            )
        # 0/1 and 0/255 masks both work: threshold at half of each mask's own maximum.
        masks = (masks > peaks[:, None, None] / 2).astype(np.uint8)
        self.table = table
        for split in SPLITS:
            rows = (table["split"] == split).to_numpy()
            self.datasets[split] = ArrayDataset(take_rows(images, rows), masks[rows])
        log.info("Mask data %s: %s", self.root, self.split_sizes())

    def _load(self, cache: ImageCache, table: pd.DataFrame, column: str) -> ArrayView:
        """The decoded files of `column` (image or mask); a refused file names its line of metadata.csv."""
        try:
            return cache.load_many(list(table[f"{column}_file"]))[0]
        except BadImage as err:
            if err.path is None:
                raise
            row = table.iloc[_row(table, f"{column}_file", err.path)]
            where = f"{self.root / 'metadata.csv'} line {row['csv_line']}"
            if column == "mask" and err.reason == "blank":
                raise UserError(
                    f"{where}: mask {row['mask']} is empty or full, one value everywhere ({err.problem}) A "
                    "mask marks lung pixels (non-zero) and background (0); fix the mask or remove the row."
                ) from err
            raise UserError(f"{where}: {err.problem} Replace the {column} or remove the row.") from err

    def _check_sizes(self, cache: ImageCache, table: pd.DataFrame) -> None:
        """Each mask has its image's size (as displayed): a mask of another size would be stretched onto other
        pixels when both are resized to image_size, silently teaching the wrong lung outline."""
        image_sizes = cache.source_sizes(list(table["image_file"]))
        mask_sizes = cache.source_sizes(list(table["mask_file"]))
        wrong = [i for i, (a, b) in enumerate(zip(image_sizes, mask_sizes)) if a != b]
        if wrong:
            shown = "; ".join(
                f"line {table.at[i, 'csv_line']}: mask {table.at[i, 'mask']} is {_size(mask_sizes[i])}, "
                f"image {table.at[i, 'image']} is {_size(image_sizes[i])}"
                for i in wrong[:3]
            )
            raise UserError(
                f"{self.root / 'metadata.csv'}: {len(wrong)} mask(s) have another size than their image "
                f"({shown}). Give each mask its image's exact size (draw or export it on that image), or "
                "remove the row."
            )

    def describe_empty(self, split: str) -> str:
        return f"The {split} split of {self.root} is empty; use more images or other split ratios."
