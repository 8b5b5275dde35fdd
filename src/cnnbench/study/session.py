"""One ``cnnbench study run``: check every input, create or join the campaign (job queue + parent
run), run the local workers until no job is left anywhere, write the report and end the parent.

Every bad input is refused in :func:`prepare`, before any run exists. The parent run is created by
whichever command creates the queue; a command joining it (another machine, a resume) reuses it.
A command with nothing to do (every job finished or out of retries) starts no worker: it prints
the report from MLflow. The whole command runs under the campaign's signal policy
(:mod:`cnnbench.campaign.workers`), and its exit code is the campaign's state
(:data:`cnnbench.campaign.EXIT_COMPLETE` only when every job FINISHED).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from cnnbench.campaign.faults import fault_hook
from cnnbench.campaign import DEFAULT_HEARTBEAT_S, EXIT_COMPLETE, EXIT_INCOMPLETE, EXIT_JOBS_FAILED
from cnnbench.campaign import runs as identity
from cnnbench.campaign.launchers import Destination, LauncherOptions
from cnnbench.campaign.queue import JobQueue
from cnnbench.campaign.workers import exit_code_for, run_local, signal_policy
from cnnbench.errors import ConfigError, RunInterrupted
from cnnbench.tracking import campaign_notes
from cnnbench.study.definition import Study, definition_params
from cnnbench.study.run import (TAG_BUDGET, TAG_DIGEST, TAG_DISCARDED, TAG_ID, TAG_STORAGE, TAG_STUDY, Worker, WorkerSpec,
                                close_lost, job_of, lease_s, resolve_cells)

ATTR_DIGEST, ATTR_FINGERPRINT, ATTR_PARENT, ATTR_EXPERIMENT = "digest", "fingerprint", "parent_run_id", "experiment"


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
    max_jobs: int | None = None
    launcher: LauncherOptions = field(default_factory=LauncherOptions)
    max_seeds: int | None = None  # --until-decided: seeds per cell at most
    seed_batch: int | None = None  # --until-decided: seeds added per look (default: the study's seed count)
    use_file_destination: bool = False  # the study file's [base] tracking_uri may replace the user's (FAULTS X26)

    @property
    def looks(self) -> int:
        """How often --until-decided may look at the data: the first look, then one per batch."""
        if not self.max_seeds:
            return 1
        return 1 + math.ceil((self.max_seeds - len(self.study.seeds)) / self.batch)

    @property
    def batch(self) -> int:
        return self.seed_batch or len(self.study.seeds)


@dataclass
class Plan:
    request: RunRequest
    tracking_uri: str
    storage_url: str
    queue: JobQueue
    experiment: str
    destination: Destination | None = None  # what remote workers get (--launcher slurm|ray)
    space: Any = None  # a [search] study: tune's SearchSpace, checked against the model and input


@dataclass
class Outcome:
    parent_run_id: str
    experiment: str
    created: bool
    counts: dict[str, int]
    ran: int  # jobs this command's worker 0 ended
    wall_s: float
    exit_code: int
    failed: list[str]  # one line per failed job
    report: Any = None
    started_workers: bool = True
    added: int = 0  # --until-decided: runs this look added (the workers run again)


def prepare(request: RunRequest) -> Plan:
    from cnnbench.campaign import storage as storages
    from cnnbench.campaign.launchers import check_available, check_remote
    from cnnbench.tracking.store import check_reachable, choose_tracking_uri, resolve_uri

    request.launcher.check(request.workers)
    for flag, value, low in (("--workers", request.workers, 1), ("--max-retries", request.max_retries, 0),
                             ("--heartbeat-interval", request.heartbeat_interval, 1)):
        if value < low:
            raise ConfigError(f"{flag} must be at least {low}; got {value}")
    study = request.study
    check_until_decided(request)
    from_file = None if "tracking_uri" in study.sets else study.cells[0].config.run.tracking_uri
    given = request.tracking_uri or (study.cells[0].config.run.tracking_uri if "tracking_uri" in study.sets else None)
    tracking_uri = resolve_uri(choose_tracking_uri(given, from_file, where=f"study file {request.source} [base]",
                                                   accept_file=request.use_file_destination))
    check_reachable(tracking_uri)
    resolve_cells(study)
    storage_url = request.storage or storages.default_storage(tracking_uri)
    storages.check_url(storage_url)
    destination = None
    if request.launcher.name != "local":  # one-machine stores refused, passwords out of the URLs
        destination = check_remote(request.launcher.name, storage_url, tracking_uri)
        check_available(request.launcher.name)
    space = None
    if study.search is not None:
        space = check_search(request)
    queue = JobQueue(storages.open_engine(storage_url), request.study_name or study.study_id,
                     lease_s=lease_s(request.heartbeat_interval), max_retries=request.max_retries)
    if queue.exists():
        check_definition(queue, study)  # refused before any run exists
    experiment = request.experiment or _base_experiment(study) or study.name
    return Plan(request, tracking_uri, storage_url, queue, experiment, destination, space)


def check_search(request: RunRequest) -> Any:
    """A [search] study's space checked by ``api.resolve`` (tune's restrict: values the model cannot
    take on this input dropped and named), and what a search does not do yet refused in one line."""
    from cnnbench.tune.space import SearchSpace, parse_expression, restrict

    if request.launcher.name != "local":
        raise ConfigError(f"a [search] study runs its workers on this machine (--workers N); --launcher "
                          f"{request.launcher.name} takes grid studies, or cnnbench tune --launcher for a search")
    if request.max_seeds:
        raise ConfigError("--until-decided adds seeds to the cells of a grid; a [search] study's cells are its trials")
    base = request.study.cells[0].config
    return restrict(SearchSpace(tuple(parse_expression(t, base) for t in request.study.search.space)), base)


def check_until_decided(request: RunRequest) -> None:
    """--until-decided's numbers, before anything exists."""
    from cnnbench.study.definition import MAX_JOBS, MAX_SEED

    study, cap = request.study, request.max_seeds
    if cap is None:
        if request.seed_batch is not None:
            raise ConfigError("--seed-batch goes with --until-decided --max-seeds N")
        return
    n0 = len(study.seeds)
    if cap <= n0:
        raise ConfigError(f"--max-seeds must be more than the study's {n0} seed(s) (it caps the seeds --until-decided "
                          f"adds); got {cap}")
    limit = request.max_jobs or MAX_JOBS
    if cap * len(study.cells) > limit:
        raise ConfigError(f"--max-seeds {cap} x {len(study.cells)} cells = {cap * len(study.cells)} runs at most, over "
                          f"the limit of {limit}; lower --max-seeds or raise --max-jobs")
    if max(study.seeds) + cap - n0 > MAX_SEED:
        raise ConfigError(f"--max-seeds {cap}: the added seeds would pass the largest seed, {MAX_SEED}")
    if request.seed_batch is not None and request.seed_batch < 1:
        raise ConfigError(f"--seed-batch must be at least 1; got {request.seed_batch}")
    if request.launcher.detach:
        raise ConfigError("--until-decided cannot --detach: this command decides after each batch which cells get "
                          "more seeds; follow the study (drop --detach)")


def added_seeds(study: Study, max_seeds: int) -> list[int]:
    """The study's seeds, then the ones --until-decided may add, in order (the same for every cell,
    so cells stay paired by seed)."""
    start = max(study.seeds) + 1
    return [*study.seeds, *range(start, start + max_seeds - len(study.seeds))]


def seeds_to_add(report: Any, request: RunRequest) -> dict[str, list[int]]:
    """label -> the seeds (beyond those it has) each cell of a still-undecided comparison needs for
    the next look: both sides of the comparison up to the shared n plus one batch, at most --max-seeds."""
    from cnnbench.study import report as reports

    order = added_seeds(request.study, request.max_seeds)
    cells = {c.label: c for c in report.cells}
    want: dict[str, int] = {}
    for c in report.comparisons:
        if reports.decision(c, report.settings, request.max_seeds) != "undecided":
            continue
        target = min(request.max_seeds, c.n + request.batch)
        for label in (c.cell, c.against):
            want[label] = max(want.get(label, 0), target)
    out = {}
    for label, target in want.items():
        have = set(cells[label].seeds) | set(cells[label].failed) | set(cells[label].running)
        missing = [s for s in order[:target] if s not in have]
        if missing:
            out[label] = missing
    return out


def check_definition(queue: JobQueue, study: Study) -> dict[str, Any]:
    """The stored campaign's attrs; a ConfigError naming the differences when its definition differs."""
    from cnnbench.study.definition import differences

    attrs = queue.wait_ready()
    if attrs.get(ATTR_DIGEST) != study.digest:
        diff = differences(attrs.get(ATTR_FINGERPRINT, {}), study.fingerprint())
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ConfigError(f"study {queue.campaign!r} in this storage was started with another definition "
                          f"({shown or 'its digest differs'}); run the stored definition, or give --study-name NEW "
                          f"to start a separate study")
    return attrs


def _base_experiment(study: Study) -> str | None:
    """The study's [base] experiment, else $MLFLOW_EXPERIMENT_NAME; None: use the study's name."""
    import os

    return study.cells[0].config.run.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or None


def create_parent(plan: Plan) -> identity.Parent:
    """The study's parent run: identity, params, the study file and its expanded definition."""
    from cnnbench.campaign.storage import redact

    study = plan.request.study
    client = MlflowClient(plan.tracking_uri)
    name = plan.queue.campaign
    parent = identity.Parent.create(client, plan.experiment, run_name=f"study {name}", role="study", campaign=name, tags={
        TAG_STUDY: study.name, TAG_ID: name, TAG_BUDGET: study.budget or "default", TAG_DIGEST: study.digest,
        TAG_STORAGE: redact(plan.storage_url),
        "mlflow.note.content": campaign_notes.study_description(study, command=plan.request.command, study_name=name)})
    parent.log_params({"study": study.name, "budget": study.budget or "default", "cells": len(study.cells),
                       "seeds": ",".join(map(str, study.seeds)), "metric": study.metric, "metric_goal": study.goal,
                       "max_retries": plan.request.max_retries, **{f"set.{k}": v for k, v in study.sets.items()}})
    with tempfile.TemporaryDirectory(prefix="cnnbench-study-") as folder:
        root = Path(folder) / "study"
        root.mkdir()
        (root / f"{study.name}.toml").write_text(study.source_text)
        (root / "definition.json").write_text(json.dumps(study.describe(), indent=2, default=str))
        client.log_artifacts(parent.run_id, folder)
    return parent


def create_or_join(plan: Plan) -> tuple[identity.Parent, str, bool]:
    """Create the campaign (parent run, then every job once) or join it. Of several commands
    creating it at once, one wins the queue's unique name; the others delete the parent run they
    made and join. Returns (parent, experiment, created)."""
    study, queue = plan.request.study, plan.queue
    client = MlflowClient(plan.tracking_uri)
    if not queue.exists():
        parent = create_parent(plan)
        attrs = {ATTR_DIGEST: study.digest, ATTR_FINGERPRINT: study.fingerprint(), ATTR_PARENT: parent.run_id,
                 ATTR_EXPERIMENT: plan.experiment}
        # a search's trials come from its sampler (tune's job source): the queue holds only the campaign
        jobs = () if study.search else (job_of(c.index, c.label, s) for c in study.cells for s in study.seeds)
        try:
            if queue.create(jobs, attrs):
                return parent, plan.experiment, True
        except BaseException:  # interrupted while enqueuing: the parent must not stay RUNNING
            parent.end("KILLED", reason="interrupted while the study was being created")
            raise
        client.delete_run(parent.run_id)  # another command created it first
    attrs = check_definition(queue, study)
    return identity.Parent(client, attrs[ATTR_PARENT]), attrs[ATTR_EXPERIMENT], False


def record_until_decided(parent: identity.Parent, request: RunRequest) -> None:
    """--until-decided's settings on the parent (the report's alpha per look comes from them); a
    later command must give the same ones: the looks already taken were tested at that alpha."""
    from cnnbench.study import report as reports

    recorded = parent.client.get_run(parent.run_id).data.params
    mine = {reports.PARAM_MAX_SEEDS: str(request.max_seeds), reports.PARAM_SEED_BATCH: str(request.batch),
            reports.PARAM_LOOKS: str(request.looks)}
    if reports.PARAM_MAX_SEEDS in recorded:
        before = {k: recorded.get(k) for k in mine}
        if before != mine:
            raise ConfigError(f"this study ran --until-decided with --max-seeds {before[reports.PARAM_MAX_SEEDS]} "
                              f"--seed-batch {before[reports.PARAM_SEED_BATCH]}; give the same (its looks were "
                              f"tested at alpha / {before[reports.PARAM_LOOKS]}) or --study-name NEW")
        return
    parent.log_params(mine)


def run(plan: Plan, *, stream=None) -> Outcome:
    """Create or join, run the workers, finish (see the module doc); with --until-decided, again
    after each look that added seeds."""
    stream = stream or sys.stderr
    held: list[identity.Parent] = []
    with signal_policy():
        try:
            outcome = _run(plan, stream, held)
            while outcome.added:
                outcome = _run(plan, stream, held)
            return outcome
        except KeyboardInterrupt as err:  # a cell's own RunInterrupted names `train --resume`: the study's replaces it
            raise _interrupted(plan, held[0] if held else None, err) from None


def _run(plan: Plan, stream, held: list) -> Outcome:
    from cnnbench.campaign.storage import redact

    req, study, queue = plan.request, plan.request.study, plan.queue
    started = time.perf_counter()
    parent, experiment, created = create_or_join(plan)
    held.append(parent)
    if study.search is not None:
        return _run_search(plan, parent, experiment, created, started, stream)
    client = MlflowClient(plan.tracking_uri)
    was = client.get_run(parent.run_id).info.status
    for lost in queue.sweep():  # dead workers of earlier commands
        close_lost(client, lost)
    requeued = queue.requeue_failed()
    before = queue.counts()
    total = sum(before.values())
    if created:
        state = "new"
    else:
        state = f"joined ({before['finished']} of {total} runs finished" + (f", {len(requeued)} re-queued)" if requeued else ")")
    planned = len(study.cells) * len(study.seeds)
    extra = f" + {total - planned} added by --until-decided" if total > planned else ""
    print(f"study {queue.campaign!r} ({state}): {len(study.cells)} cells x {len(study.seeds)} seeds = {planned} runs{extra}; "
          f"queue {redact(plan.storage_url)}; parent run {parent.run_id} in experiment {experiment!r}", file=stream, flush=True)
    if req.max_seeds:
        record_until_decided(parent, req)
    if before["waiting"] + before["running"] == 0:  # nothing to do: no worker, the report from MLflow
        outcome = _finish(plan, parent, created=False, was=was, changed=bool(requeued), ran=0, started=started, stream=stream)
        outcome.started_workers = False
        return outcome
    parent.attach()
    spec = WorkerSpec(source=req.source, text=study.source_text, budget=study.budget,
                      sets=[f"{k}={v}" for k, v in study.sets.items()], storage=plan.storage_url,
                      study_name=queue.campaign, parent_run_id=parent.run_id, experiment=experiment,
                      tracking_uri=plan.tracking_uri, max_retries=req.max_retries,
                      heartbeat_interval=req.heartbeat_interval, workers=req.workers, device=req.device,
                      max_jobs=req.max_jobs)
    progress = Progress(queue, stream)
    if req.launcher.name != "local":
        return _run_remote(plan, parent, spec, progress, was=was, created=created, started=started, stream=stream)
    stats, codes = run_local(asdict(spec), req.workers, lambda s: Worker(
        WorkerSpec(**s), queue=queue, stream=stream, progress=progress).run())
    if any(codes):
        print(f"note: worker exit codes {codes} (a worker that stopped early leaves its cell to the others)", file=stream)
    return _finish(plan, parent, created=created, was=was, changed=True, ran=stats.finished + stats.failed,
                   started=started, stream=stream)


def _run_remote(plan: Plan, parent: identity.Parent, spec: WorkerSpec, progress: "Progress", *, was: str,
                created: bool, started: float, stream) -> Outcome:
    """The workers as one Slurm array or as Ray tasks; then follow the campaign through its storage
    (never the engine's job states) until it is done or no worker is left, or return at once (--detach)."""
    from cnnbench.campaign import launchers
    from cnnbench.campaign.storage import redact

    req, queue, dest = plan.request, plan.queue, plan.destination
    options = req.launcher
    remote = {**asdict(spec), "storage": dest.storage, "tracking_uri": dest.tracking_uri, "finish": options.detach,
              "workers": 1}
    submitted = time.time()
    try:
        launched = launchers.launch(remote, req.workers, options, dest.env, name=queue.campaign)
    except ConfigError as err:  # nothing runs: the parent must not stay RUNNING
        parent.end("FAILED", reason=f"{err}; the jobs wait in the queue, the same command submits them again")
        raise
    where = (f"Slurm array job {launched.job_id} ({req.workers} tasks; scripts and logs in "
             f"{Path(options.folder).resolve() / queue.campaign})" if options.name == "slurm"
             else f"{req.workers} Ray tasks on {launched.job_id}")
    print(f"submitted {where}", file=stream, flush=True)
    parent.set_tags({"cnnbench.launcher": options.name, "cnnbench.launcher.job": launched.job_id})
    status = f"cnnbench study status {req.source}" + (f" --budget {req.study.budget}" if req.study.budget else "") + \
        f" --study-name {queue.campaign} --storage {redact(plan.storage_url)}"
    if options.detach:
        parent.detach()  # the tasks beat the parent and the last one writes the report
        print(f"detached: the tasks finish the study and write its report; follow it with: {status}", file=stream, flush=True)
        return Outcome(parent.run_id, plan.experiment, created, queue.counts(), 0, time.perf_counter() - started,
                       EXIT_COMPLETE, [])
    first = FirstStart(queue, submitted, stream)
    try:
        done = launchers.follow(launched, lambda: queue.active() == 0, lambda: (first(), progress.changed()))
    except KeyboardInterrupt:
        from cnnbench.campaign.workers import acknowledge

        acknowledge()
        print(f"cancelling {where} (each task ends its cell KILLED, back in the queue)", file=stream, flush=True)
        launched.cancel()
        wait_released(queue)
        raise
    if not done:
        counts = queue.counts()
        left = counts["waiting"] + counts["running"]
        message = (f"study {queue.campaign!r}: {left} runs are left but no {options.name} worker is queued or running "
                   f"any more (cancelled, failed to start or out of requeues); the same command submits workers again")
        parent.end("KILLED", reason=message)
        print(message, file=stream, flush=True)
        return Outcome(parent.run_id, plan.experiment, created, counts, 0, time.perf_counter() - started,
                       EXIT_INCOMPLETE, failed_lines(queue))
    return _finish(plan, parent, created=created, was=was, changed=True, ran=0, started=started, stream=stream)


def _run_search(plan: Plan, parent: identity.Parent, experiment: str, created: bool, started: float, stream) -> Outcome:
    """A [search] study: tune's job source (its sampler, pruner, workers, heartbeats, retries and
    orphan sweep) under the study's parent, each trial configuration trained over the study's seeds,
    until the study has ``trials`` trials over every command (never more); then the study's report."""
    import optuna

    from cnnbench.campaign.storage import open_storage, redact
    from cnnbench.tune.objective import trial_label
    from cnnbench.tune.study import WorkerSpec as TrialSpec
    from cnnbench.tune.study import open_study, quiet_optuna, run_workers, sweep_orphan_runs
    from cnnbench.tune.tracker import close_dead_trial_run

    req, study, search, queue = plan.request, plan.request.study, plan.request.study.search, plan.queue
    client = MlflowClient(plan.tracking_uri)
    was = client.get_run(parent.run_id).info.status
    run = {"seed": study.seeds[0], "tracking_uri": plan.tracking_uri, "experiment": experiment, "quiet": True}
    base = study.cells[0].config.replace(run={**run, **({"device": req.device} if req.device else {})})
    storage = open_storage(plan.storage_url, heartbeat_interval=req.heartbeat_interval,
                           on_stale=lambda s, trial: close_dead_trial_run(plan.tracking_uri, trial))
    quiet_optuna()
    fixed = {k: v for k, v in definition_params(base).items() if k not in plan.space.names}
    trials, _ = open_study(storage, queue.campaign, direction=search.direction, space=plan.space,
                           metric=search.objective, base_params=fixed, seeds=len(study.seeds))
    sweep_orphan_runs(queue.campaign, plan.storage_url, plan.tracking_uri, storage)  # earlier commands' killed workers
    counts = search_counts(trials, search.trials)
    print(f"study {queue.campaign!r} ({'new' if created else 'joined'}): search of {search.trials} trials "
          f"({search.sampler} sampler, {search.pruner} pruner, {search.objective}) x {len(study.seeds)} seeds; "
          f"{counts['finished'] + counts['failed']} trials done; {', '.join(plan.space.texts().values())}; queue "
          f"{redact(plan.storage_url)}; parent run {parent.run_id} in experiment {experiment!r}", file=stream, flush=True)
    for note in plan.space.notes:
        print(f"note: {note}", file=stream, flush=True)
    ran = bool(counts["waiting"])
    if ran:
        parent.attach()
        spec = TrialSpec(config=base.to_dict(), space=list(plan.space.texts().values()), storage=plan.storage_url,
                         study_name=queue.campaign, parent_run_id=parent.run_id, experiment=experiment,
                         tracking_uri=plan.tracking_uri, n_trials=counts["waiting"], sampler=search.sampler,
                         pruner=search.pruner, seed=study.seeds[0], metric=search.objective, direction=search.direction,
                         heartbeat_interval=req.heartbeat_interval, n_jobs=req.workers, seeds=len(study.seeds),
                         budget=search.trials, study_tags={TAG_STUDY: study.name, TAG_ID: queue.campaign})
        try:
            run_workers(spec, storage, stream=stream)
        except Exception as err:  # the trials run so far are kept; the parent must not stay RUNNING
            parent.end("FAILED", reason=f"{type(err).__name__}: {err}; the same command runs the missing trials"[:4000])
            raise
    trials = optuna.load_study(study_name=queue.campaign, storage=storage)
    counts = search_counts(trials, search.trials)
    failed = [f"{trial_label(t.number, t.params)}: {t.user_attrs['fail_reason'].splitlines()[0][:300]}"
              for t in trials.get_trials(deepcopy=False) if t.state.name == "FAIL" and "fail_reason" in t.user_attrs]
    outcome = Outcome(parent.run_id, experiment, created, counts, 0, time.perf_counter() - started, EXIT_COMPLETE,
                      failed, started_workers=ran)
    if counts["running"]:
        print(f"{counts['running']} trials are still with other commands; the last one to finish writes the report "
              f"and ends the parent run", file=stream, flush=True)
        return outcome
    discard_uncounted(client, trials)
    close_orphans(client, parent.run_id)
    status = "FINISHED" if not failed and not counts["waiting"] else "FAILED"
    if failed:
        outcome.exit_code = EXIT_JOBS_FAILED
    elif counts["waiting"]:
        outcome.exit_code = EXIT_INCOMPLETE
    log = ran or was != "FINISHED" or status != "FINISHED"
    outcome.report = finish(plan, parent.run_id, status=status, log=log)
    if log:
        parent.log_metrics({"jobs_total": search.trials, "jobs_finished": counts["finished"],
                            "failed_jobs": counts["failed"], "missing_jobs": counts["waiting"]})
        parent.set_tags({"cnnbench.failed_jobs": "\n".join(failed) or "none"})
    if log or was != status:
        reason = f"{len(failed)} of {search.trials} trials failed: " + "; ".join(failed[:20]) if failed else None
        parent.end(status, reason=reason)
    return outcome


def search_counts(trials: Any, budget: int) -> dict[str, int]:
    """A search's trials as the queue counts jobs: finished (complete or pruned), failed (by their
    own error), running, and waiting (still to start before the budget is reached)."""
    from cnnbench.tune.study import ATTR_SURPLUS

    states = [t for t in trials.get_trials(deepcopy=False) if not t.user_attrs.get(ATTR_SURPLUS)]
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in states)
    failed = sum(t.state.name == "FAIL" and "fail_reason" in t.user_attrs for t in states)
    running = sum(t.state.name in ("RUNNING", "WAITING") for t in states)
    return {"finished": finished, "failed": failed, "running": running,
            "waiting": max(0, budget - finished - failed - running)}


def discard_uncounted(client: MlflowClient, trials: Any) -> None:
    """The runs of trials that do not count (interrupted, their worker died: Optuna failed them
    without a reason of their own, and another trial took their place) are tagged so the report
    leaves them out: a configuration is reported from the trial that counts, never half of one."""
    from cnnbench.tune.study import trial_run_ids

    for t in trials.get_trials(deepcopy=False):
        if t.state.name == "FAIL" and "fail_reason" not in t.user_attrs:
            for run_id in trial_run_ids(t):
                client.set_tag(run_id, TAG_DISCARDED, "the trial was interrupted or lost its worker; not counted")


class FirstStart:
    """Prints once how long after submission the first job was claimed (the launcher's start-up)."""

    def __init__(self, queue: JobQueue, submitted: float, stream) -> None:
        self.queue, self.submitted, self.stream, self.seen = queue, submitted, stream, False

    def __call__(self) -> None:
        if self.seen:
            return
        claimed = [r.claimed_at for r in self.queue.rows() if r.claimed_at and r.claimed_at >= self.submitted - 1]
        if claimed:
            self.seen = True
            print(f"first job started {min(claimed) - self.submitted:.1f} s after submission", file=self.stream, flush=True)


def wait_released(queue: JobQueue, timeout_s: float = 90.0) -> None:
    """After cancelling remote workers: wait (bounded) until none holds a job, so the parent's end
    reflects the queue."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and queue.counts()["running"]:
        time.sleep(1.0)


def finish_detached(spec: dict[str, Any], stream=None) -> None:
    """A detached campaign's worker, after its last job: if no job is left anywhere and the parent
    still runs, write the report and end the parent (what the following command does otherwise)."""
    from cnnbench.study.definition import load

    kwargs = {"max_jobs": spec["max_jobs"]} if spec.get("max_jobs") else {}
    study = load(spec["source"], spec["text"], budget=spec["budget"], sets=spec["sets"], **kwargs)
    request = RunRequest(study=study, source=spec["source"], storage=spec["storage"], study_name=spec["study_name"],
                         experiment=spec["experiment"], tracking_uri=spec["tracking_uri"],
                         max_retries=spec["max_retries"], heartbeat_interval=spec["heartbeat_interval"])
    plan = prepare(request)
    if plan.queue.active():
        return
    parent = identity.Parent(MlflowClient(plan.tracking_uri), spec["parent_run_id"])
    if parent.client.get_run(parent.run_id).info.status != "RUNNING":
        return
    _finish(plan, parent, created=False, was="RUNNING", changed=True, ran=0, started=time.perf_counter(),
            stream=stream or sys.stderr)


def _interrupted(plan: Plan, parent: identity.Parent | None, err: KeyboardInterrupt) -> RunInterrupted:
    """This command's cells ended KILLED and went back to the queue. The parent ends KILLED unless
    another command still holds jobs of the campaign (it goes on, and ends the parent itself)."""
    from cnnbench.campaign.workers import acknowledge

    acknowledge()
    req, queue = plan.request, plan.queue
    resume = req.command or f"cnnbench study run {req.source}"
    code = exit_code_for(err)
    signal_name = "Ctrl-C" if code == 130 else "SIGTERM/SIGHUP"
    if parent is None:  # stopped while creating or joining: whatever exists is resumed by the same command
        interrupted = RunInterrupted(f"study {queue.campaign!r} interrupted ({signal_name}) before any cell ran. "
                                     f"Resume with the same command: {resume}")
        interrupted.exit_code = code
        return interrupted
    others = queue.counts()["running"]
    if others:
        parent.detach()
        message = (f"study {queue.campaign!r} interrupted ({signal_name}): this command's running cells ended KILLED "
                   f"and went back to the queue; {others} cell(s) still run in other commands, which finish the "
                   f"study. Rejoin with the same command: {resume}")
    else:
        parent.set_tags({"cnnbench.study.interrupted": "true"})
        parent.end("KILLED", reason=f"interrupted ({signal_name}); resume with the same command: {resume}")
        message = (f"study {queue.campaign!r} interrupted ({signal_name}): running cells ended KILLED, parent run "
                   f"{parent.run_id} KILLED; finished cells are kept. Resume with the same command: {resume}")
    interrupted = RunInterrupted(message, run_id=parent.run_id)
    interrupted.exit_code = code
    return interrupted


class Progress:
    """``k/N done, f failed, ETA`` after each job of worker 0, from the queue (all commands' jobs)
    and the measured durations of finished jobs."""

    def __init__(self, queue: JobQueue, stream) -> None:
        self.queue, self.stream = queue, stream
        self._last: dict[str, int] | None = None

    def changed(self) -> None:
        """The line only when the counts moved (a command following remote workers polls)."""
        counts = self.queue.counts()
        if counts != self._last:
            self._last = counts
            self()

    def __call__(self) -> None:
        counts = self.queue.counts()
        total = sum(counts.values())
        left = counts["waiting"] + counts["running"]
        line = f"progress: {counts['finished']}/{total} done, {counts['failed']} failed, {counts['running']} running"
        durations = self.queue.durations()
        if durations and left:
            parallel = max(1, counts["running"])
            line += f", ETA {_duration(statistics.median(durations) * left / parallel)}"
        print(line, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def failed_lines(queue: JobQueue) -> list[str]:
    """One line per job that failed after its retries: cell / seed: reason."""
    out = []
    for row in queue.rows():
        if row.state == "failed":
            reason = (row.reason or row.outcome or "failed").splitlines()[0][:300]
            out.append(f"{row.payload.get('label', row.key)} / seed {row.payload.get('seed', '?')}: {reason}")
    return out


def _finish(plan: Plan, parent: identity.Parent, *, created: bool, was: str, changed: bool, ran: int,
            started: float, stream) -> Outcome:
    """No job is left anywhere: close orphaned child runs, write the report, end the parent with the
    campaign's state and return the exit code that says it."""
    queue = plan.queue
    client = MlflowClient(plan.tracking_uri)
    counts = queue.counts()
    outcome = Outcome(parent.run_id, client.get_experiment(client.get_run(parent.run_id).info.experiment_id).name,
                      created, counts, ran, time.perf_counter() - started, EXIT_COMPLETE, failed_lines(queue))
    if counts["waiting"] + counts["running"]:  # another command re-queued a job meanwhile: it finishes the study
        print(f"{counts['waiting'] + counts['running']} runs are still with other workers; the last one to finish "
              f"writes the report and ends the parent run", file=stream, flush=True)
        return outcome
    close_orphans(client, parent.run_id)
    status = "FINISHED" if not counts["failed"] else "FAILED"
    reason = None
    if counts["failed"]:
        outcome.exit_code = EXIT_JOBS_FAILED
        reason = (f"{counts['failed']} of {sum(counts.values())} runs failed after their retries: "
                  + "; ".join(outcome.failed[:20]) + (f"; and {len(outcome.failed) - 20} more" if len(outcome.failed) > 20 else ""))
    log = changed or was != status
    try:
        outcome.report = finish(plan, parent.run_id, status=status, log=log)
    except Exception as err:  # every cell is kept; the parent must not stay RUNNING without its report
        parent.end("FAILED", reason=f"the study report could not be written ({type(err).__name__}: {err}); the cells "
                                    f"are kept and the same command writes it again")
        raise
    if plan.request.max_seeds and not counts["failed"]:
        more = seeds_to_add(outcome.report, plan.request)
        index = {c.label: c.index for c in plan.request.study.cells}
        added = queue.add(job_of(index[label], label, s) for label, seeds in more.items() for s in seeds)
        if added:  # the parent goes on: the same command runs the new jobs and looks again
            outcome.added = len(added)
            shown = "; ".join(f"{label} + seed {', '.join(map(str, seeds))}" for label, seeds in more.items())
            print(f"--until-decided: {len(added)} runs added to the cells of undecided comparisons ({shown})",
                  file=stream, flush=True)
            return outcome
    if log:
        parent.log_metrics({"jobs_total": sum(counts.values()), "jobs_finished": counts["finished"],
                            "failed_jobs": counts["failed"], "missing_jobs": counts["waiting"] + counts["running"]})
        parent.set_tags({"cnnbench.failed_jobs": "\n".join(outcome.failed) or "none"})
    if log or was != status:
        parent.end(status, reason=reason)
    return outcome


def close_orphans(client: MlflowClient, parent_id: str) -> None:
    """With no job left anywhere, a child run still RUNNING lost its worker before the worker could
    tell the queue which run it was (killed between creating the run and recording it): end it."""
    from mlflow.entities import RunTag

    exp_id = client.get_run(parent_id).info.experiment_id
    for run in client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"):
        client.log_batch(run.info.run_id, tags=[RunTag("failure_reason", "its worker stopped renewing its lease (killed "
                                                       "or lost) before ending it; the cell was given to another worker")])
        client.set_terminated(run.info.run_id, "FAILED")


def finish(plan: Plan, parent_id: str, *, status: str, log: bool) -> Any:
    from cnnbench.study import report as reports

    rep = reports.build(MlflowClient(plan.tracking_uri), parent_id, status=status, settings=plan.request.study.report)
    if log:
        fault_hook("report-writing")
        reports.log_to_parent(MlflowClient(plan.tracking_uri), parent_id, rep)
        campaign_notes.study_result(MlflowClient(plan.tracking_uri), parent_id, plan.request.study,  # best cell, links
                                    command=plan.request.command, study_name=plan.queue.campaign, report=rep)
    return rep
