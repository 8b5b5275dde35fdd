"""Feature probes: activations at a model's feature points, collected with forward hooks.

- ``penultimate``: the *input* of the classifier module (what the last linear layer sees);
- ``intermediate``: the *output* of the intermediate block, adaptive-average-pooled to at most 4x4
  when it is a feature map, then flattened;
- ``logits``: the model's output.

Collection runs in eval mode without gradients (no dropout draws, no BatchNorm updates, so the
training RNG stream and statistics are untouched) and restores the previous mode afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnnbench.data.bundle import Split
from cnnbench.data.loader import DeviceLoader
from cnnbench.models.base import points

FEATURE_POINTS = ("penultimate", "intermediate", "logits")
MAX_POOLED_SIDE = 4


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no grad inside; the previous train/eval mode is restored on exit."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def pool_flatten(activation: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> adaptive-avg-pool to at most 4x4 -> (N, C*h*w); other shapes -> (N, -1)."""
    if activation.dim() == 4:
        h, w = activation.shape[-2:]
        activation = F.adaptive_avg_pool2d(activation, (min(h, MAX_POOLED_SIDE), min(w, MAX_POOLED_SIDE)))
    return activation.flatten(1)


def collect_features(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    which: Sequence[str] = FEATURE_POINTS,
    modules: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """Activations of uint8 (N, C, H, W) ``images`` at the feature points ``which`` and at the
    outputs of the named ``modules`` (as in ``model.named_modules()``; flattened, never pooled).

    Returns float32 CPU tensors (N, D) keyed by feature point or module name. Images are normalised
    exactly as in training (the device loader's normalisation), in order, without augmentation.
    """
    unknown = sorted(set(which) - set(FEATURE_POINTS))
    if unknown:
        raise ValueError(f"unknown feature point(s) {unknown}; accepted: {', '.join(FEATURE_POINTS)}")
    device = torch.device(device)
    pts = points(model)
    named = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []
    if "penultimate" in which:
        handles.append(named[pts.classifier].register_forward_pre_hook(
            lambda _m, inputs: captured.__setitem__("penultimate", inputs[0].flatten(1))))
    if "intermediate" in which:
        handles.append(named[pts.intermediate].register_forward_hook(
            lambda _m, _inputs, output: captured.__setitem__("intermediate", pool_flatten(output))))
    for name in modules:
        if name not in named:
            raise ValueError(f"{name!r} is not a module of {type(model).__name__}")
        handles.append(named[name].register_forward_hook(
            lambda _m, _inputs, output, name=name: captured.__setitem__(name, output.flatten(1))))
    labels = torch.zeros(len(images), dtype=torch.int64)
    loader = DeviceLoader(Split(images, labels), batch_size=batch_size, device=device, mean=mean, std=std)
    wanted = [*which, *modules]
    out: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    try:
        with evaluating(model):
            for x, _ in loader:
                logits = model(x)
                captured["logits"] = logits.flatten(1)
                for name in wanted:
                    out[name].append(captured[name].float().cpu())
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) if parts else torch.zeros(0, 0) for name, parts in out.items()}
