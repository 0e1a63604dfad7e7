"""What happens to pixels between the cache and the network: resizing and applying lung masks.

Image and mask travel through the same functions, so there is one code path for both. (Training augmentation
is covidseg.data.augment: batched, on the training device.)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MASK_MODES = ("segmented", "lungs_removed")
# How images and masks are resized (covidseg.deploy.record writes these down for deployers).
IMAGE_RESAMPLING = Image.Resampling.BOX  # area averaging: every source pixel counts by the area it covers
MASK_RESAMPLING = Image.Resampling.BILINEAR  # on the 0/1 mask as float, then >= MASK_THRESHOLD
MASK_THRESHOLD = 0.5  # a pixel at least half lung stays lung, so thin borders survive a resize


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 image to (size, size) by area averaging (BOX), as the image cache does."""
    return np.asarray(Image.fromarray(image).resize((size, size), IMAGE_RESAMPLING), dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """0/1 mask to (size, size): interpolate (Pillow's bilinear filter, which widens with the reduction
    factor when shrinking) then keep what is >= 0.5, so thin borders stay faithful."""
    if mask.shape == (size, size):
        return mask
    resized = Image.fromarray(mask.astype(np.float32)).resize((size, size), MASK_RESAMPLING)
    return (np.asarray(resized) >= MASK_THRESHOLD).astype(np.uint8)


def lung_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the mask's bounding box grown by `margin` x image size; whole
    image if the mask is empty."""
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return 0, h, 0, w
    pad_y, pad_x = round(margin * h), round(margin * w)
    return (
        max(0, rows[0] - pad_y),
        min(h, rows[-1] + 1 + pad_y),
        max(0, cols[0] - pad_x),
        min(w, cols[-1] + 1 + pad_x),
    )


def crop_to_box(array: np.ndarray, mask: np.ndarray, margin: float) -> np.ndarray:
    """`array` cropped to the lung box of `mask` (same shape) grown by `margin`."""
    top, bottom, left, right = lung_box(mask, margin)
    return array[top:bottom, left:right]


def apply_masks(
    images: np.ndarray,
    masks: np.ndarray,
    mode: str,
    crop_to_lungs: bool = False,
    crop_margin: float = 0.05,
    background: int = 0,
    out_size: int | None = None,
) -> np.ndarray:
    """segmented = image inside the lungs, `background` outside; lungs_removed = the complement.

    With crop_to_lungs, each image is cropped to its lung box (+ margin) and resized to `out_size`
    (default: the input size); load images at a larger size first so the crop keeps detail.

    Args:
        images: uint8 images (N, H, W).
        masks: 0/1 lung masks (N, H, W), one per image.
        mode: segmented or lungs_removed.
        crop_to_lungs: crop each image to its mask's bounding box (lung_box).
        crop_margin: the box's margin, as a fraction of the image size.
        background: the uint8 value of the pixels masked out.
        out_size: the side of the result; None keeps the input size.

    Raises:
        ValueError: an unknown `mode`.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}")
    keep = masks.astype(bool) if mode == "segmented" else ~masks.astype(bool)
    out = np.where(keep, images, np.uint8(background)).astype(np.uint8)
    size = out_size or images.shape[-1]
    if not crop_to_lungs:
        return out if size == images.shape[-1] else np.stack([resize_image(o, size) for o in out])
    return np.stack(
        [resize_image(crop_to_box(image, mask, crop_margin), size) for image, mask in zip(out, masks)]
    )


def masks_as_seen(masks: np.ndarray, crop_to_lungs: bool, crop_margin: float, size: int) -> np.ndarray:
    """Lung masks in the classifier's frame: cropped like the images (crop_to_lungs) and resized to `size`.

    Args:
        masks: 0/1 masks (N, H, W) at the images' load size.
        crop_to_lungs: crop each mask to its own lung box, as apply_masks crops its image.
        crop_margin: the box's margin, as a fraction of the image size.
        size: the side of the result (the model's input size).

    Returns:
        uint8 masks (N, size, size); an empty (0, size, size) array for no masks.
    """
    out = [
        resize_mask(crop_to_box(mask, mask, crop_margin) if crop_to_lungs else mask, size) for mask in masks
    ]
    return np.stack(out) if out else np.zeros((0, size, size), np.uint8)
