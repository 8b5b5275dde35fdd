"""The Optuna side: samplers, pruners, creating or resuming a study (refusing a different search
space), and running ``--workers`` worker processes on one storage.

A worker is described by a JSON-able :class:`WorkerSpec`; worker 0 runs in the ``tune`` process
(which already loaded everything), the others are the campaign's worker processes
(``python -m cnnbench.campaign.workers SPEC.json`` with this module's :func:`work` as its entry: the
same signal policy and parent watch as a study's workers), so each has its own interpreter (no GIL
sharing, torch threads split between them) and a worker on another machine is the same thing.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from cnnbench.campaign import DEFAULT_HEARTBEAT_S
from cnnbench.config import TrainConfig
from cnnbench.errors import ConfigError
from cnnbench.tune import PRUNERS, SAMPLERS
from cnnbench.tune.space import SearchSpace, diff, parse_expression

ATTR_SPACE = "cnnbench.search_space"
ATTR_METRIC = "cnnbench.objective"
ATTR_BASE = "cnnbench.base_params"
ATTR_SEEDS = "cnnbench.seeds"  # seeds each configuration is trained over (--seeds; 1 when absent)
ATTR_SEED_RUNS = "mlflow_seed_run_ids"  # on each trial with --seeds > 1: the runs of its seeds after the first
ATTR_PARENT = "cnnbench.parent_run_id"  # on each trial: the tune invocation (parent run) that ran it
ATTR_SURPLUS = "cnnbench.surplus"  # a trial started once a study's [search] budget was taken: not trained
BARE_TRIAL_GRACE_S = 5.0  # a RUNNING trial without any attr this old has no live worker
TOP_UP_ROUNDS = 3  # after the workers: rounds of re-running trials lost to dead workers, then give up (exit 1)


def build_sampler(name: str, seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise ConfigError(f"unknown --sampler {name!r}; accepted: {', '.join(SAMPLERS)}")


def build_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """``median``: stop a trial whose best-so-far is below the median of earlier trials at the same
    epoch, once 5 trials have finished (from epoch 1: on these data sets epoch 1 already separates
    hopeless settings); ``hyperband``: successive halving over 1..epochs."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown --pruner {name!r}; accepted: {', '.join(PRUNERS)}")


def open_study(storage, name: str, *, direction: str, space: SearchSpace, metric: str,
               base_params: dict[str, Any], sampler=None, pruner=None, seeds: int = 1) -> tuple[optuna.Study, bool]:
    """Create the study, or load it to add trials; refuse a stored study whose search space,
    objective or direction differs. Returns (study, resumed)."""
    try:
        storage.get_study_id_from_name(name)
        exists = True
    except KeyError:
        exists = False
    if exists:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        check_resume(study, direction=direction, space=space, metric=metric, base_params=base_params, seeds=seeds)
        if ATTR_SPACE in study.user_attrs:
            return study, True
    else:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner, load_if_exists=True)  # another worker may have just created it
    study.set_user_attr(ATTR_SPACE, space.texts())
    study.set_user_attr(ATTR_METRIC, metric)
    study.set_metric_names([metric])  # optuna-dashboard's axis name instead of "Objective 0"
    study.set_user_attr(ATTR_BASE, {k: str(v) for k, v in base_params.items()})
    study.set_user_attr(ATTR_SEEDS, seeds)
    return study, False


def check_resume(study: optuna.Study, *, direction: str, space: SearchSpace, metric: str, base_params: dict[str, Any],
                 seeds: int = 1) -> None:
    attrs = study.user_attrs
    if ATTR_SPACE not in attrs and not study.trials:
        return  # another worker created it a moment ago and is about to store the same attrs
    if ATTR_SPACE not in attrs:
        raise ConfigError(f"study {study.study_name!r} exists but was not created by cnnbench tune (no stored search space); pick another --study-name")
    stored = attrs.get(ATTR_BASE, {})
    for key in ("model", "dataset"):
        if key in stored and key in base_params and stored[key] != str(base_params[key]):
            raise ConfigError(f"study {study.study_name!r} tunes --{key} {stored[key]}, not {base_params[key]}; "
                              f"use --{key} {stored[key]} or start a new --study-name")
    differences = diff(attrs[ATTR_SPACE], space.texts())
    if differences:
        stored_flags = " ".join(f"--search '{t}'" for t in attrs[ATTR_SPACE].values())
        raise ConfigError(
            f"study {study.study_name!r} was created with a different search space, so its trials would not be "
            f"comparable: {'; '.join(differences)}. Resume with the stored space "
            f"({stored_flags}) "
            f"or start a new --study-name"
        )
    stored_seeds = int(attrs.get(ATTR_SEEDS, 1))
    if stored_seeds != seeds:
        raise ConfigError(f"study {study.study_name!r} scores each configuration as the mean over {stored_seeds} seed(s); "
                          f"--seeds {seeds} would mix values that are not comparable. Resume with --seeds {stored_seeds} "
                          f"or start a new --study-name")
    stored_direction = study.direction.name.lower()
    if stored_direction != direction or attrs.get(ATTR_METRIC, metric) != metric:
        raise ConfigError(
            f"study {study.study_name!r} {stored_direction}s {attrs.get(ATTR_METRIC)}; this command asks to "
            f"{direction} {metric}. Use the study's objective or start a new --study-name"
        )
    changed = sorted(k for k, v in base_params.items() if k in stored and stored[k] != str(v))
    if changed:
        shown = ", ".join(f"{k} {stored[k]} -> {base_params[k]}" for k in changed)
        warnings.warn(f"resuming study {study.study_name!r} with different fixed settings ({shown}); earlier trials used the old ones", stacklevel=2)


@dataclass
class WorkerSpec:
    """Everything one worker process needs (JSON-able)."""

    config: dict[str, Any]
    space: list[str]  # canonical expressions
    storage: str
    study_name: str
    parent_run_id: str
    experiment: str
    tracking_uri: str
    n_trials: int
    timeout: float | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    metric: str = "val_accuracy"
    direction: str = "maximize"
    heartbeat_interval: int | None = DEFAULT_HEARTBEAT_S
    index: int = 0
    n_jobs: int = 1
    notes: list[str] = field(default_factory=list)
    shares: list[int] = field(default_factory=list)  # trials per worker index (n_trials when empty)
    seeds: int = 1  # seeds per configuration (--seeds)
    parent_pid: int | None = None
    entry: str = "cnnbench.tune.study:work"
    budget: int | None = None  # a study's [search]: trials the study has in all, over every command (never more)
    study_tags: dict[str, str] = field(default_factory=dict)  # a study's [search]: tags on every trial run


def work(spec: dict) -> None:
    """A worker process's job (``cnnbench.campaign.workers`` calls it): its share of the trials."""
    worker = WorkerSpec(**spec)
    if worker.shares:
        worker.n_trials = worker.shares[worker.index]
    run_worker(worker)


def run_worker(spec: WorkerSpec, storage=None) -> None:
    """Run ``spec.n_trials`` trials of the study (fewer when the timeout or the grid runs out).

    Any exception in a trial ends that trial FAIL (reason logged on the trial and its run) and the
    study goes on; Ctrl-C / SIGTERM stops the worker.
    """
    from cnnbench.campaign.workers import thread_share

    quiet_optuna()
    with thread_share(spec.n_jobs):
        _run_worker(spec, storage)


def _run_worker(spec: WorkerSpec, storage) -> None:
    from mlflow.tracking import MlflowClient

    from cnnbench.campaign.storage import open_storage
    from cnnbench.tune.objective import Objective, StudyContext
    from cnnbench.campaign.runs import Parent
    from cnnbench.tune.tracker import best_logger, close_dead_trial_run

    config = TrainConfig.from_dict(spec.config, source="worker spec")
    space = SearchSpace(tuple(parse_expression(t, config) for t in spec.space))
    if storage is None:
        storage = open_storage(spec.storage, heartbeat_interval=spec.heartbeat_interval,
                               on_stale=lambda study, trial: close_dead_trial_run(spec.tracking_uri, trial))
    study = optuna.load_study(study_name=spec.study_name, storage=storage, pruner=build_pruner(spec.pruner, config.run.epochs))
    # a seed per worker and per resume: identical random streams would propose the same trials again
    study.sampler = build_sampler(spec.sampler, spec.seed + spec.index + 7919 * len(study.trials), space)
    parent = Parent(MlflowClient(spec.tracking_uri), spec.parent_run_id)
    context = StudyContext(spec.study_name, spec.parent_run_id, spec.experiment, spec.tracking_uri,
                           parent.experiment_id, spec.metric, spec.direction == "maximize",
                           tuple(spec.study_tags.items()))
    label = f"[worker {spec.index}] " if spec.n_jobs > 1 else ""
    objective = Objective(config, space, context, label=label, seeds=spec.seeds)
    started = 0

    def run_trial(trial: optuna.Trial) -> float:
        nonlocal started
        started += 1
        trial.set_user_attr(ATTR_PARENT, spec.parent_run_id)  # counted for this invocation, whoever retries it
        if spec.budget is not None and beyond_budget(study, trial.number, spec.budget):
            trial.set_user_attr(ATTR_SURPLUS, True)
            study.stop()
            raise BudgetReached(f"not trained: the study's {spec.budget} trials are taken (another worker or command "
                                f"started the last one)")
        return objective(trial)

    deadline = None if spec.timeout is None else time.monotonic() + spec.timeout
    while started < spec.n_trials:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        try:
            study.optimize(run_trial, n_trials=spec.n_trials - started, timeout=remaining, catch=(Exception,),
                           callbacks=[objective.progress, best_logger(parent, spec.metric)], gc_after_trial=False)
            break
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as err:
            # This worker was stopped (SIGSTOP, a long pause) and its trial failed as stale by another
            # worker meanwhile; Optuna retries it. Lose that trial, not the rest of the share.
            if isinstance(err, ValueError) and "Cannot tell" not in str(err):
                raise
            print(f"{label}note: a trial of this worker was failed by another worker while this one was paused "
                  f"(no heartbeat); it is retried", file=sys.stderr, flush=True)


class BudgetReached(Exception):
    """A trial Optuna started after a study's [search] budget was taken: it ends FAIL untrained, uncounted."""


def beyond_budget(study: optuna.Study, number: int, budget: int) -> bool:
    """Whether ``budget`` trials that count (or may: running, waiting) were started before trial
    ``number``. Trial numbers are the storage's order, so of several workers and commands starting
    trials at once exactly the first ``budget`` train: the rerun of a search never passes its budget."""
    taken = 0
    for t in study.get_trials(deepcopy=False):
        if t.number >= number or t.user_attrs.get(ATTR_SURPLUS):
            continue
        taken += t.state.name in ("COMPLETE", "PRUNED", "RUNNING", "WAITING") or (
            t.state.name == "FAIL" and "fail_reason" in t.user_attrs)
    return taken >= budget


def split_trials(n_trials: int, n_jobs: int) -> list[int]:
    """Trials per worker: together exactly ``n_trials`` (no overshoot from racing stop conditions)."""
    return [n for n in (n_trials // n_jobs + (i < n_trials % n_jobs) for i in range(n_jobs)) if n > 0]


def run_workers(spec: WorkerSpec, storage, *, remote=None, stream=None) -> list[int]:
    """Worker 0 here, the others as processes; returns the other workers' exit codes. With ``remote``
    (launcher options, destination) every worker is a Slurm array task or a Ray task instead, and
    this process follows them until they end.

    Then the trials lost to dead workers (killed, crashed, paused past the heartbeat grace) are
    failed, retried by Optuna with the same parameters, and the missing count is run here, for at
    most :data:`TOP_UP_ROUNDS` rounds; still short after that is a :class:`TrainingError`. Last,
    child runs a killed worker left RUNNING are ended (:func:`sweep_orphan_runs`)."""
    from cnnbench.campaign.workers import run_local
    from cnnbench.errors import TrainingError

    shares = split_trials(spec.n_trials, spec.n_jobs)
    if remote is None:
        _, codes = run_local(asdict(WorkerSpec(**{**asdict(spec), "shares": shares})), len(shares),
                             lambda s: run_worker(WorkerSpec(**{**s, "n_trials": shares[0]}), storage))
    else:
        codes = run_remote(spec, shares, storage, *remote, stream=stream or sys.stderr)
    try:
        top_up(spec, storage)
    except TrainingError:
        sweep_orphan_runs(spec.study_name, spec.storage, spec.tracking_uri, storage, own_parent=spec.parent_run_id)
        raise
    sweep_orphan_runs(spec.study_name, spec.storage, spec.tracking_uri, storage, own_parent=spec.parent_run_id)
    return codes


def run_remote(spec: WorkerSpec, shares: list[int], storage, options, destination, *, stream) -> list[int]:
    """The workers as one Slurm array or Ray tasks (one per share of the trials); follow them, with a
    line whenever the count of this invocation's finished trials moves, until none is queued or
    running. Ctrl-C / SIGTERM cancels them (each ends its trial KILLED)."""
    from cnnbench.campaign import launchers

    remote = {**asdict(spec), "shares": shares, "n_jobs": 1, "storage": destination.storage,
              "tracking_uri": destination.tracking_uri}
    launched = launchers.launch(remote, len(shares), options, destination.env, name=spec.study_name)
    print(f"submitted {len(shares)} {options.name} workers ({launched.launcher} {launched.job_id})", file=stream, flush=True)
    seen = [-1]

    def progress() -> None:
        study = optuna.load_study(study_name=spec.study_name, storage=storage)
        done = counted(trials_of(study, spec.parent_run_id))
        if done != seen[0]:
            seen[0] = done
            print(f"progress: {done}/{spec.n_trials} trials done", file=stream, flush=True)

    try:
        launchers.follow(launched, lambda: False, progress)
    except KeyboardInterrupt:
        from cnnbench.campaign.workers import acknowledge

        acknowledge()
        launched.cancel()
        raise
    return launched.codes()


def trial_run_ids(trial) -> list[str]:
    """The MLflow runs a trial names: its run, and with --seeds > 1 its other seeds' runs."""
    first = trial.user_attrs.get("mlflow_run_id")
    return ([first] if first else []) + list(trial.user_attrs.get(ATTR_SEED_RUNS, []))


def trials_of(study: optuna.Study, parent_run_id: str) -> list[optuna.trial.FrozenTrial]:
    """The trials this tune invocation ran (other processes may add trials to the same study)."""
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(ATTR_PARENT) == parent_run_id]


def counted(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that count towards ``--trials``: complete, pruned, or failed by their own error (a
    trial failed because its worker died has no ``fail_reason`` and is retried instead)."""
    return sum(t.state.name in ("COMPLETE", "PRUNED") or (t.state.name == "FAIL" and "fail_reason" in t.user_attrs)
               for t in trials)


def fail_orphaned(study: optuna.Study, parent_run_id: str, tracking_uri: str) -> list[int]:
    """Once every worker of this invocation has exited, a trial of it still RUNNING has no worker:
    fail it now (no need to wait for the heartbeat grace), close its child run and queue its
    retry. Returns the failed trial numbers."""
    from optuna.trial import TrialState

    from cnnbench.tune.tracker import close_dead_trial_run

    failed = []
    # the storage's stale-trial callback: Optuna's retry (same params, retry_history) + closing the child run
    on_stale = getattr(study._storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    # A worker killed between Optuna creating a trial and our objective's first write leaves a
    # RUNNING trial with no attrs at all; a live one gets them within milliseconds.
    bare = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if not t.user_attrs]
    youngest = max((t.datetime_start.timestamp() for t in bare if t.datetime_start), default=None)
    if youngest is not None and time.time() - youngest < BARE_TRIAL_GRACE_S:
        time.sleep(BARE_TRIAL_GRACE_S - (time.time() - youngest))
    for trial in trials_of(study, parent_run_id) + bare:
        if trial.state != TrialState.RUNNING:
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished meanwhile
        frozen = study._storage.get_trial(trial._trial_id)
        if on_stale is not None:
            on_stale(study, frozen)
        else:
            close_dead_trial_run(tracking_uri, frozen)
        failed.append(trial.number)
    return failed


def sweep_orphan_runs(study_name: str, storage_url: str, tracking_uri: str, storage, *,
                      own_parent: str | None = None) -> list[str]:
    """End FAILED every trial child run of this study left RUNNING by a worker that is gone.

    A worker SIGKILLed between creating its trial's run and recording the run id on the trial
    leaves a RUNNING run that no trial names, so neither Optuna's stale-trial callback nor
    :func:`fail_orphaned` can close it. Swept: the RUNNING trial runs of ``own_parent`` (called
    once every worker of it has exited) and of any earlier parent of the study that is no longer
    alive (ended, or RUNNING with its process gone: :func:`cnnbench.tracking.runs.liveness`),
    whose trial is not RUNNING in Optuna or does not name the run. A trial still RUNNING that names
    its run is left to Optuna's heartbeat (its stale callback closes the run). Best effort: a store
    error is one line on stderr. Returns the ended run ids."""
    from mlflow.tracking import MlflowClient

    from cnnbench.campaign import runs as campaign_runs
    from cnnbench.campaign.storage import redact
    from cnnbench.tracking import runs as mlruns
    from cnnbench.tune.tracker import TAG_STORAGE, TAG_STUDY

    ended: list[str] = []
    try:
        client = MlflowClient(tracking_uri)
        ids = [e.experiment_id for e in client.search_experiments()]
        where = f"attributes.status = 'RUNNING' and tags.`{TAG_STUDY}` = {campaign_runs.quote(study_name)}"
        running = [r for start in range(0, len(ids), 100)
                   for r in client.search_runs(ids[start:start + 100], filter_string=where, max_results=50000)]
        children = [r for r in running if campaign_runs.role_of(r.data.tags) == "trial" and r.data.tags.get("mlflow.parentRunId")]
        if not children:
            return ended
        trials = {t.number: t for t in optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)}
        parents_gone: dict[str, bool] = {}
        for run in children:
            parent_id = run.data.tags["mlflow.parentRunId"]
            if parent_id not in parents_gone:
                parents_gone[parent_id] = parent_id == own_parent or _parent_gone(client, parent_id, redact(storage_url), TAG_STORAGE)
            if not parents_gone[parent_id]:
                continue
            number = run.data.tags.get("trial_number", "")
            trial = trials.get(int(number)) if number.isdigit() else None
            named = trial_run_ids(trial) if trial is not None else []
            if trial is not None and trial.state.name == "RUNNING" and run.info.run_id in named:
                continue
            if run.info.run_id in named:
                why = f"trial {number} is {trial.state.name} in Optuna but this run was left RUNNING"
            else:
                why = (f"its worker stopped (killed) before trial {number or '?'} recorded this run"
                       f"{f' (the trial names run {named})' if named else ''}")
            mlruns.set_tags(client, run.info.run_id, {
                "trial_state": "FAIL",
                "failure_reason": f"{why}; no worker of tune parent run {parent_id} is alive, so cnnbench tune ended it FAILED"})
            client.set_terminated(run.info.run_id, "FAILED")
            ended.append(run.info.run_id)
    except Exception as err:  # a store hiccup must not fail a tune whose trials ran: the next tune sweeps again
        print(f"note: could not check for trial runs left RUNNING by killed workers: {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)
    if ended:
        print(f"note: ended {len(ended)} trial run(s) left RUNNING by killed workers FAILED: {', '.join(ended)}",
              file=sys.stderr, flush=True)
    return ended


def _parent_gone(client, parent_id: str, storage: str, tag_storage: str) -> bool:
    """Whether an earlier tune parent of this study (in this storage) has no live process (so no worker)."""
    from mlflow.exceptions import MlflowException

    from cnnbench.tracking import runs as mlruns

    try:
        parent = client.get_run(parent_id)
    except MlflowException:
        return False  # not ours to judge
    if parent.data.tags.get(tag_storage, storage) != storage:
        return False  # the same study name in another storage
    return parent.info.status != "RUNNING" or not mlruns.liveness(parent).alive


def top_up(spec: WorkerSpec, storage) -> None:
    """Run here what the workers left undone (see :func:`run_workers`)."""
    from cnnbench.errors import TrainingError

    if spec.timeout is not None or spec.sampler == "grid":
        return  # fewer trials is the expected outcome of a timeout or an exhausted grid
    study = optuna.load_study(study_name=spec.study_name, storage=storage)
    for round_number in range(TOP_UP_ROUNDS + 1):
        lost = fail_orphaned(study, spec.parent_run_id, spec.tracking_uri)
        optuna.storages.fail_stale_trials(study)  # stale trials of other dead processes on this study
        if spec.budget is not None:  # a study's search: its budget over every command, whoever ran them
            trials = study.get_trials(deepcopy=False)
            done = counted(trials)  # less the trials other live commands are running now
            missing = spec.budget - done - sum(t.state.name == "RUNNING" for t in trials)
        else:
            done = counted(trials_of(study, spec.parent_run_id))
            missing = spec.n_trials - done
        if missing <= 0:
            return
        if round_number == TOP_UP_ROUNDS:
            break
        print(f"note: {missing} of {spec.n_trials} trials were lost to stopped workers"
              f"{' (trials ' + ', '.join(map(str, lost)) + ')' if lost else ''}; running them again here",
              file=sys.stderr, flush=True)
        run_worker(WorkerSpec(**{**asdict(spec), "n_trials": missing, "index": 0, "n_jobs": 1}), storage)
    raise TrainingError(f"only {done} of the {spec.budget or spec.n_trials} requested trials finished after {TOP_UP_ROUNDS} rounds of "
                        f"re-running trials lost to stopped workers; see the worker errors above")


def quiet_optuna() -> None:
    """Our one line per trial replaces Optuna's INFO log; its warnings (failed trials) stay."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("alembic").setLevel(logging.WARNING)
