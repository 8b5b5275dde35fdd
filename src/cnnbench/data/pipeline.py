"""From a plugin's bundle to the splits a run trains on: validation hold-out, training subset,
resizing and normalisation statistics. The test split is never touched by any of them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cnnbench.data.bundle import DatasetBundle, Split
from cnnbench.errors import ConfigError


@dataclass
class PreparedData:
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])


def stratified_indices(labels: torch.Tensor, fraction: float | None, seed: int, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, picked), picking ``fraction`` (or ``count``) of every class.

    Uses scikit-learn's stratified splitter so class proportions are kept; deterministic by seed.
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    y = labels.cpu().numpy()
    size = count if count is not None else fraction
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 and (count is None or count >= len(counts)) else None
    rest, picked = train_test_split(idx, test_size=size, random_state=seed, stratify=stratify)
    return np.sort(rest), np.sort(picked)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of a uint8 (N, C, H, W) tensor (chunked, float64)."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += (chunk * chunk).sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(m) for m in mean), tuple(max(float(s), 1e-3) for s in std)


def resize(split: Split, size: int) -> Split:
    """Bilinear resize of every image to ``size`` x ``size`` (chunked to bound memory)."""
    if split.images.shape[-2:] == (size, size):
        return split
    out = []
    for start in range(0, len(split.images), 2048):
        chunk = split.images[start : start + 2048].float()
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(chunk.round_().clamp_(0, 255).to(torch.uint8))
    images = torch.cat(out) if out else split.images.new_zeros((0, split.images.shape[1], size, size))
    return Split(images, split.labels)


def prepare(
    bundle: DatasetBundle,
    *,
    val_split: float,
    seed: int,
    train_size: int | None = None,
    image_size: int | None = None,
) -> PreparedData:
    """Hold out ``val_split`` of train (stratified, by seed) unless the plugin gave a validation
    set, then take a stratified ``train_size`` subset of the rest; resize all splits if asked."""
    if not 0.0 < val_split < 1.0:
        raise ConfigError(f"--val-split must lie strictly between 0 and 1; got {val_split}")
    train, val = bundle.train, bundle.val
    if val is None:
        rest, held = stratified_indices(train.labels, val_split, seed)
        train, val = train.subset(torch.as_tensor(rest)), train.subset(torch.as_tensor(held))
    if train_size is not None:
        if train_size < 1 or train_size > len(train):
            raise ConfigError(
                f"--train-size must be between 1 and {len(train)} (the training images left after the "
                f"validation hold-out); got {train_size}"
            )
        if train_size < len(train):
            _, picked = stratified_indices(train.labels, None, seed, count=train_size)
            train = train.subset(torch.as_tensor(picked))
    test = bundle.test
    if image_size is not None:
        train, val, test = resize(train, image_size), resize(val, image_size), resize(test, image_size)
    if bundle.mean is not None and bundle.std is not None:
        mean, std = bundle.mean, bundle.std
    else:
        mean, std = channel_stats(train.images)
    return PreparedData(train, val, test, tuple(bundle.classes), tuple(mean), tuple(std))
