"""One finished MLflow run holding a folder of files, params and metrics (``cnnbench filters``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cnnbench.tracking.store import check_reachable, resolve_uri


def prepare(tracking_uri: str | None) -> str:
    """The store's URI, checked reachable now (before any work)."""
    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    return uri


def log_folder(*, tracking_uri: str, experiment: str, run_name: str, command: str, params: dict[str, Any],
               metrics: dict[str, float], folder: Path, artifact_path: str) -> str:
    """Create the run, log everything, end it FINISHED (FAILED if logging fails); return its id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from cnnbench.campaign.runs import create_run
    from cnnbench.tracking.experiments import ensure_experiment

    client = MlflowClient(tracking_uri)
    # identity role "filters": cnnbench filters is this module's one command
    run_id = create_run(client, ensure_experiment(client, experiment), run_name=run_name, role="filters",
                        tags={"cnnbench.command": command})
    try:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                         params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        client.log_artifacts(run_id, str(folder), artifact_path)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
