"""covidseg.data.store: the file index and the memory-mapped array store, on their own."""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from covidseg.data import file_index
from covidseg.data.store import ArrayStore, ArrayView, FileIndex, take_rows

REPO = Path(__file__).resolve().parents[2]


def _row(i: int, shape=(6, 5)) -> np.ndarray:
    return (np.arange(np.prod(shape)).reshape(shape) * 7 + i).astype(np.uint8)


def _filled(folder: Path, n: int) -> ArrayStore:
    store = ArrayStore(folder, (6, 5))
    store.append([f"d{i}" for i in range(n)], [_row(i) for i in range(n)])
    return store


def test_rows_for_and_append_keep_rows_and_ignore_known_digests(tmp_path):
    store = _filled(tmp_path / "s", 4)
    assert store.rows_for(["d2", "x", "d0"]) == [2, None, 0]
    assert store.append(["d1", "new", "new"], [_row(9), _row(4), _row(4)]) == [1, 4, 4]
    np.testing.assert_array_equal(store.view([1, 4])[:], [_row(1), _row(4)])  # d1 kept its first array
    with pytest.raises(ValueError, match="shape"):
        store.append(["bad"], [np.zeros((5, 6), np.uint8)])
    assert len(ArrayStore(tmp_path / "s", (6, 5))) == 5


def test_array_view_indexes_like_numpy_and_pickles_without_its_data(tmp_path):
    store = _filled(tmp_path / "s", 12)
    rows = [7, 3, 11, 0, 5, 3]
    view, reference = store.view(rows), np.stack([_row(i) for i in rows])
    assert (len(view), view.shape, view.dtype, view.ndim) == (6, reference.shape, np.uint8, 3)
    mask = np.array([True, False, True, True, False, True])
    keys = [0, -1, np.int64(2), slice(1, 5), slice(None, None, -2), [4, 0, 0], np.array([5, 1]), mask]
    keys += [(1, 2), (slice(0, 3), 1, slice(None, 2)), ([0, 3], 4)]
    for key in keys:
        got = view[key]
        assert type(got) is np.ndarray and got.dtype == np.uint8
        np.testing.assert_array_equal(got, reference[key])
    got = view[0]
    got[:] = 0  # a copy: the store is not written
    np.testing.assert_array_equal(view[0], reference[0])
    with pytest.raises(IndexError):
        view[6]
    with pytest.raises(IndexError):
        view[np.array([True, False])]
    np.testing.assert_array_equal(np.asarray(view), reference)

    pickled = pickle.dumps(view)
    assert len(pickled) < 1000  # path and row numbers (the large-store test compares with the data)
    assert view._data is not None and pickle.loads(pickled)._data is None
    np.testing.assert_array_equal(pickle.loads(pickled)[[2, 4]], reference[[2, 4]])

    sub = take_rows(view, mask)
    assert isinstance(sub, ArrayView) and sub._data is None  # selected without reading
    np.testing.assert_array_equal(sub[:], reference[mask])
    np.testing.assert_array_equal(take_rows(reference, mask), reference[mask])
    assert store.view([]).shape == (0, 6, 5) and store.view([])[:].shape == (0, 6, 5)


def test_a_large_store_pickles_small(tmp_path):
    store = ArrayStore(tmp_path / "s", (64, 64))
    store.append([str(i) for i in range(200)], [np.full((64, 64), i, np.uint8) for i in range(200)])
    view = store.view(range(200))
    view[:10]  # opens the memory map
    assert len(pickle.dumps(view)) < 4000 < view.nbytes


def test_uncommitted_rows_of_a_killed_writer_are_ignored_and_overwritten(tmp_path):
    store = _filled(tmp_path / "s", 3)
    with open(store.data_path, "ab") as handle:  # what a writer killed before its commit leaves
        handle.write(np.full((2, 6, 5), 99, np.uint8).tobytes())
    again = ArrayStore(tmp_path / "s", (6, 5))
    assert again.rows_for(["d0", "d2", "d3"]) == [0, 2, None]
    assert again.append(["d3"], [_row(3)]) == [3]
    np.testing.assert_array_equal(again.view([0, 1, 2, 3])[:], [_row(i) for i in range(4)])


def test_a_truncated_data_file_is_detected_and_only_the_lost_rows_decoded_again(tmp_path, caplog):
    store = _filled(tmp_path / "s", 5)
    view = store.view([0, 4])
    with open(store.data_path, "r+b") as handle:
        handle.truncate(os.path.getsize(store.data_path) - 30 - 7)  # the last row and a bit gone
    with caplog.at_level(logging.WARNING):
        again = ArrayStore(tmp_path / "s", (6, 5))
    assert "past the end of its data file" in caplog.text
    assert again.rows_for([f"d{i}" for i in range(5)]) == [0, 1, 2, None, None]
    with pytest.raises(RuntimeError, match="shorter"):
        view[0]  # a view made before the truncation does not read garbage
    again.append(["d3", "d4"], [_row(3), _row(4)])
    np.testing.assert_array_equal(again.view(again.rows_for(["d4", "d0"]))[:], [_row(4), _row(0)])


@pytest.mark.parametrize("damage", ["index", "header", "shape"])
def test_a_damaged_index_or_header_or_another_shape_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    store = _filled(tmp_path / "s", 3)
    old_view = store.view([0])
    store.close()
    shape = (6, 5)
    if damage == "index":
        store.index_path.write_bytes(b"garbage" * 500)
    elif damage == "header":
        with open(store.data_path, "r+b") as handle:
            handle.write(b"xx")
    else:
        shape = (5, 6)
    with caplog.at_level(logging.WARNING):
        again = ArrayStore(tmp_path / "s", shape)
    assert "rebuilding it" in caplog.text
    assert again.rows_for(["d0", "d1"]) == [None, None] and len(again) == 0
    with pytest.raises(RuntimeError, match="rebuilt"):
        old_view[0]  # a view of the old store never reads the new one's rows
    again.append(["d0"], [_row(0, shape)])
    np.testing.assert_array_equal(again.view([0])[0], _row(0, shape))


CONCURRENT_WRITER = """
import sys
import numpy as np
from covidseg.data.store import ArrayStore
store = ArrayStore(sys.argv[1], (16, 16))
first = int(sys.argv[2])
for k in range(first, first + 60, 3):
    digests = [f"d{i}" for i in range(k, k + 3)]
    store.append(digests, [np.full((16, 16), i % 251, np.uint8) for i in range(k, k + 3)])
"""


def test_two_processes_writing_one_store_at_once_keep_it_consistent(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    folder = tmp_path / "s"
    writers = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, str(folder), start], env=env)
        for start in ("0", "30")
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    store = ArrayStore(folder, (16, 16))
    digests = [f"d{i}" for i in range(90)]
    rows = store.rows_for(digests)
    assert len(store) == 90 and sorted(rows) == list(range(90))  # each digest once, no gap, no overlap
    view = store.view(rows)
    assert all((view[i] == i % 251).all() for i in range(90))


# -- the file index -------------------------------------------------------------------------------------
def _probe(path: str, data: bytes) -> tuple[int, int]:
    if data.startswith(b"bad"):
        raise ValueError("refused")
    return len(data), 1


def test_file_index_hashes_only_new_or_changed_files(tmp_path, monkeypatch):
    monkeypatch.setattr(file_index, "RACY_NS", 0)
    reads: list[str] = []
    real_read = file_index.read_file_bytes
    monkeypatch.setattr(file_index, "read_file_bytes", lambda p: reads.append(p) or real_read(p))
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"first content")
    b.write_bytes(b"bad file")
    index = FileIndex(tmp_path / "cache")
    first = index.lookup([a, b, tmp_path / "missing"], _probe, refused=(ValueError,))
    assert first[0].width == 13 and isinstance(first[1], ValueError) and isinstance(first[2], OSError)
    reads.clear()
    again = FileIndex(tmp_path / "cache").lookup([a, b], _probe, refused=(ValueError,))
    assert again[0] == first[0] and reads == [str(b)]  # the refused file was not recorded

    # replaced in place, same size, mtime restored: ctime (and here the inode) still tell
    before = a.stat()
    time.sleep(0.02)
    a.write_bytes(b"other content")
    os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (a.stat().st_size, a.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    reads.clear()
    changed = index.lookup([a], _probe)[0]
    assert reads == [str(a)] and changed.digest != first[0].digest

    moved = tmp_path / "moved.bin"
    a.rename(moved)
    reads.clear()
    assert index.lookup([moved], _probe)[0].digest == changed.digest and reads == [str(moved)]
    reads.clear()
    index.lookup([moved], _probe)
    assert reads == []


def test_a_freshly_written_file_is_hashed_again_until_its_timestamps_are_old_enough(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"content")
    index = FileIndex(tmp_path / "cache")
    index.lookup([path], _probe)
    index.lookup([path], _probe)
    assert index.hashed == 2  # racy: it could still change within the same timestamp tick
    row = index.con.execute("SELECT trusted FROM files").fetchone()
    assert row == (0,)


def test_a_damaged_file_index_is_rebuilt_with_a_warning(tmp_path, caplog):
    path = tmp_path / "a.bin"
    path.write_bytes(b"content")
    first = FileIndex(tmp_path / "cache")
    first.lookup([path], _probe)
    first.close()
    (tmp_path / "cache" / "files.sqlite").write_bytes(b"not a database" * 100)
    with caplog.at_level(logging.WARNING):
        index = FileIndex(tmp_path / "cache")
        entry = index.lookup([path], _probe)[0]
    assert "damaged" in caplog.text and entry.width == 7
    with sqlite3.connect(tmp_path / "cache" / "files.sqlite") as con:
        assert con.execute("SELECT count(*) FROM files").fetchone() == (1,)
