"""The peers' shared data and model: scikit-learn's digits as cnnbench serves them (0..255 scaled to [0, 1],
bilinearly upsampled to 28x28, a fixed stratified 20% test split, 10% of train held out for validation) and
LeNet-5 (6 and 16 5x5 convolutions, max-pooling, 120-84-10). Imported by the peer scripts beside it."""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def options(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", default="peers")
    return parser.parse_args()


def splits(seed: int, train_size: int | None) -> dict[str, TensorDataset]:
    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.float32) / 255.0)[:, None]
    images = nn.functional.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=0.2, stratify=labels, random_state=0)
    train, val = train_test_split(train, test_size=0.1, stratify=labels[train], random_state=seed)
    if train_size is not None and train_size < len(train):
        train, _ = train_test_split(train, train_size=train_size, stratify=labels[train], random_state=seed)
    return {name: TensorDataset(images[i], labels[i]) for name, i in (("train", train), ("val", val), ("test", test))}


def loaders(args: argparse.Namespace) -> dict[str, DataLoader]:
    data = splits(args.seed, args.train_size)
    return {name: DataLoader(ds, batch_size=args.batch_size if name == "train" else 512, shuffle=name == "train")
            for name, ds in data.items()}


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
