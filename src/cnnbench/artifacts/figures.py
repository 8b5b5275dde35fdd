"""Shared figure plumbing: the headless matplotlib backend, saving, and showing dataset images."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs write files, never open windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def save(fig: "plt.Figure", path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (parents created) and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """uint8 (C, H, W) -> float (H, W, 3) in [0, 1]: colour for 3 channels, else the first as gray."""
    img = image.detach().cpu().float() / 255.0
    img = img if img.shape[0] == 3 else img[:1].expand(3, -1, -1)
    return img.permute(1, 2, 0).numpy()


def draw_tiles(ax: "plt.Axes", images: list[torch.Tensor], titles: list[str], colors: list[str], cols: int) -> None:
    """Draw uint8 (C, H, W) images as a grid on one axes, each with a title above it.

    One ``imshow`` instead of one axes per image keeps figures with dozens of images fast.
    """
    h, w = images[0].shape[-2:]
    gap, head = max(2, w // 10), max(8, h // 3)  # head: room for a title above each row
    rows = -(-len(images) // cols)
    canvas = np.ones((rows * (h + head), cols * (w + gap) - gap, 3), dtype=np.float32)
    for i, (image, title, color) in enumerate(zip(images, titles, colors)):
        top, left = (i // cols) * (h + head) + head, (i % cols) * (w + gap)
        canvas[top : top + h, left : left + w] = to_rgb(image)
        ax.text(left + w / 2, top - 1, title, ha="center", va="bottom", fontsize=7, color=color, clip_on=False)
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()


def safe_name(text: str) -> str:
    """A class name usable as a file name: keep letters, digits, ``-``, ``_`` and ``.``."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).strip("._")
    return cleaned or "class"


def as_numpy(t: "torch.Tensor | np.ndarray") -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
