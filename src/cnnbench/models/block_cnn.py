"""``block_cnn``: the PyTorch CIFAR-10 regularisation lab's network.

``blocks`` (2 or 3) conv blocks; block i = Conv k pad k//2 + ReLU, Conv + ReLU, MaxPool 2, then
BatchNorm2d when ``batch_norm``; channels (32, 64), (128, 128), (256, 256). Head: Linear(flat, 1024)
+ ReLU, Linear(1024, 512) + ReLU, Linear(512, classes), with Dropout(``dropout``) after each hidden
Linear (the lab used 0.2). 9,160,394 parameters with 2 blocks on 32x32x3, 5,851,338 with 3.
"""

from __future__ import annotations

from collections import OrderedDict
from math import prod

from torch import nn

from cnnbench.models.base import conv_block, mark, output_shape, require_min_size, require_odd_kernel
from cnnbench.registry import ModelPlugin, Option

BLOCK_CHANNELS = ((32, 64), (128, 128), (256, 256))
BLOCKS = (2, 3)
HIDDEN = (1024, 512)


def _block(cin: int, widths: tuple[int, int], k: int, batch_norm: bool) -> nn.Sequential:
    first, second = widths
    layers = conv_block(cin, first, k) + conv_block(first, second, k) + [nn.MaxPool2d(2)]
    if batch_norm:  # the lab normalised after pooling, not after each conv
        layers.append(nn.BatchNorm2d(second))
    return nn.Sequential(*layers)


def _head(flat: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for width in HIDDEN:
        layers += [nn.Linear(flat, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        flat = width
    return nn.Sequential(*layers)


def build(*, num_classes: int, in_channels: int, image_size: tuple[int, int], blocks: int,
          kernel_size: int, batch_norm: bool, dropout: float) -> nn.Module:
    require_odd_kernel(kernel_size)
    require_min_size(image_size, 2 ** blocks, f"{blocks} max-pools of 2x2")
    stages = []
    cin = in_channels
    for widths in BLOCK_CHANNELS[:blocks]:
        stages.append(_block(cin, widths, kernel_size, batch_norm))
        cin = widths[1]
    features = nn.Sequential(*stages)
    flat = prod(output_shape(features, in_channels, image_size))
    model = nn.Sequential(OrderedDict(
        features=features, head=_head(flat, dropout), classifier=nn.Linear(HIDDEN[-1], num_classes),
    ))
    return mark(model, classifier="classifier", intermediate="features", first_conv="features.0.0")


BLOCK_CNN = ModelPlugin(
    build=build,
    description="regularisation lab: 2-3 conv blocks (32/64, 128/128, 256/256) + FC 1024, 512",
    natural_input=(3, 32, 32), natural_classes=10, channels_last_cpu=True,  # 1.15x (bench_channels_last.py)
    options=(
        Option("blocks", "int", 2, "number of conv blocks", choices=BLOCKS),
        Option("kernel_size", "int", 3, "convolution kernel size (odd; 'same' padding)", low=1),
        Option("batch_norm", "bool", False, "BatchNorm2d after each block's max-pool"),
        Option("dropout", "float", 0.0, "dropout after each hidden Linear (the lab used 0.2)", low=0.0, high=0.99),
    ),
)
