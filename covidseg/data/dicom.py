"""DICOM radiographs into covidseg's image convention (covidseg.data.decoding): uint8 gray, 0 = black = air.

pydicom decodes the pixel data (compressed transfer syntaxes through its plugins: pylibjpeg, pillow, ...),
then the pixels go through what a DICOM viewer applies before showing them:
- the modality LUT (Rescale Slope/Intercept, or a Modality LUT Sequence);
- the VOI LUT: the window the image is meant to be read with (Window Center/Width, or a VOI LUT
  Sequence, which pydicom prefers when both are given). The window's output range becomes 0..255.
Without a VOI transform, 8-bit pixels keep their values (like an 8-bit PNG) and deeper ones are stretched
from the image's own min..max (like a 16-bit PNG). MONOCHROME1 (high values shown dark) is inverted, so
that air is dark as in every other image. Colour (3-sample) images become ITU-R 601 luma, as PNGs do.

Refusals are `DicomRefused` (covidseg.data.decoding turns them into BadImage): unreadable files, missing
pixel data, multi-frame files, sizes outside the limits, display attributes pydicom cannot apply (Window
Width 0; the message lists the file's attributes), and compressed pixel data without an installed decoder
(the message names the transfer syntax and what to install). A file whose attributes map every pixel to
one value (Rescale Slope 0) decodes to a constant image, which covidseg.data.decoding refuses as blank.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DICOM_SUFFIXES = {".dcm", ".dicom"}
DECODER_FIX = (
    "Install a decoder (pip install 'covidseg[dicom]' adds pylibjpeg for the JPEG syntaxes), convert the "
    "file to uncompressed DICOM or PNG, or set data.on_bad_image=skip."
)

ATTRIBUTE_FIX = "Correct the attribute (e.g. with pydicom), remove the file, or set data.on_bad_image=skip."
DISPLAY_ATTRIBUTES = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction")
# What ties a prediction back to the hospital's records (covidseg-predict's predictions.csv).
IDENTIFIERS = ("StudyInstanceUID", "SOPInstanceUID", "AccessionNumber")


class DicomRefused(Exception):
    """A DICOM file covidseg cannot use: `problem` names the file, `reason` is a BadImage reason."""

    def __init__(self, problem: str, reason: str = "unreadable", fix: str | None = None):
        super().__init__(problem)
        self.problem, self.reason, self.fix = problem, reason, fix


def is_dicom(path: str | Path, data: bytes) -> bool:
    """A DICOM file: the 'DICM' marker after the 128-byte preamble, or a DICOM suffix (files written
    without the preamble exist)."""
    return data[128:132] == b"DICM" or Path(path).suffix.lower() in DICOM_SUFFIXES


def _read(path: str | Path, data: bytes, header_only: bool) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=header_only)
    except Exception as err:  # pydicom fails on damaged files in many ways (struct, value, EOF errors)
        raise DicomRefused(f"Cannot read DICOM {path}: {' '.join(str(err).split())[:200]}.") from err


def identifiers(path: str | Path) -> dict[str, str]:
    """The file's IDENTIFIERS that it has (empty values left out), read from the header alone: the pixel data
    is neither read nor decoded. {} for a file that is no DICOM or cannot be read (its decoding reports why).
    """
    import pydicom

    try:
        with open(path, "rb") as handle:
            if not is_dicom(path, handle.read(132)):
                return {}
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=list(IDENTIFIERS))
    except Exception:  # unreadable or damaged: the image's own refusal says why, once
        return {}
    return {name: str(ds.get(name)).strip() for name in IDENTIFIERS if str(ds.get(name) or "").strip()}


def check_header(path: str | Path, data: bytes, min_side: int = 0) -> tuple[int, int]:
    """The checks that need only the header (the pixel data is not read); returns (width, height)."""
    ds = _read(path, data, header_only=True)
    _check(path, ds, min_side)
    return int(ds.Columns), int(ds.Rows)


def _check(path: str | Path, ds: Any, min_side: int) -> None:
    if "Rows" not in ds or "Columns" not in ds:
        raise DicomRefused(
            f"DICOM {path} holds no image (no Rows/Columns: e.g. a report or structured data)."
        )
    rows, columns = int(ds.Rows), int(ds.Columns)
    if min(rows, columns) < min_side:
        raise DicomRefused(
            f"Image {path} is {columns}x{rows} px; covidseg needs at least {min_side} px on each side "
            "(a smaller image holds no usable X-ray detail).",
            "too_small",
        )
    limit = Image.MAX_IMAGE_PIXELS  # as for PIL's formats (PIL warns above it, covidseg refuses)
    if limit and rows * columns > limit:
        raise DicomRefused(
            f"Image {path} is too large to decode safely: {columns}x{rows} px exceeds {limit} pixels.",
            "too_large",
            "Downscale the file (it is resized to data.image_size anyway), or remove it, or set "
            "data.on_bad_image=skip.",
        )
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames != 1:
        raise DicomRefused(f"DICOM {path} has {frames} frames; covidseg reads single-frame radiographs.")
    if int(ds.get("SamplesPerPixel") or 1) not in (1, 3):
        raise DicomRefused(f"DICOM {path} has {ds.SamplesPerPixel} samples per pixel; covidseg reads 1 or 3.")


def _check_decoder(path: str | Path, ds: Any) -> None:
    """A clear refusal when no installed pydicom plugin decodes the file's transfer syntax."""
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        return  # pydicom guesses the encoding of files without file meta; its error says if it cannot
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise DicomRefused(
            f"Cannot decode DICOM {path}: pydicom has no decoder for its transfer syntax {syntax.name} "
            f"({syntax}).",
            "no_decoder",
            "Convert the file to uncompressed DICOM or PNG, or set data.on_bad_image=skip.",
        ) from err
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin installed"
        raise DicomRefused(
            f"Cannot decode DICOM {path}: its pixel data is compressed as {syntax.name} ({syntax}) and no "
            f"installed decoder handles that ({missing}).",
            "no_decoder",
            DECODER_FIX,
        )


def _output_range(ds: Any, stored: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The pixels after the VOI transform (if the file has one) and the range that becomes 0..255."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    windowed = apply_voi_lut(values, ds)
    if windowed is not values:  # pydicom returns its input unchanged when there is no VOI transform
        if windowed.dtype.kind == "u":  # a VOI LUT Sequence: entries of its nominal bit depth
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            return windowed, 0.0, float(2**bits - 1)
        # Windowing: what the window maps everything below and above it to (Window Width/Center give the
        # input range only; the output range depends on the bit depth and rescale, as pydicom decides).
        lo, hi = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
        return windowed, float(lo), float(hi)
    if stored.dtype == np.uint8:  # 8-bit: the full stored range, through the modality transform if any
        lo, hi = np.asarray(apply_modality_lut(np.array([0, 255], dtype=np.uint8), ds), dtype=np.float64)
        return values, float(lo), float(hi)
    return values, float(values.min()), float(values.max())


def _display_attributes(ds: Any) -> str:
    """The attributes that turn stored values into displayed ones, as the file gives them."""
    given = [f"{name} {ds.get(name)}" for name in DISPLAY_ATTRIBUTES if ds.get(name) is not None]
    lut_sequences = [name for name in ("ModalityLUTSequence", "VOILUTSequence") if name in ds]
    return ", ".join(given + lut_sequences) or "none given"


def to_grayscale_uint8(path: str | Path, data: bytes, min_side: int = 0) -> np.ndarray:
    """Full-resolution uint8 grayscale array of a DICOM file, following the module docstring."""
    from pydicom.pixels import apply_modality_lut

    ds = _read(path, data, header_only=False)
    _check(path, ds, min_side)
    _check_decoder(path, ds)
    try:
        stored = ds.pixel_array
    except Exception as err:  # missing or truncated pixel data, inconsistent tags, decoder failures
        raise DicomRefused(
            f"Cannot decode the pixel data of DICOM {path}: {' '.join(str(err).split())[:200]}."
        ) from err
    if stored.ndim == 3:  # colour, already converted to RGB by pydicom
        if stored.dtype != np.uint8:
            raise DicomRefused(f"DICOM {path} is a colour image deeper than 8 bits; covidseg cannot read it.")
        return np.asarray(Image.fromarray(stored, "RGB").convert("L"), dtype=np.uint8)
    try:
        values = apply_modality_lut(stored, ds)
        values, lo, hi = _output_range(ds, stored, values)
    except Exception as err:  # attributes pydicom rejects (Window Width 0, a LUT descriptor that lies, ...)
        raise DicomRefused(
            f"Cannot apply the display attributes of DICOM {path} ({_display_attributes(ds)}): "
            f"{' '.join(str(err).split())[:200]}.",
            fix=ATTRIBUTE_FIX,
        ) from err
    values = values.astype(np.float64)
    span = hi - lo
    if span == 0:
        return np.zeros(values.shape, np.uint8)
    # MONOCHROME1: the lowest value is white. Inverting against the range (not 255 - result) keeps an
    # inverted copy of a MONOCHROME2 image bit-identical to it.
    inverted = str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    share = (hi - values) / span if inverted else (values - lo) / span
    return np.clip(np.round(share * 255.0), 0, 255).astype(np.uint8)
