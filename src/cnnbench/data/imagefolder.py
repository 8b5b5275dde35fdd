"""``imagefolder``: the user's own images, laid out ``root/<split>/<class>/*.{png,jpg,jpeg,bmp}``.

``train`` is required; ``test`` is optional (without it ``test_fraction`` of train is held out,
stratified, by seed). Class names are the sorted folder names under ``train``. Grayscale or RGB is
detected (a mix becomes RGB). Images of differing sizes are resized to the ``size`` option, or
rejected with the offending file named when ``size`` is 0. Images are decoded once, in threads, at
load time (large folders are then cached as a tensor under ``<default data dir>/cache``); training
runs on the in-memory uint8 tensors like every other dataset. An image whose header declares more
than :data:`cnnbench.data.images.MAX_IMAGE_PIXELS` pixels is refused by name before it is decoded.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cnnbench.errors import ConfigError, DataError
from cnnbench.registry import DatasetInfo, DatasetPlugin, FakeData, Option

CACHE_MIN_IMAGES = 2000  # smaller folders decode in about a second: not worth a cache file
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
LAYOUT = "root/train/<class>/*.png|jpg|jpeg|bmp (and optionally root/test/<class>/...)"

OPTIONS = (
    Option("size", "int", 0, "resize every image to size x size; 0 keeps the native size (all must match)",
           low=0, high=4096),
    Option("test_fraction", "float", 0.2, "share of train held out as test when there is no test/ folder",
           low=0.01, high=0.9),
)


def _root(data_dir: Path | str | None) -> Path:
    if data_dir is None:
        raise ConfigError(f"dataset 'imagefolder' needs --data-dir pointing at a folder laid out as {LAYOUT}")
    root = Path(data_dir).expanduser()
    if not (root / "train").is_dir():
        raise DataError(f"{root / 'train'} does not exist: imagefolder expects {LAYOUT}")
    return root


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS and not path.name.startswith(".") and path.is_file()


def list_split(folder: Path, classes: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], list[Path], list[int]]:
    """Class names (sorted sub-folders, or the given train classes), image paths and labels."""
    found = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not found:
        raise DataError(f"{folder} holds no class folders: imagefolder expects {LAYOUT}")
    if classes is not None and set(found) - set(classes):
        extra = ", ".join(sorted(set(found) - set(classes)))
        raise DataError(f"{folder} has class folder(s) {extra} that train/ lacks; train classes: {', '.join(classes)}")
    classes = classes or found
    paths: list[Path] = []
    labels: list[int] = []
    for name in found:
        images = sorted(p for p in (folder / name).iterdir() if _is_image(p))
        if not images:
            raise DataError(f"class folder {folder / name} holds no images ({', '.join(EXTENSIONS)}); "
                            f"add images or remove the folder")
        paths += images
        labels += [classes.index(name)] * len(images)
    return classes, paths, labels


def _unreadable(path: Path, err: Exception) -> DataError:
    return DataError(f"cannot read image {path}: {type(err).__name__}: {err}; fix or remove the file")


def _open(path: Path):
    from cnnbench.data.images import open_image

    try:
        with open_image(path) as img:  # refuses an image above the pixel limit before decoding it
            img.load()
            return img.copy()
    except (OSError, ValueError, SyntaxError) as err:  # UnidentifiedImageError is an OSError
        raise _unreadable(path, err) from None


def _decode(paths: list[Path]) -> list:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # PIL decodes outside the GIL
        return list(pool.map(_open, paths))


def _to_tensor(images: list, paths: list[Path], size: int, mode: str, expected: tuple[int, int] | None):
    """Convert decoded PIL images to one uint8 (N, C, H, W) tensor, resizing or rejecting sizes."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = []
    for img, path in zip(images, paths):
        img = img.convert(mode) if img.mode != mode else img
        if size:
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
        elif expected is not None and img.size != expected:
            raise DataError(f"{path} is {img.size[0]}x{img.size[1]} but the first image is "
                            f"{expected[0]}x{expected[1]}; pass --dataset-option size=S to resize all images to SxS")
        expected = expected or img.size
        arrays.append(np.asarray(img, dtype=np.uint8))
    stacked = np.stack(arrays)
    stacked = stacked[..., None] if stacked.ndim == 3 else stacked
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous(), expected


def _pixels(paths: list[Path], size: int):
    decoded = _decode(paths)
    mode = "L" if all(img.mode in GRAY_MODES for img in decoded) else "RGB"
    return _to_tensor(decoded, paths, size, mode, None)[0]


def _cached_pixels(paths: list[Path], size: int):
    """Decoded pixels, from an on-disk tensor cache for large folders (keyed by every file's path,
    size and modification time, so editing the folder invalidates it)."""
    import hashlib

    import torch

    from cnnbench.data.files import default_data_dir

    if len(paths) < CACHE_MIN_IMAGES:
        return _pixels(paths, size)
    key = hashlib.blake2b(f"v1 size={size}".encode(), digest_size=16)
    for path in paths:
        stat = path.stat()
        key.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    cache = default_data_dir() / "cache" / f"imagefolder-{key.hexdigest()}.pt"
    if cache.is_file():
        try:
            return torch.load(cache, weights_only=True)
        except Exception:  # a damaged cache is rebuilt, never trusted
            cache.unlink(missing_ok=True)
    pixels = _pixels(paths, size)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(pixels, cache.with_suffix(".tmp"))
        cache.with_suffix(".tmp").replace(cache)
    except OSError:
        pass  # a read-only cache folder only costs the decoding next time
    return pixels


def load(*, data_dir: Path | None = None, seed: int = 0, download: bool = True, size: int,
         test_fraction: float):
    import torch

    from cnnbench.data.bundle import DatasetBundle, Split
    from cnnbench.data.pipeline import stratified_indices

    root = _root(data_dir)
    classes, train_paths, train_labels = list_split(root / "train")
    has_test = (root / "test").is_dir()
    test_paths, test_labels = list_split(root / "test", classes)[1:] if has_test else ([], [])
    pixels = _cached_pixels(train_paths + test_paths, size)
    labels = torch.tensor(train_labels + test_labels, dtype=torch.int64)
    n = len(train_paths)
    train, test = Split(pixels[:n], labels[:n]), Split(pixels[n:], labels[n:])
    if not has_test:
        keep, held = stratified_indices(train.labels, test_fraction, seed)
        train, test = train.subset(torch.as_tensor(keep)), train.subset(torch.as_tensor(held))
    return DatasetBundle(train=train, test=test, classes=classes)


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """Mode and (width, height) from an image's header, without decoding its pixels."""
    from cnnbench.data.images import open_image

    try:
        with open_image(path) as img:  # an image above the pixel limit is refused here, by name
            return img.mode, img.size
    except (OSError, ValueError, SyntaxError) as err:
        raise _unreadable(path, err) from None


def describe(*, data_dir: Path | None = None, size: int, test_fraction: float) -> DatasetInfo:
    """Without ``data_dir``: only what the options say (channels assumed 3, 0 = unknown).
    With it: class folders are listed and image headers read (no pixels decoded)."""
    if data_dir is None:
        return DatasetInfo(3, size, size, 0)
    root = _root(data_dir)
    classes, paths, _ = list_split(root / "train")
    test_paths = list_split(root / "test", classes)[1] if (root / "test").is_dir() else []
    headers = [_header(p) for p in paths + test_paths]
    channels = 1 if all(mode in GRAY_MODES for mode, _ in headers) else 3
    width, height = (size, size) if size else headers[0][1]
    test = len(test_paths) or math.ceil(len(paths) * test_fraction)  # as scikit-learn rounds
    return DatasetInfo(channels, height, width, len(classes), classes, len(paths) - (0 if test_paths else test), test)


def write_fake(root: Path, n: int = 3, *, spec: dict[str, dict[str, int]] | None = None, mode: str = "RGB",
               size: tuple[int, int] = (8, 6), ext: str = "png") -> FakeData:
    """A tree of uniform images under ``root``: ``spec`` is ``{split: {class: count}}`` (default:
    classes a and b with ``n`` training and ``n - 1`` test images each); ``size`` is (width, height).
    ``written`` maps ``(split, class, index)`` to the pixel value, ``10 * class index + index``."""
    import numpy as np
    from PIL import Image

    spec = spec or {"train": {"a": n, "b": n}, "test": {"a": max(1, n - 1), "b": max(1, n - 1)}}
    values = {}
    for split, classes in spec.items():
        for c, (name, count) in enumerate(sorted(classes.items())):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                value = 10 * c + i
                shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
                Image.fromarray(np.full(shape, value, np.uint8), mode).save(folder / f"{i:03d}.{ext}")
                values[(split, name, i)] = value
    count = lambda split: sum(spec.get(split, {}).values())  # noqa: E731
    return FakeData(train=count("train"), test=count("test"), written=values)


IMAGEFOLDER = DatasetPlugin(
    load=load,
    describe=describe,
    description="your images, root/train/<class>/*.png|jpg|jpeg|bmp [+ root/test/] (--data-dir root; shape from the files)",
    options=OPTIONS,
    needs_data_dir=True,
    write_fake=write_fake,
)
