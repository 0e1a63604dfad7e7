"""Stage 1 for the classifier: lung masks predicted once per image and segmenter, cached and checked."""

from covidseg.masks._source import (
    MaskSource,
    checkpoint_digest,
    images_and_masks,
    lung_area_fractions,
    mask_source,
    shared_segmenter,
    trained_mask_source,
)

__all__ = [
    "MaskSource",
    "checkpoint_digest",
    "images_and_masks",
    "lung_area_fractions",
    "mask_source",
    "shared_segmenter",
    "trained_mask_source",
]
