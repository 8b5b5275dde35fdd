"""Batched augmentation on the training device: whole-batch tensor ops, no per-sample Python.

All functions take a batch (N, C, H, W) of raw pixels, uint8 or float (before normalisation, so
padding is black as in torchvision's transforms), and a ``torch.Generator`` on the batch's device
so that a seed gives the same augmentation on every run. Flip and crop keep the dtype and are
fused into one gather (on uint8 they move a quarter of the bytes); the affine warp returns float.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cnnbench.config import AUGMENTATIONS
from cnnbench.errors import ConfigError

CROP_PADDING = 4  # pixels, as in the common CIFAR-10 recipe
MAX_ROTATION_DEG = 15.0  # the three-conv study's RandomRotation(15)
MAX_SHEAR_DEG = 10.0
SCALE_RANGE = (0.9, 1.1)


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


def flip_crop(x: torch.Tensor, gen: torch.Generator, padding: int = CROP_PADDING, flip: bool = True) -> torch.Tensor:
    """Random horizontal flip (p=0.5) and random crop after ``padding`` zero pixels a side, per
    image, as one ``torch.gather`` over the padded batch (no loop over images)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    hp, wp = h + 2 * padding, w + 2 * padding
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=gen)
    rows = torch.arange(h, device=x.device) + dy  # (N, H) rows of the padded image
    cols = torch.arange(w, device=x.device) + dx  # (N, W)
    if flip:  # reading columns right to left mirrors the crop (padding is symmetric)
        mirrored = _rand(n, x, gen)[:, None] < 0.5
        cols = torch.where(mirrored, (wp - 1) - cols, cols)
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return torch.gather(padded.reshape(n, c, hp * wp), 2, index).view(n, c, h, w)


def random_affine(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random rotation, shear and scale per image through one affine grid for the batch."""
    x = x.float()
    n = len(x)
    angle = (2 * _rand(n, x, gen) - 1) * math.radians(MAX_ROTATION_DEG)
    shear = (2 * _rand(n, x, gen) - 1) * math.radians(MAX_SHEAR_DEG)
    lo, hi = SCALE_RANGE
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


def augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Apply the named augmentation to a raw-pixel batch (N, C, H, W): flip-crop keeps the dtype,
    strong returns float."""
    check_augmentation(kind)
    if kind == "none":
        return x
    x = flip_crop(x, gen)
    if kind == "strong":
        x = random_affine(x, gen)
    return x
