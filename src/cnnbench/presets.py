"""Presets: named bundles of ordinary train options (``--preset NAME``, ``preset = "NAME"`` in a
study's ``[base]``, ``cnnbench list presets``).

A preset only sets options that exist anyway: the values land in the config (and in MLflow's
params) as if given one by one, plus ``preset`` itself; flags given beside ``--preset`` override
them. Nothing here imports torch.

Presets are plugins like models and datasets: the entry-point group ``cnnbench.presets`` names a
:class:`Preset` object (the built-ins below are declared in cnnbench's ``setup.cfg``), and
:data:`PRESETS` is their registry (:mod:`cnnbench.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    description: str
    values: tuple[tuple[str, Any], ...]  # (option name or model.<key> / data.<key>, typed value)

    def lines(self) -> list[str]:
        return [f"{k} = {','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in self.values]


FAST_CIFAR10 = Preset(
    "CIFAR-10 time-to-accuracy on a CPU: the speed-run recipe (whitened fast_cnn sized for 2 cores, "
    "Nesterov SGD with a one-cycle schedule sized to a 570-s --time-budget, label smoothing 0.2, flip + 2-px crop, flip test-time "
    "augmentation, all 50,000 training images); README 'Speed' gives its measured curve",
    (
        ("model", "fast_cnn"), ("model.widths", (32, 64, 128)), ("dataset", "cifar10"),
        ("optimizer", "nesterov"), ("lr", 0.4), ("momentum", 0.9), ("weight_decay", 5e-4),
        ("batch_size", 512), ("scheduler", "onecycle"), ("label_smoothing", 0.2),
        # the length comes from the budget (the first steps' speed), so start-up and export fit in 600 s
        # end to end on whatever CPU runs it; epochs is only its upper bound
        ("time_budget", 570.0), ("epochs", 100),
        ("augment", "flip-crop"), ("crop_padding", "2"), ("tta", "flip"), ("train_on", "train+val"),
        ("tsne", False), ("retrieval", False),
    ),
)
