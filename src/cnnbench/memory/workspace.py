"""Convolution workspaces: memory a kernel allocates beyond the tensors it returns.

A dispatch-mode tracker sees the tensors an operator returns, not the buffers its kernel allocates
and frees inside: on CPU, oneDNN reorders activations into channel-blocked layouts (padded to 8 or
16 channels: a 3-filter convolution's output takes 16/3 of its size) and keeps per-thread weight
gradient buffers; on CUDA, cuDNN asks for a workspace. Those are real allocator bytes at the peak.

:class:`ConvWorkspace` measures them by running each distinct convolution (forward or backward,
same shapes, strides, dtype and layout, random values) for real at two small batch sizes on the
device the prediction is for, and extrapolates linearly in the batch size (a batch-proportional
part for the reordered activations plus a constant part for the weights). Results are cached per
layer configuration and process. CPU: bytes from ``torch.profiler(profile_memory=True)``; CUDA:
``max_memory_allocated``. Without the device (predicting for CUDA without a GPU) nothing is added.

The calibration is the one real allocation of a prediction, so its cost is known before it runs
(:func:`calibration_bytes`: the real operands and results at the larger calibration batch, twice for
the kernel's reordered copies). ``ConvWorkspace(device, dry=True)`` only adds those costs up
(``calibration_peak``, the largest one; nothing runs): ``cnnbench info`` and ``cnnbench memory``
refuse before calibrating when it exceeds the available memory (:mod:`cnnbench.memory.guard`). A
calibration that would not fit is never run, even when a caller did not check (``skipped``: the
prediction then says its workspaces are missing).
"""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

aten = torch.ops.aten
CALIBRATION_BATCHES = (4, 8)
_CACHE: dict[tuple, tuple[float, float]] = {}


def _layout(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _describe(value: Any, batched: bool) -> Any:
    """A hashable description of an argument; a batched tensor's batch size left out."""
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape[1:]) if batched else tuple(value.shape), value.dtype, _layout(value))
    if isinstance(value, (list, tuple)):
        return tuple(_describe(v, False) for v in value)
    return value


class ConvWorkspace:
    """``workspace(func, args, kwargs, out) -> bytes`` for convolutions on ``device``; 0 otherwise."""

    BATCHED = {aten.convolution.default: (0,), aten.convolution_backward.default: (0, 1)}  # args with a batch dim

    def __init__(self, device: torch.device, *, dry: bool = False) -> None:
        self.device = device
        self.enabled = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_available())
        self.dry = dry
        self.calibration_peak = 0  # bytes of the largest calibration still to run (dry) or skipped
        self.skipped = 0  # calibrations not run: they would not fit the available memory

    def __call__(self, func, args, kwargs, out) -> int:
        if not self.enabled or func not in self.BATCHED or kwargs:
            return 0
        batched = self.BATCHED[func]
        batch = args[0].shape[0]
        key = (str(self.device), func, tuple(_describe(a, i in batched) for i, a in enumerate(args)),
               torch.get_num_threads())
        if key not in _CACHE:
            cost = calibration_bytes(func, args, out)
            self.calibration_peak = max(self.calibration_peak, cost)
            if self.dry:
                return 0
            from cnnbench.memory.guard import available_bytes

            if cost > available_bytes(self.device):
                self.skipped += 1
                return 0
            with unset_fake_temporarily(), torch.no_grad():
                b1, b2 = CALIBRATION_BATCHES
                w1, w2 = self._measure(func, args, b1), self._measure(func, args, b2)
            slope = max(0.0, (w2 - w1) / (b2 - b1))
            _CACHE[key] = (max(0.0, w1 - slope * b1), slope)
        constant, slope = _CACHE[key]
        return int(constant + slope * batch)

    def _measure(self, func, args, batch: int) -> int:
        batched = self.BATCHED[func]
        real = [_real(a, batch if i in batched else None, self.device) for i, a in enumerate(args)]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
            result = func(*real)
            torch.cuda.synchronize(self.device)
            extra = torch.cuda.max_memory_allocated(self.device) - start
        else:
            from cnnbench.memory.measure import allocator_peak

            holder: list[Any] = []
            extra = allocator_peak(lambda: holder.append(func(*real)))
            result = holder.pop()
        returned = sum(t.untyped_storage().nbytes() for t in _tensors(result))
        return max(0, extra - returned)


def calibration_bytes(func, args, out) -> int:
    """Real bytes one calibration of ``func`` allocates at the larger calibration batch: its operands
    and results (batched ones at that batch), doubled for the copies a kernel reorders them into."""
    batched = ConvWorkspace.BATCHED[func]
    big = CALIBRATION_BATCHES[-1]
    total = sum(_nbytes(a, big if i in batched else None) for i, a in enumerate(args))
    results = out if isinstance(out, (list, tuple)) else [out]
    for i, t in enumerate(results):  # convolution: the output; backward: grad_input (batched), grad_weight, grad_bias
        total += _nbytes(t, big if i == 0 else None)
    return 2 * total


def _nbytes(value: Any, batch: int | None) -> int:
    if not isinstance(value, torch.Tensor):
        return 0
    shape = [int(d) for d in value.shape]
    if batch is not None and shape:
        shape[0] = batch
    count = 1
    for d in shape:
        count *= d
    return count * value.element_size()


def _real(value: Any, batch: int | None, device: torch.device) -> Any:
    """A real random tensor like fake ``value``, with its batch size (dim 0) set to ``batch``."""
    if not isinstance(value, torch.Tensor):
        return value
    shape = list(value.shape)
    if batch is not None:
        shape[0] = batch
    return torch.randn(shape, dtype=value.dtype, device=device).contiguous(memory_format=_layout(value))


def _tensors(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (list, tuple)):
        return [t for r in result for t in _tensors(r)]
    return []
