"""File-system faults (read-only, full, not a folder, no permission) as UserErrors that name the folder and
what to do, instead of a traceback from deep inside a write.

`fault(err)` says what an OSError or a SQLite error means for the folder it happened in, or None when the
error is not such a fault (a bug, a busy database, a missing input file): those keep their traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from covidseg.errors import UserError

READ_ONLY, FULL, NOT_A_FOLDER, DENIED, MISSING = "read-only", "full", "not a folder", "denied", "missing"
_OS_FAULTS = {
    errno.EROFS: (READ_ONLY, "it is on a read-only file system"),
    errno.EACCES: (DENIED, "permission denied"),
    errno.EPERM: (DENIED, "operation not permitted"),
    errno.ENOSPC: (FULL, "no space left on its disk"),
    errno.EFBIG: (FULL, "a file grew past what its file system allows"),
    errno.EDQUOT: (FULL, "disk quota exceeded"),
    errno.ENOTDIR: (NOT_A_FOLDER, "a part of the path is not a folder"),
    errno.EEXIST: (NOT_A_FOLDER, "it exists and is not a folder"),  # what mkdir says of a file
    errno.ENOENT: (MISSING, "it does not exist"),
}
# SQLite's primary result codes (the low byte of an extended code), https://sqlite.org/rescode.html
_SQLITE_FAULTS = {
    8: (READ_ONLY, "SQLite cannot write its database there (read-only)"),  # SQLITE_READONLY
    13: (FULL, "SQLite: database or disk is full"),  # SQLITE_FULL
    14: (READ_ONLY, "SQLite cannot open or create its database there (read-only?)"),  # SQLITE_CANTOPEN
    10: (FULL, "SQLite: disk I/O error (a full or failing disk?)"),  # SQLITE_IOERR
}
_SQLITE_MESSAGES = {"readonly": 8, "disk is full": 13, "unable to open database": 14, "disk i/o error": 10}
_FIRST_FIX = {
    READ_ONLY: "Make it writable, or",
    DENIED: "Make it writable for this user, or",
    FULL: "Free space on that disk, or",
    NOT_A_FOLDER: "Remove or rename that file, or",
    MISSING: "Create it, or",
}


def fault(err: BaseException) -> tuple[str, str] | None:
    """(kind, what happened) when `err` is a file-system fault of the folder it happened in, else None."""
    if isinstance(err, sqlite3.OperationalError):
        code = getattr(err, "sqlite_errorcode", None)  # Python >= 3.11; older ones only have the message
        if code is None:
            message = str(err).lower()
            code = next((c for text, c in _SQLITE_MESSAGES.items() if text in message), None)
        return _SQLITE_FAULTS.get(code & 0xFF) if code is not None else None
    if isinstance(err, OSError):
        return _OS_FAULTS.get(err.errno)
    return None


def blocking_file(path: str | Path) -> Path | None:
    """The file that stands where `path` or one of its parent folders should be, if any."""
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def fault_message(action: str, folder: str | Path, err: BaseException, alternative: str) -> str | None:
    """'Cannot <action> <folder>: <why>. <fix> or <alternative>.' for a fault(), else None.

    Args:
        action: what failed, e.g. 'write the run folder'.
        folder: the folder it failed in; a file standing in its path is named as the cause.
        err: the error raised.
        alternative: the other way out, e.g. 'give hydra.run.dir=<a writable folder>'.

    Returns:
        The message, or None when `err` is not a file-system fault (fault).
    """
    found = fault(err)
    if found is None:
        return None
    kind, why = found
    in_the_way = blocking_file(folder)
    if in_the_way is not None:
        kind, why = NOT_A_FOLDER, f"{in_the_way} is a file, not a folder"
    return f"Cannot {action} {folder}: {why}. {_FIRST_FIX[kind]} {alternative}."


def probe_folder(folder: Path) -> None:
    """Create `folder` (and its parents) and write, sync and remove a probe file in it; the OSError of a
    file system that refuses is raised as it is."""
    probe = folder / f".covidseg-write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(b"covidseg")
            handle.flush()
            os.fsync(handle.fileno())  # a full disk may accept the name and refuse only the data
    finally:
        with contextlib.suppress(OSError):  # the folder could not be created or written: raised above
            probe.unlink(missing_ok=True)


def writable_folder(folder: str | Path, action: str, alternative: str) -> None:
    """Create `folder` and write a probe file in it (probe_folder): a UserError (fault_message) if the file
    system refuses, before a job starts writing there."""
    folder = Path(folder)
    with folder_faults(action, folder, alternative):
        probe_folder(folder)


def free_bytes(folder: Path) -> int | None:
    """Free bytes on the disk of `folder` (or of its nearest existing parent), None when unknown."""
    existing = next((p for p in (folder, *folder.parents) if p.is_dir()), None)
    try:
        return shutil.disk_usage(existing).free if existing is not None else None
    except OSError:
        return None


@contextmanager
def folder_faults(action: str, folder: str | Path, alternative: str) -> Iterator[None]:
    """Inside this, an OSError or SQLite error that is a fault() becomes a UserError (fault_message)."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as err:
        message = fault_message(action, folder, err, alternative)
        if message is None:
            raise
        raise UserError(message) from err


def file_system_error(err: BaseException | None) -> UserError | None:
    """A UserError for the OSError fault behind `err` (also when wrapped, e.g. by Hydra's instantiate) that
    names the file it happened on, else None. covidseg.runs.job.run_job's last resort for a write that no
    folder-specific check caught (e.g. a disk that filled up while the job ran)."""
    while err is not None:
        if isinstance(err, OSError) and fault(err) is not None and err.filename:
            where = Path(os.fsdecode(err.filename)).parent
            alternative = "point the job elsewhere (hydra.run.dir, COVIDSEG_LOG_DIR, COVIDSEG_CACHE_DIR)"
            return UserError(fault_message(f"use {os.fsdecode(err.filename)} in", where, err, alternative))
        err = err.__cause__ or err.__context__
    return None
