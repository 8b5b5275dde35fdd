"""What every model exposes to the analysis code, and small checks shared by the builders.

Every built model carries ``cnnbench_points`` (a :class:`FeaturePoints`) naming its submodules:
- ``first_conv``: the first ``nn.Conv2d`` (its weights are the learned kernels), ``None`` for MLPs;
- ``intermediate``: a block whose *output* feeds nearest-neighbour retrieval;
- ``classifier``: the final ``nn.Linear``; its *input* is the penultimate representation (t-SNE).
- ``penalty``: parameter names that ``--l1``/``--l2`` apply to by default (the classifier head).
Models do no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnbench.errors import ModelInputError


@dataclass(frozen=True)
class FeaturePoints:
    classifier: str
    intermediate: str
    first_conv: str | None = None
    penalty: tuple[str, ...] | None = None  # default: the classifier's weight


def mark(
    model: nn.Module,
    *,
    classifier: str,
    intermediate: str,
    first_conv: str | None = None,
    penalty: tuple[str, ...] | None = None,
) -> nn.Module:
    """Attach the feature points to ``model`` (names as in ``model.named_modules()``); returns it."""
    modules = dict(model.named_modules())
    for role, name in (("classifier", classifier), ("intermediate", intermediate), ("first_conv", first_conv)):
        if name is not None and name not in modules:
            raise ValueError(f"{role} {name!r} is not a submodule of {type(model).__name__}")
    model.cnnbench_points = FeaturePoints(classifier, intermediate, first_conv, penalty)
    return model


def points(model: nn.Module) -> FeaturePoints:
    pts = getattr(model, "cnnbench_points", None)
    if pts is None:
        raise ValueError(f"{type(model).__name__} has no feature points; build it with cnnbench.models.base.mark")
    return pts


def penalty_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters ``--l1``/``--l2`` apply to by default: those the model marks, else the head's weight."""
    pts = points(model)
    names = pts.penalty or (f"{pts.classifier}.weight",)
    params = dict(model.named_parameters())
    return [params[n] for n in names]


def first_conv_weight(model: nn.Module) -> torch.Tensor | None:
    """The first convolution's weight (out, in, kH, kW), or ``None`` for models without convolutions."""
    name = points(model).first_conv
    return None if name is None else dict(model.named_modules())[name].weight


def require_min_size(image_size: tuple[int, int], minimum: int, why: str = "") -> None:
    """Raise a ModelInputError naming the smallest input the model accepts (the registry adds the
    model's name to the message)."""
    h, w = image_size
    if h < minimum or w < minimum:
        extra = f" ({why})" if why else ""
        raise ModelInputError(
            f"needs inputs of at least {minimum}x{minimum} pixels{extra}; got {h}x{w}. "
            f"Use a larger dataset image size (e.g. --image-size {minimum})"
        )


def require_odd_kernel(kernel_size: int) -> None:
    if kernel_size % 2 == 0:
        raise ModelInputError(f"uses 'same' padding and accepts odd kernel sizes (1, 3, 5, 7, ...); got {kernel_size}")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def conv_block(
    cin: int, cout: int, kernel_size: int, *, stride: int = 1, padding: int | str | None = None,
    batch_norm: bool = False,
) -> list[nn.Module]:
    """Conv2d (+ BatchNorm2d) + ReLU; ``padding=None`` means 'same' for odd kernels (k // 2)."""
    pad = kernel_size // 2 if padding is None else padding
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=pad)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    return layers + [nn.ReLU()]


INITS = ("default", "xavier")  # xavier: Keras' Glorot-uniform kernels with zero biases


def xavier_init(*modules: nn.Module) -> None:
    """Glorot-uniform weights and zero biases (Keras' default initialisation) for every Conv2d and
    Linear inside ``modules``."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


def output_shape(module: nn.Module, in_channels: int, image_size: tuple[int, int]) -> torch.Size:
    """Shape (C, H, W, ...) of ``module``'s output for one input image, without touching its state.

    Runs one zero image in eval mode under ``no_grad`` so BatchNorm running statistics stay untouched.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module(torch.zeros(1, in_channels, *image_size)).shape[1:]
    finally:
        module.train(was_training)
