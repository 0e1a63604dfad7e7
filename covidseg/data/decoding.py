"""Decode any chest X-ray PIL or pydicom can read into one convention (cached by covidseg.data.images).

Convention: a square `size x size` uint8 grayscale array (0 = black), stretched (not padded) to the
square with area-averaging ("box") resampling.
- 8-bit grayscale ('L', '1', 'P', 'RGB', 'RGBA', 'LA', 'CMYK', ...) -> ITU-R 601 luma; transparent
  pixels are composited onto black.
- 16/32-bit integer or float grayscale ('I;16', 'I', 'F') -> linearly rescaled from the image's own
  min..max to 0..255 (X-ray PNGs rarely use their full bit depth).
- DICOM (the 'DICM' marker or a .dcm/.dicom suffix) -> covidseg.data.dicom: modality and VOI LUT
  (windowing) as a viewer applies them, MONOCHROME1 inverted, compressed syntaxes through pydicom's plugins.

Refused images (`BadImage`, a UserError): unreadable files, images smaller than `min_side` on either
side (the classifier uses covidseg.data.images.MIN_SIDE: a 1x1 file would become a flat grey square),
and images above PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS; PIL only warns between 1x and
2x the limit, covidseg refuses both). check_image reads only the header; check_size repeats its size
checks on a recorded width x height (covidseg.data.images runs it on every cache hit, so a hit never
bypasses them).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from covidseg.data import dicom
from covidseg.errors import UserError

FIX = "Replace or remove the file, or set data.on_bad_image=skip."
TOO_LARGE_FIX = (
    "Downscale the file (it is resized to data.image_size anyway), or remove it, or set "
    "data.on_bad_image=skip."
)


class BadImage(UserError):
    """An image file covidseg refuses; `reason` (unreadable, too_small, too_large, no_decoder) is counted in
    skip mode."""

    def __init__(self, problem: str, reason: str, fix: str = FIX):
        super().__init__(f"{problem} {fix}")
        self.problem, self.reason, self.fix = problem, reason, fix

    def __reduce__(self) -> tuple[Any, ...]:  # decoding workers send refusals back pickled
        return (type(self), (self.problem, self.reason, self.fix))


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
        problem = f"Image {path} is too large to decode safely: {err}"
        raise BadImage(problem, "too_large", TOO_LARGE_FIX) from err
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


def check_image(path: str | Path, data: bytes, min_side: int = 0) -> tuple[int, int]:
    """The header checks alone (format readable, size within limits) and the (width, height) they read;
    the pixels are not decoded."""
    if dicom.is_dicom(path, data):
        with dicom_refusals():
            return dicom.check_header(path, data, min_side)
    with open_checked(path, data, min_side) as image:
        return image.size


def check_size(path: str | Path, width: int, height: int, min_side: int = 0) -> None:
    """The size checks of `check_image` on a recorded width x height (a cache hit must not bypass them)."""
    if min(width, height) < min_side:
        raise BadImage(
            f"Image {path} is {width}x{height} px; covidseg needs at least {min_side} px on each side "
            "(a smaller image holds no usable X-ray detail).",
            "too_small",
        )
    limit = Image.MAX_IMAGE_PIXELS  # read now: a caller may have changed it since the entry was recorded
    if limit and width * height > limit:
        raise BadImage(
            f"Image {path} is too large to decode safely: {width}x{height} px exceeds {limit} pixels.",
            "too_large",
            TOO_LARGE_FIX,
        )


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
