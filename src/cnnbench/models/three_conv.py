"""``three_conv``: the CIFAR-10 "three convolutions only" assignment.

Plain: Conv k pad k//2 with (256, 128, 64) filters, each + ReLU + MaxPool 2; FC (512, 128) with ReLU
and Dropout(``dropout``); Linear classes. 967,754 parameters on 32x32x3, 10 classes.
``batch_norm``: BatchNorm2d after each conv and BatchNorm1d after each hidden FC (before ReLU).
``dense``: a dense block; conv i sees the concatenation of the input and every earlier conv's
output, channels (128, 64, 32), one MaxPool 2 on the last conv's output, FC (1024, 128).
8,657,418 parameters on 32x32x3.
"""

from __future__ import annotations

from collections import OrderedDict
from math import prod

import torch
from torch import nn

from cnnbench.models.base import conv_block, mark, output_shape, require_min_size, require_odd_kernel
from cnnbench.registry import ModelPlugin, Option

PLAIN = {"channels": (256, 128, 64), "hidden": (512, 128)}
DENSE = {"channels": (128, 64, 32), "hidden": (1024, 128)}


class DenseBlock(nn.Module):
    """Conv layers each fed the channel-concatenation of the block input and all earlier outputs."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], k: int, batch_norm: bool) -> None:
        super().__init__()
        convs = []
        seen = in_channels
        for width in channels:
            convs.append(nn.Sequential(*conv_block(seen, width, k, batch_norm=batch_norm)))
            seen += width
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        for conv in self.convs:
            outputs.append(conv(torch.cat(outputs, dim=1)))
        return outputs[-1]


def _features(in_channels: int, k: int, batch_norm: bool, dense: bool) -> nn.Sequential:
    if dense:
        return nn.Sequential(DenseBlock(in_channels, DENSE["channels"], k, batch_norm), nn.MaxPool2d(2))
    stages = []
    cin = in_channels
    for width in PLAIN["channels"]:
        stages.append(nn.Sequential(*conv_block(cin, width, k, batch_norm=batch_norm), nn.MaxPool2d(2)))
        cin = width
    return nn.Sequential(*stages)


def _head(flat: int, hidden: tuple[int, ...], batch_norm: bool, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers.append(nn.Linear(flat, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers += [nn.ReLU(), nn.Dropout(dropout)]
        flat = width
    return nn.Sequential(*layers)


def build(*, num_classes: int, in_channels: int, image_size: tuple[int, int], kernel_size: int,
          batch_norm: bool, dropout: float, dense: bool) -> nn.Module:
    require_odd_kernel(kernel_size)
    pools = 1 if dense else len(PLAIN["channels"])
    require_min_size(image_size, 2 ** pools, f"{pools} max-pool(s) of 2x2")
    features = _features(in_channels, kernel_size, batch_norm, dense)
    flat = prod(output_shape(features, in_channels, image_size))
    hidden = (DENSE if dense else PLAIN)["hidden"]
    model = nn.Sequential(OrderedDict(
        features=features, head=_head(flat, hidden, batch_norm, dropout), classifier=nn.Linear(hidden[-1], num_classes),
    ))
    first_conv = "features.0.convs.0.0" if dense else "features.0.0"
    return mark(model, classifier="classifier", intermediate="features", first_conv=first_conv)


THREE_CONV = ModelPlugin(
    build=build,
    description="three convolutions only: convs of 256/128/64 filters + FC 512, 128 (or a dense block)",
    natural_input=(3, 32, 32), natural_classes=10,
    options=(
        Option("kernel_size", "int", 3, "convolution kernel size (odd; 'same' padding)", low=1),
        Option("batch_norm", "bool", False, "BatchNorm2d after each conv, BatchNorm1d after each hidden FC"),
        Option("dropout", "float", 0.0, "dropout after each hidden FC", low=0.0, high=0.99),
        Option("dense", "bool", False, "dense block: each conv sees the input and all earlier outputs; channels 128/64/32, FC 1024, 128"),
    ),
)
