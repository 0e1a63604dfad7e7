"""data.equalize: histogram equalisation / CLAHE of the classifier's images, cached apart from plain ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from covidseg.data.datamodule import CXRDataModule
from covidseg.data.images import ImageCache, decode
from covidseg.data.intensity import equalize
from covidseg.errors import UserError
from covidseg.masks import MaskSource
from covidseg.runs.checks import check_config
from tests.conftest import make_dataset


def _low_contrast(size: int = 64, seed: int = 0) -> np.ndarray:
    """A washed-out image: a gradient plus noise squeezed into grey levels 100..130."""
    rng = np.random.default_rng(seed)
    gradient = np.tile(np.linspace(0, 1, size), (size, 1))
    values = 100 + 30 * np.clip(gradient * 0.8 + rng.random((size, size)) * 0.2, 0, 1)
    return values.round().astype(np.uint8)


def test_none_leaves_the_image_as_it_is():
    image = _low_contrast()
    np.testing.assert_array_equal(equalize(image, "none"), image)


def test_hist_stretches_the_histogram_over_the_full_range():
    image = _low_contrast()
    out = equalize(image, "hist")
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert int(image.max()) - int(image.min()) <= 30
    assert out.min() < 10 and out.max() == 255
    # a monotone mapping: brighter pixels stay at least as bright
    order = np.argsort(image, axis=None, kind="stable")
    assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()


def test_clahe_changes_the_image_and_its_clip_limit_matters():
    image = _low_contrast(256)  # 32 px tiles: the clip limit is relative to the tile's pixel count
    low, high = equalize(image, "clahe", clahe_clip=1.0), equalize(image, "clahe", clahe_clip=4.0)
    assert low.dtype == np.uint8 and not np.array_equal(low, image)
    assert high.std() > low.std() > image.std()  # a higher clip limit allows more contrast


@pytest.mark.parametrize(
    "data, expected",
    [
        (
            {"equalize": "histogram"},
            r"data.equalize must be one of \['none', 'hist', 'clahe'\], got 'histogram'",
        ),
        ({"clahe_clip": 0}, r"data.clahe_clip must be a number > 0, got 0"),
        ({"clahe_clip": -1.5}, r"data.clahe_clip must be a number > 0, got -1.5"),
        ({"clahe_clip": "high"}, r"data.clahe_clip must be a number > 0, got 'high'"),
    ],
)
def test_bad_equalize_options_are_refused_by_the_config_check_and_the_data_module(data, expected):
    with pytest.raises(UserError, match=expected):
        check_config(OmegaConf.create({"data": data}))
    with pytest.raises(UserError, match=expected):
        CXRDataModule("unused", **data)


def test_plain_and_equalized_arrays_of_one_file_are_cached_apart(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(_low_contrast(48)).save(path)
    caches = {mode: ImageCache(tmp_path / "cache", 32, equalize=mode) for mode in ("none", "hist", "clahe")}
    arrays = {mode: cache.load(path)[0] for mode, cache in caches.items()}
    np.testing.assert_array_equal(arrays["none"], decode(path, 32))
    np.testing.assert_array_equal(arrays["hist"], equalize(decode(path, 32), "hist"))
    assert not np.array_equal(arrays["none"], arrays["hist"])
    assert not np.array_equal(arrays["hist"], arrays["clahe"])
    assert len({cache.folder for cache in caches.values()}) == 3
    for mode, cache in caches.items():  # each read back from its own entry, unchanged
        assert len(cache.store) == 1
        again = ImageCache(tmp_path / "cache", 32, equalize=mode)
        np.testing.assert_array_equal(again.load(path)[0], arrays[mode])
        assert again.hits == 1
    other_clip = ImageCache(tmp_path / "cache", 32, equalize="clahe", clahe_clip=3.0)
    assert other_clip.folder != caches["clahe"].folder


def test_the_data_module_gives_the_classifier_equalized_images(tmp_path):
    data = make_dataset(tmp_path / "d", {"normal": 12, "covid": 12})
    for mode in ("none", "clahe"):
        dm = CXRDataModule(str(data), image_size=32, cache_dir=str(tmp_path / "cache"), equalize=mode)
        dm.setup("fit")
        first = dm.table[dm.table["split"] == "test"].iloc[0]
        seen = np.asarray(dm.datasets["test"].images[0])
        np.testing.assert_array_equal(seen, equalize(decode(first["file"], 32), mode))
        if mode != "none":
            assert not np.array_equal(seen, decode(first["file"], 32))


class _RecordingSegmenter:
    """Stands in for the segmentation network: keeps what it was given, predicts empty masks."""

    def __init__(self):
        self.inputs: list[torch.Tensor] = []

    def predict_masks(self, batch: torch.Tensor) -> np.ndarray:
        self.inputs.append(batch)
        return np.zeros((len(batch), *batch.shape[-2:]), np.uint8)


def test_the_segmenter_gets_plain_images_after_equalized_ones_were_cached(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(_low_contrast(48)).save(path)
    ImageCache(tmp_path / "cache", 32, equalize="hist").load(path)  # the classifier's run went first
    source = MaskSource.__new__(MaskSource)  # only what _predict uses: no checkpoint needed
    source.cache_dir, source.image_size, source.mean, source.std = tmp_path / "cache", 32, 0.0, 1.0
    source.postprocess = {}
    source.model, source.device, source.network_calls = _RecordingSegmenter(), "cpu", 0
    source._predict([str(path)])
    given = source.model.inputs[0][0, 0].numpy() * 255.0
    np.testing.assert_allclose(given, decode(path, 32), atol=1e-3)
