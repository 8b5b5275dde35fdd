"""The step of :mod:`cnnbench.memory.predict` really run, on random data, and its memory measured.

What "measured" means (``Measurement.peak_mb``, MiB):

* **CPU**: the peak of the CPU allocator's live bytes, from ``torch.profiler`` with
  ``profile_memory=True``. The profiler records every allocation and free of the c10 CPU allocator
  (the one every CPU tensor and oneDNN's PyTorch-allocated buffers come from) with its size and
  time; the running sum of those events, from before the model is built, is the live heap of
  tensors, and its maximum inside each step's ``record_function`` range is that step's peak. It is
  independent of the dispatch-mode tracker the prediction uses, and sees what that cannot (buffers
  a kernel allocates internally), which is why it is the reference rather than the same tracker on
  real tensors. That tracker is run too (``tracked_peak_mb``): the gap prediction-vs-tracked is
  fake-vs-real, the gap tracked-vs-measured is memory outside tensors the operators return.
  Process RSS is not used: it includes the interpreter, libraries and freed-but-cached heap.
* **CUDA**: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the start of
  each step (the allocator peak, what the prediction predicts), ``max_memory_reserved`` (what the
  caching allocator holds), and the device-level used memory that nvidia-smi shows (CUDA context,
  cache, other processes): ``torch.cuda.mem_get_info`` and, when ``nvidia-ml-py`` is installed (MLflow's
  system metrics use it), this process's own usage from NVML.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from cnnbench.engine import precision
from cnnbench.errors import ConfigError
from cnnbench.memory.predict import _track, check_batch_size, check_optimizer
from cnnbench.memory.step import (CUDA_BLOCK, MB, STEPS, Cell, StepSetup, make_optimizer, random_batch)
from cnnbench.memory.tracker import LiveTensorBytes

CPU_METHOD = "torch.profiler profile_memory: peak of the CPU allocator's live bytes"
CUDA_METHOD = "torch.cuda.max_memory_allocated after reset_peak_memory_stats"


@dataclass
class Measurement(Cell):
    """Measured memory of the step (MiB). ``peak_mb`` is the allocator peak over two steps (see
    the module docstring for how per device); ``tracked_peak_mb`` the dispatch tracker's peak on the
    same real tensors. CUDA only (None on CPU): ``reserved_peak_mb``, ``device_used_mb`` (total -
    free after the steps: context, cache, other processes), ``process_used_mb`` (NVML, this process),
    ``device_used_before_mb`` (before the model was moved to the device)."""

    method: str
    peak_mb: float
    first_step_peak_mb: float
    steady_peak_mb: float
    eval_peak_mb: float
    tracked_peak_mb: float
    seconds: float
    reserved_peak_mb: float | None = None
    device_used_mb: float | None = None
    process_used_mb: float | None = None
    device_used_before_mb: float | None = None
    notes: list[str] = field(default_factory=list)


def measure_device(device: str | torch.device) -> torch.device:
    """The device a measurement runs on: ``auto`` is cuda when present; ``cuda`` without a GPU is a
    ConfigError (prediction for cuda needs none, measurement does)."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--measure with --device cuda needs a CUDA GPU and torch.cuda.is_available() is False here; "
                          "measure with --device cpu, or drop --measure to predict for cuda without one")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"memory measurement supports the devices cpu and cuda; got {name!r}")
    return dev


def measure(model: str | nn.Module, input_shape: tuple[int, int, int], batch_size: int, optimizer: str = "adam", *,
            num_classes: int = 10, model_options: Mapping[str, Any] | None = None, lr: float = 1e-3,
            momentum: float = 0.9, weight_decay: float = 0.0, label_smoothing: float = 0.0, amp: bool = False,
            channels_last: bool = False, device: str | torch.device = "cpu", grad_accum: int = 1,
            seed: int = 0) -> Measurement:
    """Run :func:`cnnbench.memory.step.train_steps` for real (random batches, ``seed``) and measure it.

    The arguments are :func:`cnnbench.memory.predict.predict`'s; the model and optimizer are built
    inside the measurement. --amp / --channels-last go through :func:`cnnbench.engine.precision.setup`
    exactly as in training (no-ops with a note on CPU; float16 gets its gradient scaler).
    """
    check_optimizer(optimizer)
    check_batch_size(batch_size)
    check_batch_size(grad_accum, "gradient accumulation steps")
    dev = measure_device(device)
    torch.manual_seed(seed)
    notes: list[str] = []
    prec = precision.setup(amp=bool(amp), channels_last=channels_last, device=dev, notes=notes)
    name = model if isinstance(model, str) else type(model).__name__
    common = dict(model=name, input_shape=tuple(input_shape), batch_size=batch_size, optimizer=optimizer,
                  device=dev.type, amp=None if prec.amp_dtype is None else str(prec.amp_dtype).removeprefix("torch."),
                  channels_last=prec.channels_last, grad_accum=grad_accum, notes=notes)

    def build() -> StepSetup:
        net = _real_model(model, dev, input_shape=tuple(input_shape), num_classes=num_classes, model_options=model_options)
        if prec.channels_last:
            net = net.to(memory_format=torch.channels_last)
        opt = make_optimizer(net, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
        return StepSetup(model=net, optimizer=opt, criterion=nn.CrossEntropyLoss(label_smoothing=label_smoothing),
                         prec=prec, autocast=prec.autocast, batch_size=batch_size,
                         batch=random_batch(tuple(input_shape), batch_size, num_classes, dev, prec.channels_last))

    t0 = time.perf_counter()
    if dev.type == "cuda":
        numbers = _measure_cuda(build, dev, grad_accum)
        method = CUDA_METHOD
    else:
        numbers = _measure_cpu(build, grad_accum)
        method = CPU_METHOD
    return Measurement(method=method, seconds=round(time.perf_counter() - t0, 3), **common, **numbers)


def _real_model(model: str | nn.Module, dev: torch.device, *, input_shape, num_classes, model_options) -> nn.Module:
    if isinstance(model, nn.Module):
        return copy.deepcopy(model).to(dev)
    from cnnbench.models import build_model

    return build_model(model, num_classes=num_classes, in_channels=input_shape[0], image_size=tuple(input_shape[1:]),
                       options=model_options).to(dev)


# -- CPU -----------------------------------------------------------------------------------------
@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Kineto writes start/stop lines (and, without a GPU, a device-count error) straight to file
    descriptor 2 when the profiler starts and stops, whatever its log level; they say nothing about
    the measurement. Only the start and stop are silenced, not the step."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def allocator_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes the CPU allocator holds while ``fn()`` runs, beyond what was live before."""
    from torch.profiler import ProfilerActivity, profile, record_function

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():
        prof.start()
    try:
        with record_function("cnnbench.memory.op"):
            fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    opened, peak = _profiler_windows(prof, ["cnnbench.memory.op"])["cnnbench.memory.op"]
    return peak - opened


def _measure_cpu(build, grad_accum: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile, record_function

    steps = [f"cnnbench.memory.step{i}" for i in range(1, STEPS + 1)]
    evaluation = "cnnbench.memory.eval"
    open_range: list[Any] = []

    def on_phase(phase: str, step: int, micro: int) -> None:
        if phase == "batch" and micro == 1:
            open_range.append(record_function(steps[step - 1]))
            open_range[-1].__enter__()
        elif phase == "done":
            open_range.pop().__exit__(None, None, None)

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():
        prof.start()
    try:
        setup = build()
        weights = sum(t.untyped_storage().nbytes() for t in {*setup.model.parameters(), *setup.model.buffers()})
        tracked = _track(setup, LiveTensorBytes(), grad_accum=grad_accum, on_phase=on_phase,
                         eval_range=lambda: record_function(evaluation))
        del setup
    finally:
        with _quiet_stderr():
            prof.stop()
    windows = _profiler_windows(prof, [*steps, evaluation])
    mb = lambda n: round(n / MB, 3)  # noqa: E731
    start, eval_peak = windows[evaluation]
    return {"peak_mb": mb(max(windows[s][1] for s in steps)), "first_step_peak_mb": mb(windows[steps[0]][1]),
            "steady_peak_mb": mb(windows[steps[-1]][1]), "eval_peak_mb": mb(eval_peak - start + weights),
            "tracked_peak_mb": tracked["peak_mb"]}


def _profiler_windows(prof, names: list[str]) -> dict[str, tuple[int, int]]:
    """(live bytes when the range opened, peak live bytes inside it) of the CPU allocator for each
    named ``record_function`` range: the running sum of the profiler's ``[memory]`` events
    (allocations +, frees -) from its start."""
    events = list(prof.profiler.kineto_results.events())
    memory = sorted((e.start_ns(), e.nbytes()) for e in events
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    windows: dict[str, tuple[int, int]] = {}
    for e in events:
        if e.name() in names and e.name() not in windows:
            windows[e.name()] = (e.start_ns(), e.start_ns() + e.duration_ns())
    missing = [n for n in names if n not in windows]
    if missing:
        raise RuntimeError(f"the profiler recorded no range {missing}")
    out: dict[str, tuple[int, int]] = {}
    level, i = 0, 0
    for name in sorted(names, key=lambda n: windows[n][0]):
        start, end = windows[name]
        while i < len(memory) and memory[i][0] < start:
            level += memory[i][1]
            i += 1
        opened, peak = level, level
        j = i
        while j < len(memory) and memory[j][0] <= end:
            level += memory[j][1]
            peak = max(peak, level)
            j += 1
        level, i = opened, i  # windows may nest or touch: rescan from the window start for the next
        out[name] = (opened, peak)
    return out


# -- CUDA ----------------------------------------------------------------------------------------
def device_used_bytes(dev: torch.device) -> int | None:
    """Device-level used memory (total - free, as nvidia-smi counts: every process and context);
    None off CUDA."""
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(dev)
    return int(total - free)


def process_used_bytes(dev: torch.device) -> int | None:
    """This process's memory on ``dev`` according to NVML (``nvidia-ml-py``), or None when NVML or
    the GPU is not available or the process is not listed."""
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            uuid = str(torch.cuda.get_device_properties(dev).uuid)
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                nvml_uuid = pynvml.nvmlDeviceGetUUID(handle)
                nvml_uuid = nvml_uuid.decode() if isinstance(nvml_uuid, bytes) else nvml_uuid
                if nvml_uuid.removeprefix("GPU-") != uuid.removeprefix("GPU-"):
                    continue
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                        return int(proc.usedGpuMemory)
            return None
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML errors (no permission, driver mismatch): the figure is optional
        return None


def _measure_cuda(build, dev: torch.device, grad_accum: int) -> dict[str, Any]:
    torch.cuda.init()
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    before = device_used_bytes(dev)
    peaks: dict[int, int] = {}

    def on_phase(phase: str, step: int, micro: int) -> None:
        if phase == "batch" and micro == 1:
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        elif phase == "done":
            torch.cuda.synchronize(dev)
            peaks[step] = torch.cuda.max_memory_allocated(dev)

    setup = build()
    weights = sum(t.untyped_storage().nbytes() for t in {*setup.model.parameters(), *setup.model.buffers()})
    tracked = _track(setup, LiveTensorBytes(round_to=CUDA_BLOCK), grad_accum=grad_accum, on_phase=on_phase,
                     eval_range=lambda: _cuda_eval_window(dev, peaks))
    torch.cuda.synchronize(dev)
    reserved = torch.cuda.max_memory_reserved(dev)
    used, own = device_used_bytes(dev), process_used_bytes(dev)
    del setup
    mb = lambda n: None if n is None else round(n / MB, 3)  # noqa: E731
    return {"peak_mb": mb(max(peaks[s] for s in range(1, STEPS + 1))), "first_step_peak_mb": mb(peaks[1]),
            "steady_peak_mb": mb(peaks[STEPS]), "eval_peak_mb": mb(peaks[0] + weights), "tracked_peak_mb": tracked["peak_mb"],
            "reserved_peak_mb": mb(reserved), "device_used_mb": mb(used), "process_used_mb": mb(own),
            "device_used_before_mb": mb(before)}


@contextmanager
def _cuda_eval_window(dev: torch.device, peaks: dict[int, int]) -> Iterator[None]:
    """What the eval pass adds to the allocator's peak (``peaks[0]``): the training state still
    resident (optimizer state) is not part of an eval-only process."""
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    start = torch.cuda.memory_allocated(dev)
    yield
    torch.cuda.synchronize(dev)
    peaks[0] = torch.cuda.max_memory_allocated(dev) - start
