"""Small MLflow run helpers shared by the train tracker, tune's trackers and ``cnnbench runs``.

- batching of params / tags to MLflow's limits (100 params and 1000 tags per batch, tag values
  cut to 8000 characters, params to 6000);
- the owner and heartbeat tags that say which process is writing a RUNNING run, and whether that
  process is still alive (:func:`liveness`), so a run left RUNNING by a killed process can be
  listed (``cnnbench runs --stale``), closed, or taken over by ``--resume``;
- the check that ``$MLFLOW_RUN_ID`` names a run ``mlflow run`` just created for this command.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

from cnnbench.errors import ConfigError

log = logging.getLogger(__name__)

TAG_OWNER = "cnnbench.owner"  # HOST:PID:NONCE of the process writing the run
TAG_HEARTBEAT = "cnnbench.heartbeat"  # unix time of its last beat
PARAM_BATCH = 100
TAG_BATCH = 1000
PARAM_VALUE_MAX = 6000
TAG_VALUE_MAX = 8000
OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def heartbeat_interval() -> float:
    """Seconds between beats (``CNNBENCH_HEARTBEAT_S``, default 30); a run is stale after 3 missed."""
    try:
        return max(0.2, float(os.environ.get("CNNBENCH_HEARTBEAT_S", "30")))
    except ValueError:
        return 30.0


def owner() -> str:
    """This process's owner id (recomputed after a fork: the pid changes)."""
    global OWNER
    if OWNER.split(":")[1] != str(os.getpid()):
        OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return OWNER


def text(value: Any, limit: int = TAG_VALUE_MAX) -> str:
    """A param / tag value as MLflow stores it: ``None`` spelled out, cut to ``limit`` characters."""
    shown = "None" if value is None else str(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def log_params(client, run_id: str, params: dict[str, Any], *, skip: Iterable[str] = ()) -> None:
    """Log ``params`` in batches, leaving out keys in ``skip`` (MLflow refuses a second value)."""
    from mlflow.entities import Param

    skipped = set(skip)
    items = [Param(k, text(v, PARAM_VALUE_MAX)) for k, v in params.items() if k not in skipped]
    for start in range(0, len(items), PARAM_BATCH):
        client.log_batch(run_id, params=items[start : start + PARAM_BATCH])


def set_tags(client, run_id: str, tags: dict[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, text(v)) for k, v in tags.items()]
    for start in range(0, len(items), TAG_BATCH):
        client.log_batch(run_id, tags=items[start : start + TAG_BATCH])


def owner_tags() -> dict[str, str]:
    return {TAG_OWNER: owner(), TAG_HEARTBEAT: f"{time.time():.1f}"}


class Heartbeat:
    """A daemon thread that writes :data:`TAG_HEARTBEAT` every interval while a run is open.

    A failed beat is remembered (``error``) rather than raised: the training thread checks it at
    the next epoch end and stops with a clear message when the store has stopped answering.
    """

    def __init__(self, client, run_id: str, interval: float | None = None) -> None:
        self.client, self.run_id = client, run_id
        self.interval = interval or heartbeat_interval()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"cnnbench-heartbeat-{run_id[:8]}", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.client.set_tag(self.run_id, TAG_HEARTBEAT, f"{time.time():.1f}")
                self.error = None
            except Exception as err:  # the store is down or slow: reported by the training thread
                self.error = err

    def stop(self) -> None:
        self._stop.set()


@dataclass(frozen=True)
class Liveness:
    alive: bool
    why: str  # for messages: "process host:123 is running", "no heartbeat for 412 s", ...


def liveness(run, *, now: float | None = None) -> Liveness:
    """Whether the process writing a RUNNING run still exists.

    A fresh heartbeat (at most three intervals old) is alive, whatever this host sees: containers
    and cluster nodes share host names and pids are per namespace, so "no such pid here" does not
    prove the writer gone. Past that, on this host the owner's pid is checked (a stopped process,
    ``SIGSTOP``, still counts as alive); elsewhere it is stale. A run without a heartbeat tag
    (older cnnbench, or another tool) is judged as before: the owner's pid on this host, else its
    start time with the same limit.
    """
    now = time.time() if now is None else now
    tags = run.data.tags
    limit = 3 * heartbeat_interval()
    owner_id = tags.get(TAG_OWNER, "")
    host, _, rest = owner_id.partition(":")
    pid = rest.partition(":")[0]
    try:
        beat = float(tags[TAG_HEARTBEAT])
        has_beat = True
    except (KeyError, ValueError):
        beat = (run.info.start_time or 0) / 1000.0
        has_beat = False
    age = now - beat
    if has_beat and age <= limit:
        return Liveness(True, f"{'process ' + owner_id.rsplit(':', 1)[0] if owner_id else 'its process'} "
                              f"sent a heartbeat {age:.0f} s ago")
    if host == socket.gethostname() and pid.isdigit():
        if _process_exists(int(pid)):
            return Liveness(True, f"process {host}:{pid} is still running (last heartbeat {age:.0f} s ago)")
        return Liveness(False, f"its process {host}:{pid} is gone (last heartbeat {age:.0f} s ago)")
    if age <= limit:
        return Liveness(True, f"{'process ' + owner_id.rsplit(':', 1)[0] if owner_id else 'its process'} "
                              f"sent a heartbeat {age:.0f} s ago")
    return Liveness(False, f"no heartbeat for {age:.0f} s (limit {limit:.0f} s)")


def _process_exists(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a recycled pid: alive, but not a Python process
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read()
        if cmdline and b"python" not in cmdline and b"cnnbench" not in cmdline:
            return False
        with open(f"/proc/{pid}/stat", "rb") as handle:
            if handle.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                return False  # a zombie (killed, not yet reaped by its parent)
    except (OSError, IndexError):
        pass
    return True


def check_mlflow_run_id(client, run_id: str) -> None:
    """``$MLFLOW_RUN_ID`` is how ``mlflow run`` hands its run to the command; attach only to such a
    run: RUNNING, no metrics yet, never written by cnnbench. A leftover variable naming any other
    run (a FINISHED one, one that trained already) is refused instead of being trained into."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"MLFLOW_RUN_ID={run_id} names no run in this tracking store; unset MLFLOW_RUN_ID "
                          f"(it is meant for `mlflow run`) to start a new run") from None
    problem = None
    if run.info.status != "RUNNING":
        problem = f"is {run.info.status}"
    elif "cnnbench.version" in run.data.tags or run.data.metrics:
        problem = "already holds a cnnbench training"
    if problem:
        raise ConfigError(
            f"MLFLOW_RUN_ID={run_id} names a run that {problem}; cnnbench attaches only to the new RUNNING run "
            f"`mlflow run` creates for it. Unset MLFLOW_RUN_ID to start a new run (or use --resume RUN_ID to continue one)"
        )


def delete_artifact(client, run_id: str, path: str) -> None:
    """Remove one artifact of a run where the artifact store allows it (best effort)."""
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
        repo.delete_artifacts(path)
        parent = path.rpartition("/")[0]
        if parent and not repo.list_artifacts(parent):
            repo.delete_artifacts(parent)
    except Exception as err:  # not every store can delete; the file is then only dead weight
        log.debug("could not delete artifact %s of run %s: %s", path, run_id, err)


# -- cnnbench runs --stale ------------------------------------------------------------------
def find_stale(client, experiment: str | None = None) -> list[tuple[object, str]]:
    """(run, why) for each cnnbench run, of any role, that is RUNNING with its process gone
    (:func:`liveness`: a run whose heartbeat is fresh is never listed)."""
    from cnnbench.errors import ConfigError

    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ConfigError(f"--experiment {experiment!r} does not exist in this tracking store")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    found = []
    for start in range(0, len(ids), 100):
        for run in client.search_runs(ids[start : start + 100], filter_string="attributes.status = 'RUNNING'", max_results=5000):
            if "cnnbench.version" not in run.data.tags:
                continue
            alive = liveness(run)
            if not alive.alive:
                found.append((run, alive.why))
    return found


def _what_next(client, run_id: str, role: str, tags: dict[str, str]) -> str:
    """How a stale run of ``role`` is continued: ``train --resume`` for a train run with a
    checkpoint, its campaign's command for a trial, cell or parent run."""
    from cnnbench.campaign.runs import RESUMED_BY, TAG_CAMPAIGN

    campaign = tags.get(TAG_CAMPAIGN) or tags.get("cnnbench.tune.study") or tags.get("cnnbench.study.id") or "?"
    if role in RESUMED_BY:
        return f"{role} of campaign {campaign!r}, continued by {RESUMED_BY[role].format(campaign=campaign)}"
    if role == "tune":
        return f"continued by {RESUMED_BY['trial'].format(campaign=campaign)}"
    if role == "study":
        return f"continued by {RESUMED_BY['cell'].format(campaign=campaign)}"
    if role == "train":
        has_ckpt = any(a.path == "checkpoints/last.pt" for a in client.list_artifacts(run_id, "checkpoints"))
        return "resumable: cnnbench train --resume " + run_id if has_ckpt else "no checkpoint"
    return "no checkpoint"


def stale_report(tracking_uri: str | None, experiment: str | None, *, mark_failed: bool) -> list[str]:
    from mlflow.tracking import MlflowClient

    from cnnbench.campaign.runs import role_of
    from cnnbench.tracking.store import check_reachable, mask_uri, resolve_uri

    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    client = MlflowClient(uri)
    stale = find_stale(client, experiment)
    if not stale:
        return [f"no stale runs in {mask_uri(uri)}"]
    lines = []
    for run, why in stale:
        info, tags = run.info, run.data.tags
        role = role_of(tags)
        trains = role in ("train", "trial", "cell", "retrain")
        epochs = len(client.get_metric_history(info.run_id, "train_loss")) if trains else 0
        logged = f"{epochs} epoch(s) logged; " if trains else ""
        what = _what_next(client, info.run_id, role, tags)
        lines.append(f"{info.run_id}  {role:<7} {info.run_name or '':<24} {logged}{why}; {what}")
        if mark_failed:
            set_tags(client, info.run_id, {"failure_reason": f"process gone ({why}); marked FAILED by cnnbench runs --mark-failed"})
            client.set_terminated(info.run_id, "FAILED")
    verb = "marked FAILED" if mark_failed else "stale (add --mark-failed to end them FAILED)"
    lines.append(f"{len(stale)} run(s) {verb} in {mask_uri(uri)}")
    return lines
