"""Training memory predicted by running the real step on fake tensors: no data, no device.

:func:`predict` builds the model under ``torch._subclasses.FakeTensorMode`` (tensors with shapes,
dtypes, devices and storages but no data), makes the optimizer ``cnnbench train`` would, and runs
:func:`cnnbench.memory.step.train_steps` (two optimizer steps: the first creates the optimizer state,
the second is the steady state) and one evaluation batch under a
:class:`~cnnbench.memory.tracker.LiveTensorBytes` mode. The result is the peak of live tensor bytes,
what the CUDA allocator's ``max_memory_allocated`` measures, with the bytes live at that moment
broken down by role, plus the sizes that do not depend on when you look.

Device semantics: ``device="cuda"`` predicts what the CUDA allocator sees (512-byte blocks, the
multi-tensor ``foreach`` optimizer implementations CUDA parameters default to, ``--amp`` and
``--channels-last`` applied as the engine does). When a GPU is present the fake tensors live on it
(CUDA autocast rules, cuDNN's ops); without one they live on the CPU and autocast follows the CPU's
rules, which cast the same layers of a CNN (convolutions and linear layers to the low precision,
the loss in float32). ``device="cpu"`` ignores --amp and --channels-last, as ``cnnbench train``
does on CPU. Kernel workspaces that never become tensors (oneDNN reorders, cuDNN workspaces) are
measured per convolution shape on the target device and added at their operator
(:mod:`cnnbench.memory.workspace`): the one part that runs real kernels, on random data at batch 4
and 8, and is skipped (with a note) when predicting for a device that is not present. Not included:
the CUDA context and the allocator's cache; see :mod:`cnnbench.memory.measure` for what is measured.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch._subclasses import FakeTensorMode

from cnnbench.engine import precision
from cnnbench.errors import ConfigError, ModelInputError
from cnnbench.memory.step import (CUDA_BLOCK, MB, STEPS, Cell, StepSetup, amp_dtype, eval_pass, make_optimizer,
                                  optimizer_names, random_batch, train_steps)
from cnnbench.memory import guard
from cnnbench.memory.tracker import LiveTensorBytes
from cnnbench.memory.workspace import ConvWorkspace

BREAKDOWN = ("parameters_mb", "gradients_mb", "optimizer_state_mb", "input_mb", "activations_mb", "temporary_mb",
             "workspace_mb")


@dataclass
class Prediction(Cell):
    """Predicted memory of training ``model`` (MiB = 2**20 bytes, as torch.cuda and nvidia-smi count).

    ``peak_mb``: the largest live tensor bytes over two training steps (allocator peak, not
    device-level memory). The ``*_mb`` fields of :data:`BREAKDOWN` are what is live at that peak, by
    role (``parameters`` includes buffers; ``activations`` are forward outputs autograd still holds;
    ``temporary`` is the rest: gradients of activations, optimizer scratch) and sum to ``peak_mb``.
    Sizes independent of the moment: ``weights_mb`` (parameters and buffers), ``gradient_size_mb``,
    ``optimizer_state_size_mb`` (after a step), ``saved_activations_mb`` (forward outputs held for
    backward when the forward pass ends). ``eval_peak_mb``: one no-grad forward pass in eval mode.
    """

    num_classes: int
    peak_mb: float
    peak_at: str
    first_step_peak_mb: float
    steady_peak_mb: float
    parameters_mb: float
    gradients_mb: float
    optimizer_state_mb: float
    input_mb: float
    activations_mb: float
    temporary_mb: float
    workspace_mb: float
    weights_mb: float
    gradient_size_mb: float
    optimizer_state_size_mb: float
    saved_activations_mb: float
    eval_peak_mb: float
    params: int
    notes: list[str] = field(default_factory=list)

    def breakdown(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in BREAKDOWN}


def check_optimizer(name: str) -> str:
    names = optimizer_names()
    if name not in names:
        raise ConfigError(f"unknown optimizer {name!r}; accepted: {', '.join(names)}")
    return name


def check_batch_size(batch_size: int, what: str = "batch size") -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{what} must be a positive integer (1 or more); got {batch_size!r}")
    return batch_size


def target_device(device: str | torch.device) -> torch.device:
    """``cpu`` / ``cuda`` (predicting for CUDA needs no GPU); ``auto``: cuda when one is present."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"memory prediction supports the devices cpu and cuda; got {name!r}")
    return dev


def fake_copy(module: nn.Module, mode: FakeTensorMode, device: torch.device, *, channels_last: bool = False) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers are fake tensors of the same shapes and
    dtypes on ``device`` (4-d ones in channels-last strides if asked); the original is untouched and
    no real memory is allocated (``copy.deepcopy`` with the tensors pre-filled in its memo)."""
    memo: dict[int, Any] = {}
    with mode:
        for p in module.parameters():
            memo[id(p)] = nn.Parameter(_empty_like(p, device, channels_last), requires_grad=p.requires_grad)
        for b in module.buffers():
            memo[id(b)] = _empty_like(b, device, channels_last)
    return copy.deepcopy(module, memo)


def _empty_like(t: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last and t.dim() == 4 else torch.contiguous_format
    return torch.empty(t.shape, dtype=t.dtype, device=device, memory_format=fmt)


def build_fake_model(model: str | nn.Module, mode: FakeTensorMode, *, input_shape: tuple[int, int, int],
                     num_classes: int, model_options: Mapping[str, Any] | None) -> nn.Module:
    """The model on fake CPU tensors: a registered name is built inside the fake mode (its weight
    initialisation costs nothing), a module is copied with :func:`fake_copy`."""
    if isinstance(model, nn.Module):
        return fake_copy(model, mode, torch.device("cpu"))
    from cnnbench.models import build_model

    with mode:
        return build_model(model, num_classes=num_classes, in_channels=input_shape[0], image_size=tuple(input_shape[1:]),
                           options=model_options)


def predict(model: str | nn.Module, input_shape: tuple[int, int, int], batch_size: int, optimizer: str = "adam", *,
            num_classes: int = 10, model_options: Mapping[str, Any] | None = None, lr: float = 1e-3,
            momentum: float = 0.9, weight_decay: float = 0.0, label_smoothing: float = 0.0, amp: bool | str = False,
            channels_last: bool = False, device: str | torch.device = "cpu", grad_accum: int = 1,
            workspace: bool | ConvWorkspace = True) -> Prediction:
    """Predict the memory of training ``model`` (a registered name or a module) on batches of
    ``batch_size`` images of ``input_shape`` (C, H, W) with ``optimizer`` (see the module docstring).
    ``workspace``: add convolution kernels' internal buffers, measured once per layer shape on the
    target device (:mod:`cnnbench.memory.workspace`; skipped when the device is absent, and for a
    layer whose calibration would not fit the available memory); a ``ConvWorkspace`` is used as given
    (``ConvWorkspace(device, dry=True)``: nothing real runs, it adds up what calibrating would cost).

    Bad names and values raise :class:`~cnnbench.errors.ConfigError` (model plugins raise their own
    ``ModelInputError`` for inputs they cannot take).
    """
    check_optimizer(optimizer)
    check_batch_size(batch_size)
    check_batch_size(grad_accum, "gradient accumulation steps")
    dev = target_device(device)
    notes: list[str] = []
    dtype = amp_dtype(amp, dev)
    cl = bool(channels_last) and dev.type == "cuda"
    for flag, wanted in (("amp", amp), ("channels_last", channels_last)):
        if wanted and dev.type != "cuda":
            notes.append(f"{flag} ignored: cnnbench train applies it on CUDA only (predict with device='cuda')")
    fake_on = dev if dev.type == "cuda" and torch.cuda.is_available() else torch.device("cpu")
    if dev.type == "cuda" and fake_on.type == "cpu":
        notes.append("no GPU here: the step ran on fake CPU tensors with CUDA's 512-byte blocks and foreach optimizers"
                     + (", autocast by the CPU's rules" if dtype is not None else ""))

    name = model if isinstance(model, str) else type(model).__name__
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    net = build_fake_model(model, mode, input_shape=tuple(input_shape), num_classes=num_classes, model_options=model_options)
    if fake_on.type != "cpu" or cl:
        net = fake_copy(net, mode, fake_on, channels_last=cl)
    params = sum(p.numel() for p in net.parameters())

    if workspace is True:
        workspace = ConvWorkspace(dev)
    tracker = LiveTensorBytes(round_to=CUDA_BLOCK if dev.type == "cuda" else 1, workspace=workspace or None)
    if workspace and not tracker.workspace.enabled:
        notes.append("convolution workspaces not included: measuring them needs the device")
    with mode:
        opt = make_optimizer(net, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
                             foreach=True if dev.type == "cuda" else None)
        setup = StepSetup(
            model=net, optimizer=opt, criterion=nn.CrossEntropyLoss(label_smoothing=label_smoothing),
            prec=precision.Precision(amp_dtype=dtype, channels_last=cl),  # fp16's GradScaler: scalars only
            autocast=_autocast(dtype, fake_on), batch=random_batch(tuple(input_shape), batch_size, num_classes, fake_on, cl),
            batch_size=batch_size,
        )
        try:
            result = _track(setup, tracker, grad_accum=grad_accum)
        except ValueError as err:  # what training would raise too, e.g. BatchNorm on one value per channel
            shape = "x".join(map(str, input_shape))
            raise ModelInputError(f"{name} cannot train on batches of {batch_size} images of {shape}: "
                                  f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if workspace and workspace.skipped:
        notes.append(f"convolution workspaces of {workspace.skipped} layer shape(s) not included: measuring them "
                     f"would allocate {guard.show_bytes(workspace.calibration_peak)}, more than the "
                     f"{guard.show_bytes(guard.available_bytes(dev))} available")

    return Prediction(
        model=name, input_shape=tuple(input_shape), num_classes=num_classes, batch_size=batch_size, optimizer=optimizer,
        device=dev.type, amp=None if dtype is None else str(dtype).removeprefix("torch."), channels_last=cl,
        grad_accum=grad_accum, params=params, notes=notes, **result,
    )


def _autocast(dtype: torch.dtype | None, device: torch.device):
    if dtype is None:
        return precision.Precision().autocast
    return lambda: torch.autocast(device.type, dtype=dtype)


def _track(setup: StepSetup, tracker: LiveTensorBytes, *, grad_accum: int,
           on_phase: Callable[[str, int, int], None] | None = None,
           eval_range: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict[str, Any]:
    """Run the steps and the eval pass under ``tracker``; the numbers of :class:`Prediction`.

    ``on_phase`` is also told every phase (a measurement opens its windows there); the eval pass
    runs inside ``eval_range()``. ``eval_peak`` counts the weights plus what the pass adds.
    """
    net, opt = setup.model, setup.optimizer
    trainable = [p for p in net.parameters() if p.requires_grad]
    hooks = [p.register_post_accumulate_grad_hook(lambda p: tracker.mark(p.grad, "gradients")) for p in trainable]
    tracker.mark([*net.parameters(), *net.buffers()], "parameters")
    weights = sum(tracker.live().values())
    peaks: dict[int, tuple[int, str, dict[str, int]]] = {}
    saved: dict[int, int] = {}

    def phase_hook(phase: str, step: int, micro: int) -> None:
        if phase == "batch" and micro == 1:
            tracker.reset_peak()
        if phase == "backward":
            saved[step] = tracker.live()["activations"]
        if phase == "done":
            tracker.mark(list(opt.state.values()), "optimizer_state")  # new state was optimizer scratch
            peaks[step] = (tracker.peak, tracker.peak_phase, tracker.peak_breakdown())
        tracker.category = {"batch": "input", "forward": "activations"}.get(phase, "temporary")
        tracker.phase = f"step {step} {'optimizer step' if phase == 'optimizer' else phase}"
        if on_phase is not None:
            on_phase(phase, step, micro)

    def eval_phase(phase: str) -> None:
        tracker.category = "input" if phase == "batch" else "activations"

    try:
        with tracker, torch.enable_grad():  # callers may sit in no_grad (model/summary.txt is made so)
            train_steps(setup, steps=STEPS, grad_accum=grad_accum, on_phase=phase_hook)
            state = tracker.live()["optimizer_state"]
            tracker.phase = "eval"
            with eval_range():
                tracker.reset_peak()
                before_eval = tracker.total
                eval_pass(setup, eval_phase)
            eval_peak = tracker.peak - before_eval + weights
    finally:
        for hook in hooks:
            hook.remove()
    peak, at, parts = max(peaks.values(), key=lambda v: v[0])
    mb = lambda n: round(n / MB, 3)  # noqa: E731
    return {
        "peak_mb": mb(peak), "peak_at": at, "first_step_peak_mb": mb(peaks[1][0]), "steady_peak_mb": mb(peaks[STEPS][0]),
        **{f"{k}_mb": mb(v) for k, v in parts.items()},
        "weights_mb": mb(weights), "gradient_size_mb": mb(_rounded_sum(tracker, trainable)),
        "optimizer_state_size_mb": mb(state), "saved_activations_mb": mb(saved[STEPS]), "eval_peak_mb": mb(eval_peak),
    }


def _rounded_sum(tracker: LiveTensorBytes, tensors) -> int:
    return sum(tracker._rounded(t.numel() * t.element_size()) for t in tensors)
