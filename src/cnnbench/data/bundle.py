"""The in-memory form every dataset plugin returns: uint8 image tensors and int64 labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnbench.errors import DataError


@dataclass
class Split:
    """One split: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,) in [0, num_classes)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise DataError(f"labels must be (N,) with N={len(self.images)}, got {tuple(self.labels.shape)}")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])


class TrainShape:
    """Image shape of a collection of splits, read off its ``train`` split."""

    train: Split

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])


@dataclass
class DatasetBundle(TrainShape):
    """What a dataset plugin's ``load`` returns.

    ``val`` is set only by plugins whose validation set differs in kind from the training set (e.g.
    the domain-shift option of ``edges``); otherwise the pipeline holds out ``--val-split`` of
    train. ``mean``/``std`` are per channel in [0, 1] units; when ``None`` they are computed from the
    training split.
    """

    train: Split
    test: Split
    classes: tuple[str, ...]
    val: Split | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        k = len(self.classes)
        for name in ("train", "val", "test"):
            split = getattr(self, name)
            if split is None or len(split) == 0:
                continue
            lo, hi = int(split.labels.min()), int(split.labels.max())
            if lo < 0 or hi >= k:
                raise DataError(f"{name} labels must lie in [0, {k - 1}] for {k} classes; found [{lo}, {hi}]")
