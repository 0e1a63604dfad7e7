"""Decode any chest X-ray PIL or pydicom can read into one convention, once, and cache the result on disk.

Convention: a square `size x size` uint8 grayscale array (0 = black), stretched (not padded) to the
square with area-averaging ("box") resampling.
- 8-bit grayscale ('L', '1', 'P', 'RGB', 'RGBA', 'LA', 'CMYK', ...) -> ITU-R 601 luma; transparent
  pixels are composited onto black.
- 16/32-bit integer or float grayscale ('I;16', 'I', 'F') -> linearly rescaled from the image's own
  min..max to 0..255 (X-ray PNGs rarely use their full bit depth).
- DICOM (the 'DICM' marker or a .dcm/.dicom suffix) -> covidseg.data.dicom: modality and VOI LUT
  (windowing) as a viewer applies them, MONOCHROME1 inverted, compressed syntaxes through pydicom's plugins.

The cache key is the SHA-1 of the file's bytes plus the size and the intensity preprocessing
(covidseg.data.intensity: plain images under `images/<size>/`, equalised ones under
`images/<size>-<hist|clahe<clip>>/`, so the two never mix), so renamed or moved files still hit
and edited files miss. Files are written to a temporary name and renamed, so concurrent runs never
read half-written arrays. Deleting the cache folder only costs time.

Refused images (`BadImage`, a UserError): unreadable files, images smaller than `min_side` on either
side (the classifier uses MIN_SIDE: a 1x1 file would become a flat grey square), and images above
PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS; PIL only warns between 1x and 2x the limit,
covidseg refuses both). The checks read only the header and run before the cache is consulted, so a
refused image never gets a cache entry and an entry cached before a check existed is not trusted.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from covidseg.data import dicom, intensity
from covidseg.errors import UserError

log = logging.getLogger(__name__)


MIN_SIDE = 32  # smallest source image (px, either side) the classifier accepts
SKIP_LOG_LIMIT = 5  # skipped images named one by one in the log; the rest only in the summary
FIX = "Replace or remove the file, or set data.on_bad_image=skip."


class BadImage(UserError):
    """An image file covidseg refuses; `reason` (unreadable, too_small, too_large, no_decoder) is counted in
    skip mode."""

    def __init__(self, problem: str, reason: str, fix: str = FIX):
        super().__init__(f"{problem} {fix}")
        self.problem, self.reason = problem, reason


def file_digest(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def read_image_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise BadImage(f"Cannot read image {path}: {err}.", "unreadable") from err


@contextmanager
def open_checked(path: str | Path, data: bytes, min_side: int = 0) -> Iterator[Image.Image]:
    """The opened (not yet decoded) image in `data`, after the size checks; every failure is a BadImage."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if min(width, height) < min_side:
                    raise BadImage(
                        f"Image {path} is {width}x{height} px; covidseg needs at least {min_side} "
                        "px on each side (a smaller image holds no usable X-ray detail).",
                        "too_small",
                    )
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage(
            f"Image {path} is too large to decode safely: {err}",
            "too_large",
            "Downscale the file (it is resized to data.image_size anyway), or remove it, or set "
            "data.on_bad_image=skip.",
        ) from err
    except UnidentifiedImageError as err:
        raise BadImage(f"Cannot read image {path}: not in a format PIL can read.", "unreadable") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise BadImage(f"Cannot read image {path}: {err}.", "unreadable") from err


@contextmanager
def dicom_refusals() -> Iterator[None]:
    """covidseg.data.dicom's refusals as BadImage, so DICOM files are skipped and counted like the rest."""
    try:
        yield
    except dicom.DicomRefused as err:
        raise BadImage(err.problem, err.reason, err.fix or FIX) from err


def check_image(path: str | Path, data: bytes, min_side: int = 0) -> None:
    """The header checks alone (format readable, size within limits); the pixels are not decoded."""
    if dicom.is_dicom(path, data):
        with dicom_refusals():
            dicom.check_header(path, data, min_side)
        return
    with open_checked(path, data, min_side):
        pass


def full_resolution(path: str | Path, data: bytes, min_side: int = 0) -> np.ndarray:
    """The file's pixels as a uint8 grayscale array at its own size, by the module docstring's rules."""
    if dicom.is_dicom(path, data):
        with dicom_refusals():
            return dicom.to_grayscale_uint8(path, data, min_side)
    with open_checked(path, data, min_side) as image:
        image.load()
        return to_grayscale_uint8(image)


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


def decode(path: str | Path, size: int, min_side: int = 0, data: bytes | None = None) -> np.ndarray:
    """Read one image file (or its bytes, if given) and return it as a (size, size) uint8 array."""
    data = read_image_bytes(path) if data is None else data
    gray = full_resolution(path, data, min_side)
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
    """Decoded, resized uint8 images on disk under `root/images/<size>[-<preprocessing>]/`, keyed by
    file content.

    min_side: smaller source images are refused (BadImage), also when an older run cached them.
    equalize, clahe_clip: intensity standardisation applied after resizing (covidseg.data.intensity);
    the default `none` gives the plain images (what the segmenter was trained on).
    """

    def __init__(
        self,
        root: str | Path,
        size: int,
        min_side: int = 0,
        equalize: str = "none",
        clahe_clip: float = 2.0,
    ):
        tag = intensity.preprocessing_tag(equalize, clahe_clip)
        self.folder = Path(root) / "images" / (f"{size}-{tag}" if tag else str(size))
        self.size = size
        self.min_side = min_side
        self.equalize, self.clahe_clip = equalize, clahe_clip
        self.hits = 0
        self.misses = 0
        self.skip_reasons: Counter[str] = Counter()  # load_many in skip mode: {reason: count}
        self.skipped_problems: list[str] = []  # load_many in skip mode: what was wrong, one per skipped file

    def load(self, path: str | Path) -> tuple[np.ndarray, str]:
        """The cached array for one image file and the file's content digest."""
        data = read_image_bytes(path)
        digest = hashlib.sha1(data).hexdigest()
        check_image(path, data, self.min_side)  # header checks only: a cache hit must not bypass them
        cached = self.folder / digest[:2] / f"{digest}.npy"
        if cached.is_file():
            try:
                array = np.load(cached)
                if array.shape == (self.size, self.size):
                    self.hits += 1
                    return array, digest
            except (OSError, ValueError):
                pass  # a damaged cache entry is simply rebuilt
        plain = decode(path, self.size, self.min_side, data)
        array = intensity.equalize(plain, self.equalize, self.clahe_clip)
        atomic_save(cached, array)
        self.misses += 1
        return array, digest

    def load_many(
        self, paths: Sequence[str], on_bad_image: str = "error"
    ) -> tuple[np.ndarray, list[str], list[int]]:
        """Stack of arrays for `paths`, their digests, and the indices of refused files skipped.

        on_bad_image: `error` stops at the first refused file; `skip` leaves it out, logs it and counts
        its reason in `skip_reasons` and its problem in `skipped_problems`.
        """
        if on_bad_image not in ("error", "skip"):
            raise UserError(f"data.on_bad_image must be 'error' or 'skip', got {on_bad_image!r}.")
        arrays, digests, skipped = [], [], []
        for i, path in enumerate(paths):
            try:
                array, digest = self.load(path)
            except BadImage as err:
                if on_bad_image == "error":
                    raise
                level = logging.WARNING if len(skipped) < SKIP_LOG_LIMIT else logging.DEBUG
                log.log(level, "Skipping image (data.on_bad_image=skip): %s", err.problem)
                self.skip_reasons[err.reason] += 1
                self.skipped_problems.append(err.problem)
                skipped.append(i)
                continue
            arrays.append(array)
            digests.append(digest)
        if skipped:
            log.warning(
                "Skipped %d of %d image(s) (data.on_bad_image=skip): %s, e.g. %s",
                len(skipped),
                len(paths),
                dict(self.skip_reasons),
                [str(paths[i]) for i in skipped[:3]],
            )
        stack = np.stack(arrays) if arrays else np.zeros((0, self.size, self.size), np.uint8)
        return stack, digests, skipped
