"""Writing covidseg's output files: whole or not at all, into a folder that can take them, with CSV cells
that a spreadsheet shows as text.

- write_files: every file of one output (an export's networks and preprocessing.json, a CSV) is written
  under a hidden temporary name beside its target and renamed into place only when all of them are
  complete, so a full disk, a read-only folder or a killed job leaves the previous files or none, never
  half a file.
- output_folder: the folder is created and a probe file written in it before any long work, so an
  unwritable folder stops a job at once.
- folder_error: a file-system error as a UserError naming the folder and the fix (exit 2, no traceback).
- write_csv / read_csv: a text cell that starts with = + - @, a tab or a carriage return is a formula to
  Excel and LibreOffice (CSV injection); such cells are written with a leading ' (OWASP's advice) and
  read_csv takes it off again, so covidseg reads its own CSVs (splits.csv, predictions.csv) unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from covidseg.errors import UserError
from covidseg.outputs.folders import FULL, blocking_file, fault, fault_message, free_bytes, probe_folder


def other_folder(option: str) -> str:
    """The fix that folder_error offers for a folder named by `option`."""
    return f"give another folder with {option}=<folder>"


RUN_DIR_FIX = other_folder("hydra.run.dir")  # a job's outputs go into its run directory

# A cell is quoted when it starts (after any ' of its own) with what a spreadsheet reads as a formula;
# quoting cells that already start with ' + such a character as well keeps read_csv's undoing exact.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_QUOTED = re.compile(r"'+[=+\-@\t\r]")
# Numbers written as text (-0.5, +3, -1e-3) are numbers to a spreadsheet too, not formulas: left as they are.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs: text starting with = + - @ tab or CR gets a leading '; numbers
    and other values are returned as they are."""
    if isinstance(value, str) and _FORMULA.match(value) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def plain_cell(value: Any) -> Any:
    """The cell safe_cell was given, from what it returned."""
    if isinstance(value, str) and _QUOTED.match(value):
        return value[1:]
    return value


def _text_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]


def write_csv(frame: pd.DataFrame, path: str | Path, fix: str = RUN_DIR_FIX) -> None:
    """`frame` as a CSV file (no index) with safe_cell text cells, written whole (write_files).

    Args:
        frame: the table; numeric columns are written as they are.
        path: the CSV file; its folder must exist.
        fix: what to do when the folder cannot take the file (folder_error).
    """
    path = Path(path)
    safe = frame.copy()
    for column in _text_columns(safe):
        safe[column] = safe[column].map(safe_cell)
    write_files(path.parent, {path.name: safe.to_csv(index=False).encode("utf-8")}, fix)


def read_csv(path: str | Path, **kwargs: Any) -> pd.DataFrame:
    """pandas.read_csv of a CSV covidseg wrote (write_csv): text cells as they were before quoting."""
    frame = pd.read_csv(path, **kwargs)
    for column in _text_columns(frame):
        frame[column] = frame[column].map(plain_cell)
    return frame


def write_files(folder: Path, files: Mapping[str, bytes], fix: str) -> None:
    """Write `files` (name -> content) into `folder` together: each to a temporary name first, all renamed
    into place once every one is complete; on any error none is replaced and no temporary file is left.

    Args:
        folder: an existing folder.
        files: file names (in `folder`) and their bytes.
        fix: what to do when the folder cannot take the files (folder_error).

    Raises:
        UserError: the folder cannot take the files (folder_error).
    """
    folder = Path(folder)
    temporary = {folder / f".{name}.{os.getpid()}.partial": folder / name for name in files}
    try:
        for (part, _), content in zip(temporary.items(), files.values()):
            with open(part, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())  # on disk before the rename makes it the file
        for part, target in temporary.items():
            os.replace(part, target)
    except OSError as err:
        raise folder_error(folder, err, fix, sum(map(len, files.values()))) from err
    finally:
        for part in temporary:
            _remove(part)


def output_folder(folder: str | Path, fix: str) -> Path:
    """`folder`, created if missing and checked by writing and removing a small probe file, before any
    long work writes into it.

    Args:
        folder: where the outputs go.
        fix: what to do when the folder cannot take the outputs, e.g. other_folder("out_dir").

    Raises:
        UserError: the folder cannot be created or written (folder_error).
    """
    folder = Path(folder)
    try:
        probe_folder(folder)
    except OSError as err:
        raise folder_error(folder, err, fix) from err
    return folder


def _remove(path: Path) -> None:
    """Remove a file of ours if it is there; a folder that cannot be listed has none."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def folder_error(folder: Path, err: OSError, fix: str, needed: int | None = None) -> UserError:
    """A UserError for an OSError met writing into `folder`: what is wrong with the folder and the fix
    (covidseg.outputs.folders' one vocabulary of file-system faults, plus the room a full disk lacks).

    Args:
        folder: the folder written into (or to be created).
        err: the error.
        fix: the way to another folder, e.g. other_folder("out_dir"); said after the folder's own fix.
        needed: bytes the write needed, when known (said for a full disk).
    """
    message = fault_message("write the output folder", folder, err, fix)
    if message is None:
        return UserError(f"Could not write the output folder {folder} ({err}). Check it, or {fix}.")
    kind, _ = fault(err) or (None, None)
    if kind == FULL and blocking_file(folder) is None:
        free = free_bytes(folder)
        room = f"{free / 1e6:,.0f} MB free" if free is not None else "free space unknown"
        size = f", the files need {needed / 1e6:,.1f} MB" if needed else ""
        message = message.replace(" no space left on its disk.", f" no space left on its disk ({room}{size}).")
    return UserError(message)
