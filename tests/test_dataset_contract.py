"""The contract every registered dataset keeps, checked for each of them (a new built-in dataset
is tested the day it is registered): uint8 (N, C, H, W) images, labels in range, classes named,
and ``describe()`` (what validation and ``cnnbench list`` use, without reading pixels) agreeing with
what ``load()`` gives. File-based datasets are given tiny files in their standard format."""

from __future__ import annotations

import pytest
import torch

from cnnbench.registry import DATASETS
from test_data_files import write_cifar, write_idx_set
from test_data_imagefolder import write_tree

KNOWN = {"digits", "cifar10", "mnist", "fashion_mnist", "imagefolder", "edges"}


def _prepare_files(name: str, root):
    """Write tiny standard-format files for ``name`` under ``root``; True when its split sizes in
    ``describe()`` are the real dataset's (so only shapes and classes can be compared)."""
    if name == "cifar10":
        write_cifar(root, per_batch=4)
    elif name == "mnist":
        write_idx_set(root / "MNIST" / "raw", gz=True)
    elif name == "fashion_mnist":
        write_idx_set(root / "FashionMNIST" / "raw", gz=False)
    elif name == "imagefolder":
        write_tree(root, {"train": {"a": 3, "b": 3}, "test": {"a": 2, "b": 1}})
        return False
    return name in ("cifar10", "mnist", "fashion_mnist")


def test_every_builtin_dataset_is_covered_here():
    builtin = {e.name for e in DATASETS.entries() if e.distribution == "cnnbench"}
    assert builtin <= KNOWN, f"add a fixture for {sorted(builtin - KNOWN)}"


@pytest.mark.parametrize("name", sorted(n for n in DATASETS.names() if n in KNOWN))
def test_dataset_contract(name, tmp_path):
    plugin = DATASETS.get(name)
    canonical_sizes = _prepare_files(name, tmp_path)
    options = plugin.defaults(**({"data_per_class": 6} if name == "edges" else {}))
    where = {"data_dir": tmp_path} if plugin.needs_data_dir else {}
    info = plugin.describe(**options, **where)
    bundle = plugin.load(data_dir=tmp_path, seed=0, download=False, **options)
    splits = {"train": bundle.train, "test": bundle.test, **({"val": bundle.val} if bundle.val is not None else {})}
    for split_name, split in splits.items():
        images, labels = split.images, split.labels
        assert images.dtype == torch.uint8 and images.ndim == 4, split_name
        assert tuple(images.shape[1:]) == (info.channels, info.height, info.width), split_name
        assert labels.dtype == torch.int64 and len(labels) == len(images) > 0, split_name
        assert int(labels.min()) >= 0 and int(labels.max()) < info.num_classes, split_name
    assert len(bundle.classes) == info.num_classes
    if info.classes is not None:
        assert tuple(bundle.classes) == tuple(info.classes)
    if not canonical_sizes:
        assert (info.train_size, info.test_size) == (len(bundle.train), len(bundle.test))
