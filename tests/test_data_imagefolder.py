"""``imagefolder`` on tiny trees of real PNG/JPEG/BMP files written with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnbench.data.imagefolder import IMAGEFOLDER, write_fake
from cnnbench.errors import ConfigError, DataError


def write_tree(root: Path, spec: dict[str, dict[str, int]], **how):
    """spec: {split: {class: count}}; pixel value encodes (class index, image index)."""
    return write_fake(root, spec=spec, **how).written


def _load(root, seed=0, **options):
    return IMAGEFOLDER.load(data_dir=root, seed=seed, download=False, **IMAGEFOLDER.defaults(**options))


def test_reads_train_and_test_with_classes_from_folder_names(tmp_path):
    write_tree(tmp_path, {"train": {"cat": 3, "dog": 4}, "test": {"cat": 1, "dog": 2}})
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    b = _load(tmp_path)
    assert b.classes == ("cat", "dog")
    assert b.train.images.shape == (7, 3, 6, 8) and b.test.images.shape == (3, 3, 6, 8)
    assert b.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 1] and b.test.labels.tolist() == [0, 1, 1]
    assert b.train.images[:, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 12, 13]


def test_grayscale_is_detected_and_mixed_becomes_rgb(tmp_path):
    write_tree(tmp_path, {"train": {"a": 2, "b": 2}}, mode="L")
    assert _load(tmp_path).train.images.shape[1] == 1
    Image.fromarray(np.full((6, 8, 3), 200, np.uint8)).save(tmp_path / "train" / "a" / "color.png")
    b = _load(tmp_path, test_fraction=0.4)
    assert b.train.images.shape[1] == 3
    everything = torch.cat([b.train.images, b.test.images])
    assert (everything[:, 0] == everything[:, 2]).all()  # grey images replicated into RGB
    assert 200 in everything[:, 0, 0, 0].tolist()


def test_jpeg_and_bmp_are_read(tmp_path):
    write_tree(tmp_path, {"train": {"a": 2}}, ext="jpg")
    write_tree(tmp_path, {"train": {"b": 2}}, ext="bmp")
    b = _load(tmp_path, test_fraction=0.5)
    assert sorted(torch.cat([b.train.labels, b.test.labels]).tolist()) == [0, 0, 1, 1]


def test_no_test_folder_holds_out_a_stratified_test_set_by_seed(tmp_path):
    write_tree(tmp_path, {"train": {"a": 10, "b": 10}})
    b = _load(tmp_path, seed=0, test_fraction=0.2)
    assert len(b.train) == 16 and len(b.test) == 4 and b.test.labels.bincount().tolist() == [2, 2]
    again, other = _load(tmp_path, seed=0, test_fraction=0.2), _load(tmp_path, seed=5, test_fraction=0.2)
    assert torch.equal(b.test.images, again.test.images)
    assert not torch.equal(b.test.images, other.test.images)
    train_values = set(b.train.images[:, 0, 0, 0].tolist())
    assert train_values.isdisjoint(b.test.images[:, 0, 0, 0].tolist())


def test_differing_sizes_are_rejected_with_the_file_named_or_resized(tmp_path):
    write_tree(tmp_path, {"train": {"a": 2, "b": 2}})
    odd = tmp_path / "train" / "b" / "big.png"
    Image.fromarray(np.full((12, 12, 3), 90, np.uint8)).save(odd)
    with pytest.raises(DataError, match=rf"{odd} is 12x12 but the first image is 8x6; pass --dataset-option size="):
        _load(tmp_path)
    b = _load(tmp_path, size=5, test_fraction=0.4)
    assert b.train.images.shape[2:] == (5, 5) and b.test.images.shape[2:] == (5, 5)
    assert 90 in torch.cat([b.train.images, b.test.images])[:, 0, 2, 2].tolist()  # flat image stays flat


def test_empty_class_is_named(tmp_path):
    write_tree(tmp_path, {"train": {"a": 2}})
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=rf"class folder {tmp_path / 'train' / 'empty'} holds no images"):
        _load(tmp_path)


def test_unreadable_image_is_named(tmp_path):
    write_tree(tmp_path, {"train": {"a": 2, "b": 2}})
    bad = tmp_path / "train" / "b" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(DataError, match=rf"cannot read image {bad}"):
        _load(tmp_path)
    with pytest.raises(DataError, match=rf"cannot read image {bad}"):
        IMAGEFOLDER.describe(data_dir=tmp_path, **IMAGEFOLDER.defaults())


def test_truncated_image_is_named(tmp_path):
    write_tree(tmp_path, {"train": {"a": 2, "b": 2}}, size=(64, 64))
    path = tmp_path / "train" / "a" / "000.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=rf"cannot read image {path}"):
        _load(tmp_path)


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match=r"train does not exist: imagefolder expects root/train/<class>"):
        _load(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="holds no class folders"):
        _load(tmp_path)
    write_tree(tmp_path, {"train": {"a": 2}, "test": {"a": 1, "zebra": 1}})
    with pytest.raises(DataError, match=r"class folder\(s\) zebra that train/ lacks"):
        _load(tmp_path)
    with pytest.raises(ConfigError, match="needs --data-dir"):
        IMAGEFOLDER.load(data_dir=None, seed=0, download=False, **IMAGEFOLDER.defaults())


def test_describe_reads_headers_only_when_given_the_folder(tmp_path):
    assert IMAGEFOLDER.needs_data_dir
    assert IMAGEFOLDER.describe(**IMAGEFOLDER.defaults(size=16)).height == 16
    write_tree(tmp_path, {"train": {"a": 3, "b": 2}, "test": {"a": 1}}, mode="L")
    info = IMAGEFOLDER.describe(data_dir=tmp_path, **IMAGEFOLDER.defaults())
    assert (info.channels, info.height, info.width, info.num_classes) == (1, 6, 8, 2)
    assert (info.classes, info.train_size, info.test_size) == (("a", "b"), 5, 1)
    loaded = _load(tmp_path)
    assert (len(loaded.train), len(loaded.test)) == (info.train_size, info.test_size)


def test_large_folders_are_cached_on_disk_and_invalidated_by_edits(tmp_path, monkeypatch):
    from cnnbench.data import imagefolder

    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(imagefolder, "CACHE_MIN_IMAGES", 4)
    root = tmp_path / "images"
    write_tree(root, {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    first = _load(root)
    assert len(list((tmp_path / "data" / "cache").glob("imagefolder-*.pt"))) == 1
    decode = imagefolder._decode
    monkeypatch.setattr(imagefolder, "_decode", lambda paths: pytest.fail("decoded again despite the cache"))
    again = _load(root)
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.test.images, again.test.images)
    monkeypatch.setattr(imagefolder, "_decode", decode)
    Image.fromarray(np.full((6, 8, 3), 77, np.uint8)).save(root / "train" / "a" / "000.png")
    assert _load(root).train.images[0, 0, 0, 0] == 77  # the edited file is read, not the stale cache
    assert len(list((tmp_path / "data" / "cache").glob("imagefolder-*.pt"))) == 2
