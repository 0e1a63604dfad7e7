"""Batched augmentation (covidseg.data.augment) and the uint8 -> model-input path of the data modules."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from covidseg.data.augment import Augmentation, build_augmentation
from covidseg.data.datasets import ArrayDataModule, ArrayDataset, model_input

SIZE = 64
CENTRE = (SIZE - 1) / 2
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def dots(n: int, row: int = 16, col: int = 44) -> torch.Tensor:
    """n copies of a black image with one bright 3x3 dot centred at (row, col)."""
    images = torch.zeros(n, 1, SIZE, SIZE)
    images[:, :, row - 1 : row + 2, col - 1 : col + 2] = 1.0
    return images


def positions(images: torch.Tensor) -> torch.Tensor:
    """(n, 2) intensity centroids (x, y) relative to the image centre, in pixels."""
    weights = images[:, 0]
    ys, xs = torch.meshgrid(
        torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing="ij"
    )
    total = weights.sum(dim=(1, 2))
    x = (weights * xs).sum(dim=(1, 2)) / total
    y = (weights * ys).sum(dim=(1, 2)) / total
    return torch.stack([x - CENTRE, y - CENTRE], dim=1)


def test_zero_ranges_change_nothing():
    assert build_augmentation() is None
    assert build_augmentation(rotation=0, translate=0, scale=[1, 1], brightness=0, contrast=0) is None
    images = torch.rand(4, 1, SIZE, SIZE)
    torch.testing.assert_close(Augmentation()(images), images)


def test_rotation_keeps_the_distance_to_the_centre_and_stays_within_range():
    before = positions(dots(1))[0]
    after = positions(Augmentation(rotation=30)(dots(200)))
    radius = before.norm()
    assert torch.allclose(after.norm(dim=1), radius, atol=0.6)
    turned = torch.rad2deg(torch.atan2(after[:, 1], after[:, 0]) - torch.atan2(before[1], before[0]))
    assert turned.abs().max() <= 30.5 and turned.abs().max() > 20  # the whole range is used
    assert (turned > 0).any() and (turned < 0).any()


def test_translation_moves_by_at_most_the_fraction_of_the_size():
    before = positions(dots(1))[0]
    shift = positions(Augmentation(translate=0.1)(dots(200))) - before
    limit = round(0.1 * SIZE)
    assert shift.abs().max() <= limit + 0.01 and shift.abs().max() >= limit - 1
    torch.testing.assert_close(shift, shift.round(), atol=1e-3, rtol=0)  # whole pixels, as torchvision


def test_scale_changes_the_distance_to_the_centre_within_range():
    before = positions(dots(1))[0].norm()
    ratio = positions(Augmentation(scale=(0.8, 1.2))(dots(200))).norm(dim=1) / before
    assert ratio.min() >= 0.8 - 0.03 and ratio.max() <= 1.2 + 0.03
    assert ratio.min() < 0.85 and ratio.max() > 1.15


def test_no_flip_unless_asked():
    left = dots(200, col=12)  # the dot is left of the centre
    assert (positions(Augmentation(rotation=5)(left))[:, 0] < 0).all()
    flipped = positions(Augmentation(rotation=5, hflip=True)(left))[:, 0] > 0
    assert 50 < int(flipped.sum()) < 150


def test_brightness_and_contrast_use_colorjitters_ranges():
    grey = torch.full((300, 1, 8, 8), 0.5)
    brighter = Augmentation(brightness=0.2)(grey)[:, 0, 0, 0]
    assert brighter.min() >= 0.4 - 1e-6 and brighter.max() <= 0.6 + 1e-6 and brighter.std() > 0.02
    # Contrast blends towards the image's mean: a half-dark, half-light image keeps its mean.
    halves = torch.cat([torch.full((300, 1, 8, 4), 0.25), torch.full((300, 1, 8, 4), 0.75)], dim=3)
    out = Augmentation(contrast=0.2)(halves)
    spread = out[:, 0, 0, 4] - out[:, 0, 0, 0]
    assert spread.min() >= 0.8 * 0.5 - 1e-6 and spread.max() <= 1.2 * 0.5 + 1e-6
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.full((300,), 0.5))
    assert Augmentation(brightness=5.0)(grey).max() <= 1.0  # clamped to [0, 1]


def test_image_and_mask_move_together_and_the_mask_stays_binary():
    masks = torch.zeros(32, 1, SIZE, SIZE)
    masks[:, :, 10:40, 20:50] = 1.0
    augmentation = Augmentation(rotation=20, translate=0.1, scale=(0.8, 1.2), brightness=0.0)
    params = augmentation.draw(masks)
    image, mask = augmentation.apply(masks, params), augmentation.apply_to_masks(masks, params)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask[image > 0.999] == 1).all() and (mask[image < 0.001] == 0).all()
    assert not torch.equal(mask[0], masks[0]) and not torch.equal(mask[0], mask[1])


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    augmentation = Augmentation(rotation=10, translate=0.05, scale=(0.9, 1.1), brightness=0.1, contrast=0.1)
    images = torch.rand(8, 1, SIZE, SIZE)

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return augmentation(images)

    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


@pytest.mark.parametrize("device", DEVICES)
def test_augmentation_runs_on_the_batchs_device(device):
    augmentation = Augmentation(rotation=10, translate=0.05, scale=(0.9, 1.1), brightness=0.1, contrast=0.1)
    images = torch.rand(4, 1, SIZE, SIZE, device=device)
    state = torch.get_rng_state()
    out = augmentation(images)
    assert out.device == images.device and out.shape == images.shape
    assert not torch.equal(torch.get_rng_state(), state)  # drawn from the global CPU generator


# -- the data module's hook: uint8 batch on the device -> model input -----------------------------------
def module_with(images: np.ndarray, targets: np.ndarray, training: bool) -> ArrayDataModule:
    augment = {"rotation": 20, "translate": 0.1, "scale": [0.8, 1.2], "brightness": 0.1, "contrast": 0.1}
    dm = ArrayDataModule(batch_size=4, num_workers=0, mean=0.5, std=0.25, augment=augment)
    dm.datasets["train"] = ArrayDataset(images, targets)
    dm.trainer = SimpleNamespace(training=training)
    return dm


def test_the_hook_augments_only_while_training_and_normalises_always():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, SIZE, SIZE), dtype=np.uint8)
    dataset = ArrayDataset(images, np.arange(6) % 2)
    batch = dataset.__getitems__([5, 0, 3])
    assert batch[0].dtype == torch.uint8 and batch[1].tolist() == [1, 0, 1]
    np.testing.assert_array_equal(batch[0][:, 0].numpy(), images[[5, 0, 3]])
    plain = model_input(images[[5, 0, 3]], 0.5, 0.25)
    x, y = module_with(images, np.arange(6) % 2, training=False).on_after_batch_transfer(batch, 0)
    torch.testing.assert_close(x, plain)
    torch.testing.assert_close(y, batch[1])
    x, _ = module_with(images, np.arange(6) % 2, training=True).on_after_batch_transfer(batch, 0)
    assert x.shape == plain.shape and not torch.allclose(x, plain)
    assert x.min() >= (0 - 0.5) / 0.25 and x.max() <= (1 - 0.5) / 0.25


def test_the_hook_moves_a_mask_target_with_its_image():
    masks = np.zeros((4, SIZE, SIZE), np.uint8)
    masks[:, 10:40, 20:50] = 1
    dm = module_with(masks * 255, masks, training=True)
    dm.augmentation = Augmentation(rotation=20, translate=0.1, scale=(0.8, 1.2))
    x, mask = dm.on_after_batch_transfer(dm.datasets["train"].__getitems__([0, 1, 2, 3]), 0)
    image = x * 0.25 + 0.5
    assert mask.dtype == torch.float32 and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask[image > 0.999] == 1).all() and (mask[image < 0.001] == 0).all()
    assert not math.isclose(float(mask.sum()), float(masks.sum()), rel_tol=1e-3)
