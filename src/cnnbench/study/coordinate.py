"""The only module that knows how cells are claimed: an Optuna RDB storage as the work queue.

Every cell x seed (a *job*) is enqueued once as a WAITING trial by whichever ``study run`` creates
the Optuna study (creation is atomic: the name is unique in the storage); the others join it.
A worker claims a job by moving its trial WAITING -> RUNNING with ``set_trial_state_values``, which
locks the row (``SELECT ... FOR UPDATE``) and refuses a trial that is no longer WAITING, so of
several workers asking at once exactly one gets it:

- PostgreSQL: ``FOR UPDATE`` is a real row lock.
- SQLite: pysqlite runs that SELECT outside any transaction, so two processes both read WAITING and
  both claim (measured: 2 of 3 workers crashed on a trial another had finished). :func:`serialise_sqlite`
  makes SQLAlchemy open every transaction on the storage's engine with ``BEGIN IMMEDIATE`` (its
  documented recipe for pysqlite), which takes the write lock before the read.

A claimed trial beats (``record_heartbeat``) while its cell trains; a trial silent for twice the
interval is failed by the next worker that looks (``optuna.storages.fail_stale_trials``) and
re-enqueued once per retry. A duplicate (two WAITING trials of one job, e.g. two resumes re-enqueuing
a failed job at the same moment) is harmless: a claimed trial runs only if it is the lowest-numbered
live trial of its job and the job has no COMPLETE trial; otherwise it is failed as ``duplicate``.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import optuna
from optuna.trial import TrialState

from cnnbench.errors import ConfigError

ATTR_DIGEST = "cnnbench.study.digest"
ATTR_FINGERPRINT = "cnnbench.study.fingerprint"
ATTR_PARENT = "cnnbench.study.parent_run_id"
ATTR_EXPERIMENT = "cnnbench.study.experiment"
ATTR_READY = "cnnbench.study.ready"
U_JOB = "cnnbench.job"
U_CELL = "cnnbench.cell_index"
U_LABEL = "cnnbench.cell"
U_SEED = "cnnbench.seed"
U_OUTCOME = "cnnbench.outcome"  # finished | failed | killed | duplicate | exhausted (stale trials: none)
U_REASON = "cnnbench.reason"
U_WORKER = "cnnbench.worker"
U_RUN = "mlflow_run_id"
NOT_ATTEMPTS = {"killed", "duplicate", "exhausted"}  # a trial ended so does not use up a retry
READY_WAIT_S = 120.0
REASON_MAX_CHARS = 2000


@dataclass(frozen=True)
class Job:
    cell: int
    label: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.cell}:{self.seed}"

    def attrs(self) -> dict[str, Any]:
        return {U_JOB: self.key, U_CELL: self.cell, U_LABEL: self.label, U_SEED: self.seed}


@dataclass(frozen=True)
class Claim:
    trial_id: int
    number: int
    job: Job
    attempt: int  # 1 for the first try


def serialise_sqlite(storage) -> None:
    """Open every transaction of the storage's SQLite engine with ``BEGIN IMMEDIATE`` (no-op elsewhere).

    SQLAlchemy's recipe for pysqlite: stop the driver's own transaction handling on each new
    connection and emit BEGIN ourselves. Connections already pooled predate the listeners: dropped.
    """
    from sqlalchemy import event

    engine = storage.engine
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, connection_record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()


def open_queue_storage(url: str, *, heartbeat_interval: int, on_stale: Callable | None = None):
    """tune's checked storage (URL, driver, reachability, heartbeats) with serialised SQLite claims."""
    from cnnbench.campaign.storage import open_storage

    storage = open_storage(url, heartbeat_interval=heartbeat_interval, on_stale=on_stale)
    serialise_sqlite(storage)
    return storage


def quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


class Queue:
    """The jobs of one study in one Optuna storage."""

    def __init__(self, storage, study_name: str) -> None:
        quiet()
        self.storage = storage
        self.study_name = study_name
        self.study: optuna.Study | None = None

    # -- creating or joining ----------------------------------------------------------------
    def exists(self) -> bool:
        try:
            self.storage.get_study_id_from_name(self.study_name)
            return True
        except KeyError:
            return False

    def check_definition(self, fingerprint: dict[str, Any], digest: str) -> None:
        """Refuse a stored study whose definition differs (before any run is created)."""
        from cnnbench.study.definition import differences

        study = self._wait_ready()
        if study.user_attrs.get(ATTR_DIGEST) != digest:
            diff = differences(study.user_attrs.get(ATTR_FINGERPRINT, {}), fingerprint)
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise ConfigError(f"study {self.study_name!r} in this storage was started with another definition "
                              f"({shown or 'its digest differs'}); run the stored definition, or give --study-name NEW "
                              f"to start a separate study")

    def create_or_join(self, jobs: Iterable[Job], *, fingerprint: dict[str, Any], digest: str,
                       make_parent: Callable[[], tuple[str, str]]) -> tuple[str, str, bool]:
        """Create the study and enqueue every job once, or join the existing one. Returns
        (parent run id, experiment name, created)."""
        try:
            study = optuna.create_study(storage=self.storage, study_name=self.study_name, direction="maximize")
        except optuna.exceptions.DuplicatedStudyError:
            self.check_definition(fingerprint, digest)
            attrs = self.study.user_attrs
            return attrs[ATTR_PARENT], attrs[ATTR_EXPERIMENT], False
        self.study = study
        parent_run_id, experiment = make_parent()
        study.set_user_attr(ATTR_FINGERPRINT, fingerprint)
        study.set_user_attr(ATTR_DIGEST, digest)
        study.set_user_attr(ATTR_PARENT, parent_run_id)
        study.set_user_attr(ATTR_EXPERIMENT, experiment)
        for job in jobs:
            study.enqueue_trial({}, user_attrs=job.attrs())
        study.set_user_attr(ATTR_READY, True)
        return parent_run_id, experiment, True

    def _wait_ready(self, wait_s: float = READY_WAIT_S) -> optuna.Study:
        deadline = time.monotonic() + wait_s
        while True:
            study = optuna.load_study(study_name=self.study_name, storage=self.storage)
            if study.user_attrs.get(ATTR_READY):
                self.study = study
                return study
            if time.monotonic() > deadline:
                raise ConfigError(f"study {self.study_name!r} exists in this storage but was never fully set up (the "
                                  f"process creating it stopped after {wait_s:.0f} s?); give --study-name NEW")
            time.sleep(0.5)

    # -- the queue --------------------------------------------------------------------------
    def _trials(self, states=None) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.study.get_trials(deepcopy=False, states=states) if U_JOB in t.user_attrs]

    def requeue(self, max_retries: int) -> list[str]:
        """Enqueue again every job with no finished, running or waiting trial whose failed attempts
        leave a retry (killed runs cost none); returns their keys. Safe to race: see the module doc."""
        requeued = []
        for key, trials in _by_job(self._trials()).items():
            states = {t.state for t in trials}
            if states & {TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING}:
                continue
            if attempts(trials) > max_retries:
                continue
            first = trials[0].user_attrs
            self.study.enqueue_trial({}, user_attrs={k: first[k] for k in (U_JOB, U_CELL, U_LABEL, U_SEED)})
            requeued.append(key)
        return requeued

    def fail_stale(self) -> None:
        optuna.storages.fail_stale_trials(self.study)

    def claim(self, worker: str, max_retries: int) -> Claim | None:
        """The next job for this worker, or None when nothing is waiting."""
        self.fail_stale()
        for trial in sorted(self._trials(states=(TrialState.WAITING,)), key=lambda t: t.number):
            try:
                if not self.storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            self.storage.record_heartbeat(trial._trial_id)  # from now on a dead worker shows
            self.storage.set_trial_user_attr(trial._trial_id, U_WORKER, worker)
            attrs = trial.user_attrs
            job = Job(int(attrs[U_CELL]), str(attrs[U_LABEL]), int(attrs[U_SEED]))
            siblings = [t for t in self._trials() if t.user_attrs[U_JOB] == job.key and t.number != trial.number]
            if any(t.state == TrialState.COMPLETE or (t.state in (TrialState.RUNNING, TrialState.WAITING)
                                                       and t.number < trial.number) for t in siblings):
                self._end(trial._trial_id, "duplicate", reason="another trial of this cell x seed ran or runs")
                continue
            used = attempts(siblings)
            if used > max_retries:
                self._end(trial._trial_id, "exhausted", reason=f"{used} failed attempts already (--max-retries {max_retries})")
                continue
            return Claim(trial._trial_id, trial.number, job, used + 1)
        return None

    def set_attr(self, claim: Claim, key: str, value: Any) -> None:
        try:
            self.storage.set_trial_user_attr(claim.trial_id, key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # failed as stale meanwhile: the trial is no longer ours

    def finish(self, claim: Claim, value: float) -> bool:
        """Mark the job done; False when its trial was meanwhile failed as stale (this worker
        stalled past the grace period) and the job handed to another worker."""
        try:
            self.storage.set_trial_user_attr(claim.trial_id, U_OUTCOME, "finished")
            self.storage.set_trial_state_values(claim.trial_id, TrialState.COMPLETE, [float(value)])
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        return True

    def fail(self, claim: Claim, outcome: str, reason: str) -> None:
        self._end(claim.trial_id, outcome, reason)

    def _end(self, trial_id: int, outcome: str, reason: str) -> None:
        try:
            self.storage.set_trial_user_attr(trial_id, U_OUTCOME, outcome)
            self.storage.set_trial_user_attr(trial_id, U_REASON, reason[:REASON_MAX_CHARS])
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # failed as stale meanwhile (a very long pause): already FAIL

    def active(self) -> int:
        """Trials waiting or running (in any worker)."""
        return len(self._trials(states=(TrialState.WAITING, TrialState.RUNNING)))

    def summary(self) -> dict[str, int]:
        """Jobs by where they stand: finished, failed (no retry left), running, waiting."""
        out = {"finished": 0, "failed": 0, "running": 0, "waiting": 0}
        for trials in _by_job(self._trials()).values():
            states = {t.state for t in trials}
            if TrialState.COMPLETE in states:
                out["finished"] += 1
            elif TrialState.RUNNING in states:
                out["running"] += 1
            elif TrialState.WAITING in states:
                out["waiting"] += 1
            else:
                out["failed"] += 1
        return out


def attempts(trials: Iterable[optuna.trial.FrozenTrial]) -> int:
    """Failed tries that count against --max-retries (errors and dead workers, not Ctrl-C)."""
    return sum(t.state == TrialState.FAIL and t.user_attrs.get(U_OUTCOME) not in NOT_ATTEMPTS for t in trials)


def _by_job(trials: Iterable[optuna.trial.FrozenTrial]) -> dict[str, list[optuna.trial.FrozenTrial]]:
    out: dict[str, list] = {}
    for t in sorted(trials, key=lambda t: t.number):
        out.setdefault(t.user_attrs[U_JOB], []).append(t)
    return out


class Heartbeat:
    """Beats for a claimed trial in a thread; with ``watch_parent``, interrupts the main thread when
    the process that started this worker is gone (workers stop with their parent)."""

    def __init__(self, storage, interval: float, *, watch_parent: int | None = None) -> None:
        self.storage = storage
        self.interval = max(0.2, float(interval))
        self.watch_parent = watch_parent
        self.trial_id: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cnnbench-study-heartbeat", daemon=True)
        self._thread.start()

    def beat_for(self, trial_id: int | None) -> None:
        self.trial_id = trial_id

    def _loop(self) -> None:
        import _thread

        while not self._stop.wait(self.interval / 2):
            if self.watch_parent is not None and os.getppid() != self.watch_parent:
                _thread.interrupt_main()
                return
            trial_id = self.trial_id
            if trial_id is not None:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # a storage hiccup: the next beat tries again
                    pass

    def stop(self) -> None:
        self._stop.set()
