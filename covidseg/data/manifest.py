"""Read a dataset folder into a table of images: one row per image with path, label and patient.

A dataset folder holds either `metadata.csv` (columns `path,label,patient_id`; extra columns are
kept) or, without a CSV, one subfolder per class (the patient id is then <class>/<file stem>, since
nothing better is known).

Every check of the table happens here, before any image is decoded:
- labels and patient ids lose surrounding whitespace ("covid " -> "covid"), counted and logged;
- relative paths must stay inside the dataset folder (`../x.png` is refused). Absolute paths are
  accepted on purpose, so a CSV can list images kept elsewhere;
- an image listed twice (also as `a/./b.png` vs `a/b.png`, or with two labels) is refused;
- class folders: files with unsupported suffixes (e.g. .txt) are counted and named in a warning,
  hidden files (.DS_Store, ._x.png, .ipynb_checkpoints/) are ignored.
Entries that exist but are no readable image (broken links, FIFOs) are listed: the image cache refuses
or counts them (data.on_bad_image) like any unreadable file, rather than leaving them out unnoticed.
"""

from __future__ import annotations

import csv as csvlib
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from covidseg.data.dicom import DICOM_SUFFIXES
from covidseg.errors import UserError
from covidseg.paths import missing_data_hint

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("path", "label", "patient_id")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", *DICOM_SUFFIXES}
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
        """The report's counts as a flat dictionary for metrics.json (n_unsupported_files: their total)."""
        return {
            "stripped_labels": self.stripped_labels,
            "stripped_patient_ids": self.stripped_patient_ids,
            "unsupported_files": dict(self.unsupported_files),
            "n_unsupported_files": sum(self.unsupported_files.values()),
            "files_outside_class_folders": self.files_outside_class_folders,
        }


def read_manifest(root: str | Path) -> pd.DataFrame:
    """All rows of a dataset folder, labels as strings, with an absolute `file` column added."""
    return load_manifest(root)[0]


def load_manifest(root: str | Path) -> tuple[pd.DataFrame, ManifestReport]:
    """The checked table of a dataset folder (see the module docstring) and what reading it changed."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"Dataset folder {root} does not exist. A data set is a folder with metadata.csv "
            f"(path,label,patient_id) or with one subfolder per class. {missing_data_hint()}"
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
    # Paths that exist as something else (a broken link, a FIFO) are the image reader's to refuse or count.
    missing_files = [p for p, f in zip(table["path"], table["file"]) if not os.path.lexists(f)]
    if missing_files:
        raise UserError(
            f"{len(missing_files)} image file(s) listed for {root} do not exist, e.g. {missing_files[:3]}. "
            "Fix the paths (relative to the dataset folder) or remove those rows."
        )
    return table, report


def _read_csv(csv: Path) -> pd.DataFrame:
    """metadata.csv as strings; empty, malformed or incomplete files are UserErrors naming the fix."""
    if csv.stat().st_size == 0:
        raise UserError(
            f"{csv} is empty (0 bytes). Write a header path,label,patient_id and one row per "
            "image, or delete it to use one subfolder per class instead."
        )
    try:
        with warnings.catch_warnings():
            # pandas only warns when a row has more fields than the header, then drops the extra values
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # index_col=False: otherwise rows with one extra field silently shift into the index
            table = pd.read_csv(csv, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError as err:
        raise UserError(
            f"{csv} has no header ({err}). Write a header path,label,patient_id and one row per "
            "image, or delete it to use one subfolder per class instead."
        ) from err
    except (pd.errors.ParserError, pd.errors.ParserWarning) as err:
        raise UserError(
            f"{csv} is not a valid CSV: {_first_bad_line(csv) or err}. Give every row the "
            "header's number of fields, and quote values that contain commas."
        ) from err
    except UnicodeDecodeError as err:
        raise UserError(
            f"{csv} is not a UTF-8 text file ({err.reason} at byte {err.start}). "
            "Save it as UTF-8 CSV (path,label,patient_id)."
        ) from err
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(
            f"{csv} lacks column(s) {missing}; it has {list(table.columns)}. "
            "Add them (path relative to the CSV's folder, label, patient_id)."
        )
    if table.empty:
        raise UserError(
            f"{csv} has a header but no rows. Add one row per image (path,label,patient_id), "
            "or delete it to use one subfolder per class instead."
        )
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
    """ "covid " means "covid", and "p1 " means "p1" (else a second patient, who could leak)."""
    for column, attribute in (("label", "stripped_labels"), ("patient_id", "stripped_patient_ids")):
        stripped = table[column].str.strip()
        changed = stripped != table[column]
        if changed.any():
            first = changed.idxmax()
            log.warning(
                "%s: removed surrounding whitespace from %d %s value(s), e.g. %r -> %r (%s)",
                report.source,
                int(changed.sum()),
                column,
                table.loc[first, column],
                stripped[first],
                table.loc[first, "path"],
            )
            setattr(report, attribute, int(changed.sum()))
            table[column] = stripped


def _checked_files(root: Path, table: pd.DataFrame, source: str) -> list[str]:
    """Normalised absolute file of every row; refuses paths escaping `root` and files listed twice."""
    base = os.path.normpath(os.path.abspath(root))
    # Lexical normalisation: "a/./b.png" and "a/x/../b.png" are "a/b.png"; symlinks are the user's choice.
    files = [os.path.normpath(os.path.join(base, p)) for p in table["path"]]
    inside = base if base.endswith(os.sep) else base + os.sep
    escaping = [
        (i, p)
        for i, (p, f) in enumerate(zip(table["path"], files))
        # both sides are normalised, so "inside" is a prefix test (commonpath per row costs 10x more)
        if not os.path.isabs(p) and f != base and not f.startswith(inside)
    ]
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
            # not is_file(): a broken link or a FIFO is listed, for the image reader to refuse or count
            if _hidden(relative) or f.is_dir():
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES:
                rows.append({"path": str(relative), "label": sub.name, "patient_id": f"{sub.name}/{f.stem}"})
            else:
                unsupported.append(relative)
    if unsupported:
        suffixes = Counter(f.suffix.lower() or "(none)" for f in unsupported)
        report.unsupported_files = dict(sorted(suffixes.items()))
        log.warning(
            "%s: ignored %d file(s) with unsupported suffixes %s in the class folders, e.g. %s. "
            "covidseg reads %s; convert those files (e.g. to PNG) to use them.",
            root,
            len(unsupported),
            report.unsupported_files,
            [str(f) for f in unsupported[:EXAMPLES]],
            ", ".join(sorted(IMAGE_SUFFIXES)),
        )
    loose = [
        f.name
        for f in sorted(root.iterdir())
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if loose:
        report.files_outside_class_folders = len(loose)
        log.warning(
            "%s: ignored %d image(s) outside the class subfolders (no label), e.g. %s. Move them "
            "into the folder of their class.",
            root,
            len(loose),
            loose[:EXAMPLES],
        )
    if not rows:
        raise UserError(
            f"{root} has no metadata.csv and no class subfolders with images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}). Add metadata.csv (path,label,patient_id) or "
            "class folders."
        )
    log.info("No metadata.csv in %s: using class folders, patient id = <class>/<file stem>", root)
    return pd.DataFrame(rows)
