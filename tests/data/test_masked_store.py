"""Masked model inputs at rest: computed chunk by chunk into a store, looked up by a warm run."""

from __future__ import annotations

import numpy as np
import pytest

import covidseg.data.derived as derived
from covidseg.data.derived import masked_inputs
from covidseg.data.store import ArrayStore, ArrayView
from covidseg.data.transforms import apply_masks


def _data(n: int = 10, size: int = 16):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        masks[i, 2 + i % 4 : 12, 3 : 10 + i % 5] = 1
    return images, masks, [f"img{i}" for i in range(n)], [f"mask{i}" for i in range(n)]


def _counting(monkeypatch) -> list[int]:
    """Rows per apply_masks call made by masked_inputs."""
    calls: list[int] = []

    def counted(images, *args, **kwargs):
        calls.append(len(images))
        return apply_masks(images, *args, **kwargs)

    monkeypatch.setattr(derived, "apply_masks", counted)
    return calls


@pytest.mark.parametrize("crop", [False, True])
def test_masked_inputs_equal_apply_masks_and_a_warm_run_only_looks_up(tmp_path, monkeypatch, crop):
    images, masks, digests, keys = _data()
    calls = _counting(monkeypatch)
    monkeypatch.setattr(derived, "CHUNK_BYTES", 3 * 8 * 8)  # three output rows per chunk
    args = ("segmented", crop, 0.05, 0, 8, "")
    view = masked_inputs(tmp_path, images, digests, masks, keys, *args)
    assert isinstance(view, ArrayView) and view.shape == (10, 8, 8)
    np.testing.assert_array_equal(np.asarray(view), apply_masks(images, masks, "segmented", crop, out_size=8))
    assert calls == [3, 3, 3, 1]  # bounded chunks, never the whole data set
    again = masked_inputs(tmp_path, images, digests, masks, keys, *args)
    assert calls == [3, 3, 3, 1]  # warm: nothing computed
    np.testing.assert_array_equal(np.asarray(again), np.asarray(view))
    # another mode, mask, preprocessing or size is another row
    masked_inputs(tmp_path, images, digests, masks, keys, "lungs_removed", crop, 0.05, 0, 8, "")
    masked_inputs(tmp_path, images[:2], digests[:2], masks[:2], ["other0", "other1"], *args)
    hist = ("segmented", crop, 0.05, 0, 8, "hist")
    masked_inputs(tmp_path, images[:2], digests[:2], masks[:2], keys[:2], *hist)
    assert calls[4:] == [3, 3, 3, 1, 2, 2]


def test_an_interrupted_run_keeps_the_chunks_it_stored(tmp_path, monkeypatch):
    images, masks, digests, keys = _data()
    monkeypatch.setattr(derived, "CHUNK_BYTES", 4 * 8 * 8)
    done: list[int] = []

    def interrupted(images_, *args, **kwargs):
        if done:
            raise KeyboardInterrupt
        done.append(len(images_))
        return apply_masks(images_, *args, **kwargs)

    monkeypatch.setattr(derived, "apply_masks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        masked_inputs(tmp_path, images, digests, masks, keys, "segmented", False, 0.05, 0, 8, "")
    calls = _counting(monkeypatch)
    masked_inputs(tmp_path, images, digests, masks, keys, "segmented", False, 0.05, 0, 8, "")
    assert done == [4] and calls == [4, 2]
    assert len(ArrayStore(tmp_path / "masked" / "8", (8, 8))) == 10
