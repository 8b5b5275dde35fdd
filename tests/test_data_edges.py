"""The synthetic ``edges`` set: classes, options, determinism, domain shift and permutation."""

from __future__ import annotations

import pytest
import torch

from cnnbench.data import edges
from cnnbench.data.edges import EDGES
from cnnbench.errors import ConfigError
from cnnbench.registry import DATASETS, resolve_options

SMALL = dict(data_per_class=40)


def _load(seed=0, **options):
    return EDGES.load(data_dir=None, seed=seed, download=False, **{**SMALL, **options})


def _bright(split, threshold=0.22 * 255):
    """Boolean (N, R, R) of edge pixels: brighter than any background can be."""
    return split.images[:, 0].float() > threshold


def test_default_shapes_classes_and_value_ranges():
    b = _load()
    assert b.classes == ("horizontal", "vertical", "none")
    assert b.train.images.shape == (120, 1, 28, 28) and b.train.images.dtype == torch.uint8
    assert b.test.images.shape == (120, 1, 28, 28) and b.val is None
    assert b.train.labels.bincount().tolist() == [40, 40, 40]
    edges = _bright(b.train)
    none = b.train.images[b.train.labels == 2]
    assert not edges[b.train.labels == 2].any()  # 'none' images are flat background
    assert none.amax(dim=(1, 2, 3)).le(round(0.2 * 255)).all()
    assert (none.amax(dim=(1, 2, 3)) == none.amin(dim=(1, 2, 3))).all()
    assert b.train.images.max() >= round(0.25 * 255)


def test_horizontal_and_vertical_bands_have_the_declared_orientation_and_width():
    b = _load(min_edge_width=2, max_edge_width=3)
    edges = _bright(b.train)
    horizontal, vertical = edges[b.train.labels == 0], edges[b.train.labels == 1]
    # a horizontal band fills whole rows: every edge row is bright across the full width
    rows = horizontal.any(dim=2)
    assert torch.equal(rows, horizontal.all(dim=2))
    assert rows.sum(dim=1).min() >= 1 and rows.sum(dim=1).max() <= 3
    cols = vertical.any(dim=1)
    assert torch.equal(cols, vertical.all(dim=1))
    assert not rows[:, 0].any() and not cols[:, -1].any()  # bands stay off the border rows


def test_num_classes_4_and_5_add_diagonal_and_both():
    b = _load(num_classes=5)
    assert b.classes == ("horizontal", "vertical", "none", "diagonal", "both")
    edges = _bright(b.train)
    diagonal, both = edges[b.train.labels == 3], edges[b.train.labels == 4]
    assert diagonal.any(dim=(1, 2)).all() and not diagonal.all(dim=2).any() and not diagonal.all(dim=1).any()
    assert both.all(dim=2).any(dim=1).all() and both.all(dim=1).any(dim=1).all()
    assert _load(num_classes=4).classes[-1] == "diagonal"


def test_deterministic_by_seed_and_test_set_fixed_across_seeds():
    a, b, c = _load(seed=3), _load(seed=3), _load(seed=4)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.train.images, c.train.images)
    assert torch.equal(a.test.images, c.test.images)


def test_domain_shift_confines_training_edges_and_adds_a_validation_split():
    b = _load(possible_edge_location_ratio=0.5, num_classes=5)
    assert b.val is not None and len(b.val) == len(b.train) == 200
    assert not _bright(b.train)[b.train.labels == 0].any(dim=2)[:, 14:].any()  # rows 14+ never lit in train
    assert not _bright(b.train)[b.train.labels == 1].any(dim=1)[:, 14:].any()
    assert _bright(b.val)[b.val.labels == 0].any(dim=2)[:, 14:].any()  # val and test edges anywhere
    assert _bright(b.test)[b.test.labels == 0].any(dim=2)[:, 14:].any()


def test_permutation_is_one_fixed_pixel_permutation_for_every_split():
    plain, mixed = _load(seed=1), _load(seed=1, use_permutation=True)
    flat_plain = plain.train.images.flatten(1).float()
    flat_mixed = mixed.train.images.flatten(1).float()
    # the same multiset of pixel values per image, in other places
    assert torch.equal(flat_plain.sort(dim=1).values, flat_mixed.sort(dim=1).values)
    assert not torch.equal(flat_plain, flat_mixed)
    # one permutation explains every image of every split
    perm = torch.randperm(28 * 28, generator=edges._generator(1, "permutation"))
    assert torch.equal(plain.test.images.flatten(1)[:, perm], mixed.test.images.flatten(1))
    assert torch.equal(plain.train.images.flatten(1)[:, perm], mixed.train.images.flatten(1))
    # test images do not move with the seed, so a different result means a different permutation
    assert not torch.equal(mixed.test.images, _load(seed=2, use_permutation=True).test.images)


def test_describe_follows_options_without_generating():
    info = DATASETS.get("edges").describe(num_classes=4, spatial_resolution=32, data_per_class=10)
    assert (info.channels, info.height, info.width, info.num_classes) == (1, 32, 32, 4)
    assert info.classes[-1] == "diagonal" and info.train_size == info.test_size == 40
    assert DATASETS.get("edges").describe().height == 28


@pytest.mark.parametrize("given, message", [
    ({"min_edge_width": "5"}, r"min_edge_width \(5\) must not exceed max_edge_width \(4\)"),
    ({"max_edge_width": "27"}, r"max_edge_width must be below spatial_resolution - 2 \(26\)"),
    ({"possible_edge_location_ratio": "0.05"}, r"leaves no room for training edges"),
    ({"min_background_intensity": "0.5"}, r"min_background_intensity \(0.5\) must not exceed"),
])
def test_inconsistent_options_are_config_errors(given, message):
    options = resolve_options(EDGES.options, given, owner="dataset 'edges'")
    with pytest.raises(ConfigError, match=message):
        EDGES.load(data_dir=None, seed=0, download=False, **options)


def test_declared_options_validate_text():
    with pytest.raises(ConfigError, match="num_classes.*must be one of 3, 4, 5"):
        resolve_options(EDGES.options, {"num_classes": "6"}, owner="dataset 'edges'")
    with pytest.raises(ConfigError, match="unknown option.*colour.*valid options: data_per_class"):
        resolve_options(EDGES.options, {"colour": "red"}, owner="dataset 'edges'")
    assert resolve_options(EDGES.options, {"use_permutation": "true"}, owner="e")["use_permutation"] is True
