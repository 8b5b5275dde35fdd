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


def fetch_resume(tracking_uri: str, run_id: str) -> tuple[dict, dict, str]:
    """(config dict, checkpoint state, where it came from) of a resumable run, read into memory (no
    files left behind). The checkpoint is the newest there is: the local resume cache
    (:func:`local_checkpoint_dir`) against the run's uploaded ``checkpoints/last.pt``, by epoch;
    where is ``"local checkpoint"`` or ``"uploaded checkpoint"``."""
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
        state, source = None, "uploaded checkpoint"
        try:
            ckpt_path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/last.pt", dst_path=folder, tracking_uri=tracking_uri)
            state = checkpoint.load(ckpt_path)  # a clear ConfigError for a file that is not a cnnbench checkpoint
        except (MlflowException, OSError):
            pass
    if (local / "last.pt").exists():  # kept here when the store stopped answering: newer than the store's
        kept = checkpoint.load(local / "last.pt")
        if state is None or int(kept["epoch"]) >= int(state["epoch"]):
            state, source = kept, f"local checkpoint {local / 'last.pt'}"
    if state is None:
        epochs = len(mlflow.tracking.MlflowClient(tracking_uri).get_metric_history(run_id, "train_loss"))
        when = f"it logged {epochs} epoch(s) but was stopped before uploading one" if epochs else "it ended before its first epoch"
        raise ConfigError(f"--resume: run {run_id} has no checkpoint (checkpoints/last.pt) to resume from; {when}")
    return config, state, source


def logged_epochs(tracking_uri: str, run_id: str) -> list[int]:
    """The epochs (steps of ``val_accuracy``, logged at every epoch end) the run has in the store."""
    from mlflow.tracking import MlflowClient

    return sorted({m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, "val_accuracy")})


def _span(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def resume_line(run_id: str, state: dict, source: str, epochs: int, logged: list[int]) -> str:
    """The one line a resume prints: the checkpoint's epoch and where it came from, the epochs it
    trains again (the interrupted process logged them after its newest checkpoint: their metrics
    are kept, not logged a second time) and the epochs still to train."""
    start = int(state["epoch"])
    head = f"cnnbench: resuming run {run_id} from epoch {start} ({source})"
    if bool(state.get("training_done")) or start >= epochs:
        return f"{head}; no epoch to train: the test pass and the artifacts remain"
    again = [e for e in logged if start < e <= epochs]
    parts = []
    if again:
        parts.append(f"{_span(start + 1, max(again))} re-trained (logged before the interruption, after the newest "
                     f"checkpoint; their metrics are logged once, not again)")
    todo = max(again, default=start) + 1
    if todo <= epochs:
        parts.append(f"{_span(todo, epochs)} to train")
    return f"{head}; " + ", ".join(parts)


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
    refusal = campaign_refusal(run_id, tags)
    if refusal:
        raise ConfigError(refusal)
    if "cnnbench.version" not in tags:
        raise ConfigError(f"--resume: run {run_id} was not created by cnnbench (no cnnbench.version tag)")
    if run.info.status == "FINISHED":
        raise ConfigError(f"--resume: run {run_id} already FINISHED; there is nothing to resume")
    if run.info.status in ("RUNNING", "SCHEDULED") and tags.get(mlruns.TAG_OWNER) != mlruns.owner():
        alive = mlruns.liveness(run)
        if alive.alive:
            limit = 3 * mlruns.heartbeat_interval()
            raise ConfigError(f"--resume: run {run_id} is RUNNING ({alive.why}); stop that process first, or wait for it "
                              f"(a process that was killed counts as gone once its heartbeat is {limit:.0f} s old)")
    return run


def campaign_refusal(run_id: str, tags: dict[str, str]) -> str | None:
    """Why ``train --resume`` refuses a run of a campaign (one line naming the campaign and the
    command that resumes it), or None for a run it may resume.

    A trial or cell run is one job of its campaign's queue: resumed by ``train`` it would end FINISHED
    beside the run the campaign reruns for that job. A parent run (tune, study) is no training."""
    from cnnbench.campaign.runs import RESUMED_BY, TAG_CAMPAIGN, TAG_JOB, role_of

    role = role_of(tags)
    if role not in ("trial", "cell", "tune", "study"):
        return None
    campaign = tags.get(TAG_CAMPAIGN) or tags.get("cnnbench.tune.study") or tags.get("cnnbench.study.id") or "?"
    if role in ("trial", "cell"):
        job = tags.get(TAG_JOB) or (f"trial-{tags['trial_number']}" if "trial_number" in tags else tags.get("cnnbench.study.cell", "?"))
        kind = "tune" if role == "trial" else "study"
        return (f"--resume: run {run_id} is a {role} run (job {job}) of {kind} campaign {campaign!r}, one job of its queue, which "
                f"cnnbench train does not resume (the job would end with two runs); resume it with "
                f"{RESUMED_BY[role].format(campaign=campaign)}")
    child = "trial" if role == "tune" else "cell"
    return (f"--resume: run {run_id} is the parent run of {role} campaign {campaign!r}, not a training; continue the "
            f"campaign with {RESUMED_BY[child].format(campaign=campaign)}")


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
