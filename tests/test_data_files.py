"""cifar10 / mnist / fashion_mnist on tiny fake files written in the real on-disk formats."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnbench.data import cifar, files, mnist
from cnnbench.errors import DataError
from cnnbench.registry import DATASETS

# ---------------------------------------------------------------- CIFAR-10 pickle batches


_cifar_batch = cifar.fake_batch  # the fake writers live beside the readers (DatasetPlugin.write_fake)


def write_cifar(root: Path, per_batch: int = 6, *, bytes_keys: bool = False) -> dict[str, dict]:
    return cifar.write_fake(root, per_batch, bytes_keys=bytes_keys).written


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar_reads_pixels_planes_and_labels(tmp_path, bytes_keys):
    written = write_cifar(tmp_path, bytes_keys=bytes_keys)
    bundle = cifar.CIFAR10.load(data_dir=tmp_path, seed=0, download=False)
    assert bundle.train.images.shape == (30, 3, 32, 32) and bundle.test.images.shape == (6, 3, 32, 32)
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.labels.dtype == torch.int64
    first = written["data_batch_1"][b"data" if bytes_keys else "data"]
    # R plane is the first 1024 values, row-major
    assert bundle.train.images[0, 0, 0, :].tolist() == first[0, :32].tolist()
    assert bundle.train.images[0, 2, 31, 31] == first[0, 3071]
    labels = written["data_batch_2"][b"labels" if bytes_keys else "labels"]
    assert bundle.train.labels[6:12].tolist() == labels
    assert bundle.classes == cifar.CLASSES


def test_cifar_missing_directory_names_expected_files(tmp_path):
    with pytest.raises(DataError, match=r"data_batch_1.*cifar-10-batches-py.*download is disabled.*--data-dir"):
        cifar.CIFAR10.load(data_dir=tmp_path, seed=0, download=False)


def test_cifar_offline_download_fails_with_one_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        import urllib.error
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)
    with pytest.raises(DataError, match=r"expected data_batch_1.*download failed \(URLError.*cifar-10-python.tar.gz"):
        cifar.CIFAR10.load(data_dir=tmp_path, seed=0, download=True)


def test_cifar_corrupt_downloaded_archive_is_one_clear_error(tmp_path, monkeypatch):
    def truncated_download(url, root, filename=None, md5=None, **kwargs):
        Path(root, filename).write_bytes(b"\x1f\x8b not really a tarball")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", truncated_download)
    with pytest.raises(DataError, match=r"CIFAR-10 not found: .*download failed \((ReadError|BadGzipFile|EOFError)"):
        cifar.CIFAR10.load(data_dir=tmp_path, seed=0, download=True)
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()  # no half file left to be trusted later


def test_cifar_missing_single_batch_is_named(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / cifar.FOLDER / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        cifar.CIFAR10.load(data_dir=tmp_path, seed=0, download=False)


def test_cifar_truncated_batch_is_named(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / cifar.FOLDER / "data_batch_4"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match=r"data_batch_4 is truncated, corrupt or not a CIFAR-10 pickle"):
        cifar.CIFAR10.load(data_dir=tmp_path, seed=0, download=False)


def test_cifar_pickle_without_expected_keys(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / cifar.FOLDER / "test_batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}, protocol=2))
    with pytest.raises(DataError, match=r"test_batch lacks the key\(s\) labels"):
        cifar.CIFAR10.load(data_dir=tmp_path, seed=0, download=False)


@pytest.mark.parametrize("data, labels, message", [
    (np.zeros((2, 3000), np.uint8), [0, 1], r"'data' must be a uint8 \(N, 3072\)"),
    (np.zeros((2, 3072), np.float32), [0, 1], r"'data' must be a uint8"),
    (np.zeros((2, 3072), np.uint8), [0], r"'labels' must be 2 integers"),
    (np.zeros((2, 3072), np.uint8), [0, 10], r"labels must lie in \[0, 9\]; found \[0, 10\]"),
])
def test_cifar_bad_shapes_dtypes_counts_labels(tmp_path, data, labels, message):
    write_cifar(tmp_path)
    path = tmp_path / cifar.FOLDER / "data_batch_5"
    path.write_bytes(pickle.dumps({"data": data, "labels": labels}, protocol=2))
    with pytest.raises(DataError, match=f"data_batch_5.*{message}"):
        cifar.CIFAR10.load(data_dir=tmp_path, seed=0, download=False)


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / cifar.FOLDER / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": print, "labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1 is truncated, corrupt or not a CIFAR-10 pickle .*refusing to load .*print"):
        cifar.CIFAR10.load(data_dir=tmp_path, seed=0, download=False)


def test_cifar_describe_without_files():
    info = DATASETS.get("cifar10").describe()
    assert (info.channels, info.height, info.width, info.num_classes) == (3, 32, 32, 10)
    assert (info.train_size, info.test_size) == (50_000, 10_000) and info.classes[0] == "airplane"


# ---------------------------------------------------------------- MNIST / Fashion-MNIST IDX files


_idx = mnist.idx_bytes
write_idx_set = mnist.write_idx_files


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name, sub", [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"),
                                       ("mnist", "mnist"), ("fashion_mnist", ".")])
def test_idx_reads_values_in_every_layout(tmp_path, gz, name, sub):
    arrays = write_idx_set(tmp_path / sub, gz=gz)
    bundle = DATASETS.get(name).load(data_dir=tmp_path, seed=0, download=False)
    assert bundle.train.images.shape == (12, 1, 28, 28) and bundle.test.images.shape == (5, 1, 28, 28)
    assert torch.equal(bundle.train.images[:, 0], torch.from_numpy(arrays["train_images"]))
    assert bundle.test.labels.tolist() == [0, 1, 2, 3, 4]
    assert len(bundle.classes) == 10
    assert (bundle.classes[0] == "T-shirt/top") == (name == "fashion_mnist")


def test_idx_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*MNIST/raw.*download is disabled.*Download the four"):
        mnist.MNIST.load(data_dir=tmp_path, seed=0, download=False)


def test_idx_offline_download_tries_every_mirror_then_explains(tmp_path, monkeypatch):
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise OSError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)
    with pytest.raises(DataError, match=r"fashion_mnist files not found.*download failed \(OSError: network unreachable\)"):
        mnist.FASHION_MNIST.load(data_dir=tmp_path, seed=0, download=True)
    assert calls and all(url.endswith("-ubyte.gz") for url in calls)


def test_idx_truncated_raw_file_is_named(tmp_path):
    write_idx_set(tmp_path, gz=False)
    path = tmp_path / mnist.FILES["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is truncated: \d+ bytes, expected"):
        mnist.MNIST.load(data_dir=tmp_path, seed=0, download=False)


def test_idx_truncated_gzip_is_named(tmp_path):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / f"{mnist.FILES['test_labels']}.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is truncated or corrupt"):
        mnist.MNIST.load(data_dir=tmp_path, seed=0, download=False)


def test_idx_wrong_magic_count_mismatch_and_label_range(tmp_path):
    write_idx_set(tmp_path, gz=False)
    labels = tmp_path / mnist.FILES["train_labels"]
    labels.write_bytes(_idx(mnist.IMAGE_MAGIC, np.zeros((12, 28, 28), np.uint8)))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte is not an IDX file of the expected kind"):
        mnist.MNIST.load(data_dir=tmp_path, seed=0, download=False)
    labels.write_bytes(_idx(mnist.LABEL_MAGIC, np.zeros(11, np.uint8)))
    with pytest.raises(DataError, match=r"holds 11 labels but .*train-images-idx3-ubyte holds 12 images"):
        mnist.MNIST.load(data_dir=tmp_path, seed=0, download=False)
    labels.write_bytes(_idx(mnist.LABEL_MAGIC, np.full(12, 10, np.uint8)))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 9\]; found 10"):
        mnist.MNIST.load(data_dir=tmp_path, seed=0, download=False)


def test_idx_describe_without_files():
    info = DATASETS.get("fashion_mnist").describe()
    assert (info.channels, info.height, info.width, info.num_classes) == (1, 28, 28, 10)
    assert (info.train_size, info.test_size) == (60_000, 10_000) and info.classes[-1] == "Ankle boot"


# ---------------------------------------------------------------- data folder


def test_default_data_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path / "d"))
    assert files.default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("CNNBENCH_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert files.default_data_dir() == tmp_path / "cache" / "cnnbench" / "data"


def test_data_dir_none_uses_cnnbench_data(monkeypatch, tmp_path):
    write_cifar(tmp_path, per_batch=2)
    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path))
    assert len(cifar.CIFAR10.load(data_dir=None, seed=0, download=False).train) == 10
