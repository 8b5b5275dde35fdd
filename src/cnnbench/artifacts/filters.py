"""Hand-designed convolution kernels applied to one image (R0-H, R4-J): no training.

The kernels are the reports' own: R0 convolves the red channel of a 200x200 image with an
8-neighbour and a 4-neighbour edge kernel; R4 blurs a photo with averaging kernels of 3x3, 6x6 and
9x9, all with entries 1/9 as the homework writes them (so the 6x6 and 9x9 ones also brighten the
image 4x and 9x), and sharpens edges with the Laplacian. A kernel can also be given as rows
separated by ``;`` (``0,1,0;1,-4,1;0,1,0``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnbench.errors import ConfigError

KERNELS: dict[str, tuple[str, np.ndarray]] = {
    "average3": ("R4-J averaging 3x3, ones/9", np.ones((3, 3)) / 9),
    "average6": ("R4-J averaging 6x6, ones/9 (as the homework: sums to 4)", np.ones((6, 6)) / 9),
    "average9": ("R4-J averaging 9x9, ones/9 (as the homework: sums to 9)", np.ones((9, 9)) / 9),
    "laplacian": ("R4-J Laplacian [[0,1,0],[1,-4,1],[0,1,0]]", np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], float)),
    "edge8": ("R0-H [[-1,-1,-1],[-1,8,-1],[-1,-1,-1]]", np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], float)),
    "edge4": ("R0-H [[0,-1,0],[-1,8,-1],[0,-1,0]]", np.array([[0, -1, 0], [-1, 8, -1], [0, -1, 0]], float)),
}
CHANNELS = ("gray", "red", "green", "blue")


def parse_kernel(text: str) -> tuple[str, np.ndarray]:
    """A named kernel, or rows of numbers: ``0,1,0;1,-4,1;0,1,0``."""
    if text in KERNELS:
        return text, KERNELS[text][1]
    try:
        rows = [[float(v) for v in row.split(",")] for row in text.replace(" ", "").split(";")]
    except ValueError:
        rows = []
    if not rows or len({len(r) for r in rows}) != 1 or not rows[0] or not np.all(np.isfinite(rows)):
        raise ConfigError(f"--kernel expects one of {', '.join(KERNELS)} or rows of numbers separated by ';' "
                          f"such as 0,1,0;1,-4,1;0,1,0; got {text!r}")
    return "custom_" + str(len(rows)) + "x" + str(len(rows[0])), np.array(rows)


def predicted_bytes(native: tuple[int, int], size: int | None, kernels: int) -> int:
    """Bytes :func:`load_image`, :func:`apply` and :func:`write` hold at once for an image of ``native``
    (width, height) pixels, resized to ``size`` x ``size``, and ``kernels`` kernels: the decoded RGB and
    converted copies (uint8), the float64 input, one float64 result per kernel, and the clipped
    float64 and uint8 copies :func:`write` makes of one panel."""
    pixels = int(native[0]) * int(native[1])
    final = pixels if size is None else int(size) * int(size)
    return pixels * 4 + final * (1 + 8 * (kernels + 2) + 1)


def load_image(path: str | Path, channel: str, size: int | None, *, kernels: int | None = None) -> np.ndarray:
    """One channel of an image file as float (H, W) in [0, 255], optionally resized to size x size.
    An image above :data:`cnnbench.data.images.MAX_IMAGE_PIXELS` is refused before it is decoded;
    with ``kernels`` (how many will be applied), so is one whose :func:`predicted_bytes` exceed the
    available memory (``--force`` skips that check)."""
    from PIL import Image, UnidentifiedImageError

    from cnnbench.data.images import open_image

    if channel not in CHANNELS:
        raise ConfigError(f"--channel must be one of {', '.join(CHANNELS)}; got {channel!r}")
    try:
        with open_image(path) as img:
            if kernels is not None:  # the header's size, before any pixel is decoded
                from cnnbench.memory.guard import check_fits

                final = f", resized to {size}x{size}" if size is not None else ""
                check_fits(predicted_bytes(img.size, size, kernels), "cpu",
                           f"filtering {path} ({img.size[0]}x{img.size[1]}{final}, float64) with {kernels} kernel(s)",
                           "--force")
            img = img.convert("L" if channel == "gray" else "RGB")
            if size is not None:
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.float64)
    except FileNotFoundError:
        raise ConfigError(f"image {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"image {path} is a folder; give an image file (PNG, JPEG, ...)") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ConfigError(f"{path} is not an image Pillow can read ({err.__class__.__name__})") from None
    return pixels if channel == "gray" else pixels[..., CHANNELS.index(channel) - 1]


def apply(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D convolution (the kernel flipped, as in the textbook definition), output the input's size,
    zero padding (scipy.signal.convolve2d ``mode="same"``)."""
    from scipy.signal import convolve2d

    return convolve2d(image, kernel, mode="same", boundary="fill", fillvalue=0)


def write(image: np.ndarray, results: dict[str, np.ndarray], out: Path, title: str) -> dict[str, dict[str, float]]:
    """``filters.png`` (the input and every result side by side), one PNG per kernel (clipped to
    0..255 as the reports show them) and ``filters.csv``; returns per-kernel statistics."""
    import pandas as pd

    from cnnbench.artifacts.figures import plt, save

    out.mkdir(parents=True, exist_ok=True)
    stats = {}
    fig, axes = plt.subplots(1, len(results) + 1, figsize=(3 * (len(results) + 1), 3.4), squeeze=False)
    panels = [("input", image), *results.items()]
    for ax, (name, pixels) in zip(axes[0], panels):
        ax.imshow(np.clip(pixels, 0, 255), cmap="gray", vmin=0, vmax=255)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    save(fig, out / "filters.png")
    for name, pixels in results.items():
        plt.imsave(out / f"{name}.png", np.clip(pixels, 0, 255).astype(np.uint8), cmap="gray", vmin=0, vmax=255)
        stats[name] = {"mean": float(pixels.mean()), "min": float(pixels.min()), "max": float(pixels.max()),
                       "abs_mean": float(np.abs(pixels).mean())}
    pd.DataFrame([{"kernel": k, **v} for k, v in stats.items()]).to_csv(out / "filters.csv", index=False)
    return stats
