"""Which content each source file holds, remembered by path and stat, so that a warm start reads no file.

One SQLite file maps an absolute path to the file's (size, mtime_ns, ctime_ns, inode) when it was last
read, its SHA-1 digest and its header's width x height. A file is read and hashed again unless all four
stat fields match, so a file replaced in place is caught even when its size and mtime were restored with
os.utime (the kernel sets ctime on every change and a new file has a new inode); a moved or renamed file
is hashed once under its new path and its digest then finds the decoded array again.

An entry whose ctime is not older than RACY_NS at the time it was read is "racy" (as in git): the file
could still change within the same timestamp tick without any stat field changing, so it is hashed again
next time. Files the probe refuses are not recorded. A damaged index file is logged, deleted and rebuilt:
it only costs hashing time; so is an index written by an older probe (VERSION, kept as SQLite's
user_version). Several processes may use one index at once (WAL, busy timeout).

Only regular files are opened: a FIFO would block the reader forever, a device may have side effects on
open, and neither holds an image. Such paths, and broken symbolic links, are returned as the path's error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK

from covidseg.outputs import folder_faults

log = logging.getLogger(__name__)

RACY_NS = 1_000_000_000  # entries this fresh are re-hashed next time (timestamps have a coarse tick)
CHUNK = 500  # SQLite parameters per query (its default limit is 999 on old builds)
# Entries record what the probe returned; bump when that changes (2: the displayed, EXIF-oriented size).
VERSION = 2
SCHEMA = """CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER,
    trusted INTEGER, digest TEXT, width INTEGER, height INTEGER)"""

Probe = Callable[[str, bytes], tuple[int, int]]
# The way out of a read-only or full cache folder (covidseg.outputs); the cache only holds what covidseg
# can compute again, so another folder costs one cold start.
CACHE_ALTERNATIVE = (
    "set COVIDSEG_CACHE_DIR (or paths.cache_dir=...) to a writable folder with free space (the cache is "
    "filled again there on the first run)"
)


def cache_faults(folder: Path) -> AbstractContextManager[None]:
    """A read-only, full or misplaced cache folder as a UserError naming it (covidseg.outputs)."""
    return folder_faults("write the cache folder", folder, CACHE_ALTERNATIVE)


@dataclass(frozen=True)
class FileEntry:
    """What the index knows of one file: its content digest and its header's size."""

    digest: str
    width: int
    height: int


class NotARegularFile(OSError):
    """A path that is no regular file (FIFO, device, socket, folder): an error for that path, never read."""


KINDS = {
    S_ISDIR: "a folder",
    S_ISFIFO: "a FIFO (named pipe)",
    S_ISCHR: "a character device",
    S_ISBLK: "a block device",
    S_ISSOCK: "a socket",
}


def require_regular(path: str, mode: int) -> None:
    """NotARegularFile unless `mode` (the st_mode of `path`) is a regular file's; its message is what a
    caller appends to the path it names."""
    if not S_ISREG(mode):
        kind = next((name for test, name in KINDS.items() if test(mode)), "something else")
        raise NotARegularFile(f"it is {kind}, not a regular file (only regular files are read)")


def stat_error(path: str, err: OSError) -> OSError:
    """`err` of os.stat(path), saying so when the path is a symbolic link whose target does not exist."""
    if isinstance(err, FileNotFoundError) and os.path.islink(path):
        target = os.readlink(path)
        return FileNotFoundError(f"it is a broken symbolic link (its target {target} does not exist)")
    return err


def read_file_bytes(path: str) -> bytes:
    """The whole of a regular file (module level, so that tests can count what is read); NotARegularFile
    for anything else, checked before opening and again on the opened file (it may have been replaced)."""
    try:
        require_regular(path, os.stat(path).st_mode)
    except NotARegularFile:
        raise
    except OSError as err:
        raise stat_error(path, err) from err
    # O_NONBLOCK: should a FIFO take the file's place after the check, opening it does not wait for a writer
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        require_regular(path, os.fstat(fd).st_mode)
        return handle.read()


def connect(path: Path, schema: str) -> sqlite3.Connection:
    """An autocommit connection to a SQLite file shared by processes; raises sqlite3.DatabaseError if the
    file is damaged."""
    con = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute(schema)
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError:
        con.close()
        raise
    return con


def damaged(err: sqlite3.DatabaseError) -> bool:
    """A damaged file (not a database, malformed), as opposed to a busy one or a full disk, which must not
    cost the cache its contents."""
    return not isinstance(err, sqlite3.OperationalError)


def remove_sqlite(path: Path) -> None:
    """Delete an SQLite database and its side files (write-ahead log, shared memory, rollback journal)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def chunks(items: Sequence, size: int = CHUNK) -> Iterator[Sequence]:
    """Consecutive slices of at most `size` items (SQLite limits the parameters of one statement)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class FileIndex:
    """Path -> (stat, digest, header size) for the files under a cache root (`<cache_root>/files.sqlite`)."""

    def __init__(self, cache_root: str | Path):
        self.path = Path(cache_root) / "files.sqlite"
        self.hashed = 0  # files read and hashed by this object (index misses)
        with cache_faults(self.path.parent):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.con = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            con = connect(self.path, SCHEMA)
        except sqlite3.DatabaseError as err:
            if not damaged(err):
                raise
            return self._rebuild(err)
        return self._versioned(con)

    def _versioned(self, con: sqlite3.Connection) -> sqlite3.Connection:
        """`con`, its entries dropped if an older probe wrote them (they are hashed again)."""
        if con.execute("PRAGMA user_version").fetchone()[0] != VERSION:
            with con:
                con.execute("BEGIN IMMEDIATE")  # read again under the lock: another process may have done it
                if con.execute("PRAGMA user_version").fetchone()[0] != VERSION:
                    dropped = con.execute("DELETE FROM files").rowcount
                    if dropped:
                        log.info("File index %s: %d entries of an older version dropped.", self.path, dropped)
                    con.execute(f"PRAGMA user_version = {VERSION}")  # an int constant (no '?' allowed here)
        return con

    def _rebuild(self, err: Exception) -> sqlite3.Connection:
        log.warning("File index %s is damaged (%s); rebuilding it (files are hashed again).", self.path, err)
        if getattr(self, "con", None) is not None:
            self.con.close()
        remove_sqlite(self.path)
        self.con = self._versioned(connect(self.path, SCHEMA))
        return self.con

    def _known(self, paths: Sequence[str]) -> dict[str, tuple]:
        known: dict[str, tuple] = {}
        try:
            for part in chunks(list(dict.fromkeys(paths))):
                marks = ",".join("?" * len(part))
                query = f"SELECT * FROM files WHERE path IN ({marks})"  # only '?' marks
                for row in self.con.execute(query, list(part)):
                    known[row[0]] = row[1:]
        except sqlite3.DatabaseError as err:
            if not damaged(err):
                raise
            self._rebuild(err)
            return {}
        return known

    def lookup(
        self, paths: Sequence[str | Path], probe: Probe, refused: tuple[type[Exception], ...] = ()
    ) -> list[FileEntry | Exception]:
        """One FileEntry per path, in order; a file is read, hashed and probed only when its stat changed.

        probe(path, data) checks the header and returns (width, height); the exceptions in `refused` it
        raises, and OSErrors of stat or read (NotARegularFile for paths that are no regular file, which are
        never opened), are returned in the file's place (nothing is recorded for it). New entries are written
        in one transaction.
        """
        absolute = [os.path.abspath(p) for p in paths]
        with cache_faults(self.path.parent):
            known = self._known(absolute)
        entries: list[FileEntry | Exception] = []
        fresh: list[tuple] = []
        for path in absolute:
            try:
                st = os.stat(path)
                require_regular(path, st.st_mode)
            except NotARegularFile as err:
                entries.append(err)
                continue
            except OSError as err:
                entries.append(stat_error(path, err))
                continue
            stat = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            row = known.get(path)
            if row is not None and tuple(row[:4]) == stat and row[4]:
                entries.append(FileEntry(row[5], row[6], row[7]))
                continue
            checked_ns = time.time_ns()
            try:
                data = read_file_bytes(path)
                width, height = probe(path, data)
            except (OSError, *refused) as err:
                entries.append(err)
                continue
            self.hashed += 1
            entry = FileEntry(hashlib.sha1(data).hexdigest(), int(width), int(height))
            trusted = int(st.st_ctime_ns < checked_ns - RACY_NS)
            fresh.append((path, *stat, trusted, entry.digest, entry.width, entry.height))
            entries.append(entry)
        if fresh:
            with cache_faults(self.path.parent):
                self._record(fresh)
        return entries

    def _record(self, rows: list[tuple]) -> None:
        try:
            with self.con:  # one transaction for the whole batch
                self.con.execute("BEGIN IMMEDIATE")
                self.con.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?)", rows)
        except sqlite3.DatabaseError as err:
            if not damaged(err):
                raise
            self._rebuild(err)  # the entries are simply recorded next time

    def close(self) -> None:
        """Close the database connection."""
        self.con.close()
