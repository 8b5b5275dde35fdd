"""``lenet5``: the LeNet-5 of the Fashion-MNIST assignment (61,706 parameters on 28x28x1, 10 classes).

conv 6@k 'same' + ReLU, maxpool 2, conv 16@k valid + ReLU, maxpool 2, conv 120@k valid + ReLU,
FC 84 + ReLU, FC classes. ``batch_norm`` goes after each conv (before ReLU); ``dropout`` after each
pool and after conv3.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnbench.models.base import mark, require_min_size, require_odd_kernel
from cnnbench.registry import ModelPlugin, Option


def _conv(cin: int, cout: int, k: int, padding: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=padding)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    return layers + [nn.ReLU()]


def min_input(kernel_size: int) -> int:
    """Smallest square input: after 'same' conv + pool, valid conv + pool, valid conv >= 1 pixel."""
    k = kernel_size
    # conv3 needs k pixels -> before pool2: 2k; conv2 valid needs +k-1 -> 2k+k-1; before pool1: x2
    return 2 * (2 * k + k - 1)


def build(*, num_classes: int, in_channels: int, image_size: tuple[int, int], kernel_size: int = 5, dropout: float = 0.0, batch_norm: bool = False) -> nn.Module:
    require_odd_kernel("lenet5", kernel_size)
    require_min_size("lenet5", image_size, min_input(kernel_size), f"kernel size {kernel_size}")
    k = kernel_size
    drop = [nn.Dropout(dropout)] if dropout > 0 else []
    features = nn.Sequential(
        *_conv(in_channels, 6, k, k // 2, batch_norm), nn.MaxPool2d(2), *drop,
        *_conv(6, 16, k, 0, batch_norm), nn.MaxPool2d(2), *drop,
        *_conv(16, 120, k, 0, batch_norm), *drop,
    )
    model = nn.Sequential()
    model.add_module("features", features)
    model.add_module("flatten", nn.Flatten())
    # conv3's output is 1x1 on 28x28 inputs; a larger input leaves a larger map, which FC 84 absorbs
    with torch.no_grad():
        flat = features(torch.zeros(1, in_channels, *image_size)).numel()
    model.add_module("fc", nn.Sequential(nn.Linear(flat, 84), nn.ReLU()))
    model.add_module("classifier", nn.Linear(84, num_classes))
    intermediate = f"features.{len(features) - 1}"
    return mark(model, classifier="classifier", intermediate=intermediate, first_conv="features.0")


LENET5 = ModelPlugin(
    build=build,
    description="LeNet-5: 3 convs (6, 16, 120 filters) + FC 84; 61,706 parameters on 28x28x1",
    options=(
        Option("kernel_size", "int", 5, "convolution kernel size (odd)", low=1),
        Option("dropout", "float", 0.0, "dropout after each pool and after conv3 (the assignment used 0.5)", low=0.0, high=0.99),
        Option("batch_norm", "bool", False, "BatchNorm2d after each conv, before ReLU"),
    ),
)
