"""``strided_cnn`` and ``maxpool_cnn``: the Keras CIFAR-10 study (all convs k x k, 'same' padding).

strided_cnn: Conv 16, Conv 16 /2, Conv 32, Conv 32 /2, Dropout 0.5, Flatten, Dense classes
(37,146 parameters on 32x32x3, 10 classes); ``extra_layers`` puts Conv 8, Conv 8 /2 in front
(23,314 parameters: the extra halving shrinks the dense layer more than the convs add).
maxpool_cnn: every stride-2 conv becomes a stride-1 conv + MaxPool 2x2, in ``modules`` of
(Conv, Conv, MaxPool) with 16, 32, 64, 128 filters; ``modules=2`` has the same 37,146 parameters.

Keras pads a stride-2 'same' conv asymmetrically (right/bottom); PyTorch pads k // 2 on every side.
Output sizes (ceil(n / 2)) and parameter counts are identical; only the border alignment differs.
The study put L1 on the dense layer's weights, so that layer is the marked penalty target.
``hidden=N`` (R0-G) inserts Dense(N) + ReLU + Dropout(``dropout``) between Flatten and the output
layer (2,125,082 parameters with N = 1024 on strided_cnn); the L1 penalty stays on the output layer.
``init=xavier``: Keras' default initialisation (Glorot-uniform kernels, zero biases).
"""

from __future__ import annotations

from collections import OrderedDict
from math import prod

from torch import nn

from cnnbench.models.base import INITS, conv_block, mark, output_shape, require_min_size, require_odd_kernel, xavier_init
from cnnbench.registry import ModelPlugin, Option

EXTRA_WIDTH = 8
WIDTHS = (16, 32, 64, 128)
MODULES = (2, 3, 4)


def _strided_layers(in_channels: int, k: int, extra_layers: bool) -> list[nn.Module]:
    widths = ((EXTRA_WIDTH,) if extra_layers else ()) + WIDTHS[:2]
    layers: list[nn.Module] = []
    cin = in_channels
    for width in widths:
        layers += conv_block(cin, width, k) + conv_block(width, width, k, stride=2)
        cin = width
    return layers


def _pooled_layers(in_channels: int, k: int, extra_layers: bool, modules: int) -> list[nn.Module]:
    widths = ((EXTRA_WIDTH,) if extra_layers else ()) + WIDTHS[:modules]
    layers: list[nn.Module] = []
    cin = in_channels
    for width in widths:
        layers += conv_block(cin, width, k) + conv_block(width, width, k) + [nn.MaxPool2d(2)]
        cin = width
    return layers


def _assemble(layers: list[nn.Module], in_channels: int, image_size: tuple[int, int], num_classes: int, dropout: float,
              hidden: int, init: str) -> nn.Module:
    features = nn.Sequential(*layers)
    flat = prod(output_shape(features, in_channels, image_size))
    parts = OrderedDict(features=features, dropout=nn.Dropout(dropout), flatten=nn.Flatten())
    if hidden:
        parts["hidden"] = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(dropout))
        flat = hidden
    parts["classifier"] = nn.Linear(flat, num_classes)
    model = nn.Sequential(parts)
    if init == "xavier":
        xavier_init(model)
    return mark(model, classifier="classifier", intermediate="features", first_conv="features.0",
                penalty=("classifier.weight",))


def build_strided(*, num_classes: int, in_channels: int, image_size: tuple[int, int], kernel_size: int,
                  extra_layers: bool, dropout: float, hidden: int, init: str) -> nn.Module:
    # stride-2 'same' convs give ceil(n / 2) pixels, never 0: any input size works
    require_odd_kernel(kernel_size)
    layers = _strided_layers(in_channels, kernel_size, extra_layers)
    return _assemble(layers, in_channels, image_size, num_classes, dropout, hidden, init)


def build_maxpool(*, num_classes: int, in_channels: int, image_size: tuple[int, int], kernel_size: int,
                  modules: int, extra_layers: bool, dropout: float, hidden: int, init: str) -> nn.Module:
    require_odd_kernel(kernel_size)
    pools = modules + int(extra_layers)
    require_min_size(image_size, 2 ** pools, f"{pools} max-pools of 2x2")
    layers = _pooled_layers(in_channels, kernel_size, extra_layers, modules)
    return _assemble(layers, in_channels, image_size, num_classes, dropout, hidden, init)


_COMMON = (
    Option("kernel_size", "int", 3, "convolution kernel size (odd; 'same' padding)", low=1),
    Option("extra_layers", "bool", False, "two Conv 8 layers in front, then a halving (stride-2 conv or max-pool)"),
    Option("dropout", "float", 0.5, "dropout before the dense layer (the study used 0.5)", low=0.0, high=0.99),
    Option("hidden", "int", 0, "units of a hidden Dense + ReLU + dropout layer before the output (0: none; "
           "the study's extra head: 1024)", low=0, high=65536),
    Option("init", "str", "default", "xavier: Keras' Glorot-uniform kernels and zero biases", choices=INITS),
)

STRIDED_CNN = ModelPlugin(
    build=build_strided,
    description="Keras CIFAR-10 study: 4 convs (16, 16/2, 32, 32/2) + dense; 37,146 parameters on 32x32x3",
    natural_input=(3, 32, 32), natural_classes=10, channels_last_cpu=True,  # 1.08x (bench_channels_last.py)
    options=_COMMON,
)

MAXPOOL_CNN = ModelPlugin(
    build=build_maxpool,
    description="Keras CIFAR-10 study: (conv, conv, max-pool) modules of 16/32/64/128 filters + dense",
    natural_input=(3, 32, 32), natural_classes=10,
    options=_COMMON[:1] + (
        Option("modules", "int", 2, "number of (conv, conv, max-pool) modules", choices=MODULES),
    ) + _COMMON[1:],
)
