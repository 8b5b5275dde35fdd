"""``mnist`` and ``fashion_mnist``: 28x28 grayscale digits / clothing from the standard IDX files.

Files (each ``.gz`` or raw): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, looked up in ``<data_dir>/MNIST/raw``
(``FashionMNIST/raw``: torchvision's layout, where downloads go), ``<data_dir>/mnist``
(``fashion_mnist``) or ``<data_dir>`` itself. Validated by IDX header, file length and label range.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

from cnnbench.errors import DataError
from cnnbench.registry import DatasetInfo, DatasetPlugin, FakeData

IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801  # unsigned bytes, 3 dims / 1 dim
SIDE = 28
FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


@dataclass(frozen=True)
class IdxSet:
    name: str  # plugin name and the plain sub-folder it may live in
    torchvision_name: str  # torchvision class: its folder <Name>/raw and its download mirrors
    classes: tuple[str, ...]
    home_page: str

    def folders(self, root: Path) -> list[Path]:
        return [root / self.torchvision_name / "raw", root / self.name, root]


MNIST_SET = IdxSet("mnist", "MNIST", tuple(str(d) for d in range(10)), "yann.lecun.com/exdb/mnist")
FASHION_SET = IdxSet("fashion_mnist", "FashionMNIST",
                     ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"), "github.com/zalandoresearch/fashion-mnist")


def read_idx(path: Path, *, magic: int, dims: int):
    """Parse one IDX file (optionally gzipped) into a uint8 numpy array of its declared shape."""
    import numpy as np

    from cnnbench.data.files import read_bytes

    raw = read_bytes(path)
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than the IDX header")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise DataError(f"{path} is not an IDX file of the expected kind: magic number {found:#010x}, "
                        f"expected {magic:#010x}")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    expected = header + math.prod(shape)  # Python integers: np.prod wraps in int64 (2^22 x 2^21 x 2^21 -> 0)
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path} is {state}: {len(raw)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _files_in(folder: Path) -> dict[str, Path | None]:
    """The four files in one folder, each raw or gzipped (None where absent)."""
    found: dict[str, Path | None] = {}
    for key, stem in FILES.items():
        found[key] = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
    return found


def _locate(spec: IdxSet, root: Path, download: bool) -> dict[str, Path]:
    """The first candidate folder holding all four files; else download the missing ones."""
    from cnnbench.data.files import download_file, fetch

    for folder in spec.folders(root):
        found = _files_in(folder)
        if all(found.values()):
            return found  # type: ignore[return-value]
    from torchvision import datasets

    tv = getattr(datasets, spec.torchvision_name)
    target = spec.folders(root)[0]
    stems = [FILES[k] for k, p in _files_in(target).items() if p is None]

    def from_mirror(mirror: str):
        def attempt() -> None:
            for stem in stems:
                download_file(f"{mirror}{stem}.gz", target, f"{stem}.gz")
        return attempt

    fetch([from_mirror(m) for m in tv.mirrors], what=f"{spec.name} files",
          expected=f"{', '.join(stems)} (raw or .gz) in {target} (or {spec.folders(root)[1]}, or {root})",
          how_to=f"Download the four .gz files from {spec.home_page} into {target}, or point --data-dir "
                 f"(or $CNNBENCH_DATA) at a folder that holds them", download=download)
    return _files_in(target)  # type: ignore[return-value]


def _split(paths: dict[str, Path], prefix: str, num_classes: int):
    import torch

    from cnnbench.data.bundle import Split

    images = read_idx(paths[f"{prefix}_images"], magic=IMAGE_MAGIC, dims=3)
    labels = read_idx(paths[f"{prefix}_labels"], magic=LABEL_MAGIC, dims=1)
    if images.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{paths[f'{prefix}_images']}: images must be {SIDE}x{SIDE}, got {images.shape[1:]}")
    if len(labels) != len(images):
        raise DataError(f"{paths[f'{prefix}_labels']} holds {len(labels)} labels but "
                        f"{paths[f'{prefix}_images']} holds {len(images)} images")
    if len(labels) and labels.max() >= num_classes:
        raise DataError(f"{paths[f'{prefix}_labels']}: labels must lie in [0, {num_classes - 1}]; found {labels.max()}")
    return Split(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype("int64")))


def _loader(spec: IdxSet):
    def load(*, data_dir: Path | None = None, seed: int = 0, download: bool = True):
        from cnnbench.data.bundle import DatasetBundle
        from cnnbench.data.files import resolve_data_dir

        paths = _locate(spec, resolve_data_dir(data_dir), download)
        k = len(spec.classes)
        return DatasetBundle(train=_split(paths, "train", k), test=_split(paths, "test", k), classes=spec.classes)

    return load


def _describer(spec: IdxSet):
    def describe() -> DatasetInfo:
        return DatasetInfo(1, SIDE, SIDE, len(spec.classes), spec.classes, 60_000, 10_000)

    return describe


def idx_bytes(magic: int, array) -> bytes:
    """An IDX file's bytes: the magic number, the dimensions, then the unsigned bytes."""
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_files(folder: Path, n_train: int = 12, n_test: int = 5, *, gz: bool) -> dict:
    """The four IDX files (gzipped or not) with random images in ``folder``; the arrays written."""
    import gzip

    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {"train_images": rng.integers(0, 256, (n_train, SIDE, SIDE), dtype=np.uint8),
              "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
              "test_images": rng.integers(0, 256, (n_test, SIDE, SIDE), dtype=np.uint8),
              "test_labels": (np.arange(n_test) % 10).astype(np.uint8)}
    for key, array in arrays.items():
        payload = idx_bytes(IMAGE_MAGIC if "images" in key else LABEL_MAGIC, array)
        if gz:
            (folder / f"{FILES[key]}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / FILES[key]).write_bytes(payload)
    return arrays


def _fake_writer(spec: IdxSet):
    def write_fake(root: Path, n: int = 12, *, gz: bool = True) -> FakeData:
        """The IDX files in torchvision's ``<Name>/raw`` folder under ``root``: ``n`` training images."""
        test = max(1, n // 2)
        return FakeData(train=n, test=test, written=write_idx_files(spec.folders(root)[0], n, test, gz=gz))

    return write_fake


MNIST = DatasetPlugin(
    load=_loader(MNIST_SET), describe=_describer(MNIST_SET),
    description="MNIST handwritten digits (IDX files; downloaded when missing)",
    write_fake=_fake_writer(MNIST_SET),
)
FASHION_MNIST = DatasetPlugin(
    load=_loader(FASHION_SET), describe=_describer(FASHION_SET),
    description="Fashion-MNIST clothing images (IDX files; downloaded when missing)",
    write_fake=_fake_writer(FASHION_SET),
)
