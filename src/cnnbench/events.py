"""The engine's events and the callback protocol every tracker / artifact builder implements.

The training loop (``cnnbench.engine``) knows nothing about MLflow, Optuna or files: it calls
these hooks, in list order, on each callback. Put the tracker *last* so that on ``on_run_end`` it
sees every file and metric the artifact builders produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports only for type checkers
    import torch
    from torch import nn

    from cnnbench.config import TrainConfig
    from cnnbench.data.pipeline import PreparedData


@dataclass
class EvalResult:
    """Test-set outputs at the end of training (CPU tensors).

    ``logits`` (N, K), ``labels`` (N,), ``predictions`` (N,); ``features`` maps a feature point
    (``penultimate``, ``intermediate``) to (N, D) activations for the first ``len`` test images the
    engine was asked to probe (may be fewer than N).
    """

    split: str
    loss: float
    accuracy: float
    logits: "torch.Tensor"
    labels: "torch.Tensor"
    predictions: "torch.Tensor"
    features: dict[str, "torch.Tensor"] = field(default_factory=dict)


@dataclass
class RunState:
    """What every callback can read (and, for ``summary_metrics``/``tags``, add to) during a run.

    ``artifacts_dir`` is a local staging folder; a file written at ``artifacts_dir/a/b.png`` is
    uploaded by the tracker as artifact ``a/b.png`` when the run ends (or fails).
    """

    config: "TrainConfig"
    model: "nn.Module"
    data: "PreparedData"
    device: "torch.device"
    artifacts_dir: Path
    epoch: int = 0  # epochs completed so far
    global_step: int = 0  # optimizer steps so far
    start_epoch: int = 0  # > 0 when resumed
    history: list[dict[str, float]] = field(default_factory=list)
    summary_metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # extra params callbacks want logged
    run_id: str | None = None  # set by the tracker
    tracking_uri: str | None = None  # where the tracker records the run (set by it)
    model_uri: str | None = None  # the logged model (set by the tracker)
    notes: list[str] = field(default_factory=list)  # e.g. "amp is a no-op on cpu"
    steps_per_epoch: int = 0  # optimizer steps per epoch (set by the engine)


class Callback:
    """Base class: override the hooks you need. Exceptions raised here fail the run, except
    ``cnnbench.errors`` subclasses raised on purpose (e.g. Optuna's prune signal is re-raised)."""

    def on_run_start(self, run: RunState) -> None: ...

    def on_epoch_start(self, run: RunState, epoch: int) -> None: ...

    def on_step_end(self, run: RunState, step: int, loss: "torch.Tensor") -> None:
        """After each optimizer step; ``loss`` is the detached batch loss on the training device
        (``float(loss)`` syncs the device: do it only as often as needed)."""

    def on_epoch_end(self, run: RunState, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, run: RunState, path: Path) -> None: ...

    def on_eval_end(self, run: RunState, result: EvalResult) -> None: ...

    def on_run_end(self, run: RunState, summary: dict[str, float]) -> None: ...

    def on_failure(self, run: RunState, error: BaseException, status: str) -> None:
        """``status`` is ``FAILED`` (an error) or ``KILLED`` (Ctrl-C / SIGTERM)."""


def dispatch(callbacks: list[Callback], hook: str, *args: Any) -> None:
    for cb in callbacks:
        getattr(cb, hook)(*args)
