"""Intensity standardisation of decoded uint8 images: a lever against scanner/hospital shortcuts.

Images from different sources differ in brightness, contrast and processing; a classifier can tell
sources apart by that alone. Equalising each image's histogram (globally, or locally with CLAHE)
removes much of that difference before the network sees the image.
"""

from __future__ import annotations

import cv2
import numpy as np

from covidseg.errors import UserError

EQUALIZE_MODES = ("none", "hist", "clahe")
CLAHE_TILES = (8, 8)  # tile grid of CLAHE: local enough for lung fields, coarse enough for 224 px


def equalize(image: np.ndarray, mode: str = "none", clahe_clip: float = 2.0) -> np.ndarray:
    """One (H, W) uint8 image equalised: `hist` = global histogram equalisation, `clahe` = contrast-limited
    adaptive equalisation with clip limit `clahe_clip` on an 8x8 tile grid, `none` = unchanged."""
    check_equalize(mode, clahe_clip)
    if mode == "none":
        return image
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if mode == "hist":
        return cv2.equalizeHist(image)
    return cv2.createCLAHE(clipLimit=float(clahe_clip), tileGridSize=CLAHE_TILES).apply(image)


def check_equalize(mode: str, clahe_clip: float) -> None:
    """data.equalize and data.clahe_clip (covidseg.runs.checks runs the same rules on the config)."""
    check_equalize_mode("data.equalize", mode)
    check_clahe_clip("data.clahe_clip", clahe_clip)


def check_equalize_mode(key: str, mode: object) -> None:
    """Refuse an equalisation mode other than EQUALIZE_MODES.

    Args:
        key: the config key that holds `mode`, named in the message.
        mode: the value to check.

    Raises:
        UserError: `mode` is not one of EQUALIZE_MODES.
    """
    if mode not in EQUALIZE_MODES:
        raise UserError(f"{key} must be one of {list(EQUALIZE_MODES)}, got {mode!r}. Set e.g. {key}=clahe.")


def check_clahe_clip(key: str, clip: object) -> None:
    """Refuse a CLAHE clip limit that is not a number > 0 (booleans and nan included).

    Args:
        key: the config key that holds `clip`, named in the message.
        clip: the value to check.

    Raises:
        UserError: `clip` is not a number > 0.
    """
    number = isinstance(clip, (int, float)) and not isinstance(clip, bool)
    if not (number and clip > 0):  # also refuses nan
        raise UserError(f"{key} must be a number > 0, got {clip!r}. Set e.g. {key}=2.0.")


def preprocessing_tag(mode: str = "none", clahe_clip: float = 2.0) -> str:
    """Short name of the preprocessing for cache folders: '' for plain images, 'hist', 'clahe2.0'."""
    check_equalize(mode, clahe_clip)
    if mode == "none":
        return ""
    return "hist" if mode == "hist" else f"clahe{float(clahe_clip)!r}"
