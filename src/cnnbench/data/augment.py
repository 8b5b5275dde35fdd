"""Batched augmentation on the training device: whole-batch tensor ops, no per-sample Python.

All functions take a batch (N, C, H, W) of raw pixels, uint8 or float (before normalisation, so
padding is black as in torchvision's transforms), and a ``torch.Generator`` on the batch's device
so that a seed gives the same augmentation on every run. Flip and crop keep the dtype and are
fused into one gather (on uint8 they move a quarter of the bytes); the affine warp returns float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cnnbench.config import AUGMENTATIONS, DataConfig
from cnnbench.errors import ConfigError

# The defaults are the train option declarations' (--crop-padding, --aug-rotation, --aug-shear,
# --aug-scale in cnnbench.config), not repeated here. The three-conv assignment (R3) used
# RandomRotation(10) then RandomAffine(0, shear=10, scale=(0.8, 1.2)): --aug-rotation 10 --aug-scale 0.2
_DEFAULTS = DataConfig()
CROP_PADDING = int(_DEFAULTS.crop_padding)  # pixels a side, as in the common CIFAR-10 recipe


def _padding(text: Any) -> tuple[int, int, int, int]:
    parts = tuple(int(p) for p in str(text).replace(" ", "").split(","))
    return parts * 4 if len(parts) == 1 else parts  # type: ignore[return-value]


@dataclass(frozen=True)
class AugmentParams:
    """The knobs of the augmentations: crop padding (left, top, right, bottom, torchvision's order)
    and the strong warp's largest rotation and shear (degrees) and scale range [1 - s, 1 + s]."""

    padding: tuple[int, int, int, int] = _padding(_DEFAULTS.crop_padding)
    rotation: float = _DEFAULTS.aug_rotation
    shear: float = _DEFAULTS.aug_shear
    scale: float = _DEFAULTS.aug_scale

    @classmethod
    def from_config(cls, data: Any) -> "AugmentParams":
        """From a config's ``data`` section (``crop_padding`` "4" or "0,2,3,4", ``aug_*``)."""
        return cls(_padding(data.crop_padding), data.aug_rotation, data.aug_shear, data.aug_scale)


def check_augmentation(name: str) -> str:
    if name not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {name!r}; accepted: {', '.join(AUGMENTATIONS)}")
    return name


def _rand(n: int, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, device=x.device, generator=gen)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    return flip_crop(x, gen, padding=0)


def random_crop(x: torch.Tensor, gen: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut a random H x W window per image."""
    return flip_crop(x, gen, padding=padding, flip=False)


def flip_crop(x: torch.Tensor, gen: torch.Generator, padding: int | tuple[int, int, int, int] = CROP_PADDING,
              flip: bool = True) -> torch.Tensor:
    """Random horizontal flip (p=0.5), then a random crop after zero ``padding`` (pixels a side, or
    left, top, right, bottom), per image, as one ``torch.gather`` over a padded batch (no loop over
    images). As torchvision's flip-then-crop: the padding is applied to the flipped image."""
    n, c, h, w = x.shape
    left, top, right, bottom = (padding,) * 4 if isinstance(padding, int) else padding
    p = max(left, top, right, bottom)
    padded = F.pad(x, (p, p, p, p)) if p else x
    hp, wp = h + 2 * p, w + 2 * p
    dy = torch.randint(0, top + bottom + 1, (n, 1), device=x.device, generator=gen)
    dx = torch.randint(0, left + right + 1, (n, 1), device=x.device, generator=gen)
    rows = torch.arange(h, device=x.device) + dy - top + p  # (N, H) rows of the padded image
    cols = torch.arange(w, device=x.device) + dx - left  # (N, W) columns of the (flipped) image, unpadded
    if flip:  # column c of the flipped image is column w - 1 - c of the image
        mirrored = _rand(n, x, gen)[:, None] < 0.5
        cols = torch.where(mirrored, (w - 1) - cols, cols)
    cols = cols + p
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return torch.gather(padded.reshape(n, c, hp * wp), 2, index).view(n, c, h, w)


def random_affine(x: torch.Tensor, gen: torch.Generator, params: AugmentParams | None = None) -> torch.Tensor:
    """Small random rotation, shear and scale per image through one affine grid for the batch."""
    params = params or AugmentParams()
    x = x.float()
    n = len(x)
    angle = (2 * _rand(n, x, gen) - 1) * math.radians(params.rotation)
    shear = (2 * _rand(n, x, gen) - 1) * math.radians(params.shear)
    lo, hi = 1.0 - params.scale, 1.0 + params.scale
    scale = lo + (hi - lo) * _rand(n, x, gen)
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    # rotation @ shear, divided by scale (the grid maps output to input coordinates)
    theta[:, 0, 0] = cos / scale
    theta[:, 0, 1] = (cos * tan - sin) / scale
    theta[:, 1, 0] = sin / scale
    theta[:, 1, 1] = (sin * tan + cos) / scale
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, kind: str, gen: torch.Generator, params: AugmentParams | None = None) -> torch.Tensor:
    """Apply the named augmentation to a raw-pixel batch (N, C, H, W): flip-crop keeps the dtype,
    strong returns float."""
    check_augmentation(kind)
    if kind == "none":
        return x
    params = params or AugmentParams()
    x = flip_crop(x, gen, padding=params.padding)
    if kind == "strong":
        x = random_affine(x, gen, params)
    return x
