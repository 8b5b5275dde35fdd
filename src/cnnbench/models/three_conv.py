"""``three_conv``: the CIFAR-10 "three convolutions only" assignment.

Plain: Conv k pad k//2 with (256, 128, 64) filters, each + ReLU + MaxPool 2; FC (512, 128) with ReLU
and Dropout(``dropout``); Linear classes. 967,754 parameters on 32x32x3, 10 classes.
``batch_norm``: BatchNorm2d after each conv and BatchNorm1d after each hidden FC (before ReLU);
``fc_batch_norm=fc1`` keeps BatchNorm1d on the first hidden FC only, as the assignment's code does in
effect (it computes BN of fc2 and discards it; the parameter count, 969,930, is the same).
``channels`` (the conv widths, one conv + pool each) and ``hidden`` (the hidden FC widths: FC layers
= len(hidden) + 1) are the assignment's architecture search (R3-A); they shape the plain network.
``dense``: a dense block; conv i sees the concatenation of the input and every earlier conv's
output, channels (128, 64, 32), one MaxPool 2 on the last conv's output, FC (1024, 128).
8,657,418 parameters on 32x32x3.
"""

from __future__ import annotations

from collections import OrderedDict
from math import prod

import torch
from torch import nn

from cnnbench.errors import ModelInputError
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


class DiscardedBatchNorm(nn.Module):
    """A BatchNorm1d the network holds but whose output it throws away (the assignment's fc2 BN):
    the parameters exist (and are counted) but never change the forward pass."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.unused = nn.BatchNorm1d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _features(in_channels: int, k: int, batch_norm: bool, dense: bool, channels: tuple[int, ...]) -> nn.Sequential:
    if dense:
        return nn.Sequential(DenseBlock(in_channels, DENSE["channels"], k, batch_norm), nn.MaxPool2d(2))
    stages = []
    cin = in_channels
    for width in channels:
        stages.append(nn.Sequential(*conv_block(cin, width, k, batch_norm=batch_norm), nn.MaxPool2d(2)))
        cin = width
    return nn.Sequential(*stages)


def _head(flat: int, hidden: tuple[int, ...], batch_norm: bool, dropout: float, fc_batch_norm: str) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for i, width in enumerate(hidden):
        layers.append(nn.Linear(flat, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width) if fc_batch_norm == "all" or i == 0 else DiscardedBatchNorm(width))
        layers += [nn.ReLU(), nn.Dropout(dropout)]
        flat = width
    return nn.Sequential(*layers)


def build(*, num_classes: int, in_channels: int, image_size: tuple[int, int], kernel_size: int,
          batch_norm: bool, fc_batch_norm: str, dropout: float, dense: bool, channels: tuple[int, ...],
          hidden: tuple[int, ...]) -> nn.Module:
    require_odd_kernel(kernel_size)
    if dense and (tuple(channels) != PLAIN["channels"] or tuple(hidden) != PLAIN["hidden"]):
        raise ModelInputError("takes channels and hidden for the plain network only; dense=true has its own "
                              "(channels 128,64,32, hidden 1024,128): drop channels/hidden or dense")
    pools = 1 if dense else len(channels)
    require_min_size(image_size, 2 ** pools, f"{pools} max-pool(s) of 2x2")
    features = _features(in_channels, kernel_size, batch_norm, dense, tuple(channels))
    flat = prod(output_shape(features, in_channels, image_size))
    hidden = DENSE["hidden"] if dense else tuple(hidden)
    model = nn.Sequential(OrderedDict(
        features=features, head=_head(flat, hidden, batch_norm, dropout, fc_batch_norm),
        classifier=nn.Linear(hidden[-1] if hidden else flat, num_classes),
    ))
    first_conv = "features.0.convs.0.0" if dense else "features.0.0"
    return mark(model, classifier="classifier", intermediate="features", first_conv=first_conv)


THREE_CONV = ModelPlugin(
    build=build,
    description="three convolutions only: convs of 256/128/64 filters + FC 512, 128 (or a dense block)",
    natural_input=(3, 32, 32), natural_classes=10, channels_last_cpu=True,  # 1.19x (bench_channels_last.py)
    options=(
        Option("kernel_size", "int", 3, "convolution kernel size (odd; 'same' padding)", low=1),
        Option("batch_norm", "bool", False, "BatchNorm2d after each conv, BatchNorm1d after each hidden FC"),
        Option("fc_batch_norm", "str", "all", "hidden FCs that get BatchNorm1d with batch_norm: all, or fc1 (what the "
               "assignment's code does in effect)", choices=("all", "fc1")),
        Option("dropout", "float", 0.0, "dropout after each hidden FC", low=0.0, high=0.99),
        Option("dense", "bool", False, "dense block: each conv sees the input and all earlier outputs; channels 128/64/32, FC 1024, 128"),
        Option("channels", "ints", PLAIN["channels"], "filters of each conv (one conv + max-pool each; plain network)",
               low=1, high=4096),
        Option("hidden", "ints", PLAIN["hidden"], "widths of the hidden FC layers (FC layers = these + the output; "
               "plain network)", low=1, high=65536),
    ),
)
