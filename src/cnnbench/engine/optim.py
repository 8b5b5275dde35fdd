"""Optimizers and schedulers built from the ``optim`` section of the configuration."""

from __future__ import annotations

import torch
from torch import nn

from cnnbench.config import OptimConfig


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    wd = cfg.weight_decay
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "momentum":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)
    if cfg.optimizer == "nesterov":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=wd)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")  # config.validate() prevents this


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int):
    """A scheduler stepped once per optimizer step (onecycle) or once per epoch (others), or None."""
    if cfg.scheduler == "none":
        return None
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, epochs=epochs, steps_per_epoch=max(1, steps_per_epoch))
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}")


def steps_per_batch(cfg: OptimConfig) -> bool:
    return cfg.scheduler == "onecycle"
