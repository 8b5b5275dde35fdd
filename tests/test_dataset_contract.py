"""The contract every registered dataset keeps, checked for each of them (a new dataset, built-in or
a plugin's, is tested the day it is registered): uint8 (N, C, H, W) images, labels in range, classes
named, and ``describe()`` (what validation and ``cnnbench list`` use, without reading pixels)
agreeing with what ``load()`` gives. Each dataset brings its own ``write_fake`` (tiny files in its
standard format, or the options of a tiny generated set), as torchvision's ``inject_fake_data``."""

from __future__ import annotations

import pytest
import torch

from cnnbench.registry import DATASETS


def test_every_builtin_dataset_has_a_fake_writer():
    builtin = [e for e in DATASETS.entries() if e.distribution == "cnnbench"]
    assert builtin and all(e.plugin.write_fake is not None for e in builtin), \
        [e.name for e in builtin if e.plugin.write_fake is None]


@pytest.mark.parametrize("name", [n for n, p in DATASETS.plugins() if p.write_fake is not None])
def test_dataset_contract(name, tmp_path):
    plugin = DATASETS.get(name)
    fake = plugin.write_fake(tmp_path)
    options = plugin.defaults(**fake.options)
    where = {"data_dir": tmp_path} if plugin.needs_data_dir else {}
    info = plugin.describe(**options, **where)
    bundle = plugin.load(data_dir=tmp_path, seed=0, download=False, **options)
    assert (len(bundle.train), len(bundle.test)) == (fake.train, fake.test)
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
    if plugin.needs_data_dir or fake.written is None:
        # sizes read from the files (imagefolder) or generated (no files): describe() must know them;
        # a standard format's describe() gives the real dataset's sizes (50,000 / 10,000), not the fake's
        assert (info.train_size, info.test_size) == (len(bundle.train), len(bundle.test))
