"""Fixed-shape arrays at rest: one memory-mapped file of rows per kind of array, found by content digest.

An ArrayStore is a folder with
- `rows.u8`: a HEADER-byte header (magic, JSON: row shape, dtype, a random id), then the rows back to back;
- `index.sqlite`: digest -> row number, for committed rows only;
- `lock`: fcntl.flock'ed around every append (and rebuild), so that several processes can fill one store.
Rows are written, flushed and fdatasync'ed before their index entries are committed; a committed row is
never rewritten. So a process killed mid-append leaves at most uncommitted rows past the last committed
one, which the next append overwrites, and everything it committed is reused. What is found on opening is
checked, not trusted: a damaged header, another shape, a damaged index or committed rows past the end of a
(truncated) data file are logged and rebuilt (only the bad part where possible). A folder that cannot be
written (read-only, full, a file in its place) is a UserError naming it (file_index.cache_faults).

ArrayView is what callers get: a picklable, read-only, numpy-like view of some rows that opens the file
with np.memmap only when indexed (also in a DataLoader worker after unpickling; the memmap itself is never
pickled). Use `take_rows` rather than `images[rows]` to select a subset without reading it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covidseg.data.file_index import (
    FileEntry,
    FileIndex,
    cache_faults,
    chunks,
    connect,
    damaged,
    remove_sqlite,
)

__all__ = ["ArrayStore", "ArrayView", "FileEntry", "FileIndex", "take_rows"]

log = logging.getLogger(__name__)

HEADER = 4096  # bytes before the first row (a page, so rows stay page-aligned when a row is)
MAGIC = b"covidseg-array-store\n"
FORMAT = 1
SCHEMA = "CREATE TABLE IF NOT EXISTS rows (digest TEXT PRIMARY KEY, row INTEGER NOT NULL UNIQUE)"


def read_header(path: Path) -> dict[str, Any] | None:
    """The data file's header, or None if it is missing or not a store's."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(HEADER)
    except OSError:
        return None
    if len(raw) < HEADER or not raw.startswith(MAGIC):
        return None
    try:
        return json.loads(raw[len(MAGIC) :].rstrip(b"\0"))
    except ValueError:
        return None


class ArrayStore:
    """Rows of shape `row_shape` (uint8 unless `dtype` says otherwise) in `folder`, keyed by digest.

    content: what made the rows (e.g. the decoder's version), kept in the header: a store whose header
    names other content is rebuilt, so rows made under older rules are never served under a digest.
    """

    def __init__(
        self, folder: str | Path, row_shape: Sequence[int], dtype: Any = np.uint8, content: str | None = None
    ):
        self.folder = Path(folder)
        self.content = content
        self.row_shape = tuple(int(n) for n in row_shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = math.prod(self.row_shape) * self.dtype.itemsize
        self.data_path = self.folder / "rows.u8"
        self.index_path = self.folder / "index.sqlite"
        self.con: sqlite3.Connection | None = None
        self.id = ""
        self._holding = False
        with cache_faults(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._locked():
                self._check()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._holding:  # re-entered (a rebuild inside an append): flock on a second handle would wait
            yield
            return
        with open(self.folder / "lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._holding = True
            try:
                yield
            finally:
                self._holding = False
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- checks and rebuilds (under the lock) -----------------------------------------------------------
    def _check(self) -> None:
        """Open what is on disk, rebuilding what cannot be trusted."""
        header = read_header(self.data_path)
        expected = self._header()
        if header is None or {k: header.get(k) for k in expected} != expected:
            if header is not None and all(header.get(k) == v for k, v in expected.items() if k != "content"):
                log.info(
                    "Array store %s holds arrays of %s, not %s; rebuilding it.",
                    self.folder,
                    header.get("content") or "an older version",
                    self.content,
                )
            elif self.data_path.exists():
                log.warning("Array store %s has a damaged or different header; rebuilding it.", self.folder)
            self._rebuild()
            return
        if header["id"] == self.id and self.con is not None:
            return  # nobody rebuilt it since we checked
        self.id = header["id"]
        try:
            self._connect()
            stored = self.count_on_disk()
            past = self.con.execute("SELECT count(*) FROM rows WHERE row >= ?", (stored,)).fetchone()[0]
            if past:
                log.warning(
                    "Array store %s: %d committed row(s) lie past the end of its data file (truncated?); "
                    "they are dropped and decoded again.",
                    self.folder,
                    past,
                )
                with self.con:
                    self.con.execute("BEGIN IMMEDIATE")
                    self.con.execute("DELETE FROM rows WHERE row >= ?", (stored,))
        except sqlite3.DatabaseError as err:
            if not damaged(err):
                raise
            log.warning("Array store %s has a damaged index (%s); rebuilding it.", self.folder, err)
            self._rebuild()

    def _header(self) -> dict[str, Any]:
        """What the header must say for the rows to be this store's (all but the id)."""
        header = {"format": FORMAT, "row_shape": list(self.row_shape), "dtype": self.dtype.str}
        return header if self.content is None else {**header, "content": self.content}

    def _connect(self) -> None:
        if self.con is not None:
            self.con.close()
        self.con = connect(self.index_path, SCHEMA)

    def _rebuild(self) -> None:
        """A new empty store with a new id; open views of the old one keep their (unlinked) file."""
        if self.con is not None:
            self.con.close()
            self.con = None
        remove_sqlite(self.index_path)
        self.id = uuid.uuid4().hex
        raw = MAGIC + json.dumps({**self._header(), "id": self.id}).encode()
        tmp = self.data_path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(raw.ljust(HEADER, b"\0"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.data_path)
        self._connect()

    def count_on_disk(self) -> int:
        """Whole rows in the data file (committed or not)."""
        return max(0, (self.data_path.stat().st_size - HEADER) // self.row_bytes)

    # -- reading and writing ---------------------------------------------------------------------------
    def rows_for(self, digests: Sequence[str]) -> list[int | None]:
        """The committed row of each digest, or None where the store has none."""
        with cache_faults(self.folder):
            return self._rows_for(digests)

    def _rows_for(self, digests: Sequence[str]) -> list[int | None]:
        found: dict[str, int] = {}
        try:
            for part in chunks(list(dict.fromkeys(digests))):
                marks = ",".join("?" * len(part))
                query = f"SELECT digest, row FROM rows WHERE digest IN ({marks})"  # '?' marks only
                found.update(self.con.execute(query, list(part)).fetchall())
        except sqlite3.DatabaseError as err:
            if not damaged(err):
                raise
            log.warning("Array store %s has a damaged index (%s); rebuilding it.", self.folder, err)
            with self._locked():
                self._rebuild()
            return [None] * len(digests)
        return [found.get(d) for d in digests]

    def append(self, digests: Sequence[str], arrays: Sequence[np.ndarray]) -> list[int]:
        """Store `arrays` under `digests` (digests already stored keep their row) and return their rows."""
        if len(digests) != len(arrays):
            raise ValueError(f"{len(digests)} digests for {len(arrays)} arrays")
        with cache_faults(self.folder), self._locked():
            self._check()  # another process may have rebuilt the store or found it damaged
            rows = dict(zip(digests, self.rows_for(digests)))
            new = {}
            for digest, array in zip(digests, arrays):
                if rows[digest] is None and digest not in new:
                    array = np.asarray(array)
                    if array.shape != self.row_shape:
                        raise ValueError(f"array of shape {array.shape}, the store holds {self.row_shape}")
                    new[digest] = np.ascontiguousarray(array, dtype=self.dtype)
            if new:
                last = self.con.execute("SELECT max(row) FROM rows").fetchone()[0]
                first = 0 if last is None else last + 1  # overwrites uncommitted rows of a killed writer
                with open(self.data_path, "r+b") as handle:
                    handle.seek(HEADER + first * self.row_bytes)
                    handle.write(b"".join(a.tobytes() for a in new.values()))
                    handle.flush()
                    os.fdatasync(handle.fileno())
                entries = [(digest, first + i) for i, digest in enumerate(new)]
                with self.con:  # committed only once the rows are on disk
                    self.con.execute("BEGIN IMMEDIATE")
                    self.con.executemany("INSERT INTO rows VALUES (?, ?)", entries)
                rows.update(entries)
        return [rows[d] for d in digests]

    def __len__(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM rows").fetchone()[0])

    def view(self, rows: Sequence[int] | np.ndarray) -> ArrayView:
        """A lazy view of committed `rows`, in that order."""
        return ArrayView(self.data_path, self.id, self.row_shape, self.dtype, rows)

    def close(self) -> None:
        """Close the row index's database connection; closing twice does nothing."""
        if self.con is not None:
            self.con.close()
            self.con = None


class ArrayView:
    """Read-only numpy-like view of rows of an ArrayStore: len(), .shape, .dtype, and indexing by int,
    slice, int array or bool array (the first axis; more axes in a tuple) returning np.ndarray copies."""

    def __init__(
        self, path: str | Path, store_id: str, row_shape: Sequence[int], dtype: Any, rows: Any
    ) -> None:
        self.path = str(path)
        self.store_id = store_id
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self._data: np.memmap | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}  # the path, never the mapped data

    def _array(self) -> np.memmap:
        if self._data is None:
            header = read_header(Path(self.path))
            if header is None or header.get("id") != self.store_id:
                raise RuntimeError(
                    f"Array store {self.path} was rebuilt since this view was made; run setup again."
                )
            row_bytes = math.prod(self.row_shape) * self.dtype.itemsize
            count = (os.path.getsize(self.path) - HEADER) // row_bytes
            if len(self.rows) and int(self.rows.max()) >= count:
                raise RuntimeError(f"Array store {self.path} is shorter than this view's rows (truncated?).")
            shape = (count, *self.row_shape)
            self._data = np.memmap(self.path, self.dtype, "r", offset=HEADER, shape=shape)
        return self._data

    @property
    def shape(self) -> tuple[int, ...]:
        """(rows in the view, *row shape), as a numpy array's."""
        return (len(self.rows), *self.row_shape)

    @property
    def ndim(self) -> int:
        """The number of axes, as a numpy array's."""
        return 1 + len(self.row_shape)

    @property
    def nbytes(self) -> int:
        """The bytes the view's rows hold once read (not the store's size)."""
        return math.prod(self.shape) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"ArrayView({self.path!r}, shape={self.shape}, dtype={self.dtype})"

    def _take(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.empty((0, *self.row_shape), self.dtype)
        order = np.argsort(rows, kind="stable")  # sequential reads from the file, then back in order
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        out[order] = self._array()[rows[order]]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            first, rest = (key[0], key[1:]) if key else (slice(None), ())
            picked = self[first]
            return picked[rest] if isinstance(first, (int, np.integer)) else picked[(slice(None), *rest)]
        if isinstance(key, (int, np.integer)):
            return np.array(self._array()[self.rows[key]])  # numpy's IndexError for out-of-range keys
        return self._take(np.atleast_1d(self.rows[key]))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self._take(self.rows)  # reads every row: only for callers that need them all in memory
        return whole if dtype is None else whole.astype(dtype)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def subset(self, indices: Any) -> ArrayView:
        """The view of `indices` (slice, int or bool array) of this view's rows; nothing is read."""
        return ArrayView(self.path, self.store_id, self.row_shape, self.dtype, self.rows[indices])


def take_rows(images: ArrayView | np.ndarray, indices: Any) -> ArrayView | np.ndarray:
    """`images[indices]` that stays lazy for an ArrayView (a subset view) and is plain indexing otherwise."""
    return images.subset(indices) if isinstance(images, ArrayView) else images[indices]
