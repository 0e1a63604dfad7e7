"""Several lung mask sets at once (data.roots): which folders, how each is split, and the per-set checks
that need the mask files' own pixels.

A mask set is a folder with metadata.csv (image,mask[,patient_id,...]); its name is its folder name (the
`test/<set>/...` keys of metrics.json). Each set is split on its own, by patient when it has a
`patient_id` column and by image (with a warning) when it has none, with the same ratios and seed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from covidseg.data.decoding import BadImage, full_resolution, read_image_bytes
from covidseg.data.parallel import default_workers, ordered_map
from covidseg.data.split import split_by_patient
from covidseg.data.store import ArrayView
from covidseg.errors import UserError

log = logging.getLogger(__name__)

ROOTS_EXAMPLE = "data.roots=[/data/lungs,/data/lungs-covid]"
NOT_BINARY_SHOWN = 3  # masks named in the message; the count covers the rest


def mask_set_roots(root: str | Path | None, roots: Sequence[str | Path] | None) -> list[Path]:
    """The mask set folders from data.root (one set) or data.roots (several); refuses both, neither,
    and two sets of one name (their metrics keys would collide)."""
    if isinstance(roots, (str, Path)):
        roots = [roots]  # data.roots=/one/folder: a list of one is what was meant
    if root is not None and roots is not None and [str(r) for r in roots] != [str(root)]:
        raise UserError(
            f"data.root={root} and data.roots={[str(r) for r in roots]} both given; give one: "
            f"data.root=<folder> for one mask set, or {ROOTS_EXAMPLE} for several."
        )
    folders = [Path(r) for r in (roots if roots is not None else [] if root is None else [root])]
    if not folders:
        raise UserError(f"No mask set given: set data.root=<folder> or {ROOTS_EXAMPLE}.")
    names = [set_name(f) for f in folders]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(
            f"data.roots names mask set(s) {twice} more than once ({[str(f) for f in folders]}); a set is "
            "named by its folder, so give each set once, from folders of different names."
        )
    return folders


def set_name(root: str | Path) -> str:
    """A mask set's name: its folder's name."""
    return Path(root).absolute().name


def split_mask_set(table: pd.DataFrame, root: Path, ratios: Mapping[str, float], seed: int) -> pd.Series:
    """train/val/test of each row of one mask set: by its `patient_id` column (no patient in two splits),
    or by image, with a warning, when the set has no such column.

    Args:
        table: the set's metadata.csv rows (`image`, optionally `patient_id`), indexed by row number.
        root: the set's folder, named in messages.
        ratios: the fraction of patients in each split (split_by_patient).
        seed: the random seed of the split.

    Returns:
        The split of each row, aligned with `table`.

    Raises:
        UserError: a `patient_id` cell is empty.
    """
    if "patient_id" in table.columns:
        blank = table["patient_id"].str.strip() == ""
        if blank.any():
            lines = [int(i) + 2 for i in table.index[blank][:3]]  # line 1 is the header
            raise UserError(
                f"{root / 'metadata.csv'}: {int(blank.sum())} row(s) have an empty patient_id (lines "
                f"{lines}). Fill in each image's patient, or drop the column to split by image."
            )
        patients = table["patient_id"]
    else:
        log.warning(
            "Mask set %s has no patient_id column in %s: it is split by image, so images of one patient "
            "can land in train and test. Add a patient_id column to split it by patient.",
            set_name(root),
            root / "metadata.csv",
        )
        patients = table["image"]
    return split_by_patient(table.assign(patient_id=patients, label="lung"), ratios, seed)


def mask_values(path: str) -> np.ndarray | BadImage:
    """The distinct pixel values of a mask file at its own size (as decoded, before any resize); the
    refusal is returned, not raised, so that the caller names files in order (ordered_map)."""
    try:
        gray = full_resolution(path, read_image_bytes(path))
    except BadImage as err:
        return err
    return np.flatnonzero(np.bincount(gray.ravel(), minlength=256)).astype(np.uint8)


def check_binary_masks(table: pd.DataFrame, root: Path) -> None:
    """Refuse masks whose own pixels hold more than 0 and one lung value (grey levels: anti-aliased or
    JPEG-compressed exports, soft labels). Checked on each file as stored, since resizing to image_size
    blurs every mask's edge and that is not the user's fault."""
    files = list(table["mask_file"])
    results = ordered_map(mask_values, files, min(default_workers(), len(files)), "Checking masks")
    bad: list[tuple[int, np.ndarray]] = []
    for i, values in enumerate(results):
        if isinstance(values, BadImage):
            raise values
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            bad.append((i, values))
    if bad:
        shown = "; ".join(
            f"line {int(table.index[i]) + 2}: {files[i]} has {len(v)} values ({_values(v)})"
            for i, v in bad[:NOT_BINARY_SHOWN]
        )
        raise UserError(
            f"{root / 'metadata.csv'}: {len(bad)} mask(s) are not binary ({shown}). A mask holds 0 for "
            "background and one value (e.g. 255) for lung: export it without anti-aliasing, in a lossless "
            "format (PNG, not JPEG), or threshold it; or remove the row."
        )


def _values(values: np.ndarray) -> str:
    listed = ", ".join(str(int(v)) for v in values[:4])
    return listed + (", ..." if len(values) > 4 else "")


def join_arrays(parts: Sequence[ArrayView | np.ndarray]) -> ArrayView | np.ndarray:
    """The images of several sets as one array: one lazy view when all are views of one store (the sets
    share the image cache), else the rows read into memory."""
    views = [p for p in parts if isinstance(p, ArrayView)]
    if len(views) == len(parts) and len({(v.path, v.store_id) for v in views}) == 1:
        first = views[0]
        rows = np.concatenate([v.rows for v in views])
        return ArrayView(first.path, first.store_id, first.row_shape, first.dtype, rows)
    return np.concatenate([np.asarray(p) for p in parts])
