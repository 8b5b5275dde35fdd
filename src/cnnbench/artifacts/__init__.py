"""Analysis artifacts: pure functions that turn engine outputs into figures and tables, and the
callbacks that write them under a run's staging folder. Nothing here imports MLflow: the tracker
uploads whatever lands in ``RunState.artifacts_dir``.

Each builder is a callback class with ``from_config(config) -> Callback``, registered in the
entry-point group ``cnnbench.artifacts`` (:data:`cnnbench.registry.ARTIFACTS`; the built-ins in
cnnbench's ``setup.cfg``). A builder that an artifact switch of :class:`cnnbench.config.ArtifactConfig`
names (``artifact=NAME``, which gives it its ``--no-...`` flag, help and default) runs when that
switch is on; every other registered builder runs in every run. Adding an artifact = its module +
one entry-point line (+ a switch declaration, if it should have a ``--no-...`` flag).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnbench.config import OPTIONS

if TYPE_CHECKING:
    from cnnbench.config import TrainConfig
    from cnnbench.events import Callback


def switched() -> dict[str, str]:
    """Switch option name -> the artifact (registry name) it turns on, in declaration order."""
    return {name: o.artifact for name, o in OPTIONS.items() if o.artifact}


def artifact_callbacks(config: "TrainConfig") -> list["Callback"]:
    """The builders this run gets: the registered ones no switch names (by name), then those whose
    switch is on (in declaration order). A broken builder plugin refuses the run (one line)."""
    from cnnbench.registry import ARTIFACTS

    switches = switched()
    # a broken one is not skipped: get() refuses the run in one line naming its entry point
    always = [e.name for e in ARTIFACTS.entries() if e.name not in switches.values()]
    chosen = [*always, *(target for name, target in switches.items() if config.value(name))]
    return [ARTIFACTS.get(name).from_config(config) for name in chosen]
