"""Read a dataset folder into a table of images: one row per image with path, label and patient.

A dataset folder holds either `metadata.csv` (columns `path,label,patient_id`; extra columns are
kept) or, without a CSV, one subfolder per class (the patient id is then <class>/<file stem>, since
nothing better is known).

Every check of the table happens here, before any image is decoded:
- labels and patient ids lose surrounding whitespace ("covid " -> "covid"), counted and logged;
- relative paths must stay inside the dataset folder (`../x.png` is refused). Absolute paths are
  accepted on purpose, so a CSV can list images kept elsewhere;
- an image listed twice (also as `a/./b.png` vs `a/b.png`, or with two labels) is refused;
- class folders: files with unsupported suffixes (e.g. .dcm) are counted and named in a warning,
  hidden files (.DS_Store, ._x.png, .ipynb_checkpoints/) are ignored.
"""

from __future__ import annotations

import csv as csvlib
import logging
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from covidseg.errors import UserError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "label", "patient_id")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
EXAMPLES = 3  # how many example paths/lines a message names


@dataclass
class ManifestReport:
    """What reading a dataset folder changed or left out; `stats()` goes into metrics.json."""

    source: str  # the metadata.csv read, or the folder whose class subfolders were scanned
    stripped_labels: int = 0
    stripped_patient_ids: int = 0
    unsupported_files: dict[str, int] = field(default_factory=dict)  # class folders: {suffix: count}
    files_outside_class_folders: int = 0  # class folders: images lying directly in the dataset folder

    def stats(self) -> dict[str, Any]:
        return {"stripped_labels": self.stripped_labels, "stripped_patient_ids": self.stripped_patient_ids,
                "unsupported_files": dict(self.unsupported_files),
                "n_unsupported_files": sum(self.unsupported_files.values()),
                "files_outside_class_folders": self.files_outside_class_folders}


def read_manifest(root: str | Path) -> pd.DataFrame:
    """All rows of a dataset folder, labels as strings, with an absolute `file` column added."""
    return load_manifest(root)[0]


def load_manifest(root: str | Path) -> tuple[pd.DataFrame, ManifestReport]:
    """The checked table of a dataset folder (see the module docstring) and what reading it changed."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"Dataset folder {root} does not exist. Point data.root at a folder with metadata.csv "
            "(path,label,patient_id) or with one subfolder per class, or set COVIDSEG_DATA_DIR."
        )
    csv = root / "metadata.csv"
    if csv.is_file():
        report = ManifestReport(source=str(csv))
        table = _read_csv(csv)
    else:
        report = ManifestReport(source=str(root))
        table = _scan_class_folders(root, report)
    table = table.reset_index(drop=True)
    _strip_whitespace(table, report)
    table["file"] = _checked_files(root, table, report.source)
    missing_files = [p for p, f in zip(table["path"], table["file"]) if not Path(f).is_file()]
    if missing_files:
        raise UserError(
            f"{len(missing_files)} image file(s) listed for {root} do not exist, e.g. {missing_files[:3]}. "
            "Fix the paths (relative to the dataset folder) or remove those rows."
        )
    return table, report


def _read_csv(csv: Path) -> pd.DataFrame:
    """metadata.csv as strings; empty, malformed or incomplete files are UserErrors naming the fix."""
    if csv.stat().st_size == 0:
        raise UserError(f"{csv} is empty (0 bytes). Write a header path,label,patient_id and one row per "
                        "image, or delete it to use one subfolder per class instead.")
    try:
        with warnings.catch_warnings():
            # pandas only warns when a row has more fields than the header, then drops the extra values
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # index_col=False: otherwise rows with one extra field silently shift into the index
            table = pd.read_csv(csv, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError as err:
        raise UserError(f"{csv} has no header ({err}). Write a header path,label,patient_id and one row per "
                        "image, or delete it to use one subfolder per class instead.") from err
    except (pd.errors.ParserError, pd.errors.ParserWarning) as err:
        raise UserError(f"{csv} is not a valid CSV: {_first_bad_line(csv) or err}. Give every row the "
                        "header's number of fields, and quote values that contain commas.") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{csv} is not a UTF-8 text file ({err.reason} at byte {err.start}). "
                        "Save it as UTF-8 CSV (path,label,patient_id).") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(
            f"{csv} lacks column(s) {missing}; it has {list(table.columns)}. "
            "Add them (path relative to the CSV's folder, label, patient_id)."
        )
    if table.empty:
        raise UserError(f"{csv} has a header but no rows. Add one row per image (path,label,patient_id), "
                        "or delete it to use one subfolder per class instead.")
    for column in REQUIRED_COLUMNS:
        empty = table.index[table[column].str.strip() == ""]
        if len(empty):
            rows = ", ".join(str(i + 2) for i in empty[:5])
            raise UserError(f"{csv}: empty '{column}' on line(s) {rows}. Fill it in or remove the row.")
    return table


def _first_bad_line(csv: Path) -> str:
    """'line N has K fields, the header has H' for the first row with too many fields, if found."""
    try:
        with open(csv, newline="", encoding="utf-8") as handle:
            rows = csvlib.reader(handle)
            header = next(rows, [])
            for row in rows:
                if len(row) > len(header):  # shorter rows are read with empty values, checked later
                    return f"line {rows.line_num} has {len(row)} fields, the header has {len(header)}"
    except (csvlib.Error, UnicodeDecodeError):
        pass
    return ""


def _strip_whitespace(table: pd.DataFrame, report: ManifestReport) -> None:
    """"covid " is meant as "covid", and "p1 " as "p1" (else it would be a second patient, and could leak)."""
    for column, attribute in (("label", "stripped_labels"), ("patient_id", "stripped_patient_ids")):
        stripped = table[column].str.strip()
        changed = stripped != table[column]
        if changed.any():
            first = changed.idxmax()
            log.warning("%s: removed surrounding whitespace from %d %s value(s), e.g. %r -> %r (%s)",
                        report.source, int(changed.sum()), column, table.loc[first, column], stripped[first],
                        table.loc[first, "path"])
            setattr(report, attribute, int(changed.sum()))
            table[column] = stripped


def _checked_files(root: Path, table: pd.DataFrame, source: str) -> list[str]:
    """Normalised absolute file of every row; refuses paths escaping `root` and files listed twice."""
    base = os.path.normpath(os.path.abspath(root))
    # Lexical normalisation: "a/./b.png" and "a/x/../b.png" are "a/b.png"; symlinks are the user's choice.
    files = [os.path.normpath(os.path.join(base, p)) for p in table["path"]]
    escaping = [(i, p) for i, (p, f) in enumerate(zip(table["path"], files))
                if not os.path.isabs(p) and os.path.commonpath([base, f]) != base]
    if escaping:
        shown = ", ".join(f"line {i + 2}: {p!r}" for i, p in escaping[:EXAMPLES])
        raise UserError(
            f"{source}: {len(escaping)} relative path(s) point outside the dataset folder {root} ({shown}). "
            "Relative paths must stay inside that folder; move the images there, or give absolute paths."
        )
    lines: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        lines.setdefault(os.path.normcase(f), []).append(i)
    repeated = [rows for rows in lines.values() if len(rows) > 1]
    if repeated:
        shown = []
        for rows in repeated[:EXAMPLES]:
            labels = sorted(set(table["label"].iloc[rows]))
            conflict = f", conflicting labels {labels}" if len(labels) > 1 else ""
            spellings = " = ".join(repr(p) for p in dict.fromkeys(table["path"].iloc[rows]))
            shown.append(f"{spellings} on lines {', '.join(str(i + 2) for i in rows)}{conflict}")
        raise UserError(
            f"{source}: {len(repeated)} image(s) are listed more than once: {'; '.join(shown)}. "
            "List each image once, with one label (a repeated image would count twice and could leak across "
            "splits)."
        )
    return files


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _scan_class_folders(root: Path, report: ManifestReport) -> pd.DataFrame:
    rows, unsupported = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(sub.rglob("*")):
            relative = f.relative_to(root)
            if _hidden(relative) or not f.is_file():
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES:
                rows.append({"path": str(relative), "label": sub.name, "patient_id": f"{sub.name}/{f.stem}"})
            else:
                unsupported.append(relative)
    if unsupported:
        suffixes = Counter(f.suffix.lower() or "(none)" for f in unsupported)
        report.unsupported_files = dict(sorted(suffixes.items()))
        log.warning("%s: ignored %d file(s) with unsupported suffixes %s in the class folders, e.g. %s. "
                    "covidseg reads %s; convert those files (e.g. DICOM to PNG) to use them.", root,
                    len(unsupported), report.unsupported_files, [str(f) for f in unsupported[:EXAMPLES]],
                    ", ".join(sorted(IMAGE_SUFFIXES)))
    loose = [f.name for f in sorted(root.iterdir())
             if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        report.files_outside_class_folders = len(loose)
        log.warning("%s: ignored %d image(s) outside the class subfolders (no label), e.g. %s. Move them "
                    "into the folder of their class.", root, len(loose), loose[:EXAMPLES])
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

    on_unknown_label: `drop` (count, warn, continue) or `error`. require_all=False (evaluation) accepts a
    data set without some of the classes, e.g. an external COVID-only set. Labels that differ from a
    class only in case ("COVID" vs "covid") are always an error: dropping them would lose a class silently.
    Returns the kept rows with a `target` column, and {label: count} of the rows left out.
    """
    classes = list(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise UserError(f"data.classes must name at least two distinct classes, got {classes}.")
    if on_unknown_label not in ("drop", "error"):
        raise UserError(f"data.on_unknown_label must be 'drop' or 'error', got {on_unknown_label!r}.")
    counts = table["label"].value_counts()
    _refuse_case_mismatches(counts, classes, source)
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
        log.warning("%s: left out %d image(s) with labels not in data.classes=%s: %s, e.g. %s "
                    "(data.on_unknown_label=drop; counted as dropped_labels in metrics.json)",
                    source or "dataset", len(unknown), classes, dropped, list(unknown["path"][:EXAMPLES]))
    kept = table[table["label"].isin(classes)].copy()
    kept["target"] = kept["label"].map({c: i for i, c in enumerate(classes)}).astype(int)
    return kept.reset_index(drop=True), dropped


def _refuse_case_mismatches(counts: pd.Series, classes: list[str], source: str) -> None:
    """A UserError naming both fixes when labels match a class only if case is ignored."""
    by_fold = {c.casefold(): c for c in classes}
    mismatched = [(str(label), by_fold[str(label).casefold()], int(n)) for label, n in counts.items()
                  if label not in classes and str(label).casefold() in by_fold]
    if not mismatched:
        return
    folder_mode = bool(source) and Path(source).is_dir()
    where = source or "metadata.csv"
    renamed = list(classes)
    parts = []
    for label, cls, n in mismatched:
        if folder_mode:
            parts.append(f"no image has label '{cls}', but the class folder '{label}' holds {n} image(s)")
        elif cls in counts.index:
            parts.append(f"{n} row(s) have label '{label}'; data.classes has '{cls}' "
                         f"({int(counts[cls])} row(s) already use it)")
        else:
            parts.append(f"no image has label '{cls}' of data.classes, but {n} row(s) have label '{label}'")
        if cls in renamed:
            renamed[renamed.index(cls)] = label
    fixes = [f"'{label}' to '{cls}'" for label, cls, _ in mismatched]
    rename = f"Rename the class folder(s) {', '.join(fixes)}" if folder_mode else \
        f"Rename the label(s) {', '.join(fixes)} in metadata.csv"
    # Changing data.classes only helps when one spelling is used throughout.
    targets = [cls for _, cls, _ in mismatched]
    whole = len(set(targets)) == len(targets) and all(cls not in counts.index for cls in targets)
    other = f", or set data.classes=[{','.join(renamed)}]" if whole else ""
    raise UserError(f"{where}: {'; '.join(parts)} (labels are case-sensitive). {rename}{other}.")


def stratified_subset(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A subset of about n images with the class proportions of `table`, whole patients at a time.

    Whole patients keep the later patient-level split meaningful; every class keeps >= 3 patients
    where it has them, so that split_by_patient can give each of train/val/test every class.
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
            if total >= want and len(chosen) >= 3:
                break
            chosen.append(p)
            total += int(sizes[p])
        picked.append(group[group["patient_id"].isin(chosen)])
    return pd.concat(picked).sort_index().reset_index(drop=True)
