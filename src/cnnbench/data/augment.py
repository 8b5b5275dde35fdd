"""Batched augmentation on the training device: whole-batch tensor ops, no per-sample Python.

All functions take a float batch (N, C, H, W) and a ``torch.Generator`` on the batch's device so
that a seed gives the same augmentation on every run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cnnbench.errors import ConfigError

AUGMENTATIONS = ("none", "flip-crop", "strong")
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
    """Mirror a random half of the batch left-right (one mask for the batch)."""
    mask = _rand(len(x), x, gen) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def random_crop(x: torch.Tensor, gen: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut a random H x W window per image (gather by index, no loop)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=gen)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])  # (N, H)
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_affine(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random rotation, shear and scale per image through one affine grid for the batch."""
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
    """Apply the named augmentation to a float batch (N, C, H, W)."""
    if kind == "none":
        return x
    x = random_crop(random_flip(x, gen), gen)
    if kind == "strong":
        x = random_affine(x, gen)
    return x
