"""The classification DataModule: manifest -> patient split -> cached arrays -> (masks) -> tensors.

Everything up to the tensors is done once in `setup`: the images are a lazy view (covidseg.data.store)
on the decoded uint8 arrays at rest, selected per split without being read.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from covidseg.data.copies import check_copies
from covidseg.data.datasets import ArrayDataModule, ArrayDataset
from covidseg.data.derived import masked_inputs
from covidseg.data.device_batches import DeviceBatches
from covidseg.data.images import MIN_SIDE, ImageCache
from covidseg.data.intensity import check_equalize, preprocessing_tag
from covidseg.data.manifest import load_manifest
from covidseg.data.selection import check_external_sets, select_classes, stratified_subset
from covidseg.data.split import (
    DEFAULT_SPLIT_RATIOS,
    SPLITS,
    check_classes_in_splits,
    check_folds,
    check_no_leakage,
    fold_by_patient,
    read_split_file,
    split_by_patient,
    write_splits,
)
from covidseg.data.store import ArrayView, take_rows
from covidseg.data.transforms import MASK_MODES
from covidseg.errors import UserError
from covidseg.paths import cache_dir as default_cache_dir
from covidseg.paths import missing_segmenter_hint

log = logging.getLogger(__name__)

INPUT_MODES = ("raw", *MASK_MODES)
BALANCE_MODES = ("weighted_loss", "sampler", "none")


class CXRDataModule(ArrayDataModule):
    """Chest X-ray classification data, raw or lung-masked, split by patient.

    `evaluate_on` is for evaluation runs: `all` puts every image into the test set (no split),
    `train`/`val`/`test` keep only that split of `split_file`.
    `folds`=K, `fold`=i: patient-level K-fold cross-validation, test = fold i (split.fold_by_patient);
    ignored by evaluation runs and when `split_file` is given.
    `equalize` (none | hist | clahe), `clahe_clip`: intensity standardisation of the decoded images
    (covidseg.data.intensity), before lung masks are applied; the segmenter still gets plain images.
    `external` folders are checked at set-up (before any training) so a typo does not cost a whole run.
    """

    def __init__(
        self,
        root: str,
        classes: Sequence[str] = ("normal", "covid"),
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        limit: int | None = None,
        seed: int = 0,
        split_ratios: Mapping[str, float] | None = None,
        split_file: str | None = None,
        folds: int | None = None,
        fold: int = 0,
        evaluate_on: str | None = None,
        on_unknown_label: str = "drop",
        on_bad_image: str = "error",
        balance: str = "weighted_loss",
        augment: Mapping[str, Any] | None = None,
        mean: float = 0.5,
        std: float = 0.25,
        input: str = "raw",
        crop_to_lungs: bool = False,
        crop_margin: float = 0.05,
        equalize: str = "none",
        clahe_clip: float = 2.0,
        cache_dir: str | None = None,
        masks: Any = None,
        external: Sequence[str] = (),
        on_device: bool | str = "auto",
    ):
        super().__init__(batch_size, num_workers, mean, std, augment, on_device)
        if input not in INPUT_MODES:
            raise UserError(f"data.input must be one of {INPUT_MODES}, got {input!r}.")
        if balance not in BALANCE_MODES:
            raise UserError(f"data.balance must be one of {BALANCE_MODES}, got {balance!r}.")
        if evaluate_on not in (None, "all", *SPLITS):
            raise UserError(f"evaluate_on must be null, 'all' or one of {SPLITS}, got {evaluate_on!r}.")
        self.root = Path(root)
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.limit = int(limit) if limit else None
        self.seed = int(seed)
        self.split_ratios = dict(split_ratios or DEFAULT_SPLIT_RATIOS)
        self.split_file = split_file
        check_folds(folds, fold)
        self.folds, self.fold = folds, fold
        self.evaluate_on = evaluate_on
        self.on_unknown_label = on_unknown_label
        self.on_bad_image = on_bad_image
        self.balance = balance
        self.input = input
        self.crop_to_lungs = bool(crop_to_lungs)
        self.crop_margin = float(crop_margin)
        check_equalize(equalize, clahe_clip)
        self.equalize, self.clahe_clip = equalize, float(clahe_clip)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        # A covidseg.masks.MaskSource (any object with masks_for/stats), unless input == raw.
        self.masks = masks
        # Other hospitals' data sets, tested after training (covidseg.inference.evaluation), never trained on.
        self.external = [Path(f) for f in external or ()]
        self.table: pd.DataFrame | None = None
        self.stats: dict[str, Any] = {}
        self.sampler_generator: torch.Generator | None = None  # data.balance=sampler

    @classmethod
    def from_record(cls, record: Mapping[str, Any], **overrides: Any) -> CXRDataModule:
        """A run's data module rebuilt from its recorded data config (checkpoint or config_resolved.yaml).

        Keys that are not parameters (`_target_`, `segmenter`) are ignored; `overrides` win.
        """
        parameters = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in record.items() if k in parameters and k != "self"}
        return cls(**{**kwargs, **overrides})

    # -- setup -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        table, manifest = load_manifest(self.root)
        if not self.evaluate_on:
            check_external_sets(self.external, self.classes, table, self.root)
        table, dropped = select_classes(
            table,
            self.classes,
            self.on_unknown_label,
            source=manifest.source,
            require_all=not self.evaluate_on,
        )
        if self.limit:
            table = stratified_subset(table, self.limit, self.seed)
        table["split"] = self._assign_splits(table)
        unused = int((table["split"] == "unused").sum())
        table = table[table["split"] != "unused"].reset_index(drop=True)
        cache = self._image_cache()
        images, digests, skipped = cache.load_many(list(table["file"]), self.on_bad_image)
        skipped_paths = list(table["path"].iloc[skipped])
        table = table.drop(index=table.index[skipped]).reset_index(drop=True)
        table["digest"] = digests
        check_no_leakage(table)
        copies = check_copies(table, manifest.source)
        if not self.evaluate_on:
            check_classes_in_splits(table, self.classes, self._split_fix())
        self.stats = {
            "dropped_labels": dropped,
            "split_ratios": None if self.evaluate_on else self.split_ratios,
            "folds": self.folds if self.uses_folds else None,
            "fold": self.fold if self.uses_folds else None,
            "skipped_images": skipped_paths,
            "n_skipped_images": len(skipped_paths),
            "n_unused_images": unused,
            "skipped_image_reasons": dict(cache.skip_reasons),
            "n_duplicate_images": copies,
            **manifest.stats(),
            "image_cache_hits": cache.hits,
            "image_cache_misses": cache.misses,
            **{f"n_{s}": int((table["split"] == s).sum()) for s in SPLITS},
            **{f"patients_{s}": int(table.loc[table["split"] == s, "patient_id"].nunique()) for s in SPLITS},
        }
        if self.input != "raw":
            images = self._apply_masks(images, list(table["file"]), list(table["digest"]))
        self.table = table
        for split in SPLITS:
            rows = (table["split"] == split).to_numpy()
            self.datasets[split] = ArrayDataset(take_rows(images, rows), table.loc[rows, "target"].to_numpy())
        log.info(
            "Data %s: %s",
            self.root,
            {k: v for k, v in self.stats.items() if k.startswith(("n_", "patients_"))},
        )

    def _assign_splits(self, table: pd.DataFrame) -> pd.Series:
        if self.evaluate_on == "all":
            return pd.Series("test", index=table.index, name="split")
        if self.split_file:
            splits = read_split_file(self.split_file, table)
        elif self.uses_folds:
            splits = fold_by_patient(table, self.folds, self.fold, self.split_ratios, self.seed)
        else:
            splits = split_by_patient(table, self.split_ratios, self.seed)
        if self.evaluate_on:  # keep only the asked-for split, evaluated as "test"
            splits = splits.where(splits == self.evaluate_on, "unused").replace(self.evaluate_on, "test")
        return splits

    @property
    def uses_folds(self) -> bool:
        """Whether this run's splits come from cross-validation folds (not for evaluation or split files)."""
        return bool(self.folds) and not self.split_file and not self.evaluate_on

    def _image_cache(self) -> ImageCache:
        return ImageCache(
            self.cache_dir, self.load_size, MIN_SIDE, equalize=self.equalize, clahe_clip=self.clahe_clip
        )

    def decoded_images(self, rows: pd.DataFrame) -> ArrayView:
        """The images of `rows` (table rows) as this data module decodes them (load size, equalized), before
        any lung mask: a lazy view on the cache rather than kept in memory."""
        return self._image_cache().load_many(list(rows["file"]))[0]

    @property
    def load_size(self) -> int:
        """Size images are decoded at: twice the image size when cropping to the lungs enlarges the crop."""
        return self.image_size * 2 if self.crop_to_lungs and self.input != "raw" else self.image_size

    def _split_fix(self) -> str:
        if self.split_file:
            return (
                f"Fix {self.split_file} so that each split has images of every class, or set "
                "data.split_file=null."
            )
        if self.uses_folds:
            return (
                f"Use fewer data.folds (now {self.folds}), more data or a larger data.limit "
                f"(now {self.limit or 'null'}): each class needs patients in every fold and in train and val."
            )
        return (
            f"Use more data (more patients of that class), a larger data.limit (now {self.limit or 'null'}) "
            f"or other data.split_ratios (now {self.split_ratios}); a class needs at least 3 patients."
        )

    def _apply_masks(self, images: ArrayView, files: list[str], digests: list[str]) -> ArrayView:
        """The masked (and cropped) model inputs of `images`, a view on their store (covidseg.data.derived):
        computed chunk by chunk for rows it lacks, only looked up by a warm run."""
        if self.masks is None:
            raise UserError(
                f"data.input={self.input} needs lung masks, from a segmenter. {missing_segmenter_hint()}"
            )
        masks = self.masks.masks_for(files, digests, size=images.shape[-1])
        self.stats.update(self.masks.stats())
        return masked_inputs(
            self.cache_dir,
            images,
            digests,
            masks,
            self.masks.mask_keys(digests),
            self.input,
            self.crop_to_lungs,
            self.crop_margin,
            self.masks.background,
            self.image_size,
            preprocessing_tag(self.equalize, self.clahe_clip),
        )

    def prediction_inputs(self, files: Sequence[str]) -> tuple[pd.DataFrame, ArrayDataset]:
        """Image files outside any data set (covidseg-predict), prepared as `setup` prepares a data set's.

        Returns one row per file (file, digest, error: why an unreadable file was skipped, else None) and
        the model inputs of the readable files, in order (targets are placeholders)."""
        cache = self._image_cache()
        images, digests, skipped = cache.load_many(list(files), "skip")
        table = pd.DataFrame({"file": list(files), "digest": None, "error": None}, dtype=object)
        table.loc[skipped, "error"] = cache.skipped_problems
        readable = table.index[table["error"].isna()]
        table.loc[readable, "digest"] = digests
        if self.input != "raw" and len(readable):
            images = self._apply_masks(images, list(table.loc[readable, "file"]), digests)
        targets = np.zeros(len(images), dtype=np.int64)
        return table, ArrayDataset(images, targets)

    # -- what the model and entry points need -----------------------------------------------------
    def class_counts(self, split: str = "train") -> list[int]:
        """The number of images of each class (in `classes` order) in `split`."""
        targets = self.datasets[split].targets
        return [int((targets == i).sum()) for i in range(len(self.classes))]

    def class_weights(self) -> list[float] | None:
        """Inverse-frequency weights of the training classes (mean 1), if data.balance=weighted_loss."""
        if self.balance != "weighted_loss":
            return None
        counts = np.array(self.class_counts("train"), dtype=float)
        if (counts == 0).any():
            missing = [c for c, n in zip(self.classes, counts) if n == 0]
            raise UserError(
                f"The training split has no image of class {missing}; use more data (data.limit)."
            )
        weights = counts.sum() / (len(counts) * counts)
        return weights.tolist()

    def write_splits(self, path: str | Path) -> None:
        """The run's splits.csv at `path`: one row per image with its split (split.write_splits)."""
        write_splits(self.table, path)

    # -- loaders --------------------------------------------------------------------------------
    def describe_empty(self, split: str) -> str:
        """The UserError message for an empty `split`, with the data set's counts and what to change."""
        return f"The {split} split is empty ({self.stats}); use more data or other split ratios."

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        if self.balance == "sampler":
            counts = np.array(self.class_counts("train"), dtype=float)
            weights = (1.0 / counts)[self.datasets["train"].targets.numpy()]
            generator = self._sampler_generator()
            sampler = WeightedRandomSampler(weights.tolist(), num_samples=len(weights), generator=generator)
            return self._loader("train", sampler=sampler)
        return self._loader("train", shuffle=True)

    def _sampler_generator(self) -> torch.Generator:
        """The weighted sampler's generator: one per data module, seeded once, so that its state can be saved
        in checkpoints and a resumed fit draws the batches an uninterrupted one would."""
        if self.sampler_generator is None:
            self.sampler_generator = torch.Generator().manual_seed(self.seed)
        return self.sampler_generator

    def state_dict(self) -> dict[str, Any]:
        """The weighted sampler's generator state: Lightning stores it in every checkpoint and hands it to
        load_state_dict on resume, before it asks for the train loader."""
        return (
            {"sampler_generator": self._sampler_generator().get_state()} if self.balance == "sampler" else {}
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the sampler generator saved by state_dict: a resumed fit draws the same batches."""
        if "sampler_generator" in state_dict:
            self._sampler_generator().set_state(state_dict["sampler_generator"])

    def predict_dataloader(self) -> DataLoader | DeviceBatches:
        """The loader of the test split: predict runs over the same images as test."""
        return self._loader("test")
