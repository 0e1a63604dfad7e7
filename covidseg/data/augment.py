"""Training augmentation of whole batches, on whatever device the batch is on.

Every image of a batch gets its own random rotation, translation, scale (one affine_grid + grid_sample for
the batch), brightness and contrast, with the ranges torchvision's RandomAffine and ColorJitter give them.
A mask goes through the same sampling grid as its image. The parameters are drawn from torch's global CPU
generator and then moved to the batch's device, so `seed_everything` makes a run reproducible and a resumed
run (which restores the generator states) draws what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

N_DRAWS = 6  # uniform numbers per image: angle, tx, ty, scale, brightness, contrast (+ flip)


@dataclass(frozen=True)
class AugmentParams:
    """The random draws of one batch: (N, 2, 3) inverse affine matrices for affine_grid (None: no
    geometric change) and (N, 1, 1, 1) brightness and contrast factors."""

    theta: torch.Tensor | None
    brightness: torch.Tensor
    contrast: torch.Tensor


@dataclass(frozen=True)
class Augmentation:
    """Rotation by up to `rotation` degrees either way, translation by up to `translate` x the image size in
    each direction, zoom by a factor in `scale`, brightness and contrast factors in [1 - b, 1 + b] (contrast
    blends towards each image's mean, as ColorJitter does), and a horizontal flip with probability 1/2 only
    when `hflip` (laterality matters on chest X-rays). Geometric changes fill with black (0).

    Brightness comes before contrast. ColorJitter picks the order at random, but scaling by b and blending
    towards the mean commute (c b x + (1 - c) b mean = b (c x + (1 - c) mean)): the orders differ only in
    which pixels clip at 1, so one fixed order keeps the meaning at half the cost."""

    rotation: float = 0.0
    translate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    brightness: float = 0.0
    contrast: float = 0.0
    hflip: bool = False

    @property
    def geometric(self) -> bool:
        """Whether any range moves pixels (rotation, shift, zoom, flip); if not, draw skips the affine grid"""
        return bool(self.rotation or self.translate or self.hflip or tuple(self.scale) != (1.0, 1.0))

    def draw(self, images: torch.Tensor) -> AugmentParams:
        """Random parameters for each image of an (N, C, H, W) batch, on the batch's device."""
        n, (height, width) = len(images), images.shape[-2:]
        u = torch.rand(n, N_DRAWS + int(self.hflip), dtype=torch.float64)  # the global CPU generator
        theta = None
        if self.geometric:
            angle = math.radians(self.rotation) * (2 * u[:, 0] - 1)
            shift_x = torch.round(self.translate * width * (2 * u[:, 1] - 1))  # whole pixels, as torchvision
            shift_y = torch.round(self.translate * height * (2 * u[:, 2] - 1))
            low, high = self.scale
            zoom = low + (high - low) * u[:, 3]
            flip = (u[:, N_DRAWS] < 0.5) if self.hflip else torch.zeros(n, dtype=torch.bool)
            theta = _inverse_affine(angle, shift_x, shift_y, zoom, flip, height, width)
        return AugmentParams(
            theta=None if theta is None else theta.to(images.device, torch.float32),
            brightness=_factors(self.brightness, u[:, 4]).view(-1, 1, 1, 1).to(images.device, torch.float32),
            contrast=_factors(self.contrast, u[:, 5]).view(-1, 1, 1, 1).to(images.device, torch.float32),
        )

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """(N, C, H, W) float images in [0, 1], augmented with `params`; values stay in [0, 1]."""
        # Bilinear sampling of values in [0, 1] stays in [0, 1]; each intensity step clips (as ColorJitter).
        out = images
        if params.theta is not None:
            out = F.grid_sample(out, _grid(params.theta, out), mode="bilinear", align_corners=False)
        if self.brightness:
            out = out.mul(params.brightness).clamp_(0.0, 1.0)
        if self.contrast:
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = out.mul(params.contrast).add_((1 - params.contrast) * mean).clamp_(0.0, 1.0)
        return out

    def apply_to_masks(self, masks: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """(N, 1, H, W) 0/1 masks moved like their images (nearest neighbour: they stay binary)."""
        if params.theta is None:
            return masks
        return F.grid_sample(masks, _grid(params.theta, masks), mode="nearest", align_corners=False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply(images, self.draw(images))


def build_augmentation(
    rotation: float = 0.0,
    translate: float = 0.0,
    scale: Sequence[float] = (1.0, 1.0),
    brightness: float = 0.0,
    contrast: float = 0.0,
    hflip: bool = False,
) -> Augmentation | None:
    """The augmentation of a config's `augment:` keys; None when every range is zero (nothing to do).

    Args:
        rotation: largest rotation, in degrees either way.
        translate: largest shift, as a fraction of the image's width / height, either way.
        scale: (low, high) range of the zoom factor.
        brightness: ColorJitter's brightness amount (factor in [max(0, 1 - b), 1 + b]).
        contrast: ColorJitter's contrast amount, drawn the same way.
        hflip: whether half the images are flipped left to right.

    Returns:
        An Augmentation, or None when it would leave every image as it is.
    """
    augmentation = Augmentation(
        float(rotation), float(translate), (float(scale[0]), float(scale[1])), float(brightness),
        float(contrast), bool(hflip),
    )  # fmt: skip
    return augmentation if augmentation.geometric or brightness or contrast else None


def _factors(amount: float, u: torch.Tensor) -> torch.Tensor:
    """ColorJitter's factor: uniform in [max(0, 1 - amount), 1 + amount]."""
    low = max(0.0, 1.0 - amount)
    return low + (1.0 + amount - low) * u


def _inverse_affine(
    angle: torch.Tensor,
    shift_x: torch.Tensor,
    shift_y: torch.Tensor,
    zoom: torch.Tensor,
    flip: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """(N, 2, 3) matrices mapping output to input positions in affine_grid's [-1, 1] coordinates.

    The forward map, in pixels about the image centre, is p -> flip(R(angle) zoom p + shift) (the flip after
    the affine, as torchvision composes them); affine_grid wants its inverse. Working in pixels first keeps
    rotations of non-square images undistorted."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    sign = torch.where(flip, -1.0, 1.0).to(angle.dtype)
    # Inverse of (zoom R), R = [[cos, sin], [-sin, cos]] (counter-clockwise on screen, y pointing down).
    inv = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) / zoom.view(-1, 1, 1)
    shift = -(inv @ torch.stack([shift_x, shift_y], -1).unsqueeze(-1)).squeeze(-1)
    inv = inv * torch.stack([sign, torch.ones_like(sign)], -1).view(-1, 1, 2)  # undo the flip first
    # Pixels -> [-1, 1]: x_n = x_p * 2 / width, so M_n = S M_p S^-1 and t_n = S t_p.
    to_unit = torch.tensor([2.0 / width, 2.0 / height], dtype=angle.dtype)
    inv = inv * to_unit.view(1, 2, 1) / to_unit.view(1, 1, 2)
    return torch.cat([inv, (shift * to_unit).unsqueeze(-1)], dim=-1)


def _grid(theta: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.affine_grid(theta.to(like.dtype), list(like.shape), align_corners=False)
