"""Opening image files with one pixel limit, for every image cnnbench reads (``imagefolder``
datasets, ``cnnbench filters``).

An image file's header states its size before any pixel is decoded, and a few kilobytes of PNG
can declare billions of pixels (a "decompression bomb"). :func:`open_image` refuses any image
whose header declares more than :data:`MAX_IMAGE_PIXELS` with cnnbench's own one-line
:class:`~cnnbench.errors.ImageTooLargeError`, naming the file and the limit, before decoding.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cnnbench.errors import ImageTooLargeError

MAX_IMAGE_PIXELS = 8192 * 8192
"""The most pixels (width x height) cnnbench reads from one image file: 67,108,864, an 8192 x 8192
image. Decoded, that is 64 MiB per channel as uint8 (192 MiB for RGB) and 512 MiB as the float64
array ``cnnbench filters`` convolves, about the most a laptop holds with the filtered copies and
the figure; the ``imagefolder`` dataset resizes to at most 4096 x 4096 anyway. Pillow's own limit
(``PIL.Image.MAX_IMAGE_PIXELS``, by default about 89 M pixels, with an error only above twice
that) is set to this value by :func:`configure_pillow`, so Pillow's ``DecompressionBombError``
(above twice the limit, raised while the header is read) and cnnbench's own check (above the
limit) both become :class:`~cnnbench.errors.ImageTooLargeError`. This is the one place the limit
is set; change it here."""

_SIDE = 8192  # MAX_IMAGE_PIXELS as a square, for the message


def configure_pillow() -> None:
    """Set Pillow's decompression-bomb limit to :data:`MAX_IMAGE_PIXELS` (the one place it is set).

    Pillow warns (``DecompressionBombWarning``) for images between its limit and twice it, and
    raises above that; cnnbench refuses every image above the limit itself, so the warning would
    only precede cnnbench's own error line and is silenced. Idempotent: called before each open,
    as test runners reset warning filters between tests."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def too_large(path: Path | str, pixels: int | None, size: tuple[int, int] | None = None) -> ImageTooLargeError:
    """cnnbench's one-line "image too large" error for ``path``."""
    dims = f"{size[0]}x{size[1]}, " if size else ""
    declared = f" declares {dims}{pixels:,} pixels" if pixels is not None else f" declares more than {2 * MAX_IMAGE_PIXELS:,} pixels"
    return ImageTooLargeError(
        f"image too large: {path}{declared}, above cnnbench's limit of {MAX_IMAGE_PIXELS:,} pixels "
        f"({_SIDE}x{_SIDE}, cnnbench.data.images.MAX_IMAGE_PIXELS); shrink the image or remove the file"
    )


def check_size(path: Path | str, size: tuple[int, int]) -> None:
    """Refuse an image whose (width, height) exceeds :data:`MAX_IMAGE_PIXELS` (Python integers)."""
    pixels = int(size[0]) * int(size[1])
    if pixels > MAX_IMAGE_PIXELS:
        raise too_large(path, pixels, size)


@contextmanager
def open_image(path: Path | str) -> Iterator:
    """``PIL.Image.open(path)`` under cnnbench's pixel limit: the header's size is checked before
    any pixel is decoded, and Pillow's ``DecompressionBombError`` (from the header, or from a later
    frame while decoding in the ``with`` body) becomes :class:`~cnnbench.errors.ImageTooLargeError`.
    Other errors (missing, unreadable, truncated files) pass through unchanged."""
    from PIL import Image

    configure_pillow()
    try:
        with Image.open(path) as img:
            check_size(path, img.size)
            yield img
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise too_large(path, int(found[1]) if found else None) from None
