"""The device loader: the whole split lives on the training device as uint8; batching, shuffling,
augmentation and normalisation are tensor ops there (no DataLoader, no per-sample Python).

Per batch: one index gather of uint8 pixels, flip-crop on uint8 (a quarter of the bytes of
float), then one float conversion and an in-place normalisation as the last step, so padding
and the affine warp's fill are black pixels as in torchvision's transforms."""

from __future__ import annotations

from typing import Iterator

import torch

from cnnbench.data.augment import AugmentParams, augment
from cnnbench.data.bundle import Split


class DeviceLoader:
    """Iterate ``(images, labels)`` batches: images float32 normalised (N, C, H, W), labels int64.

    Shuffling and augmentation draw from a generator seeded by ``(seed, epoch)``, so epoch ``e``
    is the same batch sequence whether training ran straight through or was resumed at ``e``.
    """

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        device: torch.device,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        shuffle: bool = False,
        augmentation: str = "none",
        seed: int = 0,
        channels_last: bool = False,
        augment_params: AugmentParams | None = None,
    ) -> None:
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.device = device
        c = self.images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, c, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32, device=device).view(1, c, 1, 1) * 255.0)
        self.shuffle = shuffle
        self.augmentation = augmentation
        self.augment_params = augment_params
        self.seed = seed
        self.channels_last = channels_last
        self.epoch = 0

    def __len__(self) -> int:
        return (self._used() + self.batch_size - 1) // self.batch_size

    def _used(self) -> int:
        """Images iterated per epoch. A shuffled (training) loader skips a final batch of exactly one
        image: BatchNorm cannot train on a single image whose feature map is 1x1, and the shuffle
        changes which image sits out each epoch."""
        n = len(self.labels)
        return n - 1 if self.shuffle and n > 1 and n % self.batch_size == 1 else n

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Raw pixels (uint8 or float in 0..255) to normalised float32 (a new tensor)."""
        x = images.float() if images.dtype != torch.float32 else images.clone()
        return x.sub_(self.mean).mul_(self.inv_std)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.labels), device=self.device, generator=gen) if self.shuffle else None
        n = self._used()
        for start in range(0, n, self.batch_size):
            idx = slice(start, start + self.batch_size) if order is None else order[start : start + self.batch_size]
            x = self.images[idx]
            if self.augmentation != "none":
                x = augment(x, self.augmentation, gen, self.augment_params)
            x = self.normalise(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
