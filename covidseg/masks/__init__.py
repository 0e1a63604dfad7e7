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
from covidseg.masks.area import AreaByClass, area_by_class

__all__ = [
    "AreaByClass",
    "MaskSource",
    "area_by_class",
    "checkpoint_digest",
    "images_and_masks",
    "lung_area_fractions",
    "mask_source",
    "shared_segmenter",
    "trained_mask_source",
]
