"""``digits``: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, no download).

Served at 28x28 by default (bilinear upsampling) so MNIST-sized models run unchanged; ``size=8``
keeps the native resolution. The 20% test split is fixed (stratified, seed 0) so every run and
every seed is scored on the same images.
"""

from __future__ import annotations

import math

from pathlib import Path

from cnnbench.registry import DatasetInfo, DatasetPlugin, FakeData, Option

TEST_FRACTION = 0.2
TEST_SEED = 0  # fixed on purpose: the test set must not move with --seed
NUM_IMAGES = 1797
CLASSES = tuple(str(d) for d in range(10))


def describe(*, size: int) -> DatasetInfo:
    test = math.ceil(NUM_IMAGES * TEST_FRACTION)  # as scikit-learn's stratified split rounds
    return DatasetInfo(1, size, size, 10, CLASSES, NUM_IMAGES - test, test)


def load(*, data_dir: Path | None = None, seed: int = 0, download: bool = True, size: int):
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from cnnbench.data.bundle import DatasetBundle, Split
    from cnnbench.data.pipeline import resize, stratified_indices

    digits = load_digits()
    # pixel values are 0..16: scale to 0..255 uint8
    images = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = stratified_indices(labels, TEST_FRACTION, TEST_SEED)
    full = Split(images, labels)
    train, test = full.subset(torch.as_tensor(train_idx)), full.subset(torch.as_tensor(test_idx))
    if size != 8:
        train, test = resize(train, size), resize(test, size)
    return DatasetBundle(train=train, test=test, classes=CLASSES)


def write_fake(root: Path, n: int = 8) -> FakeData:
    """Embedded in scikit-learn, so no files: the options of the smallest images (``n`` pixels a side)."""
    info = describe(size=n)
    return FakeData(train=info.train_size, test=info.test_size, options={"size": n})


DIGITS = DatasetPlugin(
    load=load,
    describe=describe,
    description="scikit-learn's 1,797 handwritten digits (embedded, no download), 28x28 by default",
    options=(Option("size", "int", 28, "image side in pixels (8 = native; larger is bilinearly upsampled)", low=8, high=512),),
    write_fake=write_fake,
)
