"""``fast_cnn``: the speed-run CIFAR-10 network (after Keller Jordan's airbench and David Page's
DAWNBench ResNet), sized by ``widths`` for the hardware.

A 2x2 convolution of 2 x (C x 4) filters (``whiten``: set once from the training images' 2x2-patch
covariance, each eigenvector divided by the square root of its eigenvalue and used with both signs,
then frozen; its bias trains), then three groups of conv 3x3 -> max-pool 2 -> batch norm -> GELU ->
conv 3x3 -> batch norm -> GELU (each conv's first filters start as the identity, ``dirac``), a
global max-pool, a linear classifier without bias and a fixed ``logit_scale`` (the speed runs' 1/9:
small logits early let a large learning rate train the convolutions, not the head).

``whiten`` needs the training images: the trainer calls :meth:`FastCNN.init_from_data` with up to
5,000 normalised training images before the first epoch (a resumed run restores the weights instead).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnbench.models.base import mark, require_min_size
from cnnbench.registry import ModelPlugin, Option

WHITEN_EPS = 5e-4  # added to the eigenvalues: the smallest ones are noise
WHITEN_IMAGES = 5000  # airbench estimates the patch covariance from 5,000 training images


class ScaledLinear(nn.Linear):
    """A linear layer whose output is multiplied by a fixed ``scale`` (the classifier: its output
    stays the logits, as every model's classifier must)."""

    def __init__(self, in_features: int, out_features: int, *, scale: float) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale:g}"


def _group(cin: int, cout: int, act: type[nn.Module]) -> nn.Sequential:
    convs = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.Conv2d(cout, cout, 3, padding=1, bias=False)]
    for conv in convs:  # partial identity: the group starts by passing its input through
        with torch.no_grad():
            nn.init.dirac_(conv.weight[: min(conv.in_channels, conv.out_channels)])
    return nn.Sequential(OrderedDict(
        conv1=convs[0], pool=nn.MaxPool2d(2), norm1=nn.BatchNorm2d(cout, momentum=0.4), act1=act(),
        conv2=convs[1], norm2=nn.BatchNorm2d(cout, momentum=0.4), act2=act(),
    ))


class FastCNN(nn.Sequential):
    """nn.Sequential (whiten, groups, pool, classifier) with the whitening initialisation."""

    whiten_from_data: bool = False
    init_images: int = WHITEN_IMAGES  # how many training images init_from_data wants (the trainer reads it)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the first convolution to the ZCA-like whitening of 2x2 patches of ``images``
        (N, C, H, W normalised floats) and freeze its weight; a no-op unless built with ``whiten``."""
        if not self.whiten_from_data:
            return
        conv = self.whiten
        images = images[:WHITEN_IMAGES].float()
        c, (kh, kw) = images.shape[1], conv.kernel_size
        patches = images.unfold(2, kh, 1).unfold(3, kw, 1).transpose(1, 3).reshape(-1, c * kh * kw).double()
        covariance = patches.T @ patches / len(patches)
        values, vectors = torch.linalg.eigh(covariance)  # ascending
        values, vectors = values.flip(0), vectors.T.flip(0)  # largest first
        filters = (vectors / torch.sqrt(values.clamp_min(0) + WHITEN_EPS)[:, None]).reshape(-1, c, kh, kw)
        conv.weight.copy_(torch.cat((filters, -filters)).to(conv.weight))
        conv.weight.requires_grad_(False)


def build(*, num_classes: int, in_channels: int, image_size: tuple[int, int], widths: tuple[int, ...],
          whiten: bool, activation: str, logit_scale: float) -> nn.Module:
    require_min_size(image_size, 2 ** len(widths) + 1, f"a 2x2 convolution then {len(widths)} max-pool(s) of 2x2")
    act = {"gelu": nn.GELU, "relu": nn.ReLU}[activation]
    first = 2 * in_channels * 4
    groups, cin = [], first
    for width in widths:
        groups.append(_group(cin, width, act))
        cin = width
    model = FastCNN(OrderedDict(
        whiten=nn.Conv2d(in_channels, first, 2, padding=0, bias=True), whiten_act=act(),
        groups=nn.Sequential(*groups), pool=nn.AdaptiveMaxPool2d(1), flatten=nn.Flatten(),
        classifier=ScaledLinear(cin, num_classes, scale=logit_scale),
    ))
    model.whiten_from_data = whiten
    return mark(model, classifier="classifier", intermediate="groups.1", first_conv="whiten")


FAST_CNN = ModelPlugin(
    build=build,
    description="speed-run CIFAR-10 net: 2x2 patch-whitening conv + 3 conv-pool-BN groups (airbench-style)",
    natural_input=(3, 32, 32), natural_classes=10, channels_last_cpu=True,  # 1.15x (bench_channels_last.py)
    options=(
        Option("widths", "ints", (64, 256, 256), "filters of the three conv groups (airbench: 64,256,256; "
               "the fast-cifar10 preset sizes them for a 2-core CPU)", low=1, high=4096),
        Option("whiten", "bool", True, "first conv set from the training images' 2x2-patch covariance "
               "(whitening) and frozen; false: trained from a random start"),
        Option("activation", "str", "gelu", "activation after the whitening conv and each batch norm",
               choices=("gelu", "relu")),
        Option("logit_scale", "float", 1 / 9, "fixed factor on the logits (the speed runs' 1/9)", low=0.0,
               high=100.0),
    ),
)
