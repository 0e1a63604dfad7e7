"""Decode any chest X-ray PIL can read into one convention, once, and cache the result on disk.

Convention: a square `size x size` uint8 grayscale array (0 = black), stretched (not padded) to the
square with area-averaging ("box") resampling.
- 8-bit grayscale ('L', '1', 'P', 'RGB', 'RGBA', 'LA', 'CMYK', ...) -> ITU-R 601 luma; transparent
  pixels are composited onto black.
- 16/32-bit integer or float grayscale ('I;16', 'I', 'F') -> linearly rescaled from the image's own
  min..max to 0..255 (X-ray PNGs rarely use their full bit depth).

The cache key is the SHA-1 of the file's bytes plus the size, so renamed or moved files still hit
and edited files miss. Files are written to a temporary name and renamed, so concurrent runs never
read half-written arrays. Deleting the cache folder only costs time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from covidseg.errors import UserError

log = logging.getLogger(__name__)


def file_digest(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def to_grayscale_uint8(image: Image.Image) -> np.ndarray:
    """Full-resolution uint8 grayscale array following the convention in the module docstring."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(values)
        return np.round(scaled).astype(np.uint8)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def decode(path: str | Path, size: int) -> np.ndarray:
    """Read one image file and return it as a (size, size) uint8 array."""
    try:
        with Image.open(path) as image:
            image.load()
            gray = to_grayscale_uint8(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UserError(
            f"Cannot read image {path}: {err}. Replace or remove the file, or set data.on_bad_image=skip."
        ) from err
    resized = Image.fromarray(gray).resize((size, size), Image.Resampling.BOX)
    return np.asarray(resized, dtype=np.uint8)


def atomic_save(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary file in the same folder, then rename, so readers never see partial files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npy")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ImageCache:
    """Decoded, resized uint8 images on disk under `root/images/<size>/`, keyed by file content."""

    def __init__(self, root: str | Path, size: int):
        self.folder = Path(root) / "images" / str(size)
        self.size = size
        self.hits = 0
        self.misses = 0

    def load(self, path: str | Path) -> tuple[np.ndarray, str]:
        """The cached array for one image file and the file's content digest."""
        digest = file_digest(path)
        cached = self.folder / digest[:2] / f"{digest}.npy"
        if cached.is_file():
            try:
                array = np.load(cached)
                if array.shape == (self.size, self.size):
                    self.hits += 1
                    return array, digest
            except (OSError, ValueError):
                pass  # a damaged cache entry is simply rebuilt
        array = decode(path, self.size)
        atomic_save(cached, array)
        self.misses += 1
        return array, digest

    def load_many(self, paths: Sequence[str], on_bad_image: str = "error") -> tuple[np.ndarray, list[str], list[int]]:
        """Stack of arrays for `paths`, their digests, and the indices of unreadable files skipped.

        on_bad_image: `error` stops at the first unreadable file; `skip` leaves it out and reports it.
        """
        if on_bad_image not in ("error", "skip"):
            raise UserError(f"data.on_bad_image must be 'error' or 'skip', got {on_bad_image!r}.")
        arrays, digests, skipped = [], [], []
        for i, path in enumerate(paths):
            try:
                array, digest = self.load(path)
            except UserError as err:
                if on_bad_image == "error":
                    raise
                log.warning("Skipping unreadable image (data.on_bad_image=skip): %s", err)
                skipped.append(i)
                continue
            arrays.append(array)
            digests.append(digest)
        stack = np.stack(arrays) if arrays else np.zeros((0, self.size, self.size), np.uint8)
        return stack, digests, skipped
