"""Splits, subsets, resizing, channel statistics, batched augmentation and the device loader."""

from __future__ import annotations

import pytest
import torch

from cnnbench.data import pipeline
from cnnbench.data.augment import augment, check_augmentation, flip_crop, random_affine
from cnnbench.data.bundle import DatasetBundle, Split
from cnnbench.data.loader import DeviceLoader
from cnnbench.errors import ConfigError


def _bundle(n_per_class=20, classes=4, size=8, val=None):
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = (torch.arange(len(labels)) % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()
    test = Split(images[:8].clone(), labels[:8].clone())
    return DatasetBundle(train=Split(images, labels), test=test, classes=tuple("abcd"[:classes]), val=val)


def test_val_hold_out_and_train_size_are_stratified_disjoint_and_seeded():
    b = _bundle()
    p = pipeline.prepare(b, val_split=0.25, seed=1, train_size=30)
    assert len(p.val) == 20 and p.val.labels.bincount().tolist() == [5, 5, 5, 5]
    assert len(p.train) == 30 and set(p.train.labels.bincount().tolist()) <= {7, 8}
    ids = lambda s: set(s.images[:, 0, 0, 0].tolist())  # noqa: E731 - each image carries its index
    assert ids(p.train).isdisjoint(ids(p.val))
    assert p.test is b.test  # never touched
    again = pipeline.prepare(b, val_split=0.25, seed=1, train_size=30)
    other = pipeline.prepare(b, val_split=0.25, seed=2, train_size=30)
    assert ids(again.train) == ids(p.train) and ids(other.val) != ids(p.val)


def test_train_size_errors_give_the_available_count():
    b = _bundle()
    with pytest.raises(ConfigError, match=r"--train-size must be between 1 and 72 \(the training images left after "
                                          r"the validation hold-out\); got 73"):
        pipeline.prepare(b, val_split=0.1, seed=0, train_size=73)
    with pytest.raises(ConfigError, match=r"between 1 and 72 .*got 0"):
        pipeline.prepare(b, val_split=0.1, seed=0, train_size=0)
    assert len(pipeline.prepare(b, val_split=0.1, seed=0, train_size=72).train) == 72


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_val_split_outside_open_interval(bad):
    with pytest.raises(ConfigError, match=rf"--val-split must lie strictly between 0 and 1; got {bad}"):
        pipeline.prepare(_bundle(), val_split=bad, seed=0)


def test_plugin_validation_split_is_kept_and_train_size_counts_all_train():
    val = Split(torch.zeros(6, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 2, 3, 0, 1]))
    p = pipeline.prepare(_bundle(val=val), val_split=0.5, seed=0, train_size=80)
    assert p.val is val and len(p.train) == 80
    with pytest.raises(ConfigError, match=r"between 1 and 80 \(the training images in the training split\)"):
        pipeline.prepare(_bundle(val=val), val_split=0.5, seed=0, train_size=81)


def test_tiny_classes_fall_back_to_a_plain_split():
    labels = torch.tensor([0, 0, 0, 0, 1])
    rest, picked = pipeline.stratified_indices(labels, 0.2, seed=0)
    assert len(picked) == 1 and len(rest) == 4 and set(rest) | set(picked) == set(range(5))


def test_image_size_resizes_every_split():
    p = pipeline.prepare(_bundle(), val_split=0.1, seed=0, image_size=12)
    assert p.train.images.shape[2:] == p.val.images.shape[2:] == p.test.images.shape[2:] == (12, 12)
    assert p.image_size == (12, 12)
    # a flat image stays flat at the same value
    assert (p.test.images[3] == 3).all()
    with pytest.raises(ConfigError, match="--image-size must be positive"):
        pipeline.prepare(_bundle(), val_split=0.1, seed=0, image_size=0)


def test_channel_stats_are_exact_and_cached(monkeypatch):
    images = torch.randint(0, 256, (50, 3, 5, 7), dtype=torch.uint8)
    mean, std = pipeline.channel_stats(images)
    x = images.double() / 255
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), x.mean(dim=(0, 2, 3)), atol=1e-9)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), x.std(dim=(0, 2, 3), unbiased=False), atol=1e-9)
    monkeypatch.setattr(torch, "bincount", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert pipeline.channel_stats(images.clone()) == (mean, std)  # same content: served from the cache
    flat = torch.full((4, 1, 2, 2), 9, dtype=torch.uint8)
    with pytest.raises(AssertionError, match="recomputed"):
        pipeline.channel_stats(flat)


def test_declared_mean_std_win_over_computed():
    b = _bundle()
    b.mean, b.std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    p = pipeline.prepare(b, val_split=0.1, seed=0)
    assert p.mean == (0.1, 0.2, 0.3) and p.std == (0.4, 0.5, 0.6)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_flip_crop_matches_torchvision_semantics_per_image():
    x = torch.randint(1, 256, (64, 3, 6, 6), dtype=torch.uint8)
    out = flip_crop(x, _gen())
    assert out.dtype == torch.uint8 and out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):  # every output is a window of the (possibly mirrored) zero-padded image
        candidates = [padded[i], padded[i].flip(-1)]
        assert any(torch.equal(out[i], c[:, dy:dy + 6, dx:dx + 6])
                   for c in candidates for dy in range(9) for dx in range(9))
    assert (out == 0).any()  # some crops reach into the black padding
    assert torch.equal(out, flip_crop(x, _gen()))  # deterministic by generator seed


def test_flip_only_mirrors_about_half_and_crop_only_never_mirrors():
    from cnnbench.data.augment import random_crop, random_flip

    x = torch.arange(2 * 8).view(1, 1, 2, 8).expand(400, 1, 2, 8).to(torch.uint8)
    flipped = random_flip(x, _gen())
    mirrored = (flipped == x.flip(-1)).all(dim=(1, 2, 3))
    assert ((flipped == x).all(dim=(1, 2, 3)) | mirrored).all() and 140 < int(mirrored.sum()) < 260
    cropped = random_crop(x, _gen(), padding=0)
    assert torch.equal(cropped, x)


def test_strong_augmentation_is_float_and_bounded_and_unknown_names_rejected():
    x = torch.full((8, 3, 16, 16), 200, dtype=torch.uint8)
    out = augment(x, "strong", _gen())
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 200.001
    assert (out[:, :, 8, 8] > 150).all()  # the centre stays image, borders may be black fill
    assert random_affine(x, _gen()).shape == x.shape
    with pytest.raises(ConfigError, match="unknown augmentation 'mixup'; accepted: none, flip-crop, strong"):
        check_augmentation("mixup")
    with pytest.raises(ConfigError, match="unknown augmentation"):
        augment(x, "mixup", _gen())


def test_device_loader_batches_shuffles_normalises_and_is_seeded():
    labels = torch.arange(10)
    images = torch.arange(10, dtype=torch.uint8).mul(20).view(10, 1, 1, 1).expand(10, 1, 8, 8).clone()
    make = lambda **k: DeviceLoader(Split(images, labels), batch_size=4, device=torch.device("cpu"),  # noqa: E731
                                    mean=(0.5,), std=(0.25,), **k)
    plain = list(make())
    assert len(make()) == 3 and [len(y) for _, y in plain] == [4, 4, 2]
    x0, y0 = plain[0]
    assert torch.allclose(x0[:, 0, 0, 0], (y0.float() * 20 / 255 - 0.5) / 0.25)
    shuffled = make(shuffle=True, seed=3)
    epoch0 = torch.cat([y for _, y in shuffled])
    assert sorted(epoch0.tolist()) == list(range(10)) and epoch0.tolist() != list(range(10))
    assert torch.equal(epoch0, torch.cat([y for _, y in make(shuffle=True, seed=3)]))
    shuffled.set_epoch(1)
    assert not torch.equal(epoch0, torch.cat([y for _, y in shuffled]))
    for x, y in make(shuffle=True, augmentation="flip-crop"):  # pixels stay tied to their labels
        centre = x[:, 0, 3:5, 3:5] * 0.25 + 0.5  # a 4-pixel shift keeps one image pixel here
        assert torch.allclose(centre.amax(dim=(1, 2)), y.float() * 20 / 255, atol=1e-6)
    x_cl, _ = next(iter(make(channels_last=True)))
    assert x_cl.is_contiguous(memory_format=torch.channels_last)


def test_training_loader_skips_a_final_single_image_batch():
    """A BatchNorm model with a 1x1 final map cannot train on a batch of one image."""
    import torch

    from cnnbench.data.bundle import Split
    from cnnbench.data.loader import DeviceLoader

    split = Split(torch.zeros(9, 1, 4, 4, dtype=torch.uint8), torch.arange(9) % 2)
    common = dict(batch_size=4, device=torch.device("cpu"), mean=(0.0,), std=(1.0,))
    train = DeviceLoader(split, shuffle=True, **common)
    assert [len(y) for _, y in train] == [4, 4] and len(train) == 2
    evaluation = DeviceLoader(split, shuffle=False, **common)  # evaluation still sees every image
    assert [len(y) for _, y in evaluation] == [4, 4, 1] and len(evaluation) == 3
