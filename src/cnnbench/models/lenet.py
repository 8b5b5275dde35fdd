"""``lenet5``: the LeNet-5 of the Fashion-MNIST assignment (61,706 parameters on 28x28x1, 10 classes).

conv 6@k 'same' + ReLU, maxpool 2, conv 16@k valid + ReLU, maxpool 2, conv 120@k valid + ReLU,
FC 84 + ReLU, FC classes. ``batch_norm`` goes after each conv (before ReLU); ``dropout`` after each
pool and after conv3.
"""

from __future__ import annotations

from math import prod

from torch import nn

from cnnbench.models.base import conv_block, mark, output_shape, require_min_size, require_odd_kernel
from cnnbench.registry import ModelPlugin, Option


def min_input(kernel_size: int) -> int:
    """Smallest square input: after 'same' conv + pool, valid conv + pool, valid conv >= 1 pixel."""
    k = kernel_size
    # conv3 needs k pixels -> before pool2: 2k; conv2 valid needs +k-1 -> 2k+k-1; before pool1: x2
    return 2 * (2 * k + k - 1)


def build(*, num_classes: int, in_channels: int, image_size: tuple[int, int], kernel_size: int, dropout: float, batch_norm: bool) -> nn.Module:
    require_odd_kernel(kernel_size)
    require_min_size(image_size, min_input(kernel_size), f"kernel size {kernel_size}")
    k = kernel_size

    def drop() -> list[nn.Module]:  # a fresh module each time: a shared one would fire every hook thrice
        return [nn.Dropout(dropout)] if dropout > 0 else []

    features = nn.Sequential(
        *conv_block(in_channels, 6, k, batch_norm=batch_norm), nn.MaxPool2d(2), *drop(),
        *conv_block(6, 16, k, padding=0, batch_norm=batch_norm), nn.MaxPool2d(2), *drop(),
        *conv_block(16, 120, k, padding=0, batch_norm=batch_norm), *drop(),
    )
    model = nn.Sequential()
    model.add_module("features", features)
    model.add_module("flatten", nn.Flatten())
    # conv3's output is 1x1 on 28x28 inputs; a larger input leaves a larger map, which FC 84 absorbs
    flat = prod(output_shape(features, in_channels, image_size))
    model.add_module("fc", nn.Sequential(nn.Linear(flat, 84), nn.ReLU()))
    model.add_module("classifier", nn.Linear(84, num_classes))
    intermediate = f"features.{len(features) - 1}"
    return mark(model, classifier="classifier", intermediate=intermediate, first_conv="features.0")


LENET5 = ModelPlugin(
    build=build,
    description="LeNet-5: 3 convs (6, 16, 120 filters) + FC 84; 61,706 parameters on 28x28x1",
    natural_input=(1, 28, 28), natural_classes=10,
    options=(
        Option("kernel_size", "int", 5, "convolution kernel size (odd)", low=1),
        Option("dropout", "float", 0.0, "dropout after each pool and after conv3 (the assignment used 0.5)", low=0.0, high=0.99),
        Option("batch_norm", "bool", False, "BatchNorm2d after each conv, before ReLU"),
    ),
)
