"""``cifar10``: CIFAR-10 from its standard python layout ``<data_dir>/cifar-10-batches-py/``.

The batches are Python 2 pickles holding ``data`` (N, 3072) uint8 in R, G, B planes and ``labels``.
They are read with a restricted unpickler (numpy arrays, lists, dicts only: a pickle can otherwise
run code) and validated by shape, dtype, count and label range rather than by md5, since
re-exports of the data set differ byte-wise. The count is the format's: 10,000 images in each batch
(or the ``num_cases_per_batch`` that ``batches.meta`` declares, for a subset made on purpose).
"""

from __future__ import annotations

import pickle
from pathlib import Path

from cnnbench.errors import DataError
from cnnbench.registry import DatasetInfo, DatasetPlugin, FakeData

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SIDE = 32
PIXELS = 3 * SIDE * SIDE
IMAGES_PER_BATCH = 10_000  # each of data_batch_1..5 and test_batch hold as many images
HOW_TO = (
    "Get cifar-10-python.tar.gz from the CIFAR-10 home page (www.cs.toronto.edu/~kriz/cifar.html) and "
    "unpack it into the data folder, or point --data-dir (or $CNNBENCH_DATA) at a folder that holds "
    f"{FOLDER}/"
)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3 writes bytes into a protocol-2 pickle
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and plain containers."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        import codecs

        import numpy

        if module == "_codecs":
            return codecs.encode
        if module == "numpy":
            return getattr(numpy, name)
        core = getattr(numpy, "_core", None) or numpy.core  # numpy 2 renamed numpy.core
        return getattr(core.multiarray, name)


def read_pickle(path: Path) -> dict:
    """Load one CIFAR pickle with str keys; a missing/truncated/foreign file is a DataError."""
    try:
        with open(path, "rb") as fh:  # buffered reads: no extra copy of the 30 MB payload
            obj = _ArrayUnpickler(fh, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path} is missing; {HOW_TO}") from None
    except Exception as err:  # truncated or not a pickle: many exception types
        raise DataError(f"{path} is truncated, corrupt or not a CIFAR-10 pickle ({type(err).__name__}: {err}); "
                        f"replace it with a fresh copy. {HOW_TO}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict of CIFAR-10 arrays")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_batch(path: Path):
    """Return (images uint8 (N, 3, 32, 32), labels int64 (N,)) from one CIFAR-10 batch file."""
    import numpy as np

    batch = read_pickle(path)
    missing = [k for k in ("data", "labels") if k not in batch]
    if missing:
        raise DataError(f"{path} lacks the key(s) {', '.join(missing)} (found: {', '.join(map(str, batch)) or 'none'}); "
                        f"a CIFAR-10 batch holds 'data' (N, {PIXELS}) uint8 and 'labels'")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 (N, {PIXELS}) array, got {got}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be {len(data)} integers, got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"{path}: labels must lie in [0, 9]; found [{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, SIDE, SIDE), labels.astype(np.int64)


def _read_split(folder: Path, names: tuple[str, ...]):
    import numpy as np
    import torch

    from cnnbench.data.bundle import Split

    parts = [read_batch(folder / name) for name in names]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts])
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))


def _ensure_files(root: Path, download: bool) -> Path:
    from cnnbench.data.files import download_archive, fetch

    folder = root / FOLDER
    needed = (*TRAIN_FILES, TEST_FILE, META_FILE)
    if all((folder / n).is_file() for n in needed):
        return folder
    from torchvision.datasets import CIFAR10 as TV

    fetch([lambda: download_archive(TV.url, root, TV.filename)], what="CIFAR-10",
          expected=f"{', '.join(needed)} in {folder}", how_to=HOW_TO, download=download)
    absent = [n for n in needed if not (folder / n).is_file()]
    if absent:
        raise DataError(f"the CIFAR-10 download unpacked without {', '.join(absent)} in {folder}. {HOW_TO}")
    return folder


def declared_per_batch(meta: dict) -> int:
    """The images per batch the data set defines: 10,000, unless ``batches.meta`` declares another
    ``num_cases_per_batch`` (a subset made on purpose says so in its meta file)."""
    from numbers import Integral

    declared = meta.get("num_cases_per_batch", IMAGES_PER_BATCH)
    usable = isinstance(declared, Integral) and not isinstance(declared, bool) and declared > 0
    return int(declared) if usable else IMAGES_PER_BATCH


def check_counts(folder: Path, splits: dict[str, object], per_batch: int = IMAGES_PER_BATCH) -> None:
    """Every batch of CIFAR-10 holds the number of images the format defines: 10,000 records of 3,073
    bytes (a label and 3,072 pixels) per data batch and in the test batch, or the
    ``num_cases_per_batch`` that ``batches.meta`` declares. A batch that holds fewer was cut short or
    replaced, and training on the rest would silently miss images; so would a set of batches all cut
    alike, which a comparison of the files with each other does not see."""
    counts = {name: int(size) for name, size in splits.items()}
    odd = {name: n for name, n in counts.items() if n != per_batch}
    if not odd:
        return
    source = "the real data set" if per_batch == IMAGES_PER_BATCH else f"{folder / META_FILE}: num_cases_per_batch"
    if len(odd) < len(counts):
        shown = ", ".join(f"{folder / name} holds {n}" for name, n in odd.items())
        raise DataError(f"{shown} images where every other CIFAR-10 batch holds {per_batch} ({source}): the file is "
                        f"cut short or not from CIFAR-10; replace it with the one from cifar-10-python.tar.gz")
    held = sorted(set(odd.values()))
    raise DataError(f"every CIFAR-10 batch in {folder} holds {' or '.join(map(str, held))} images where the format "
                    f"defines {per_batch} per batch ({source}): the files are cut short or not from CIFAR-10; "
                    f"replace them with the ones from cifar-10-python.tar.gz")


def load(*, data_dir: Path | None = None, seed: int = 0, download: bool = True):
    from cnnbench.data.bundle import DatasetBundle
    from cnnbench.data.files import resolve_data_dir

    folder = _ensure_files(resolve_data_dir(data_dir), download)
    meta = read_pickle(folder / META_FILE)
    names = tuple(str(n) for n in meta.get("label_names", ()))
    if len(names) != len(CLASSES):
        raise DataError(f"{folder / META_FILE}: 'label_names' must list {len(CLASSES)} class names, got {names!r}")
    batches = {name: _read_split(folder, (name,)) for name in (*TRAIN_FILES, TEST_FILE)}
    check_counts(folder, {name: len(split.labels) for name, split in batches.items()}, declared_per_batch(meta))
    train = _concat([batches[name] for name in TRAIN_FILES])
    return DatasetBundle(train=train, test=batches[TEST_FILE], classes=names)


def _concat(splits):
    import torch

    from cnnbench.data.bundle import Split

    return Split(torch.cat([s.images for s in splits]), torch.cat([s.labels for s in splits]))


def describe() -> DatasetInfo:
    return DatasetInfo(3, SIDE, SIDE, len(CLASSES), CLASSES, 50_000, 10_000)


def fake_batch(n: int, seed: int, *, bytes_keys: bool = False) -> dict:
    """One pickled batch's dict of ``n`` random images (keys as bytes: how Python 2 pickled them)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    batch = {"batch_label": "fake", "data": rng.integers(0, 256, (n, PIXELS), dtype=np.uint8),
             "labels": [int(v) for v in rng.integers(0, 10, n)], "filenames": [f"{i}.png" for i in range(n)]}
    return {k.encode(): v for k, v in batch.items()} if bytes_keys else batch


def write_fake(root: Path, n: int = 6, *, bytes_keys: bool = False) -> FakeData:
    """The standard ``cifar-10-batches-py`` folder under ``root`` with ``n`` random images per batch
    (``written``: each file's batch dict)."""
    folder = root / FOLDER
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate((*TRAIN_FILES, TEST_FILE)):
        written[name] = fake_batch(n, i, bytes_keys=bytes_keys)
        (folder / name).write_bytes(pickle.dumps(written[name], protocol=2))
    meta = {"label_names": list(CLASSES), "num_cases_per_batch": n, "num_vis": PIXELS}
    (folder / META_FILE).write_bytes(pickle.dumps(meta, protocol=2))
    return FakeData(train=n * len(TRAIN_FILES), test=n, written=written)


CIFAR10 = DatasetPlugin(
    load=load,
    describe=describe,
    description="CIFAR-10 natural images (python pickle batches; downloaded when missing)",
    write_fake=write_fake,
)
