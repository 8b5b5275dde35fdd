"""Fetch what ``cnnbench train --resume RUN_ID`` needs from an interrupted run: its config and
last checkpoint, with a clear error when the run is not a resumable cnnbench run; and claim the
run, so two resumes of one run never train into it at once.

The claim: a resumable run is KILLED or FAILED, or RUNNING with its process gone (no heartbeat,
see :func:`cnnbench.tracking.runs.liveness`). ``claim`` writes this process's owner tag and the
RUNNING state, waits a moment and reads the tag back: of two resumes started together only the
last writer finds its own tag and goes on; the other is refused, and a resume started later finds
the run RUNNING with a live heartbeat and is refused too.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from cnnbench.engine import checkpoint
from cnnbench.errors import ConfigError
from cnnbench.tracking import runs as mlruns
from cnnbench.tracking.store import mask_uri

CLAIM_SETTLE_S = 1.0


def local_checkpoint_dir(run_id: str) -> Path:
    """Where a checkpoint the tracking store could not take is kept (``$CNNBENCH_HOME/resume/<run>``,
    default ``~/.cache/cnnbench/resume/<run>``)."""
    home = os.environ.get("CNNBENCH_HOME") or Path.home() / ".cache" / "cnnbench"
    return Path(home).expanduser() / "resume" / run_id


def fetch_resume(tracking_uri: str, run_id: str) -> tuple[dict, dict]:
    """(config dict, checkpoint state) of a resumable run, read into memory (no files left behind)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    get_resumable(tracking_uri, run_id)
    local = local_checkpoint_dir(run_id)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # two small files: no bars around the one-line errors
    with tempfile.TemporaryDirectory(prefix="cnnbench-resume-") as folder:
        try:
            config_path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.json", dst_path=folder, tracking_uri=tracking_uri)
            config = json.loads(Path(config_path).read_text())
        except (MlflowException, OSError, ValueError):
            if not (local / "config.json").exists():
                raise ConfigError(f"--resume: run {run_id} has no config.json artifact; it cannot be resumed") from None
            config = json.loads((local / "config.json").read_text())
        state = None
        try:
            ckpt_path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/last.pt", dst_path=folder, tracking_uri=tracking_uri)
            state = checkpoint.load(ckpt_path)  # a clear ConfigError for a file that is not a cnnbench checkpoint
        except (MlflowException, OSError):
            pass
    if (local / "last.pt").exists():  # kept here when the store stopped answering: newer than the store's
        kept = checkpoint.load(local / "last.pt")
        if state is None or int(kept["epoch"]) >= int(state["epoch"]):
            state = kept
    if state is None:
        epochs = len(mlflow.tracking.MlflowClient(tracking_uri).get_metric_history(run_id, "train_loss"))
        when = f"it logged {epochs} epoch(s) but was stopped before uploading one" if epochs else "it ended before its first epoch"
        raise ConfigError(f"--resume: run {run_id} has no checkpoint (checkpoints/last.pt) to resume from; {when}")
    return config, state


def get_resumable(tracking_uri: str, run_id: str):
    """The run, or a ConfigError saying why it cannot be resumed with ``cnnbench train``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"--resume: there is no run {run_id!r} in the tracking store {mask_uri(tracking_uri)}") from None
    tags = run.data.tags
    role = tags.get("cnnbench.tune.role")
    study = tags.get("cnnbench.tune.study", "?")
    if role == "trial":
        raise ConfigError(f"--resume: run {run_id} is trial {tags.get('trial_number', '?')} of tune study {study!r}; "
                          f"trials are not resumed one by one: add trials with cnnbench tune --study-name {study} (same --storage)")
    if role == "study":
        raise ConfigError(f"--resume: run {run_id} is the parent run of tune study {study!r}, not a training; "
                          f"continue the study with cnnbench tune --study-name {study} (same --storage)")
    if "cnnbench.version" not in tags:
        raise ConfigError(f"--resume: run {run_id} was not created by cnnbench (no cnnbench.version tag)")
    if run.info.status == "FINISHED":
        raise ConfigError(f"--resume: run {run_id} already FINISHED; there is nothing to resume")
    if run.info.status in ("RUNNING", "SCHEDULED") and tags.get(mlruns.TAG_OWNER) != mlruns.owner():
        alive = mlruns.liveness(run)
        if alive.alive:
            raise ConfigError(f"--resume: run {run_id} is RUNNING ({alive.why}); stop that process first, or wait for it")
    return run


def claim(tracking_uri: str, run_id: str) -> str:
    """Mark the run RUNNING and owned by this process; refuse when another resume got it. Returns
    the run's status before the claim (to put back if this resume stops before training)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    before = get_resumable(tracking_uri, run_id).info.status
    mine = mlruns.owner()
    mlruns.set_tags(client, run_id, mlruns.owner_tags())
    client.update_run(run_id, status="RUNNING")
    time.sleep(CLAIM_SETTLE_S)
    holder = client.get_run(run_id).data.tags.get(mlruns.TAG_OWNER)
    if holder != mine:
        raise ConfigError(f"--resume: another resume of run {run_id} started at the same moment (process "
                          f"{(holder or '?').rsplit(':', 1)[0]}); this one stops so they do not both train into it")
    return before


def release(tracking_uri: str, run_id: str, status: str) -> None:
    """Give a claimed run back (its earlier status) when the resume stops before training."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        if client.get_run(run_id).data.tags.get(mlruns.TAG_OWNER) == mlruns.owner():
            client.set_terminated(run_id, status if status not in ("RUNNING", "SCHEDULED") else "FAILED")
    except Exception:  # best effort: the run is then RUNNING with a dead owner, which --resume takes over
        pass
