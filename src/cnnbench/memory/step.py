"""The training step that prediction and measurement both run, and what it is made of.

:func:`train_steps` is the body of :meth:`cnnbench.engine.fit.Trainer.train_epoch` without the
bookkeeping (progress bar, running accuracy, NaN checks: scalars): ``zero_grad(set_to_none=True)``,
then per micro-batch a fresh batch, forward and loss under the engine's autocast, ``backward`` of the
loss weighted by its share of the step's images, and after ``grad_accum`` micro-batches the
optimizer step through the engine's :class:`~cnnbench.engine.precision.Precision` and
``zero_grad(set_to_none=True)``. Optimizers come from :func:`cnnbench.engine.optim.build_optimizer`,
so the state they keep is the one training keeps. The previous micro-batch's batch and logits stay
referenced while the next batch is made, as the engine's loop variables do.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from cnnbench.engine import precision
from cnnbench.engine.optim import build_optimizer

MB = float(2**20)  # MiB, the unit of torch.cuda's counters, nvidia-smi and memory.csv
CUDA_BLOCK = 512  # the CUDA caching allocator rounds every allocation up to a multiple of 512 bytes
STEPS = 2  # the first step creates the optimizer state; the second is the steady state
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def optimizer_names() -> tuple[str, ...]:
    """The optimizers ``--optimizer`` accepts (the config's declaration)."""
    from cnnbench.config import OPTIMIZERS

    return tuple(OPTIMIZERS)


def make_optimizer(model: nn.Module, optimizer: str, *, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0, foreach: bool | None = None) -> torch.optim.Optimizer:
    """``optimizer`` as ``cnnbench train`` builds it; ``foreach=True`` forces the multi-tensor
    implementation real CUDA parameters get by default (fake tensors would not get it)."""
    from cnnbench.config import OptimConfig

    opt = build_optimizer(OptimConfig(optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay), model)
    if foreach is not None:
        for group in opt.param_groups:
            if group.get("foreach", False) is None:
                group["foreach"] = foreach
    return opt


def amp_dtype(amp: bool | str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``--amp`` trains with on ``device``: None off CUDA (the engine ignores
    --amp there); ``True`` means what the engine picks (bfloat16 where the GPU supports it, else
    float16; bfloat16 when no GPU is present to ask)."""
    if not amp or device.type != "cuda":
        return None
    if isinstance(amp, str):
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}; got {amp!r}")
        return AMP_DTYPES[amp]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


@dataclass
class Cell:
    """What a prediction or measurement is of: one model, input, batch, optimizer and precision."""

    model: str
    input_shape: tuple[int, int, int]
    batch_size: int
    optimizer: str
    device: str
    amp: str | None
    channels_last: bool
    grad_accum: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        return out


@dataclass
class StepSetup:
    """What one run of :func:`train_steps` needs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    prec: precision.Precision
    autocast: Callable[[], contextlib.AbstractContextManager]
    batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # a fresh (x, y) on the device
    batch_size: int


def random_batch(shape: tuple[int, int, int], batch_size: int, num_classes: int, device: torch.device,
                 channels_last: bool) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """A function making a float32 batch (NCHW, or NHWC strides as the engine's loader gives with
    --channels-last) and int64 labels on ``device``."""

    def make() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch_size, *shape, device=device)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (batch_size,), device=device)
        return x, y

    return make


def train_steps(setup: StepSetup, *, steps: int = STEPS, grad_accum: int = 1,
                on_phase: Callable[[str, int, int], None] | None = None) -> None:
    """Run ``steps`` optimizer steps of ``grad_accum`` micro-batches each (see the module docstring).

    ``on_phase(phase, step, micro)`` is called before each ``batch``, ``forward``, ``backward`` and
    ``optimizer`` phase and with ``done`` after each step (``step`` counts from 1).
    """
    phase = on_phase or (lambda *_: None)
    model, optimizer, prec = setup.model, setup.optimizer, setup.prec
    model.train()
    optimizer.zero_grad(set_to_none=True)
    x = y = out = loss = None
    for step in range(1, steps + 1):
        for micro in range(1, grad_accum + 1):
            phase("batch", step, micro)
            x, y = setup.batch()
            phase("forward", step, micro)
            with setup.autocast():
                out = model(x)
                loss = setup.criterion(out, y)
            phase("backward", step, micro)
            prec.backward(loss * (len(y) / (setup.batch_size * grad_accum)))
        phase("optimizer", step, grad_accum)
        prec.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        phase("done", step, grad_accum)
    del x, y, out, loss


def eval_pass(setup: StepSetup, on_phase: Callable[[str], None] | None = None) -> None:
    """One evaluation batch: ``model.eval()``, no gradients, the engine's autocast."""
    phase = on_phase or (lambda *_: None)
    was_training = setup.model.training
    setup.model.eval()
    try:
        phase("batch")
        x, _ = setup.batch()
        phase("eval")
        with torch.no_grad(), setup.autocast():
            out = setup.model(x).float()
        del out, x
    finally:
        setup.model.train(was_training)
