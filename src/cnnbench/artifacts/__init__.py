"""Analysis artifacts: pure functions that turn engine outputs into figures and tables, and the
callbacks that write them under a run's staging folder. Nothing here imports MLflow: the tracker
uploads whatever lands in ``RunState.artifacts_dir``.

The registry: :data:`ALWAYS` builders run in every run; every other builder is named by the
``artifact=`` of its switch in :class:`cnnbench.config.ArtifactConfig` (which gives it its
``--no-...`` flag, help and default). Each builder is a callback class with
``from_config(config) -> Callback``. Adding an artifact = its file + one switch declaration.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from cnnbench.config import OPTIONS

if TYPE_CHECKING:
    from cnnbench.config import TrainConfig
    from cnnbench.events import Callback

ALWAYS = ("cnnbench.artifacts.callbacks:RunRecord", "cnnbench.artifacts.callbacks:TestEvaluation")


def switched() -> dict[str, str]:
    """Switch option name -> builder (``module:Class``), in declaration order."""
    return {name: o.artifact for name, o in OPTIONS.items() if o.artifact}


def artifact_callbacks(config: "TrainConfig") -> list["Callback"]:
    """The builders this run gets: the ones always on, then those whose switch is on."""
    chosen = [*ALWAYS, *(target for name, target in switched().items() if config.value(name))]
    built = []
    for target in chosen:
        module, _, attr = target.partition(":")
        built.append(getattr(import_module(module), attr).from_config(config))
    return built
