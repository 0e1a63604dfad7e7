"""Lung segmentation data: one or several mask sets (folders of image/mask pairs, metadata.csv: image,mask
and optionally patient_id), each split by patient within the set (covidseg.data.mask_sets).

A pair is refused (a UserError naming the line of metadata.csv, the file and the fix) when either file is
not a usable image, when the mask has another size than its image (it would be stretched onto other
pixels), when the mask has one value everywhere (all 0: no lung; all 255: no background), or when the
mask file is not binary.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidseg.data.datasets import ArrayDataModule, ArrayDataset
from covidseg.data.images import BadImage, ImageCache
from covidseg.data.mask_sets import check_binary_masks, join_arrays, mask_set_roots, set_name, split_mask_set
from covidseg.data.split import DEFAULT_SPLIT_RATIOS, SPLITS
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
    """Image/mask pairs of one mask set (`root`) or several (`roots`), each split train/val/test by patient
    within its set, deterministically by seed; `limit` is the most pairs taken from each set. `table` has a
    row per pair with its set's name (`set`) and `split`, in the order of the datasets' rows."""

    def __init__(
        self,
        root: str | None = None,
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
        roots: Sequence[str] | None = None,
    ):
        super().__init__(batch_size, num_workers, mean, std, augment, on_device)
        self.roots = mask_set_roots(root, roots)
        self.image_size = int(image_size)
        self.split_ratios = dict(split_ratios or DEFAULT_SPLIT_RATIOS)
        self.seed, self.limit = int(seed), (int(limit) if limit else None)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.evaluate_all = evaluate_all
        self.table: pd.DataFrame | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        cache = ImageCache(self.cache_dir, self.image_size)
        sets = [self._read_set(root, cache) for root in self.roots]
        table = pd.concat([t for t, _, _ in sets], ignore_index=True)
        images = join_arrays([i for _, i, _ in sets])
        masks = np.concatenate([m for _, _, m in sets])
        self.table = table
        for split in SPLITS:
            rows = (table["split"] == split).to_numpy()
            self.datasets[split] = ArrayDataset(take_rows(images, rows), masks[rows])
        log.info("Mask data %s: %s", [str(r) for r in self.roots], self.set_sizes())

    def _read_set(self, root: Path, cache: ImageCache) -> tuple[pd.DataFrame, ArrayView, np.ndarray]:
        """One mask set read, checked and split: its rows (index = row of metadata.csv, for messages), images
        and 0/1 masks. Every set goes through here, so every check applies to every set."""
        table = read_mask_manifest(root)
        if self.limit:
            table = table.sample(n=min(self.limit, len(table)), random_state=self.seed).sort_index()
        table["set"] = set_name(root)
        if self.evaluate_all:
            table["split"] = "test"
        else:
            table["split"] = split_mask_set(table, root, self.split_ratios, self.seed)
        images = self._load(cache, table, "image", root)
        masks = np.asarray(self._load(cache, table, "mask", root))  # thresholded below, in memory
        self._check_sizes(cache, table, root)
        check_binary_masks(table, root)
        peaks = masks.reshape(len(masks), -1).max(axis=1)
        if (peaks == 0).any():
            empty = list(table["mask"][peaks == 0][:3])
            raise UserError(
                f"{int((peaks == 0).sum())} mask(s) in {root} are empty (all 0), e.g. {empty}. "
                "Masks must mark lung pixels with a non-zero value; fix or remove those rows."
            )
        # 0/1 and 0/255 masks both work: threshold at half of each mask's own maximum.
        masks = (masks > peaks[:, None, None] / 2).astype(np.uint8)
        return table, images, masks

    def set_sizes(self) -> dict[str, dict[str, int]]:
        """Pairs per split of each mask set: {set: {train: n, val: n, test: n}}."""
        counts = self.table.groupby(["set", "split"], sort=False).size() if self.table is not None else {}
        return {set_name(r): {s: int(counts.get((set_name(r), s), 0)) for s in SPLITS} for r in self.roots}

    def _load(self, cache: ImageCache, table: pd.DataFrame, column: str, root: Path) -> ArrayView:
        """The decoded files of `column` (image or mask); a refused file names its line of metadata.csv."""
        try:
            return cache.load_many(list(table[f"{column}_file"]))[0]
        except BadImage as err:
            if err.path is None:
                raise
            row = table.iloc[_row(table, f"{column}_file", err.path)]
            where = f"{root / 'metadata.csv'} line {row['csv_line']}"
            if column == "mask" and err.reason == "blank":
                raise UserError(
                    f"{where}: mask {row['mask']} is empty or full, one value everywhere ({err.problem}) A "
                    "mask marks lung pixels (non-zero) and background (0); fix the mask or remove the row."
                ) from err
            raise UserError(f"{where}: {err.problem} Replace the {column} or remove the row.") from err

    def _check_sizes(self, cache: ImageCache, table: pd.DataFrame, root: Path) -> None:
        """Each mask has its image's size (as displayed): a mask of another size would be stretched onto other
        pixels when both are resized to image_size, silently teaching the wrong lung outline."""
        image_sizes = cache.source_sizes(list(table["image_file"]))
        mask_sizes = cache.source_sizes(list(table["mask_file"]))
        wrong = [i for i, (a, b) in enumerate(zip(image_sizes, mask_sizes)) if a != b]
        if wrong:
            shown = "; ".join(
                f"line {table['csv_line'].iloc[i]}: mask {table['mask'].iloc[i]} is {_size(mask_sizes[i])}, "
                f"image {table['image'].iloc[i]} is {_size(image_sizes[i])}"
                for i in wrong[:3]
            )
            raise UserError(
                f"{root / 'metadata.csv'}: {len(wrong)} mask(s) have another size than their image "
                f"({shown}). Give each mask its image's exact size (draw or export it on that image), or "
                "remove the row."
            )

    def describe_empty(self, split: str) -> str:
        """The UserError message for an empty `split`, naming the mask sets it was drawn from."""
        sets = ", ".join(str(r) for r in self.roots)
        return f"The {split} split of {sets} is empty; use more images or other split ratios."
