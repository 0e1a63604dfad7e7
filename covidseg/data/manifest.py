"""Read a dataset folder into a table of images: one row per image with path, label and patient.

A dataset folder holds either `metadata.csv` (columns `path,label,patient_id`; extra columns are
kept) or, without a CSV, one subfolder per class (the patient id is then <class>/<file stem>, since
nothing better is known). Paths are relative to the folder (absolute paths are accepted too).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from covidseg.errors import UserError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "label", "patient_id")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def read_manifest(root: str | Path) -> pd.DataFrame:
    """All rows of a dataset folder, labels as strings, with an absolute `file` column added."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"Dataset folder {root} does not exist. Point data.root at a folder with metadata.csv "
            "(path,label,patient_id) or with one subfolder per class, or set COVIDSEG_DATA_DIR."
        )
    csv = root / "metadata.csv"
    if csv.is_file():
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
        missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
        if missing:
            raise UserError(
                f"{csv} lacks column(s) {missing}; it has {list(table.columns)}. "
                "Add them (path relative to the CSV's folder, label, patient_id)."
            )
        for column in REQUIRED_COLUMNS:
            empty = table.index[table[column].str.strip() == ""]
            if len(empty):
                rows = ", ".join(str(i + 2) for i in empty[:5])
                raise UserError(f"{csv}: empty '{column}' on line(s) {rows}. Fill it in or remove the row.")
    else:
        table = _scan_class_folders(root)
    table = table.reset_index(drop=True)
    table["file"] = [str(root / p) for p in table["path"]]
    missing_files = [p for p, f in zip(table["path"], table["file"]) if not Path(f).is_file()]
    if missing_files:
        raise UserError(
            f"{len(missing_files)} image file(s) listed for {root} do not exist, e.g. {missing_files[:3]}. "
            "Fix the paths (relative to the dataset folder) or remove those rows."
        )
    return table


def _scan_class_folders(root: Path) -> pd.DataFrame:
    rows = [
        {"path": str(f.relative_to(root)), "label": sub.name, "patient_id": f"{sub.name}/{f.stem}"}
        for sub in sorted(p for p in root.iterdir() if p.is_dir())
        for f in sorted(sub.rglob("*"))
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not rows:
        raise UserError(
            f"{root} has no metadata.csv and no class subfolders with images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}). Add metadata.csv (path,label,patient_id) or class folders."
        )
    log.info("No metadata.csv in %s: using class folders, patient id = <class>/<file stem>", root)
    return pd.DataFrame(rows)


def select_classes(table: pd.DataFrame, classes: Sequence[str], on_unknown_label: str = "drop",
                   source: str = "", require_all: bool = True) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep rows whose label is in `classes` (in that order: index = position) and count the rest.

    on_unknown_label: `drop` (count, log, continue) or `error`. require_all=False (evaluation) accepts a
    data set without some of the classes, e.g. an external COVID-only set.
    Returns the kept rows with a `target` column, and {label: count} of the rows left out.
    """
    classes = list(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise UserError(f"data.classes must name at least two distinct classes, got {classes}.")
    if on_unknown_label not in ("drop", "error"):
        raise UserError(f"data.on_unknown_label must be 'drop' or 'error', got {on_unknown_label!r}.")
    counts = table["label"].value_counts()
    absent = [c for c in classes if c not in counts.index]
    if absent and (require_all or len(absent) == len(classes)):
        raise UserError(
            f"{source or 'dataset'}: no image has label {absent}; labels present: {dict(counts)}. "
            "Fix data.classes (names are case-sensitive)."
        )
    unknown = table[~table["label"].isin(classes)]
    dropped = {str(k): int(v) for k, v in unknown["label"].value_counts().items()}
    if dropped:
        if on_unknown_label == "error":
            first = unknown.index[0]
            raise UserError(
                f"{source or 'dataset'}: {len(unknown)} row(s) have labels not in data.classes={classes}: "
                f"{dropped} (first: row {first}, {unknown.loc[first, 'path']}). Add them to data.classes or "
                "set data.on_unknown_label=drop."
            )
        log.info("Left out %d image(s) with labels not in %s: %s", len(unknown), classes, dropped)
    kept = table[table["label"].isin(classes)].copy()
    kept["target"] = kept["label"].map({c: i for i, c in enumerate(classes)}).astype(int)
    return kept.reset_index(drop=True), dropped


def stratified_subset(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A subset of about n images with the class proportions of `table`, whole patients at a time.

    Whole patients keep the later patient-level split meaningful; every class keeps >= 3 patients
    where it has them, so each of train/val/test can see every class.
    """
    if n <= 0 or n >= len(table):
        return table
    rng = np.random.default_rng(seed)
    picked = []
    for label, group in table.groupby("label", sort=True):
        want = max(3, round(n * len(group) / len(table)))
        patients = np.array(sorted(group["patient_id"].unique()), dtype=object)
        rng.shuffle(patients)
        sizes = group.groupby("patient_id").size()
        chosen, total = [], 0
        for p in patients:
            if total >= want:
                break
            chosen.append(p)
            total += int(sizes[p])
        picked.append(group[group["patient_id"].isin(chosen)])
    return pd.concat(picked).sort_index().reset_index(drop=True)
