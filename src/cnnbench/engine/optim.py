"""Optimizers, schedulers and the L1/L2 penalties built from the ``optim`` section of the config."""

from __future__ import annotations

import math

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


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
                    total_steps: int | None = None):
    """A scheduler stepped once per optimizer step (onecycle; cosine with ``total_steps``) or once per
    epoch (others), or None. ``total_steps`` (a ``--time-budget`` run's planned optimizer steps, a
    fractional last epoch included) sizes onecycle and cosine to end, at zero, after that step."""
    if cfg.scheduler == "none":
        return None
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        if total_steps is not None:
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if cfg.scheduler == "onecycle":
        if total_steps is not None:
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=effective_lr(cfg), total_steps=max(1, total_steps))
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=effective_lr(cfg), epochs=epochs, steps_per_epoch=max(1, steps_per_epoch))
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}")


def steps_per_batch(cfg: OptimConfig, budgeted: bool = False) -> bool:
    """Whether the scheduler steps after every optimizer step (True) or once per epoch: onecycle
    always, cosine in a ``--time-budget`` run (its last epoch may be a fraction of one)."""
    return cfg.scheduler == "onecycle" or (budgeted and cfg.scheduler == "cosine")


BUDGET_MARGIN = 0.02  # of --time-budget, kept for per-epoch logging, snapshots and checkpoint writes


def budget_steps(*, budget_s: float, elapsed_s: float, step_s: float, epoch_eval_s: float, final_eval_s: float,
                 steps_per_epoch: int, done_steps: int, max_steps: int) -> int:
    """The most optimizer steps ``T`` (``done_steps < T <= max_steps``) a ``--time-budget`` run can
    take: the largest ``T`` with ``elapsed_s + (T - done_steps) * step_s + ceil(T / steps_per_epoch)
    * epoch_eval_s + final_eval_s <= budget_s * (1 - BUDGET_MARGIN)`` (each epoch begun, the last
    fractional one too, ends with its evaluations); 0 when not even one more step fits."""
    room = budget_s * (1 - BUDGET_MARGIN) - elapsed_s - final_eval_s

    def fits(t: int) -> bool:
        return (t - done_steps) * step_s + math.ceil(t / steps_per_epoch) * epoch_eval_s <= room

    low, high = done_steps, max_steps  # fits(low) is taken as true: those steps are done
    if high <= low or not fits(low + 1):
        return 0
    while low < high:  # the cost grows with t: bisect for the last t that fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


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
