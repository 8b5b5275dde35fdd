"""Optimizers, schedulers and the L1/L2 penalties built from the ``optim`` section of the config."""

from __future__ import annotations

import torch
from torch import nn

from cnnbench.config import OPTIMIZERS, OptimConfig
from cnnbench.errors import ConfigError
from cnnbench.models.base import penalty_parameters, points


def effective_lr(cfg: OptimConfig) -> float:
    """The rate training uses: ``cfg.lr``, or with ``lr_scale="linear"`` ``lr x effective batch /
    lr_reference_batch`` (the effective batch counts gradient accumulation)."""
    if cfg.lr_scale == "linear":
        return cfg.lr * cfg.batch_size * cfg.grad_accum / cfg.lr_reference_batch
    return cfg.lr


def effective_weight_decay(cfg: OptimConfig) -> float:
    """``cfg.weight_decay`` when ``cfg.weight_decay_on`` is ``all`` or lists ``cfg.optimizer``, else 0
    (the three-conv assignment gave weight decay to Adam only)."""
    chosen = {name.strip() for name in cfg.weight_decay_on.split(",")}
    return cfg.weight_decay if "all" in chosen or cfg.optimizer in chosen else 0.0


def freeze(model: nn.Module, what: str) -> list[str]:
    """Keep parameters at their initial values (``requires_grad=False``): ``first_conv`` (the model's
    marked first convolution) or ``features`` (everything but the classifier, its final linear
    layer). Returns the frozen parameter names; ``none`` freezes nothing."""
    if what == "none":
        return []
    pts = points(model)
    if what == "first_conv":
        if pts.first_conv is None:
            raise ConfigError(f"--freeze first_conv: {type(model).__name__} has no convolution")
        prefix = pts.first_conv + "."
        chosen = [n for n, _ in model.named_parameters() if n.startswith(prefix)]
    elif what == "features":
        prefix = pts.classifier + "."
        chosen = [n for n, _ in model.named_parameters() if not n.startswith(prefix)]
    else:
        raise ValueError(f"unknown --freeze {what!r}")
    params = dict(model.named_parameters())
    for name in chosen:
        params[name].requires_grad_(False)
    return chosen


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names, as declared in :data:`cnnbench.config.OPTIMIZERS` (its
    ``torch.optim`` class, fixed arguments, whether it takes ``--momentum``), with ``cfg.lr`` and
    ``cfg.weight_decay`` (decoupled for adamw, L2-in-gradient otherwise)."""
    spec = OPTIMIZERS.get(cfg.optimizer)
    if spec is None:  # config.validate() prevents this; kept for direct callers
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(spec.kwargs, lr=effective_lr(cfg), weight_decay=effective_weight_decay(cfg))
    if spec.momentum:
        kwargs["momentum"] = cfg.momentum
    return getattr(torch.optim, spec.torch_class)(params, **kwargs)


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int):
    """A scheduler stepped once per optimizer step (onecycle) or once per epoch (others), or None."""
    if cfg.scheduler == "none":
        return None
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=effective_lr(cfg), epochs=epochs, steps_per_epoch=max(1, steps_per_epoch))
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}")


def steps_per_batch(cfg: OptimConfig) -> bool:
    """Whether the scheduler steps after every optimizer step (True) or once per epoch."""
    return cfg.scheduler == "onecycle"


def penalised_parameters(model: nn.Module, on: str) -> list[nn.Parameter]:
    """``head``: the parameters the model marks (default its classifier weight); ``all``: every
    weight tensor (dim > 1: conv kernels and linear matrices, not biases or norm scales)."""
    if on == "head":
        return penalty_parameters(model)
    return [p for p in model.parameters() if p.dim() > 1]


def penalty(params: list[nn.Parameter], l1: float, l2: float) -> torch.Tensor | None:
    """``l1 * sum|w| + l2 * sum w^2`` over ``params``, or None when both weights are zero."""
    if not params or (l1 == 0 and l2 == 0):
        return None
    total = None
    if l1:
        total = l1 * sum(p.abs().sum() for p in params)
    if l2:
        sq = l2 * sum(p.pow(2).sum() for p in params)
        total = sq if total is None else total + sq
    return total
