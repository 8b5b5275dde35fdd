"""One ``tune`` invocation: check every input, open (or resume) the study, open the parent run,
run the workers, then write the study report, the best params and the optional retrain.

Every bad input is refused in :func:`prepare`, before any trial runs and before the parent run exists.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna

from cnnbench import api
from cnnbench.campaign.faults import fault_hook
from cnnbench.config import TrainConfig
from cnnbench.engine import interrupts
from cnnbench.errors import ConfigError, RunInterrupted, TrainingError
from cnnbench.campaign import DEFAULT_HEARTBEAT_S, EXIT_COMPLETE, EXIT_JOBS_FAILED
from cnnbench.campaign import storage as storages
from cnnbench.campaign.launchers import Destination, LauncherOptions, check_available, check_remote
from cnnbench.tune.plots import write_report
from cnnbench.tune.reporter import EPOCH_METRICS
from cnnbench.tune.space import SearchSpace, parse_space, restrict
from cnnbench.tune.objective import trial_label
from cnnbench.tune.study import (WorkerSpec, build_pruner, build_sampler, counted, open_study, quiet_optuna, run_workers,
                                 sweep_orphan_runs, trials_of)
from cnnbench.campaign.runs import Parent
from cnnbench.tune.tracker import TAG_RETRAIN, TAG_STORAGE, TAG_STUDY, best_trial, close_dead_trial_run, start_parent
from cnnbench.campaign.runs import campaign_source
from cnnbench.tracking import campaign_notes
from cnnbench.tracking.describe import experiment_name


@dataclass(frozen=True)
class TuneRequest:
    config: TrainConfig  # the fixed settings; run.epochs is the per-trial budget
    search: tuple[str, ...] = ()
    fixed: frozenset[str] = frozenset()  # train options given on the command line (left out of the default space)
    trials: int = 30
    timeout: float | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str | None = None
    study_name: str | None = None
    n_jobs: int = 1
    metric: str = "val_accuracy"
    direction: str | None = None  # None: maximize accuracies, minimize losses
    retrain_best: bool = False
    retrain_epochs: int | None = None  # None: train's default epoch budget
    heartbeat_interval: int = DEFAULT_HEARTBEAT_S
    seeds: int = 1  # each configuration trained over this many seeds, scored by the mean
    launcher: LauncherOptions = field(default_factory=LauncherOptions)  # where the --workers run


MAX_SEEDS = 100  # --seeds: trainings per trial


@dataclass
class Plan:
    """A checked request: what the workers run."""

    request: TuneRequest
    space: SearchSpace
    direction: str
    tracking_uri: str
    storage_url: str
    storage: Any
    study: optuna.Study
    resumed: bool
    base_params: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    destination: Destination | None = None  # what remote workers get (--launcher slurm|ray)


@dataclass
class Outcome:
    study_name: str
    storage_url: str
    parent_run_id: str
    counts: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any]
    retrain_run_id: str | None
    wall_time_s: float
    tracking_uri: str
    notes: list[str]
    failed: list[str] = field(default_factory=list)  # one line per trial failed by its own error: trial N (params): reason
    missing: int = 0  # trials of --trials this command did not run (--timeout, or the study's trials were taken)
    exit_code: int = EXIT_COMPLETE  # EXIT_JOBS_FAILED when any trial failed by its own error


def prepare(request: TuneRequest) -> Plan:
    """Validate everything; open the storage and create or load the study."""
    from cnnbench.tracking.store import check_reachable, resolve_uri

    _check_numbers(request)
    request.launcher.check(request.n_jobs)
    if request.launcher.detach:
        raise ConfigError("tune --detach is not available: the tune command itself writes the study report, the best "
                          "trial and the optional retrain once the workers end; it follows them (--follow)")
    if request.metric not in EPOCH_METRICS:
        raise ConfigError(f"unknown --objective {request.metric!r}; accepted: {', '.join(EPOCH_METRICS)}")
    direction = request.direction or ("maximize" if request.metric.endswith("accuracy") else "minimize")
    resolved = api.resolve(request.config)
    space = restrict(parse_space(request.search, request.config, fixed=set(request.fixed)), request.config)
    build_sampler(request.sampler, request.config.run.seed, space)  # --sampler grid refuses continuous params here
    build_pruner(request.pruner, request.config.run.epochs)
    tracking_uri = resolve_uri(request.config.run.tracking_uri)
    check_reachable(tracking_uri)
    storage_url = request.storage or storages.default_storage(tracking_uri)
    _mask_mlflow_run_params(tracking_uri, storage_url)
    destination = None
    if request.launcher.name != "local":  # one-machine stores refused, passwords out of the URLs
        destination = check_remote(request.launcher.name, storage_url, tracking_uri)
        check_available(request.launcher.name)
    notes = [w for w in [storages.warn_if_logged_by_mlflow_run(storage_url)] if w]
    if request.n_jobs > 1 and storages.is_sqlite(storage_url):
        notes.append(
            f"--workers {request.n_jobs} on SQLite ({storages.redact(storage_url)}): fine for processes on this machine "
            f"(WAL mode, writers wait for the lock), but workers on other machines need PostgreSQL or MySQL"
        )
    storage = storages.open_storage(storage_url, heartbeat_interval=request.heartbeat_interval,
                                    on_stale=lambda study, trial: close_dead_trial_run(tracking_uri, trial))
    base_params = {k: v for k, v in resolved.config.flat_params().items() if k not in space.names}
    name = request.study_name or _default_study_name(request.config)
    quiet_optuna()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study, resumed = open_study(storage, name, direction=direction, space=space, metric=request.metric, base_params=base_params,
                                    seeds=request.seeds)
    notes += [str(w.message) for w in caught if "resuming study" in str(w.message)]
    return Plan(request, space, direction, tracking_uri, storage_url, storage, study, resumed, base_params, notes,
                destination)


def _mask_mlflow_run_params(tracking_uri: str, storage_url: str) -> None:
    """Under ``mlflow run`` (``$MLFLOW_RUN_ID``), a ``-P storage=...`` password is already a param of
    that run, logged by MLflow before this command started (FAULTS X5): masked there now, and said at
    once (before the storage is opened, which may fail)."""
    import os

    from cnnbench.tracking.store import mask_logged_params, mask_uri

    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id or mask_uri(storage_url) == storage_url:
        return
    masked, left = mask_logged_params(tracking_uri, run_id)
    advice = f"pass the URL without the password and set ${storages.PASSWORD_ENV} (or PGPASSWORD) instead"
    if masked:
        print(f"note: `mlflow run` logged the storage password as param(s) {', '.join(masked)} of run {run_id}; "
              f"masked there now; {advice}", file=sys.stderr, flush=True)
    elif left:
        print(f"warning: `mlflow run` logged the storage password in clear as param(s) {', '.join(left)} of run "
              f"{run_id}, which the store {mask_uri(tracking_uri)} does not let cnnbench change; delete that run; "
              f"{advice}", file=sys.stderr, flush=True)


def _check_numbers(request: TuneRequest) -> None:
    for flag, value in (("--trials", request.trials), ("--workers", request.n_jobs),
                        ("--heartbeat-interval", request.heartbeat_interval), ("--retrain-epochs", request.retrain_epochs or 1)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1; got {value}")
    if not 1 <= request.seeds <= MAX_SEEDS:
        raise ConfigError(f"--seeds must be between 1 and {MAX_SEEDS} (trainings per trial); got {request.seeds}")
    if request.timeout is not None and request.timeout <= 0:
        raise ConfigError(f"--timeout must be a positive number of seconds; got {request.timeout}")


def _default_study_name(config: TrainConfig) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{config.model.name}-{config.data.name}-{stamp}"


def run(plan: Plan, *, stream=None) -> Outcome:
    """Run the study's trials under a new parent run; always end the parent run."""
    stream = stream or sys.stderr  # looked up now: a test runner may have replaced it
    req = plan.request
    name = plan.study.study_name
    for note in list(plan.space.notes) + plan.warnings:
        print(f"note: {note}", file=stream)
    print(f"study {name!r} ({'resumed, ' + str(len(plan.study.trials)) + ' trials so far' if plan.resumed else 'new'}) "
          f"in {storages.redact(plan.storage_url)}; searching {', '.join(plan.space.texts().values())}", file=stream)
    parent = start_parent(
        tracking_uri=plan.tracking_uri, experiment=experiment_name(req.config.run.experiment),
        run_name=req.config.run.run_name or f"tune-{name}", campaign=name,
        tags={TAG_STUDY: name, TAG_STORAGE: storages.redact(plan.storage_url), "cnnbench.tune.resumed": plan.resumed,
              "mlflow.note.content": campaign_notes.tune_description(plan),
              "cnnbench.model": req.config.model.name, "cnnbench.dataset": req.config.data.name,
              **({"cnnbench.tune.notes": "\n".join(list(plan.space.notes) + plan.warnings)[:4000]} if plan.space.notes or plan.warnings else {})},
        params={**plan.base_params, **{f"search.{k}": v for k, v in plan.space.texts().items()},
                "trials": req.trials, "seeds": req.seeds, "sampler": req.sampler, "pruner": req.pruner, "n_jobs": req.n_jobs,
                "objective": req.metric, "direction": plan.direction, "study_name": name, "timeout": req.timeout},
    )
    if plan.resumed:  # trial runs an earlier, killed invocation left RUNNING that no trial names
        sweep_orphan_runs(name, plan.storage_url, plan.tracking_uri, plan.storage)
    before = {t.number for t in plan.study.trials}
    started = time.perf_counter()
    spec = WorkerSpec(
        config=req.config.to_dict(), space=list(plan.space.texts().values()), storage=plan.storage_url, study_name=name,
        parent_run_id=parent.run_id, experiment=parent.experiment_name, tracking_uri=plan.tracking_uri,
        n_trials=req.trials, timeout=req.timeout, sampler=req.sampler, pruner=req.pruner, seed=req.config.run.seed,
        metric=req.metric, direction=plan.direction, heartbeat_interval=req.heartbeat_interval, n_jobs=req.n_jobs,
        seeds=req.seeds,
    )
    # SIGTERM / SIGHUP like Ctrl-C from here on (also between trials and while data loads): the
    # workers are stopped, the running trials end KILLED and the parent run KILLED.
    with api.interrupt_signals():
        try:
            remote = None if plan.destination is None else (req.launcher, plan.destination)
            codes = run_workers(spec, plan.storage, remote=remote, stream=stream)
            if any(codes):
                parent.set_tags({"cnnbench.tune.worker_exit_codes": ",".join(map(str, codes))})
            outcome = finish(plan, parent, before, time.perf_counter() - started, stream=stream)
            if outcome.failed:  # the campaign policy: the parent FAILED, naming them, and the command exits 3
                outcome.exit_code = EXIT_JOBS_FAILED
                shown = "; ".join(outcome.failed[:20]) + (f"; and {len(outcome.failed) - 20} more" if len(outcome.failed) > 20 else "")
                parent.set_tags({"failure_reason": f"{len(outcome.failed)} of {req.trials} trials failed: {shown}"[:4000]})
                parent.end("FAILED")
                return outcome
            if outcome.counts.get("COMPLETE", 0) == 0 and outcome.counts.get("PRUNED", 0) == 0:
                raise TrainingError(f"every trial of this run failed; first reason: {outcome.notes[0] if outcome.notes else 'unknown'}")
        except KeyboardInterrupt as err:
            interrupts.acknowledge()
            parent.set_tags({"failure_reason": f"KeyboardInterrupt: {err}"[:4000]})
            parent.end("KILLED")
            raise RunInterrupted(f"interrupted ({err or 'Ctrl-C'}): tune parent run {parent.run_id} is KILLED; add the "
                                 f"missing trials with: cnnbench tune ... --study-name {name} --storage "
                                 f"{storages.redact(plan.storage_url)}", run_id=parent.run_id) from err
        except BaseException as err:
            parent.set_tags({"failure_reason": f"{type(err).__name__}: {err}"[:4000]})
            parent.end("FAILED")
            raise
        parent.end("FINISHED")
    return outcome


def finish(plan: Plan, parent: Parent, before: set[int], wall_time_s: float, *, stream) -> Outcome:
    """The study report on the parent run: counts, best, trials.csv, plots; then the retrain."""
    req = plan.request
    study = optuna.load_study(study_name=plan.study.study_name, storage=plan.storage)
    # this invocation's trials (another tune process may share the study); older studies lack the attr
    mine = trials_of(study, parent.run_id) or [t for t in study.trials if t.number not in before]
    counts = {s: sum(t.state.name == s for t in mine) for s in ("COMPLETE", "PRUNED", "FAIL")}
    results = [t.user_attrs["result"] for t in mine if t.state.name == "COMPLETE" and "fit_time_s" in t.user_attrs.get("result", {})]
    # outside the training epochs: evaluation, model build, data load (first trial), tracking, Optuna
    overheads = [r["trial_seconds"] - r["fit_time_s"] for r in results]
    metrics = {"trials_complete": counts["COMPLETE"], "trials_pruned": counts["PRUNED"], "trials_failed": counts["FAIL"],
               "study_trials_total": len(study.trials), "tune_wall_time_s": wall_time_s}
    if overheads:
        metrics["mean_trial_outside_fit_s"] = sum(overheads) / len(overheads)
    # the campaign's job counts (as study run logs them): a trial failed by its own error is a failed
    # job; one failed because its worker died (no fail_reason) was retried and does not count
    failed = [f"{trial_label(t.number, t.params)}: {t.user_attrs['fail_reason'].splitlines()[0][:300]}"
              for t in mine if t.state.name == "FAIL" and t.user_attrs.get("fail_reason")]
    missing = max(0, req.trials - counted(mine))
    metrics.update({"failed_jobs": len(failed), "missing_jobs": missing})
    parent.log_metrics(metrics)
    parent.set_tags({"cnnbench.failed_jobs": "\n".join(failed)[:4000] or "none"})
    fault_hook("report-writing")
    with tempfile.TemporaryDirectory(prefix="cnnbench-study-") as folder:
        notes = write_report(study, Path(folder), req.metric)
        parent.log_folder(Path(folder))
    if notes:
        parent.set_tags({"cnnbench.tune.report_notes": "\n".join(notes)[:4000]})
    failures = [t.user_attrs.get("fail_reason", "") for t in mine if t.state.name == "FAIL"]
    best = best_trial(study)
    retrain_id = None
    if best is not None:
        parent.log_params({**{f"best_{k}": v for k, v in best.params.items()}, "best_trial_number": best.number})
        parent.log_metrics({f"best_{req.metric}": best.value}, step=max(t.number for t in study.trials))
        parent.set_tags({"best_trial_run_id": best.user_attrs.get("mlflow_run_id", "")})
        if req.retrain_best:
            retrain_id = _retrain(plan, parent, best, stream=stream)
        campaign_notes.tune_result(parent, plan, best, retrain_run_id=retrain_id)  # best/<metric>, links
    return Outcome(study.study_name, plan.storage_url, parent.run_id, counts, best.value if best else None,
                   dict(best.params) if best else {}, retrain_id, wall_time_s, plan.tracking_uri, failures, failed, missing)


def _retrain(plan: Plan, parent: Parent, best: optuna.trial.FrozenTrial, *, stream) -> str:
    from cnnbench.tune.retrain import retrain_best

    epochs = plan.request.retrain_epochs or TrainConfig().run.epochs
    print(f"retraining trial {best.number}'s configuration on train+val for {epochs} epochs", file=stream)
    result = retrain_best(plan.request.config, best.params, epochs=epochs, study_name=plan.study.study_name,
                          parent_run_id=parent.run_id, best_trial_number=best.number, experiment=parent.experiment_name,
                          tags=campaign_source(parent.client, parent.run_id))
    parent.set_tags({TAG_RETRAIN: result.run_id})
    if "test_accuracy" in result.metrics:
        parent.log_metrics({"retrain_test_accuracy": result.metrics["test_accuracy"]})
    return result.run_id
