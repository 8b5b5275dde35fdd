"""Shared figure plumbing: the headless matplotlib backend, saving, and showing dataset images."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs write files, never open windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from cnnbench.artifacts.arrays import as_numpy  # noqa: E402,F401  (re-exported: its old home)


def save(fig: "plt.Figure", path: Path, dpi: int = 100, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` (parents created) and free it. ``tight`` crops to the drawn
    content (costs a second layout pass: skip it for figures laid out by hand)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return path


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """uint8 (C, H, W) -> float (H, W, 3) in [0, 1]: colour for 3 channels, else the first as gray."""
    img = image.detach().cpu().float() / 255.0
    img = img if img.shape[0] == 3 else img[:1].expand(3, -1, -1)
    return img.permute(1, 2, 0).numpy()


def tile_figure(images: list[torch.Tensor], titles: list[str], colors: list[str], cols: int,
                row_labels: list[str] | None = None) -> "plt.Figure":
    """A figure of uint8 (C, H, W) images in a grid, each titled above, optionally a label left of
    each row. Drawn as one image on one axes with a fixed layout: figures with dozens of images
    stay fast (no per-image axes, no layout solver)."""
    h, w = images[0].shape[-2:]
    gap, head = max(2, w // 10), max(8, h // 3)  # head: room for a title above each row
    rows = -(-len(images) // cols)
    canvas = np.ones((rows * (h + head), cols * (w + gap) - gap, 3), dtype=np.float32)
    margin = 0.25 if row_labels else 0.0  # inches on the left for the row labels
    width_in, height_in = 1.15 * cols, 1.35 * rows
    fig = plt.figure(figsize=(width_in + margin, height_in))
    ax = fig.add_axes((margin / (width_in + margin), 0.0, width_in / (width_in + margin), 1.0))
    for i, (image, title, color) in enumerate(zip(images, titles, colors)):
        top, left = (i // cols) * (h + head) + head, (i % cols) * (w + gap)
        canvas[top : top + h, left : left + w] = to_rgb(image)
        ax.text(left + w / 2, top - 1, title, ha="center", va="bottom", fontsize=7, color=color)
    for r, label in enumerate(row_labels or []):
        ax.text(-gap, r * (h + head) + head + h / 2, label, rotation=90, ha="right", va="center", fontsize=8, clip_on=False)
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    return fig


def safe_name(text: str) -> str:
    """A class name usable as a file name: keep letters, digits, ``-``, ``_`` and ``.``."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).strip("._")
    return cleaned or "class"

