"""An example cnnbench model plugin: ``tiny_cnn``, two 'same' convolutions and a linear head.

What a plugin needs:
1. a builder taking keyword-only ``num_classes``, ``in_channels``, ``image_size`` and its options;
2. ``cnnbench.models.base.mark`` to name its feature points (for t-SNE, retrieval and kernels);
3. a ``ModelPlugin`` declaring every option (name, type, default, help) — the CLI validates
   ``--model-option`` against it, ``cnnbench info`` shows it, MLflow logs it, ``tune`` searches it;
4. an entry point in ``setup.cfg`` under ``cnnbench.models``.
"""

from __future__ import annotations

from torch import nn

from cnnbench.models.base import mark, require_min_size, require_odd_kernel
from cnnbench.registry import ModelPlugin, Option


def build(*, num_classes: int, in_channels: int, image_size: tuple[int, int], width: int, kernel_size: int) -> nn.Module:
    require_odd_kernel(kernel_size)  # the registry adds "model 'tiny_cnn'" to the message
    require_min_size(image_size, 4, "two 2x2 poolings")
    pad = kernel_size // 2
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(in_channels, width, kernel_size, padding=pad))
    model.add_module("relu1", nn.ReLU())
    model.add_module("pool1", nn.MaxPool2d(2))
    model.add_module("conv2", nn.Conv2d(width, 2 * width, kernel_size, padding=pad))
    model.add_module("relu2", nn.ReLU())
    model.add_module("pool2", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("classifier", nn.Linear(2 * width, num_classes))
    return mark(model, classifier="classifier", intermediate="relu2", first_conv="conv1")


TINY_CNN = ModelPlugin(
    build=build,
    description="example plugin: two 'same' convs, global average pool, linear head",
    options=(
        Option("width", "int", 8, "filters in the first conv (the second has twice as many)", low=1),
        Option("kernel_size", "int", 3, "convolution kernel size (odd)", low=1),
    ),
)
