"""Decode any chest X-ray PIL or pydicom can read into one convention (cached by covidseg.data.images).

Convention: a square `size x size` uint8 grayscale array (0 = black), stretched (not padded) to the
square with area-averaging ("box") resampling.
- 8-bit grayscale ('L', '1', 'P', 'RGB', 'RGBA', 'LA', 'CMYK', ...) -> ITU-R 601 luma; transparent
  pixels are composited onto black.
- 16/32-bit integer or float grayscale ('I;16', 'I', 'F') -> linearly rescaled from the image's own
  min..max to 0..255 (X-ray PNGs rarely use their full bit depth).
- DICOM (the 'DICM' marker or a .dcm/.dicom suffix) -> covidseg.data.dicom: modality and VOI LUT
  (windowing) as a viewer applies them, MONOCHROME1 inverted, compressed syntaxes through pydicom's plugins.

- The EXIF orientation (JPEG, TIFF, ...) is applied, so the array is the image as a viewer shows it.

Refused images (`BadImage`, a UserError, one file at a time: any failure while reading one file is that
file's refusal, never a crash of the whole batch): unreadable files (also broken links, and paths that
are no regular file, which are never opened: reason `not_a_file`), files whose decoding fails in any way
(damaged data or EXIF, DICOM attributes such as Window Width 0), blank images (one pixel value
everywhere after decoding: a constant or fully transparent image, a DICOM whose Rescale Slope 0 or window
maps every pixel to one value; reason `blank`), images smaller than `min_side` on either side (the
classifier uses covidseg.data.images.MIN_SIDE: a 1x1 file would become a flat grey square), and images
above PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS; PIL only warns between 1x and 2x the limit,
covidseg refuses both). check_image reads only the header; check_size repeats its size checks on a
recorded width x height (covidseg.data.images runs it on every cache hit, so a hit never bypasses them).

DECODER_VERSION names these rules: stores of decoded arrays (and of arrays made from them) record it, and
one written under other rules is rebuilt, never served.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from covidseg.data import dicom
from covidseg.data.file_index import NotARegularFile, read_file_bytes
from covidseg.data.transforms import IMAGE_RESAMPLING
from covidseg.errors import UserError

# Bump when a file's decoded pixels change (2: EXIF orientation applied, blank images refused).
DECODER_VERSION = 2
DECODED = f"covidseg decoder {DECODER_VERSION}"  # the `content` of every store of arrays made from decodes
FIX = "Replace or remove the file, or set data.on_bad_image=skip."
TOO_LARGE_FIX = (
    "Downscale the file (it is resized to data.image_size anyway), or remove it, or set "
    "data.on_bad_image=skip."
)


class BadImage(UserError):
    """An image file covidseg refuses; `reason` (unreadable, not_a_file, blank, too_small, too_large,
    no_decoder) is counted in skip mode."""

    def __init__(self, problem: str, reason: str, fix: str = FIX):
        super().__init__(f"{problem} {fix}")
        self.problem, self.reason, self.fix = problem, reason, fix
        self.path: str | None = None  # the refused file, as the caller named it (set by ImageCache)

    def __reduce__(self) -> tuple[Any, ...]:  # decoding workers send refusals back pickled
        return (type(self), (self.problem, self.reason, self.fix))


def unreadable(path: str | Path, err: OSError) -> BadImage:
    """The refusal of a file that cannot be read (`err` from opening, stat or reading it)."""
    reason = "not_a_file" if isinstance(err, NotARegularFile) else "unreadable"
    return BadImage(f"Cannot read image {path}: {err}.", reason)


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of a regular file (anything else is refused without being opened)."""
    try:
        return read_file_bytes(str(path))
    except OSError as err:
        raise unreadable(path, err) from err


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


@contextmanager
def open_checked(path: str | Path, data: bytes, min_side: int = 0) -> Iterator[Image.Image]:
    """The opened (not yet decoded) image in `data`, after the size checks; every failure is a BadImage."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # PIL only warns when it cannot read the EXIF block: the orientation is then unknown
            warnings.filterwarnings("error", "Corrupt EXIF", UserWarning)
            with Image.open(io.BytesIO(data)) as image:
                _check_min_side(path, *image.size, min_side)
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        problem = f"Image {path} is too large to decode safely: {err}"
        raise BadImage(problem, "too_large", TOO_LARGE_FIX) from err
    except UserWarning as err:
        problem = f"Image {path} has a damaged EXIF block ({_short(err)}), so its orientation is unknown."
        raise BadImage(problem, "unreadable") from err
    except UnidentifiedImageError as err:
        raise BadImage(f"Cannot read image {path}: not in a format PIL can read.", "unreadable") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise BadImage(f"Cannot read image {path}: {err}.", "unreadable") from err


def _check_min_side(path: str | Path, width: int, height: int, min_side: int) -> None:
    if min(width, height) < min_side:
        raise BadImage(
            f"Image {path} is {width}x{height} px; covidseg needs at least {min_side} px on each side "
            "(a smaller image holds no usable X-ray detail).",
            "too_small",
        )


@contextmanager
def refusals(path: str | Path) -> Iterator[None]:
    """Any failure while reading one file as that file's BadImage: covidseg.data.dicom's refusals, and
    whatever else a decoder raises (a damaged EXIF block, a DICOM attribute pydicom rejects), so that one
    file is skipped and counted like the rest instead of stopping a batch."""
    try:
        yield
    except BadImage:
        raise
    except dicom.DicomRefused as err:
        raise BadImage(err.problem, err.reason, err.fix or FIX) from err
    except Exception as err:  # decoders fail on odd files in many ways; the type name says which
        problem = f"Cannot decode image {path}: {type(err).__name__}: {_short(err)}."
        raise BadImage(problem, "unreadable") from err


def check_image(path: str | Path, data: bytes, min_side: int = 0) -> tuple[int, int]:
    """The header checks alone (format readable, size within limits) and the (width, height) they read,
    as displayed (EXIF orientation applied where the header holds it); the pixels are not decoded."""
    with refusals(path):
        if dicom.is_dicom(path, data):
            return dicom.check_header(path, data, min_side)
        with open_checked(path, data, min_side) as image:
            width, height = image.size
            # PNG keeps EXIF wherever it likes and PIL decodes the whole image to find it: not for a header
            exif_read = image.format != "PNG" or "exif" in image.info
            if exif_read and orientation(image) in (5, 6, 7, 8):  # a quarter turn
                return height, width
            return width, height


def orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (1 = as stored, 2..8 = flipped and/or turned)."""
    return int(image.getexif().get(ExifTags.Base.Orientation) or 1)


def check_size(path: str | Path, width: int, height: int, min_side: int = 0) -> None:
    """The size checks of `check_image` on a recorded width x height (a cache hit must not bypass them).

    Args:
        path: the image file, named in the message.
        width: its width in pixels, as displayed (EXIF orientation applied).
        height: its height in pixels, likewise.
        min_side: the smallest width or height accepted; 0 accepts any.

    Raises:
        BadImage: a side under `min_side` (too_small), or more pixels than Image.MAX_IMAGE_PIXELS as it is
            now (too_large).
    """
    _check_min_side(path, width, height, min_side)
    limit = Image.MAX_IMAGE_PIXELS  # read now: a caller may have changed it since the entry was recorded
    if limit and width * height > limit:
        raise BadImage(
            f"Image {path} is too large to decode safely: {width}x{height} px exceeds {limit} pixels.",
            "too_large",
            TOO_LARGE_FIX,
        )


def full_resolution(path: str | Path, data: bytes, min_side: int = 0) -> np.ndarray:
    """The file's pixels as a uint8 grayscale array at its own size, by the module docstring's rules."""
    with refusals(path):
        if dicom.is_dicom(path, data):
            gray = dicom.to_grayscale_uint8(path, data, min_side)
        else:
            with open_checked(path, data, min_side) as image:
                image.load()
                if orientation(image) != 1:
                    ImageOps.exif_transpose(image, in_place=True)
                gray = to_grayscale_uint8(image)
    check_blank(path, gray)
    return gray


def check_blank(path: str | Path, gray: np.ndarray) -> None:
    """Refuse a decoded image with one value everywhere: it holds no X-ray, and a model would still give it
    a confident class."""
    if gray.size and gray.min() == gray.max():
        raise BadImage(
            f"Image {path} is blank: every pixel is {int(gray.min())} after decoding (a constant or fully "
            "transparent image, or a DICOM whose Rescale Slope or window maps every pixel to one value).",
            "blank",
        )


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
    """Read one image file (or its bytes, if given) and return it as a (size, size) uint8 array.

    Args:
        path: the image file; named in refusals even when `data` is given.
        size: the side of the square result (box resampling, stretched, not padded).
        min_side: the smallest width or height accepted; 0 accepts any.
        data: the file's bytes when the caller has already read them (to hash them); None: read `path`.

    Returns:
        The decoded image, by the module docstring's convention.

    Raises:
        BadImage: the file is refused (unreadable, undecodable, blank, too small or too large).
    """
    data = read_image_bytes(path) if data is None else data
    gray = full_resolution(path, data, min_side)
    resized = Image.fromarray(gray).resize((size, size), IMAGE_RESAMPLING)
    return np.asarray(resized, dtype=np.uint8)
