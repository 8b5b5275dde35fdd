"""The only module that knows how a campaign's jobs are claimed: an indexed jobs table in the
campaign database (SQLAlchemy Core, the engine of :func:`cnnbench.campaign.storage.open_engine`).

Why not Optuna trials (the queue before this one): a claim re-read every WAITING/RUNNING trial and
its attributes, O(N) per claim and O(N^2) per campaign (measured: ~400 ms a claim with 1,000 jobs
waiting, 4.6-5.0 s with 10,000). Here a claim touches one row through an index, whatever the size.

Two tables, shared by every campaign in the database:

- ``cnnbench_campaigns``: one row per campaign, its name the primary key. Creation is atomic: of
  several commands creating a campaign at once, one inserts the row, the others get an
  IntegrityError and join it. The creator then enqueues every job (executemany, ``BATCH`` rows per
  transaction) and marks the row ``ready``; a joiner waits for that flag (:meth:`JobQueue.wait_ready`),
  bounded, so a creator that died mid-enqueue is reported instead of waited on forever.
- ``cnnbench_jobs``: one row per job, ``UNIQUE(campaign, key)``, so a job cannot be enqueued twice
  and exactly one result per job holds by construction (no duplicate trials to reconcile). Indexed on
  ``(campaign, state, id)`` (the next waiting job) and ``(campaign, state, lease_expires)`` (the
  expired leases): neither a claim, a sweep nor a worker's start reads the whole table.

A claim is the job-queue pattern of PostgreSQL: ``UPDATE ... WHERE id = (SELECT id ... WHERE
state = 'waiting' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING ...``. Workers asking at once
lock different rows instead of queueing on one (``SKIP LOCKED``), and the row is claimed in the same
statement that picks it. The scalar ``=`` (an InitPlan, run once) rather than ``IN``: PostgreSQL may
re-run an ``IN`` subquery per outer row and update more rows than its LIMIT. SQLite has no row locks;
:func:`~cnnbench.campaign.storage.serialise_sqlite` opens every transaction with ``BEGIN IMMEDIATE``,
so the same statement runs holding the database's write lock (one short transaction per claim).
Databases without ``UPDATE ... RETURNING`` (MySQL) take the portable form of the same thing: the
locking SELECT, then the UPDATE, then a read of the updated rows, in one transaction. Each update
is built once per queue with bound parameters (SQLAlchemy then reuses its compiled SQL): building
the statements anew on each call cost more CPU than the database (measured: 2.8 -> 0.7 ms a claim).

Each claim increments the row's ``token``; the claim carries it, and heartbeat, set_run, finish, fail
and release act only on a row still RUNNING with that token. A worker that stalled past its lease and
whose job was handed on therefore cannot finish it: its result does not count (``False``/``None``).

Leases, not a heartbeat table: a claim sets ``lease_expires = now + lease_s`` and the worker's
heartbeat pushes it on. Every claim first sweeps this campaign's RUNNING jobs whose lease expired
(a killed or lost worker, or one paused past the grace) in the same transaction: the failed attempt
counts, and the job waits again for any worker of any command, or fails when no retry is left
(``outcome = "lost"``); what it reclaimed is kept in ``JobQueue.reclaimed`` for the caller to close
those MLflow runs. Concurrent sweeps report each job once: the sweep's UPDATE picks its rows ``FOR
UPDATE SKIP LOCKED`` (a row another sweep holds is skipped; one it has changed no longer qualifies
when re-read under the lock), and on SQLite runs under the write lock.

Attempts count failures only: an error (:meth:`fail`) or a lost lease uses one; Ctrl-C or SIGTERM
(:meth:`release`) uses none. A transient store error (``fail(counts=False)``) has its own counter
and stops the job at ``MAX_TRANSIENT``, so an unreachable tracking server cannot loop a job forever.

Times are unix seconds from the clocks of the workers' machines, as in any lease-based queue:
machines sharing one queue need synchronised clocks (NTP); a clock far ahead sweeps live leases.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from cnnbench.campaign.faults import fault_hook
from cnnbench.errors import ConfigError

MAX_TRANSIENT = 3  # transient store errors after which a job fails (attempts unchanged)
REASON_MAX_CHARS = 2000
BATCH = 1000  # jobs per enqueue transaction
WAITING, RUNNING, FINISHED, FAILED = "waiting", "running", "finished", "failed"

metadata = sa.MetaData()
campaigns = sa.Table(
    "cnnbench_campaigns", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("attrs", sa.Text, nullable=False),
    sa.Column("ready", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
# Column order matters on MySQL, which evaluates SET left to right with the values already set:
# ``state`` precedes ``attempts`` and ``transient``, so its CASE reads their values before the update.
jobs = sa.Table(
    "cnnbench_jobs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("campaign", sa.String(200), nullable=False),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),  # failed attempts (errors, lost leases)
    sa.Column("transient", sa.Integer, nullable=False, default=0),  # transient store errors
    sa.Column("token", sa.Integer, nullable=False, default=0),  # claims so far: which claim is current
    sa.Column("worker", sa.String(200)),  # the last worker that claimed it
    sa.Column("run_id", sa.String(64)),  # the MLflow run of the current / last attempt
    sa.Column("outcome", sa.String(32)),  # finished | failed | lost | killed | what fail() was given
    sa.Column("reason", sa.Text),
    sa.Column("value", sa.Float),
    sa.Column("claimed_at", sa.Float),
    sa.Column("finished_at", sa.Float),  # when the last attempt ended
    sa.Column("lease_expires", sa.Float),
    sa.UniqueConstraint("campaign", "key", name="uq_cnnbench_jobs_campaign_key"),
    sa.Index("ix_cnnbench_jobs_next", "campaign", "state", "id"),
    sa.Index("ix_cnnbench_jobs_lease", "campaign", "state", "lease_expires"),
)


@dataclass(frozen=True)
class Job:
    """What a job source enqueues."""

    key: str  # unique within the campaign, e.g. "3:1" (cell 3, seed 1)
    payload: dict  # JSON-able; returned with the claim


@dataclass(frozen=True)
class Claim:
    job_id: int  # row id
    key: str
    payload: dict
    attempt: int  # 1 for the first try (failed attempts so far + 1)
    token: int  # the row's claim counter at claim time: the claim acts only while it is current


@dataclass(frozen=True)
class Lost:
    """A lease that expired (worker killed, lost, or paused past the grace)."""

    key: str
    payload: dict
    run_id: str | None
    worker: str | None
    state: str  # what the job became: "waiting" (retried) or "failed" (no retry left)


@dataclass(frozen=True)
class JobRow:
    """One job as stored (for status displays and reports)."""

    key: str
    payload: dict
    state: str
    attempts: int
    worker: str | None
    run_id: str | None
    outcome: str | None
    reason: str | None
    value: float | None
    claimed_at: float | None
    finished_at: float | None
    lease_expires: float | None


class JobQueue:
    """The jobs of one campaign in one database."""

    STATES = (WAITING, RUNNING, FINISHED, FAILED)
    MAX_TRANSIENT = MAX_TRANSIENT

    def __init__(self, engine, campaign: str, *, lease_s: float = 60.0, max_retries: int = 1) -> None:
        self.engine = engine
        self.campaign = campaign
        self.lease_s = float(lease_s)
        self.max_retries = int(max_retries)
        self.reclaimed: list[Lost] = []  # what claim()'s own sweeps reclaimed: the caller closes their runs
        self._statements: dict = {}  # the updates of this queue, built on first use
        _create_tables(engine)
        self._returning = bool(engine.dialect.update_returning)

    # -- creating or joining ----------------------------------------------------------------
    def exists(self) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(sa.select(campaigns.c.name).where(campaigns.c.name == self.campaign)).first() is not None

    def create(self, jobs: Iterable[Job], attrs: dict) -> bool:
        """Create the campaign and enqueue every job once; False (nothing done) when it exists already:
        join it with :meth:`wait_ready`."""
        from cnnbench.campaign.workers import is_transient

        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    conn.execute(campaigns.insert().values(name=self.campaign, attrs=json.dumps(attrs), ready=False,
                                                           created_at=time.time()))
                break
            except IntegrityError:
                return False
            except OperationalError as err:  # SQLite: another process creating it holds the lock past the timeout
                if not is_transient(err) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        batch: list[dict] = []
        for job in jobs:
            batch.append(self._row(job))
            if len(batch) >= BATCH:
                self._enqueue(batch)
                batch = []
        if batch:
            self._enqueue(batch)
        with self.engine.begin() as conn:
            conn.execute(campaigns.update().where(campaigns.c.name == self.campaign).values(ready=True))
        return True

    def add(self, new: Iterable[Job]) -> list[str]:
        """Enqueue the jobs whose keys the campaign does not have yet (a study adding seeds); their
        keys. The campaign's unique (campaign, key) makes it exactly once when several commands add
        the same jobs at the same time."""
        self.wait_ready()
        with self.engine.begin() as conn:
            have = set(conn.execute(sa.select(jobs.c.key).where(jobs.c.campaign == self.campaign)).scalars())
        added = []
        for job in new:
            if job.key in have:
                continue
            try:
                self._enqueue([self._row(job)])
            except IntegrityError:
                continue
            added.append(job.key)
        return added

    def _row(self, job: Job) -> dict:
        """A new job's row: waiting, never attempted."""
        return {"campaign": self.campaign, "key": job.key, "payload": json.dumps(job.payload),
                "state": WAITING, "attempts": 0, "transient": 0, "token": 0}

    def _enqueue(self, batch: list[dict]) -> None:
        with self.engine.begin() as conn:
            conn.execute(jobs.insert(), batch)

    def wait_ready(self, timeout_s: float = 120.0) -> dict:
        """The campaign's attrs once its creator has enqueued every job; a ConfigError when it does not
        exist or is not ready within ``timeout_s`` (its creator stopped mid-enqueue)."""
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(campaigns.c.attrs, campaigns.c.ready)
                                   .where(campaigns.c.name == self.campaign)).first()
            if row is None:
                raise ConfigError(f"campaign {self.campaign!r} does not exist in this database")
            if row.ready:
                return json.loads(row.attrs)
            if time.monotonic() + delay > deadline:
                raise ConfigError(f"campaign {self.campaign!r} exists in this database but was never fully set up (the "
                                  f"process creating it stopped after {timeout_s:.0f} s?); give a new campaign name")
            time.sleep(delay)
            delay = min(0.5, delay * 2)

    def attrs(self) -> dict:
        with self.engine.begin() as conn:
            text = conn.execute(sa.select(campaigns.c.attrs).where(campaigns.c.name == self.campaign)).scalar()
        if text is None:
            raise ConfigError(f"campaign {self.campaign!r} does not exist in this database")
        return json.loads(text)

    def update_attrs(self, **values: Any) -> None:
        """Merge ``values`` into the stored attrs (read and written under the row's lock)."""
        where = campaigns.c.name == self.campaign
        with self.engine.begin() as conn:
            text = conn.execute(sa.select(campaigns.c.attrs).where(where).with_for_update()).scalar()
            if text is None:
                raise ConfigError(f"campaign {self.campaign!r} does not exist in this database")
            conn.execute(campaigns.update().where(where).values(attrs=json.dumps({**json.loads(text), **values})))

    # -- the queue --------------------------------------------------------------------------
    def claim(self, worker: str) -> Claim | None:
        """Sweep expired leases, then take the lowest-id waiting job; None when nothing is waiting.
        What the sweep reclaimed is appended to :attr:`reclaimed`."""
        now = time.time()
        with self.engine.begin() as conn:
            self.reclaimed.extend(self._sweep(conn, now))
            rows = self._update(conn, "claim", {"p_now": now, "p_until": now + self.lease_s, "p_worker": worker})
        if not rows:
            return None
        fault_hook("job-claimed")
        row = rows[0]
        return Claim(row.id, row.key, json.loads(row.payload), row.attempts + 1, row.token)

    def sweep(self) -> list[Lost]:
        """Reclaim every running job of this campaign whose lease expired (an attempt used: waiting
        again, or failed with no retry left); what was reclaimed, for the caller to close its runs."""
        with self.engine.begin() as conn:
            return self._sweep(conn, time.time())

    def _sweep(self, conn, now: float) -> list[Lost]:
        rows = self._update(conn, "sweep", {"p_now": now})
        return [Lost(r.key, json.loads(r.payload), r.run_id, r.worker, r.state) for r in rows]

    def heartbeat(self, claim: Claim) -> bool:
        """Extend the lease; False when the claim is no longer current (its job was handed on)."""
        return self._set(claim, lease_expires=time.time() + self.lease_s)

    def set_run(self, claim: Claim, run_id: str) -> bool:
        return self._set(claim, run_id=run_id)

    def finish(self, claim: Claim, value: float | None, run_id: str | None = None) -> bool:
        """The job is done; False when the claim is not current (this worker stalled past its lease
        and the job went to another: this result must not count)."""
        values = {"run_id": run_id} if run_id is not None else {}
        return self._set(claim, state=FINISHED, outcome="finished", value=None if value is None else float(value),
                         finished_at=time.time(), lease_expires=None, **values)

    def fail(self, claim: Claim, reason: str, *, outcome: str = "failed", counts: bool = True,
             final: bool = False) -> str | None:
        """End the attempt as failed: waiting again while retries are left, else failed. ``counts=False``
        (a transient store error) uses no attempt but stops the job at MAX_TRANSIENT; ``final`` (a
        retry would fail the same way, e.g. a predicted out-of-memory) fails the job now. The new
        state, or None when the claim was not current."""
        params = {"p_id": claim.job_id, "p_token": claim.token, "p_outcome": outcome,
                  "p_reason": reason[:REASON_MAX_CHARS], "p_now": time.time()}
        with self.engine.begin() as conn:
            rows = self._update(conn, "fail-final" if final else "fail" if counts else "fail-transient", params)
        return rows[0].state if rows else None

    def release(self, claim: Claim, reason: str) -> bool:
        """Interrupted (Ctrl-C, SIGTERM): waiting again, no attempt used."""
        return self._set(claim, state=WAITING, outcome="killed", reason=reason[:REASON_MAX_CHARS],
                         finished_at=time.time(), lease_expires=None)

    def requeue_failed(self) -> list[str]:
        """Failed jobs with a retry left under this queue's max_retries (a resume with a higher
        --max-retries, or a job stopped by MAX_TRANSIENT) wait again; their keys."""
        with self.engine.begin() as conn:
            return [r.key for r in self._update(conn, "requeue", {})]

    # -- reading ----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = dict.fromkeys((FINISHED, FAILED, RUNNING, WAITING), 0)
        with self.engine.begin() as conn:
            for state, n in conn.execute(sa.select(jobs.c.state, sa.func.count()).where(jobs.c.campaign == self.campaign)
                                         .group_by(jobs.c.state)):
                out[state] = int(n)
        return out

    def active(self) -> int:
        """Jobs waiting or running (in any worker)."""
        with self.engine.begin() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(
                jobs.c.campaign == self.campaign, jobs.c.state.in_((WAITING, RUNNING)))).scalar())

    def rows(self) -> list[JobRow]:
        with self.engine.begin() as conn:
            result = conn.execute(sa.select(jobs).where(jobs.c.campaign == self.campaign).order_by(jobs.c.id)).all()
        return [JobRow(r.key, json.loads(r.payload), r.state, r.attempts, r.worker, r.run_id, r.outcome, r.reason,
                       r.value, r.claimed_at, r.finished_at, r.lease_expires) for r in result]

    def durations(self) -> list[float]:
        """Seconds from claim to finish of the finished jobs (for an ETA)."""
        with self.engine.begin() as conn:
            return [float(d) for d in conn.execute(sa.select(jobs.c.finished_at - jobs.c.claimed_at).where(
                jobs.c.campaign == self.campaign, jobs.c.state == FINISHED)).scalars()]

    # -- helpers ----------------------------------------------------------------------------
    def _set(self, claim: Claim, **values: Any) -> bool:
        """Set ``values`` on the claim's row while the claim is current; whether it was."""
        names = tuple(sorted(values))
        statement = self._statements.get(names)
        if statement is None:  # one statement per set of columns, built once (SQLAlchemy caches its SQL)
            statement = self._statements[names] = jobs.update().where(
                jobs.c.id == sa.bindparam("p_id"), jobs.c.token == sa.bindparam("p_token"), jobs.c.state == RUNNING,
            ).values({name: sa.bindparam(f"p_{name}") for name in names})
        params = {f"p_{name}": value for name, value in values.items()}
        with self.engine.begin() as conn:
            result = conn.execute(statement, {"p_id": claim.job_id, "p_token": claim.token, **params})
        return result.rowcount == 1

    def _update(self, conn, name: str, params: dict) -> list:
        """Run the update ``name`` of :meth:`_changes` in the caller's transaction; the rows as updated.

        One ``UPDATE ... RETURNING`` where the database has it (PostgreSQL, SQLite >= 3.35); elsewhere
        (MySQL: no RETURNING, no UPDATE of a table selected in its own WHERE) the locking SELECT, the
        UPDATE of those ids and a read of them back."""
        params = {**params, "p_max": self.max_retries}  # a parameter: the statements outlive a change of it
        plan = self._statements.get(name)
        if plan is None:
            target, values, one = self._changes(name)
            if self._returning:
                where = jobs.c.id == target.scalar_subquery() if one else jobs.c.id.in_(target)
                plan = (jobs.update().where(where).values(values).returning(*jobs.c),)
            else:
                ids = jobs.c.id.in_(sa.bindparam("p_ids", expanding=True))
                plan = (target, jobs.update().where(ids).values(values), sa.select(jobs).where(ids).order_by(jobs.c.id))
            self._statements[name] = plan
        if len(plan) == 1:
            return conn.execute(plan[0], params).all()
        target, change, read = plan
        ids = list(conn.execute(target, params).scalars())
        if not ids:
            return []
        conn.execute(change, {**params, "p_ids": ids})
        return conn.execute(read, {"p_ids": ids}).all()

    def _changes(self, name: str):
        """(a locking SELECT of the ids to change, the new values, whether it picks one row) of each
        update; ``p_*`` are the parameters given when it runs."""
        mine = jobs.c.campaign == self.campaign
        now = sa.bindparam("p_now")
        if name == "claim":
            pick = sa.select(jobs.c.id).where(mine, jobs.c.state == WAITING).order_by(jobs.c.id).limit(1)
            return pick.with_for_update(skip_locked=True), {
                "state": RUNNING, "worker": sa.bindparam("p_worker"), "claimed_at": now,
                "lease_expires": sa.bindparam("p_until"), "token": jobs.c.token + 1, "run_id": None, "outcome": None,
                "reason": None, "value": None, "finished_at": None}, True
        if name == "sweep":
            expired = sa.select(jobs.c.id).where(mine, jobs.c.state == RUNNING, jobs.c.lease_expires < now)
            reason = sa.literal("lease expired: worker ") + sa.func.coalesce(jobs.c.worker, "?") + sa.literal(
                " stopped renewing it (killed, lost or paused)")
            return expired.with_for_update(skip_locked=True), {
                **self._failed(counts=True), "outcome": "lost", "reason": reason, "lease_expires": None,
                "finished_at": now}, False
        if name in ("fail", "fail-transient", "fail-final"):
            current = sa.select(jobs.c.id).where(jobs.c.id == sa.bindparam("p_id"), jobs.c.token == sa.bindparam("p_token"),
                                                 jobs.c.state == RUNNING)
            failed = ({"attempts": jobs.c.attempts + 1, "state": FAILED} if name == "fail-final"
                      else self._failed(counts=name == "fail"))
            return current.with_for_update(), {
                **failed, "outcome": sa.bindparam("p_outcome"),
                "reason": sa.bindparam("p_reason"), "finished_at": now, "lease_expires": None}, False
        if name == "requeue":
            failed = sa.select(jobs.c.id).where(mine, jobs.c.state == FAILED, jobs.c.attempts <= sa.bindparam("p_max"))
            return failed.with_for_update(skip_locked=True), {"state": WAITING, "transient": 0}, False
        raise KeyError(name)

    def _failed(self, counts: bool) -> dict[str, Any]:
        """A failed attempt's state and counters (CASEs on the values before the update)."""
        if counts:
            return {"attempts": jobs.c.attempts + 1,
                    "state": sa.case((jobs.c.attempts < sa.bindparam("p_max"), WAITING), else_=FAILED)}
        return {"transient": jobs.c.transient + 1,
                "state": sa.case((jobs.c.transient + 1 < MAX_TRANSIENT, WAITING), else_=FAILED)}


def _create_tables(engine, attempts: int = 5) -> None:
    """Create the two tables if missing. Processes starting together on a new database race to
    create them (one gets "already exists"): the loser looks again."""
    for attempt in range(attempts):
        try:
            metadata.create_all(engine)
            return
        except (IntegrityError, ProgrammingError, OperationalError) as err:
            from cnnbench.campaign.workers import is_transient

            transient = "already exists" in str(err) or is_transient(err)
            if attempt == attempts - 1 or (isinstance(err, OperationalError) and not transient):
                raise
            time.sleep(0.2 * (attempt + 1))
