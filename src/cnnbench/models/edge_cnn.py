"""The inductive-bias homework on synthetic edges: small CNNs with optional edge-detector init, and
an MLP of (as near as possible) the same size.

``simple_cnn``: Conv(num_filters=3, k=7, 'same') + ReLU, MaxPool 2, Conv(num_filters) + ReLU,
global average pool, Linear classes (606 parameters on 1x28x28, 3 classes; independent of H, W).
``wider_cnn`` is the same with 6 filters, ``deeper_cnn`` adds two more Conv + ReLU (4 convs).
``init=edge`` (as the homework's edge-detector initialisation): every conv's filters cycle
horizontal-edge, vertical-edge, zero detectors, filter j being detector j on EVERY input channel
(the homework builds conv2 by concatenating conv1's weights), biases zero; the classifier is
Glorot-uniform with a zero bias. Freeze the convs with ``--freeze features`` to train only the FC.
``init=xavier``: the homework's SimpleCNN init: Glorot-uniform conv1 and classifier weights, zero
biases, later convs PyTorch's default. ``pool=avg``: AvgPool 2 instead of MaxPool 2 (R4-H).

Edge filters of size k follow Sobel's construction: derivative = binomial(k - 2) * [1, -1],
smoothing = binomial(k - 1); horizontal = outer(derivative, smoothing), vertical its transpose,
each scaled so its largest entry is 1 (an unscaled 7x7 reaches 100 and swamps the first ReLU).
k = 3 gives the Sobel pair / 2, k = 2 gives [[1, 1], [-1, -1]] and [[1, -1], [1, -1]]. Even
kernels keep the output size by padding the extra pixel on the right/bottom.

``edge_mlp``: Flatten, Linear(hidden) + ReLU, Linear classes, with ``hidden`` chosen so the
parameter count is the nearest to ``match_params_of``'s on the same input. An MLP whose first
layer sees every pixel cannot go below in_features + 1 + 2 * classes parameters (hidden = 1): on
28x28 inputs that is 791, above simple_cnn's 606, so the match is then the smallest MLP.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from math import comb

import torch
import torch.nn.functional as F
from torch import nn

from cnnbench.errors import ModelInputError
from cnnbench.models.base import count_parameters, mark, require_min_size, xavier_init
from cnnbench.models.mlp import MLPClassifier
from cnnbench.registry import ModelPlugin, Option

INITS = ("default", "xavier", "edge")
POOLS = ("max", "avg")


def edge_filters(kernel_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(horizontal-edge, vertical-edge, zero) filters of shape (k, k), Sobel-like (see module doc)."""
    k = kernel_size
    smoothing = torch.tensor([comb(k - 1, i) for i in range(k)], dtype=torch.float32)
    if k == 1:
        derivative = torch.zeros(1)
    else:
        binomial = [comb(k - 2, i) for i in range(k - 1)]
        derivative = torch.tensor([a - b for a, b in zip(binomial + [0], [0] + binomial)], dtype=torch.float32)
    horizontal = torch.outer(derivative, smoothing)  # rows change sign: responds to horizontal edges
    horizontal /= horizontal.abs().max().clamp(min=1.0)
    return horizontal, horizontal.T.contiguous(), torch.zeros(k, k)


class SameConv2d(nn.Conv2d):
    """Stride-1 conv whose output is the input's size for any kernel size (even: extra pad right/bottom).

    PyTorch's own ``padding='same'`` does the same for even kernels but warns and copies the input.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2 if kernel_size % 2 else 0)
        before, after = (kernel_size - 1) // 2, kernel_size // 2
        self.even_pad = None if kernel_size % 2 else (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x if self.even_pad is None else F.pad(x, self.even_pad))


def _init_edge(convs: list[nn.Conv2d]) -> None:
    k = convs[0].kernel_size[0]
    bank = edge_filters(k)
    with torch.no_grad():
        for conv in convs:
            conv.bias.zero_()
            for j in range(conv.out_channels):
                conv.weight[j, :] = bank[j % 3]  # detector j on every input channel


def build_cnn(*, num_classes: int, in_channels: int, image_size: tuple[int, int], num_filters: int,
              kernel_size: int, init: str, pool: str, num_convs: int) -> nn.Module:
    require_min_size(image_size, 2, "one pool of 2x2")
    convs = [SameConv2d(in_channels if i == 0 else num_filters, num_filters, kernel_size) for i in range(num_convs)]
    layers: list[nn.Module] = [convs[0], nn.ReLU(), nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)]
    for conv in convs[1:]:
        layers += [conv, nn.ReLU()]
    classifier = nn.Linear(num_filters, num_classes)
    if init in ("xavier", "edge"):
        xavier_init(convs[0], classifier)
    if init == "edge":
        _init_edge(convs)
    model = nn.Sequential(OrderedDict(
        features=nn.Sequential(*layers), pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), classifier=classifier,
    ))
    return mark(model, classifier="classifier", intermediate="features", first_conv="features.0")


def _cnn_plugin(description: str, num_filters: int, num_convs: int) -> ModelPlugin:
    return ModelPlugin(
        build=partial(build_cnn, num_convs=num_convs),
        description=description,
        natural_input=(1, 28, 28), natural_classes=3,
        options=(
            Option("num_filters", "int", num_filters, "filters in every conv", low=1, high=4096),
            Option("kernel_size", "int", 7, "convolution kernel size ('same' padding; 2 gives the 2x2 edge pair)", low=1),
            Option("init", "str", "default", "edge: the convs start as horizontal/vertical/zero edge detectors (each on "
                   "every input channel); xavier: Glorot-uniform conv1 and classifier, as the homework", choices=INITS),
            Option("pool", "str", "max", "the pool after conv1: max or avg", choices=POOLS),
        ),
    )


SIMPLE_CNN = _cnn_plugin("edges homework: conv(3 filters, 7x7), pool, conv, global average pool, linear", 3, 2)
WIDER_CNN = _cnn_plugin("edges homework: simple_cnn with 6 filters", 6, 2)
DEEPER_CNN = _cnn_plugin("edges homework: simple_cnn with 4 convs", 3, 4)
MATCHABLE = {"simple_cnn": SIMPLE_CNN, "wider_cnn": WIDER_CNN, "deeper_cnn": DEEPER_CNN}


def matched_hidden(in_features: int, num_classes: int, target_params: int) -> int:
    """Hidden width (>= 1) whose one-hidden-layer MLP has the parameter count nearest ``target_params``."""
    per_unit = in_features + 1 + num_classes  # weights in, bias, weights out
    ideal = (target_params - num_classes) / per_unit
    candidates = {max(1, int(ideal)), max(1, int(ideal) + 1)}
    return min(candidates, key=lambda h: (abs(h * per_unit + num_classes - target_params), h))


def build_mlp(*, num_classes: int, in_channels: int, image_size: tuple[int, int], match_params_of: str,
              kernel_size: int, hidden: int) -> nn.Module:
    h, w = image_size
    in_features = in_channels * h * w
    if hidden <= 0:
        if match_params_of not in MATCHABLE:
            raise ModelInputError(
                f"give hidden=N or match_params_of one of {', '.join(MATCHABLE)}; got {match_params_of!r}"
            )
        plugin = MATCHABLE[match_params_of]
        defaults = {o.name: o.default for o in plugin.options} | {"kernel_size": kernel_size}
        cnn = plugin.build(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **defaults)
        hidden = matched_hidden(in_features, num_classes, count_parameters(cnn))
    model = MLPClassifier(in_features, (hidden,), num_classes)
    return mark(model, classifier="classifier", intermediate="hidden")


EDGE_MLP = ModelPlugin(
    build=build_mlp,
    description="edges homework: one-hidden-layer MLP sized to match a CNN's parameter count",
    natural_input=(1, 28, 28), natural_classes=3,
    options=(
        Option("match_params_of", "str", "simple_cnn", "the CNN whose parameter count the MLP matches",
               choices=(*MATCHABLE, "none")),
        Option("kernel_size", "int", 7, "kernel size of the matched CNN (so both runs can share --kernel-size)", low=1),
        Option("hidden", "int", 0, "hidden units; 0 = sized to match match_params_of", low=0, high=65536),
    ),
)
