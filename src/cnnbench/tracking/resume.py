"""Fetch what ``cnnbench train --resume RUN_ID`` needs from an interrupted run: its config and
last checkpoint, with a clear error when the run is not a resumable cnnbench run."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from cnnbench.engine import checkpoint
from cnnbench.errors import ConfigError


def fetch_resume(tracking_uri: str, run_id: str) -> tuple[dict, dict]:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"--resume: there is no run {run_id!r} in the tracking store {tracking_uri}") from None
    if "cnnbench.version" not in run.data.tags:
        raise ConfigError(f"--resume: run {run_id} was not created by cnnbench (no cnnbench.version tag)")
    if run.info.status == "FINISHED":
        raise ConfigError(f"--resume: run {run_id} already FINISHED; there is nothing to resume")
    folder = Path(tempfile.mkdtemp(prefix="cnnbench-resume-"))
    try:
        config_path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.json", dst_path=str(folder), tracking_uri=tracking_uri)
        ckpt_path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/last.pt", dst_path=str(folder), tracking_uri=tracking_uri)
    except (MlflowException, OSError):
        raise ConfigError(
            f"--resume: run {run_id} has no checkpoint (checkpoints/last.pt) to resume from; it ended before its first epoch"
        ) from None
    config = json.loads(Path(config_path).read_text())
    state = checkpoint.load(ckpt_path)  # a clear ConfigError for a file that is not a cnnbench checkpoint
    return config, state
