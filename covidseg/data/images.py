"""Decoded images at rest: each file decoded once (covidseg.data.decoding's convention) and kept on disk.

The cache (ImageCache, on covidseg.data.store) has two levels:
- the file index (`<cache>/files.sqlite`): path -> (size, mtime_ns, ctime_ns, inode) -> SHA-1 of the
  file's bytes and its header's width x height. A file is read and hashed only when one of the four stat
  fields changed (or its entry is too fresh to trust), so a warm start reads no image file at all; a file
  replaced in place is hashed again, also when its size and mtime were restored.
- the array store (`<cache>/arrays/<size>[-<hist|clahe<clip>>]/`): SHA-1 -> one row of a memory-mapped
  uint8 file, for each size and intensity preprocessing (covidseg.data.intensity; plain and equalised
  arrays never mix). Renamed or moved files are hashed once and then hit it; edited files miss it. A
  store decoded under older rules (covidseg.data.decoding.DECODER_VERSION) is rebuilt.
Cold misses are decoded on all cores and appended in batches as they come, so an interrupted cold start
keeps its work; what is on disk is checked on opening (covidseg.data.store), not trusted blindly.
Callers get an ArrayView (rows read from the file when indexed), never a stack of the whole data set.
The per-file `.npy` entries under `<cache>/images/` of older versions are no longer read.

Refused images (covidseg.data.decoding.BadImage) are checked by header when a file is hashed, and the size
checks run again on every load from the recorded width x height, so a cache hit never bypasses them and an
entry recorded before a check existed (or under a smaller min_side) is not trusted. A refused image gets
no entry.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from covidseg.data import intensity
from covidseg.data.decoding import (
    DECODED,
    BadImage,
    check_image,
    check_size,
    decode,
    read_image_bytes,
    unreadable,
)
from covidseg.data.parallel import default_workers, ordered_map
from covidseg.data.store import ArrayStore, ArrayView, FileEntry, FileIndex
from covidseg.errors import UserError

__all__ = ["MIN_SIDE", "BadImage", "ImageCache", "check_image", "decode", "file_digest"]

log = logging.getLogger(__name__)

MIN_SIDE = 32  # smallest source image (px, either side) the classifier accepts
SKIP_LOG_LIMIT = 5  # skipped images named one by one in the log; the rest only in the summary
APPEND_BYTES = 32 << 20  # decoded arrays appended to the store per batch (what a killed cold start loses)


def file_digest(path: str | Path) -> str:
    """SHA-1 hex digest of a file's bytes: the content key of images, mask files and checkpoints."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def decode_task(task: tuple[str, str, int, int, str, float]) -> np.ndarray | BadImage:
    """One cold miss, in a worker: (path, digest, size, min_side, equalize, clahe_clip) -> the array, or the
    refusal (returned, not raised, so that the caller decides in path order)."""
    path, digest, size, min_side, equalize, clahe_clip = task
    try:
        data = read_image_bytes(path)
        if hashlib.sha1(data).hexdigest() != digest:  # replaced since it was hashed: never file it wrongly
            raise BadImage(
                f"Image {path} changed while covidseg was reading it.",
                "unreadable",
                "Run again once the files stay unchanged, or set data.on_bad_image=skip.",
            )
        return intensity.equalize(decode(path, size, min_side, data), equalize, clahe_clip)
    except BadImage as err:
        return err


class ImageCache:
    """Decoded, resized uint8 images at rest: a file index under `root` and an array store under
    `root/arrays/<size>[-<preprocessing>]/` (module docstring).

    min_side: smaller source images are refused (BadImage), also when an older run cached them.
    equalize, clahe_clip: intensity standardisation applied after resizing (covidseg.data.intensity);
    the default `none` gives the plain images (what the segmenter was trained on).
    workers: processes that decode cold misses (default: every core this process may use).
    """

    def __init__(
        self,
        root: str | Path,
        size: int,
        min_side: int = 0,
        equalize: str = "none",
        clahe_clip: float = 2.0,
        workers: int | None = None,
    ):
        tag = intensity.preprocessing_tag(equalize, clahe_clip)
        self.root = Path(root)
        self.folder = self.root / "arrays" / (f"{size}-{tag}" if tag else str(size))
        self.size = size
        self.min_side = min_side
        self.equalize, self.clahe_clip = equalize, clahe_clip
        self.workers = workers or default_workers()
        self.hits = 0  # images served from the store
        self.misses = 0  # images decoded
        self.skip_reasons: Counter[str] = Counter()  # load_many in skip mode: {reason: count}
        self.skipped_problems: list[str] = []  # load_many in skip mode: what was wrong, one per skipped file
        self._index: FileIndex | None = None
        self._store: ArrayStore | None = None

    @property
    def index(self) -> FileIndex:
        """The file index (`<root>/files.sqlite`), opened on first use."""
        if self._index is None:
            self._index = FileIndex(self.root)
        return self._index

    @property
    def store(self) -> ArrayStore:
        """The array store of this size and preprocessing (`folder`), opened on first use."""
        if self._store is None:
            self._store = ArrayStore(self.folder, (self.size, self.size), content=DECODED)
        return self._store

    def load(self, path: str | Path) -> tuple[np.ndarray, str]:
        """The array of one image file and the file's content digest (BadImage if it is refused)."""
        images, digests, _ = self.load_many([str(path)])
        return images[0], digests[0]

    def load_many(
        self, paths: Sequence[str], on_bad_image: str = "error"
    ) -> tuple[ArrayView, list[str], list[int]]:
        """A view of the arrays of `paths`, their digests, and the indices of refused files skipped.

        on_bad_image: `error` stops at the first refused file in path order; `skip` leaves it out, logs it
        and counts its reason in `skip_reasons` and its problem in `skipped_problems`.
        """
        if on_bad_image not in ("error", "skip"):
            raise UserError(f"data.on_bad_image must be 'error' or 'skip', got {on_bad_image!r}.")
        paths = [str(p) for p in paths]
        entries, failures = self._entries(paths)
        # error mode: nothing after the first refused header is needed, but earlier files may still fail
        stop = min(failures) if failures and on_bad_image == "error" else len(paths)
        wanted = [i for i in range(stop) if i not in failures]
        found = self.store.rows_for([entries[i].digest for i in wanted])
        rows = dict(zip(wanted, found))
        self.hits += sum(r is not None for r in found)
        misses = [i for i in wanted if rows[i] is None]
        decoded, refused = self._decode(paths, entries, misses, stop_early=on_bad_image == "error")
        failures.update(refused)
        if failures and on_bad_image == "error":
            raise failures[min(failures)]
        kept = [i for i in wanted if i not in failures]
        digests = [entries[i].digest for i in kept]
        found_or_decoded = [rows[i] if rows[i] is not None else decoded[d] for i, d in zip(kept, digests)]
        view = self.store.view(found_or_decoded)
        skipped = sorted(failures)
        self._log_skips(paths, [failures[i] for i in skipped], skipped)
        return view, digests, skipped

    def _entries(self, paths: list[str]) -> tuple[list[FileEntry | Exception], dict[int, BadImage]]:
        """The file index's entry of each path, and the refusals its header checks give (by index)."""
        entries = self.index.lookup(paths, partial(check_image, min_side=self.min_side), refused=(BadImage,))
        failures: dict[int, BadImage] = {}
        for i, entry in enumerate(entries):
            try:
                if isinstance(entry, OSError):
                    raise unreadable(paths[i], entry)
                if isinstance(entry, BadImage):
                    raise entry
                check_size(paths[i], entry.width, entry.height, self.min_side)
            except BadImage as err:
                err.path = paths[i]
                failures[i] = err
        return entries, failures

    def source_sizes(self, paths: Sequence[str]) -> list[tuple[int, int]]:
        """Each file's (width, height) as displayed (EXIF orientation applied), from the file index: a file
        is read only if it changed since it was last hashed. A refused file raises its BadImage."""
        paths = [str(p) for p in paths]
        entries, failures = self._entries(paths)
        if failures:
            raise failures[min(failures)]
        return [(entry.width, entry.height) for entry in entries]

    def _decode(
        self, paths: list[str], entries: list[FileEntry | Exception], indices: list[int], stop_early: bool
    ) -> tuple[dict[str, int], dict[int, BadImage]]:
        """Decode the files at `indices` (in parallel, in path order) into the store, batch by batch.

        Returns the store row of each decoded digest and the refusals; with stop_early, nothing after the
        first refusal. Whatever was decoded is stored, also when this is interrupted."""
        tasks = [
            (paths[i], entries[i].digest, self.size, self.min_side, self.equalize, self.clahe_clip)
            for i in indices
        ]
        rows: dict[str, int] = {}
        refused: dict[int, BadImage] = {}
        batch: dict[str, np.ndarray] = {}
        batch_rows = max(1, APPEND_BYTES // (self.size * self.size))

        def flush() -> None:
            if batch:
                rows.update(zip(batch, self.store.append(list(batch), list(batch.values()))))
                batch.clear()

        results = ordered_map(decode_task, tasks, self.workers, f"Decoding images at {self.size} px")
        try:
            for i, result in zip(indices, results):
                if isinstance(result, BadImage):
                    result.path = paths[i]
                    refused[i] = result
                    if stop_early:
                        break
                    continue
                batch[entries[i].digest] = result
                self.misses += 1
                if len(batch) >= batch_rows:
                    flush()
        finally:
            results.close()
            flush()
        return rows, refused

    def _log_skips(self, paths: list[str], problems: list[BadImage], skipped: list[int]) -> None:
        for n, err in enumerate(problems):
            level = logging.WARNING if n < SKIP_LOG_LIMIT else logging.DEBUG
            log.log(level, "Skipping image (data.on_bad_image=skip): %s", err.problem)
            self.skip_reasons[err.reason] += 1
            self.skipped_problems.append(err.problem)
        if skipped:
            log.warning(
                "Skipped %d of %d image(s) (data.on_bad_image=skip): %s, e.g. %s",
                len(skipped),
                len(paths),
                dict(self.skip_reasons),
                [paths[i] for i in skipped[:3]],
            )
