"""One ``cnnbench study run``: check every input, create or join the study (queue + parent run),
run the local workers, and, when no job is left anywhere, write the report and end the parent.

Every bad input is refused in :func:`prepare`, before any run exists. The parent run is created by
whichever command creates the queue; a command joining it (another machine, a resume) reuses it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

import cnnbench
from cnnbench.processes import stop_workers
from cnnbench.errors import CnnbenchError, ConfigError, RunInterrupted
from cnnbench.study import coordinate
from cnnbench.study.definition import Study
from cnnbench.study.run import (TAG_BUDGET, TAG_DIGEST, TAG_ID, TAG_ROLE, TAG_STORAGE, TAG_STUDY, Worker, WorkerSpec,
                                close_dead_cell_run, resolve_cells)

DEFAULT_HEARTBEAT_S = 30


class StoreError(CnnbenchError):
    """The study storage cannot be reached (exit 1, as for an unreachable tracking store)."""

    exit_code = 1


@dataclass
class RunRequest:
    study: Study
    source: str  # file path or built-in name, as given
    storage: str | None = None
    study_name: str | None = None
    experiment: str | None = None
    tracking_uri: str | None = None
    workers: int = 1
    max_retries: int = 1
    heartbeat_interval: int = DEFAULT_HEARTBEAT_S
    device: str | None = None
    command: str = ""  # how it was started: the resume line repeats it


@dataclass
class Plan:
    request: RunRequest
    tracking_uri: str
    storage_url: str
    storage: Any
    queue: coordinate.Queue
    experiment: str


def prepare(request: RunRequest) -> Plan:
    from cnnbench.tracking.store import check_reachable, resolve_uri
    from cnnbench.campaign import storage as storages

    for flag, value, low in (("--workers", request.workers, 1), ("--max-retries", request.max_retries, 0),
                             ("--heartbeat-interval", request.heartbeat_interval, 1)):
        if value < low:
            raise ConfigError(f"{flag} must be at least {low}; got {value}")
    study = request.study
    tracking_uri = resolve_uri(request.tracking_uri or study.cells[0].config.run.tracking_uri)
    check_reachable(tracking_uri)
    resolve_cells(study)
    storage_url = request.storage or storages.default_storage(tracking_uri)
    storages.check_url(storage_url)
    try:
        storage = coordinate.open_queue_storage(storage_url, heartbeat_interval=request.heartbeat_interval,
                                                on_stale=close_dead_cell_run(tracking_uri))
    except ConfigError as err:
        if str(err).startswith("cannot open the study storage"):
            raise StoreError(str(err)) from None
        raise
    queue = coordinate.Queue(storage, request.study_name or study.study_id)
    if queue.exists():
        queue.check_definition(study.fingerprint(), study.digest)  # refused before any run exists
    experiment = request.experiment or _base_experiment(study) or study.name
    return Plan(request, tracking_uri, storage_url, storage, queue, experiment)


def _base_experiment(study: Study) -> str | None:
    """The study's [base] experiment, else $MLFLOW_EXPERIMENT_NAME; None: use the study's name."""
    import os

    return study.cells[0].config.run.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or None


def create_parent(plan: Plan) -> tuple[str, str]:
    """The study's parent run: tags, params, the study file and its expanded definition."""
    from cnnbench.tracking.mlflow_tracker import git_commit
    from cnnbench.tracking.store import mask_uri
    from cnnbench.tune.tracker import ParentRun

    study = plan.request.study
    client = MlflowClient(plan.tracking_uri)
    found = client.get_experiment_by_name(plan.experiment)
    exp_id = found.experiment_id if found else client.create_experiment(plan.experiment)
    run_id = client.create_run(exp_id, run_name=f"study {plan.queue.study_name}").info.run_id
    parent = ParentRun(client, run_id, plan.experiment, study.metric)
    tags = {TAG_STUDY: study.name, TAG_ID: plan.queue.study_name, TAG_BUDGET: study.budget or "default",
            TAG_DIGEST: study.digest, TAG_ROLE: "study", TAG_STORAGE: mask_uri(plan.storage_url),
            "cnnbench.version": cnnbench.__version__, "mlflow.note.content": study.description}
    commit = git_commit()
    if commit:
        tags["cnnbench.git_commit"] = commit
    parent.set_tags(tags)
    parent.log_params({"study": study.name, "budget": study.budget or "default", "cells": len(study.cells),
                       "seeds": ",".join(map(str, study.seeds)), "metric": study.metric, "metric_goal": study.goal,
                       "max_retries": plan.request.max_retries,
                       **{f"set.{k}": v for k, v in study.sets.items()}})
    with tempfile.TemporaryDirectory(prefix="cnnbench-study-") as folder:
        root = Path(folder) / "study"
        root.mkdir()
        (root / f"{study.name}.toml").write_text(study.source_text)
        import json

        (root / "definition.json").write_text(json.dumps(study.describe(), indent=2, default=str))
        client.log_artifacts(run_id, folder)
    return run_id, plan.experiment


def run(plan: Plan, *, stream=None) -> dict[str, Any]:
    """Create or join, run the workers, finish; returns what happened (for the CLI and tests)."""
    from cnnbench.tracking.store import mask_uri
    from cnnbench.tune.tracker import ParentRun

    stream = stream or sys.stderr
    req, study, queue = plan.request, plan.request.study, plan.queue
    jobs = [coordinate.Job(c.index, c.label, s) for c in study.cells for s in study.seeds]
    parent_id, experiment, created = queue.create_or_join(
        jobs, fingerprint=study.fingerprint(), digest=study.digest, make_parent=lambda: create_parent(plan))
    client = MlflowClient(plan.tracking_uri)
    parent = ParentRun(client, parent_id, experiment, study.metric)
    was = client.get_run(parent_id).info.status
    queue.fail_stale()
    requeued = queue.requeue(req.max_retries)
    before = queue.summary()
    if was != "RUNNING" and before["waiting"] + before["running"]:
        client.update_run(parent_id, status="RUNNING")  # a resume: the study runs again
    total = len(jobs)
    state = "new" if created else f"joined ({before['finished']} of {total} runs finished"
    state += "" if created else (f", {len(requeued)} re-queued)" if requeued else ")")
    print(f"study {queue.study_name!r} ({state}): {len(study.cells)} cells x {len(study.seeds)} seeds = {total} runs; "
          f"queue {mask_uri(plan.storage_url)}; parent run {parent_id} in experiment {experiment!r}", file=stream, flush=True)
    spec = WorkerSpec(source=req.source, text=study.source_text, budget=study.budget, sets=[f"{k}={v}" for k, v in study.sets.items()],
                      storage=plan.storage_url, study_name=queue.study_name, parent_run_id=parent_id, experiment=experiment,
                      tracking_uri=plan.tracking_uri, max_retries=req.max_retries, heartbeat_interval=req.heartbeat_interval,
                      workers=req.workers, device=req.device)
    started = time.perf_counter()
    try:
        ran = run_workers(spec, plan.storage, stream=stream)
    except KeyboardInterrupt:
        parent.set_tags({"cnnbench.study.interrupted": "true"})
        parent.end("KILLED")
        resume = req.command or f"cnnbench study run {req.source}"
        raise RunInterrupted(f"study {queue.study_name!r} interrupted: running cells ended KILLED, parent run {parent_id} "
                             f"KILLED; finished cells are kept. Resume with the same command: {resume}", run_id=parent_id) from None
    after = queue.summary()
    outcome = {"parent_run_id": parent_id, "experiment": experiment, "created": created, "summary": after,
               "ran": ran, "wall_s": time.perf_counter() - started, "complete": after["running"] + after["waiting"] == 0}
    if not outcome["complete"]:
        print(f"{after['running'] + after['waiting']} runs are still with other workers; the last one to finish writes "
              f"the report and ends the parent run", file=stream, flush=True)
        return outcome
    close_orphans(client, parent_id)
    changed = created or after != before or bool(requeued)
    status = "FINISHED" if after["finished"] else "FAILED"
    log = changed or was != status
    try:
        outcome["report"] = finish(plan, parent_id, status=status, log=log)
    except Exception as err:  # every cell is kept; the parent must not stay RUNNING without its report
        parent.set_tags({"failure_reason": f"the study report could not be written ({type(err).__name__}: {err}); "
                                           f"the cells are kept and the same command writes it again"})
        parent.end("FAILED")
        raise
    if status == "FAILED":
        parent.set_tags({"failure_reason": "every cell x seed failed; see the child runs' failure_reason"})
    elif "failure_reason" in client.get_run(parent_id).data.tags:  # an earlier command's, now resolved
        client.delete_tag(parent_id, "failure_reason")
    parent.end(status)
    return outcome


def close_orphans(client: MlflowClient, parent_id: str) -> None:
    """With no job left anywhere, a child run still RUNNING lost its worker before the worker could
    tell the queue which run it was (killed between creating the run and recording it): end it."""
    from mlflow.entities import RunTag

    exp_id = client.get_run(parent_id).info.experiment_id
    for run in client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"):
        client.log_batch(run.info.run_id, tags=[RunTag("failure_reason", "its worker stopped sending heartbeats (killed or "
                                                       "lost) before ending it; the cell was given to another worker")])
        client.set_terminated(run.info.run_id, "FAILED")


def finish(plan: Plan, parent_id: str, *, status: str, log: bool) -> Any:
    from cnnbench.study import report as reports

    rep = reports.build(MlflowClient(plan.tracking_uri), parent_id, status=status)
    if log:
        reports.log_to_parent(MlflowClient(plan.tracking_uri), parent_id, rep)
    return rep


def run_workers(spec: WorkerSpec, storage, *, stream) -> int:
    """Worker 0 here, the others as ``python -m cnnbench.study.worker`` processes; returns the runs
    worker 0 finished or failed."""
    import os

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="cnnbench-study-") as folder:
        try:
            for index in range(1, spec.workers):
                path = WorkerSpec(**{**asdict(spec), "index": index, "parent_pid": os.getpid()}).save(Path(folder) / f"w{index}.json")
                procs.append(subprocess.Popen([sys.executable, "-m", "cnnbench.study.worker", str(path)]))
            stats = Worker(WorkerSpec(**{**asdict(spec), "index": 0}), storage=storage, stream=stream).run()
            codes = [p.wait() for p in procs]
        except BaseException:
            stop_workers(procs)  # they end their cell KILLED and exit
            raise
    if any(c not in (0,) for c in codes):
        print(f"note: worker exit codes {codes} (a worker that stopped early leaves its cell to the others)", file=stream)
    return stats.finished + stats.failed  # this process's share
