"""Arrays derived from other stored arrays (resized lung masks, masked model inputs), kept at rest the same
way (covidseg.data.store): computed chunk by chunk for the rows a store lacks, so that memory stays bounded
by a chunk whatever the data set's size, a warm run only looks rows up, and an interrupted run keeps every
chunk it appended.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from covidseg.data.decoding import DECODED
from covidseg.data.store import ArrayStore, ArrayView
from covidseg.data.transforms import apply_masks

CHUNK_BYTES = 32 << 20  # uint8 output computed (and appended) per chunk


def derived_rows(
    store: ArrayStore, keys: Sequence[str], compute: Callable[[list[int]], np.ndarray]
) -> ArrayView:
    """A view of the rows of `keys` in `store`, in order; compute(indices) -> arrays of the indices (into
    `keys`) the store lacks, called on chunks of at most CHUNK_BYTES of output."""
    found = store.rows_for(list(keys))
    missing = list(dict.fromkeys(keys[i] for i, row in enumerate(found) if row is None))
    first_index = {key: i for i, key in reversed(list(enumerate(keys)))}
    per_chunk = max(1, CHUNK_BYTES // max(1, store.row_bytes))
    computed: dict[str, int] = {}
    for start in range(0, len(missing), per_chunk):
        chunk = missing[start : start + per_chunk]
        arrays = compute([first_index[key] for key in chunk])
        computed.update(zip(chunk, store.append(chunk, list(arrays))))
    return store.view([row if row is not None else computed[key] for key, row in zip(keys, found)])


def settings_digest(*parts: object) -> str:
    """SHA-1 of JSON-able parts: one store key from what a derived array depends on."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def masked_inputs(
    cache_root: str | Path,
    images: ArrayView | np.ndarray,
    image_digests: Sequence[str],
    masks: ArrayView | np.ndarray,
    mask_keys: Sequence[str],
    mode: str,
    crop_to_lungs: bool,
    crop_margin: float,
    background: int,
    out_size: int,
    preprocessing: str,
) -> ArrayView:
    """apply_masks(images, masks, ...) as a view on `<cache>/masked/<out_size>/`, computed only for rows the
    store lacks. A row's key covers all it depends on: the image (content digest, preprocessing tag, load
    size), its mask (MaskSource.mask_keys) and the mask settings.

    Args:
        cache_root: the image cache's folder (data.cache_dir).
        images: the decoded uint8 images (N, S, S), one per digest.
        image_digests: the content digests of `images`, in order.
        masks: 0/1 lung masks (N, S, S), aligned with `images`.
        mask_keys: what identifies each mask (MaskSource.mask_keys).
        mode: segmented or lungs_removed (apply_masks).
        crop_to_lungs: crop each image to its lung box before resizing.
        crop_margin: the box's margin, as a fraction of the image size.
        background: the uint8 value of the pixels masked out.
        out_size: the side of the stored inputs.
        preprocessing: the tag of the images' preprocessing (intensity), part of each key.
    """
    store = ArrayStore(Path(cache_root) / "masked" / str(out_size), (out_size, out_size), content=DECODED)
    load_size = int(images.shape[-1])
    settings = (mode, bool(crop_to_lungs), float(crop_margin), int(background), preprocessing, load_size)
    keys = [settings_digest(d, m, *settings) for d, m in zip(image_digests, mask_keys)]

    def compute(indices: list[int]) -> np.ndarray:
        return apply_masks(
            np.asarray(images[indices]),
            np.asarray(masks[indices]),
            mode,
            crop_to_lungs,
            crop_margin,
            background=background,
            out_size=out_size,
        )

    return derived_rows(store, keys, compute)
