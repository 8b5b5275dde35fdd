"""Mixed precision and memory layout on CUDA; logged no-ops elsewhere.

``--amp`` autocasts the forward pass to bfloat16 where the GPU supports it (no loss scaling
needed) and to float16 with a gradient scaler otherwise (CUDA only). ``--channels-last`` converts the
model and the batches to NHWC, which tensor-core convolutions prefer and oneDNN's CPU convolutions
run faster for some models (``auto`` decides per device and model, see :func:`channels_last_for`).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class Precision:
    amp_dtype: torch.dtype | None = None  # None: float32 training
    scaler: "torch.amp.GradScaler | None" = None
    channels_last: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)  # skips the step when the scaled gradients overflowed
            self.scaler.update()

    def state_dict(self) -> dict | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def channels_last_for(setting: str | bool, device_type: str, model: str) -> bool:
    """Whether ``--channels-last SETTING`` trains ``model`` in NHWC on ``device_type``: on / off as
    said; auto: always on CUDA (tensor-core convolutions prefer it), on CPU when the model plugin
    declares it faster there (``ModelPlugin.channels_last_cpu``, from benchmarks/bench_channels_last.py),
    never on MPS (not measured)."""
    if isinstance(setting, bool) or setting in ("on", "off"):
        return setting in (True, "on")
    if device_type == "cuda":
        return True
    if device_type != "cpu":
        return False
    from cnnbench.registry import MODELS

    try:
        return bool(MODELS.get(model).channels_last_cpu)
    except Exception:  # an unknown/broken plugin is reported where the model is built
        return False


def cpu_threads() -> int:
    """Pin torch's intra-op CPU threads for training to the physical cores this process may use (not
    hyper-threads, whose shared FPUs slow convolutions); inter-op threads stay torch's default (eager
    training runs no parallel graph branches, and setting them changed oneDNN's workspace sizes, which
    the memory prediction calibrates). ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set by the user win.
    Returns the thread count trained with."""
    import os

    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return torch.get_num_threads()
    import psutil

    allowed = len(psutil.Process().cpu_affinity()) if hasattr(psutil.Process, "cpu_affinity") else os.cpu_count()
    physical = psutil.cpu_count(logical=False) or allowed or 1
    wanted = max(1, min(physical, allowed or physical))
    # torch starts with one thread per logical CPU; touch its pool only when that is not what is wanted
    # (querying it early changed oneDNN's workspace sizes in the same process, which memory prediction calibrates)
    if wanted != os.cpu_count():
        torch.set_num_threads(wanted)
    return wanted


def setup(*, amp: bool, channels_last: bool, device: torch.device, notes: list[str]) -> Precision:
    """The precision settings for ``device`` (``channels_last`` resolved by :func:`channels_last_for`);
    AMP requested off CUDA adds a note (and a log line)."""
    cuda = device.type == "cuda"
    if amp and not cuda:
        note = f"--amp is a no-op on {device.type}: it applies to CUDA only; trained in float32"
        notes.append(note)
        log.warning(note)
    if not cuda:
        return Precision(channels_last=channels_last)
    dtype = None
    scaler = None
    if amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if dtype == torch.float16:
            scaler = torch.amp.GradScaler("cuda")
        notes.append(f"--amp: autocast to {str(dtype).removeprefix('torch.')}" + (" with a gradient scaler" if scaler else ""))
    return Precision(amp_dtype=dtype, scaler=scaler, channels_last=channels_last)
