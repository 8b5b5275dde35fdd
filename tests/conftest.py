"""Shared fixtures: one SQLite MLflow store per test session (creating one costs seconds of schema
migrations), a fresh experiment name per test, and a CLI runner that returns exit code and output."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _artifact_switches():
    from cnnbench.config import OPTIONS

    return [o for o in OPTIONS.values() if o.section == "artifacts" and o.type == "bool"]


# Every artifact switch off, from the declarations (a new artifact is off here the day it is declared).
ARTIFACTS_OFF = {o.field: False for o in _artifact_switches()}
# The CLI spelling of the slower artifacts off (confusion, curves and summary stay: they are cheap).
FAST_FLAGS = [f"--no-{o.flag[2:]}" for o in _artifact_switches() if o.field not in ("confusion", "curves", "summary")] + ["--quiet"]


def tiny_config(**sections):
    """The shrunken config tests compose: lenet5 on 200 digits images, 3 epochs on the CPU, quiet,
    every artifact off; ``tiny_config(optim={"lr": 0.01})`` changes sections on top."""
    from cnnbench.config import TrainConfig

    base = TrainConfig().replace(
        data={"train_size": 200}, optim={"batch_size": 64}, run={"epochs": 3, "quiet": True, "device": "cpu"},
        artifacts=ARTIFACTS_OFF,
    )
    return base.replace(**sections) if sections else base


@pytest.fixture
def fast_flags() -> list[str]:
    """train flags that skip the slower artifacts, for tests about something else."""
    return list(FAST_FLAGS)


_TEMPLATE: dict[str, object] = {}  # the session's tmp_path_factory, then the migrated template's path


@pytest.fixture(scope="session", autouse=True)
def _store_template_home(tmp_path_factory):
    _TEMPLATE["factory"] = tmp_path_factory


def new_store(folder: Path, name: str = "mlflow.db") -> str:
    """The sqlite URI of a migrated, empty MLflow store at ``folder/name``, for tests that need a store of
    their own but not its creation: a copy of one template migrated once per session (per xdist worker;
    a fresh store costs seconds of schema migrations). The template has no Default experiment, so a copy
    creates Default with its opener's artifact root, as a fresh store does. An existing file is kept."""
    if "path" not in _TEMPLATE:
        from mlflow.tracking import MlflowClient

        path = _TEMPLATE["factory"].mktemp("mlflow-template") / "mlflow.db"
        MlflowClient(f"sqlite:///{path}").search_experiments()
        db = sqlite3.connect(path)
        db.execute("DELETE FROM experiments WHERE experiment_id = 0")
        db.commit()
        db.close()
        _TEMPLATE["path"] = path
    target = Path(folder) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copyfile(_TEMPLATE["path"], target)
    return f"sqlite:///{target}"


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory, _store_template_home) -> str:
    return new_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def experiment(request) -> str:
    return "test-" + re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:80]


@pytest.fixture
def cli():
    """Invoke ``cnnbench`` in-process: ``cli("train", "--epochs", "1")`` -> click Result."""
    from cnnbench.cli import main

    def invoke(*args: str):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def runs_in(tracking_uri):
    """All runs of one experiment (empty list when it does not exist)."""
    import mlflow

    def search(experiment: str):
        client = mlflow.tracking.MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        return client.search_runs([exp.experiment_id])

    return search


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_environment(monkeypatch):
    """MLflow's fluent API exports MLFLOW_EXPERIMENT_ID (and mlflow run's MLFLOW_RUN_ID) into
    os.environ; an earlier in-process test's values must not steer a later test's runs (a leaked
    experiment id makes start_run(run_id=...) refuse a run of another experiment). The same for the
    credentials ``resolve_uri`` exports from an ``http://USER:PASSWORD@HOST`` URI in process: a leaked
    MLFLOW_TRACKING_USERNAME becomes a later run's ``mlflow.user``."""
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TRACKING_USERNAME",
                 "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    import mlflow.tracking.fluent as fluent

    monkeypatch.setattr(fluent, "_active_experiment_id", None)  # what set_experiment() chose


SLOW_TIMEOUT_S = 1800  # the `slow` tests' pytest-timeout (every other test: `timeout` in pyproject.toml)


def pytest_collection_modifyitems(config, items):
    """A generous timeout per marker: `slow` tests (real training, servers, worker processes) get
    :data:`SLOW_TIMEOUT_S` unless they set their own ``@pytest.mark.timeout``."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
