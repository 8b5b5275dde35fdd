"""torchvision ResNets (``weights=None``) with the input channels and number of classes adapted.

``stem=cifar`` replaces the 7x7 stride-2 first conv and max-pool with a 3x3 stride-1 conv and no
pool, the usual choice for 32x32 images; ``stem=imagenet`` keeps torchvision's stem.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from cnnbench.models.base import mark, require_min_size
from cnnbench.registry import ModelPlugin, Option

# Smallest input for which layer4 still sees a 2x2 map before its stride-2 conv (padding makes any
# size run, but below this the last stage convolves mostly zeros): 4 halvings before layer4
# (imagenet stem) or 2 (cifar stem). MNIST-sized 28x28 inputs pass with either stem.
MIN_SIZE = {"imagenet": 16, "cifar": 4}


def build(*, num_classes: int, in_channels: int, image_size: tuple[int, int], depth: int, stem: str) -> nn.Module:
    import torchvision.models as tvm

    name = f"resnet{depth}"
    require_min_size(image_size, MIN_SIZE[stem], f"stem={stem}")
    model = getattr(tvm, name)(weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return mark(model, classifier="fc", intermediate="layer3", first_conv="conv1")


def _plugin(depth: int) -> ModelPlugin:
    # NHWC on CPU: measured 1.11x for resnet18 at 32 px (benchmarks/bench_channels_last.py); the deeper
    # ones share the builder but were not measured, so auto keeps them NCHW on CPU
    return ModelPlugin(
        build=partial(build, depth=depth),
        description=f"torchvision ResNet-{depth} (random init), stem=cifar for small images",
        natural_input=(3, 224, 224), natural_classes=10, channels_last_cpu=depth == 18,
        options=(Option("stem", "str", "imagenet", "first layers: imagenet (7x7/2 conv + max-pool) or cifar (3x3/1 conv, no pool)", choices=("imagenet", "cifar")),),
    )


RESNET18 = _plugin(18)
RESNET34 = _plugin(34)
RESNET50 = _plugin(50)
RESNET152 = _plugin(152)
