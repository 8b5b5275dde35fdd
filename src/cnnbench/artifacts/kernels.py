"""The first convolution's filters as one image grid, each filter normalised on its own.

RGB filters (3 input channels) are drawn in colour, one tile each; other filters get one grayscale
tile per input channel, side by side. Filters are laid out in a near-square grid, so the image's
pixel size follows the filter count (and the kernel size).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cnnbench.artifacts.figures import plt

GAP_PX = 2  # white separation between tiles
TARGET_TILE_PX = 48  # kernel pixels are enlarged (nearest) to about this many screen pixels


def grid_shape(out_channels: int) -> tuple[int, int]:
    """(rows, cols) of the near-square grid holding ``out_channels`` filters."""
    cols = math.ceil(math.sqrt(out_channels))
    return math.ceil(out_channels / cols), cols


def normalise_filters(weight: torch.Tensor) -> np.ndarray:
    """Scale each filter of (O, I, kH, kW) to [0, 1] by its own min and max (constant -> 0.5)."""
    w = weight.detach().float().cpu()
    flat = w.reshape(len(w), -1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    span = hi - lo
    out = torch.where(span > 0, (w - lo) / span.clamp_min(1e-12), torch.full_like(w, 0.5))
    return out.numpy()


def kernel_grid(weight: torch.Tensor) -> np.ndarray:
    """An (H, W, 3) float image in [0, 1] of the (O, I, kH, kW) filters; see the module docstring."""
    if weight.dim() != 4:
        raise ValueError(f"expected a conv weight (O, I, kH, kW), got shape {tuple(weight.shape)}")
    w = normalise_filters(weight)
    o, i, kh, kw = w.shape
    scale = max(1, TARGET_TILE_PX // max(kh, kw))
    colour = i == 3
    tiles_per_cell = 1 if colour else i
    tile_h, tile_w = kh * scale, kw * scale
    cell_w = tiles_per_cell * tile_w + (tiles_per_cell - 1) * GAP_PX
    rows, cols = grid_shape(o)
    height = rows * tile_h + (rows + 1) * GAP_PX
    width = cols * cell_w + (cols + 1) * GAP_PX
    canvas = np.ones((height, width, 3), dtype=np.float32)
    for f in range(o):
        top = GAP_PX + (f // cols) * (tile_h + GAP_PX)
        left = GAP_PX + (f % cols) * (cell_w + GAP_PX)
        if colour:
            tiles = [w[f].transpose(1, 2, 0)]
        else:
            tiles = [np.repeat(w[f, c][:, :, None], 3, axis=2) for c in range(i)]
        for t, tile in enumerate(tiles):
            big = tile.repeat(scale, axis=0).repeat(scale, axis=1)
            x = left + t * (tile_w + GAP_PX)
            canvas[top : top + tile_h, x : x + tile_w] = big
    return canvas


def save_kernel_grid(weight: torch.Tensor, path: Path) -> Path:
    """Write :func:`kernel_grid` as a PNG of exactly that many pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, kernel_grid(weight))
    return path
