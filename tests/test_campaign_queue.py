"""``cnnbench.campaign.queue`` on SQLite (its ``UPDATE ... RETURNING`` form and the portable form
MySQL takes, forced) and on a real PostgreSQL server: processes racing on one new database, leases
swept and handed on, retries, transient errors, requeue, the status reads, and a claim whose cost
(statements, query plan) does not grow with the queue.

Run as a script, this file is one process of the race: ``python test_campaign_queue.py URL CAMPAIGN
OUT START_AT [portable]`` (creates or joins the campaign at START_AT, claims and finishes until empty).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

if __name__ != "__main__":  # the claiming processes skip test_tune_study's imports (MLflow, Optuna)
    from test_tune_study import postgres_url  # noqa: F401 -- the PostgreSQL server fixture, shared

RACE_JOBS = 300
RACE_PROCESSES = 3
BACKENDS = ["sqlite", "sqlite-portable", pytest.param("postgresql", marks=pytest.mark.postgres)]


def open_queue(url: str, campaign: str, portable: bool = False, **kwargs):
    from cnnbench.campaign.queue import JobQueue
    from cnnbench.campaign.storage import open_engine

    queue = JobQueue(open_engine(url), campaign, **kwargs)
    if portable:
        queue._returning = False  # the locking SELECT + UPDATE + read back, as on MySQL
    return queue


def jobs_of(n: int):
    from cnnbench.campaign.queue import Job

    return [Job(f"{i}:0", {"cell": i, "seed": 0}) for i in range(n)]


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    """(url, portable): a fresh SQLite file per test, or the module's PostgreSQL server."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url"), False
    return f"sqlite:///{tmp_path}/queue.db", request.param == "sqlite-portable"


@pytest.fixture
def make(backend):
    """``make(n_jobs, **JobQueue kwargs)``: a created, ready campaign of its own (unique name)."""
    url, portable = backend
    engines = []

    def make_queue(n: int = 0, campaign: str | None = None, **kwargs):
        queue = open_queue(url, campaign or f"c-{uuid.uuid4().hex[:8]}", portable, **kwargs)
        engines.append(queue.engine)
        if n:
            assert queue.create(jobs_of(n), {"owner": "test"})
        return queue

    yield make_queue
    for engine in engines:
        engine.dispose()


# -- several processes on one new database ---------------------------------------------------
def race(url: str, campaign: str, out: str, start_at: float, portable: bool) -> None:
    """One racing process: tables, create-or-join, claim + finish until nothing waits."""
    from cnnbench.campaign.queue import JobQueue  # noqa: F401 -- imported before the start line

    created, claimed, error = None, [], None
    time.sleep(max(0.0, start_at - time.time()))
    try:
        queue = open_queue(url, campaign, portable)
        created = queue.create(jobs_of(RACE_JOBS), {"creator": out})
        if not created:
            queue.wait_ready(timeout_s=60)
        for _ in range(10 * RACE_JOBS):  # bounded: ends when nothing waits
            claim = queue.claim(f"w-{Path(out).stem}")
            if claim is None:
                break
            claimed.append(claim.key)
            assert queue.finish(claim, 1.0, run_id=f"run-{claim.key}")
    except Exception as err:  # recorded: the test shows it
        error = f"{type(err).__name__}: {err}"[:500]
    Path(out).write_text(json.dumps({"created": created, "claimed": claimed, "error": error}))


def fresh_database(url: str) -> tuple[str, callable]:
    """A new, empty database on the PostgreSQL server of ``url`` (so the processes race on creating
    the tables too), and a function that drops it."""
    import sqlalchemy as sa

    from cnnbench.campaign.storage import open_engine

    name = f"race_{uuid.uuid4().hex[:8]}"
    admin = open_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

    return url.rsplit("/", 1)[0] + "/" + name, drop


def test_processes_race_on_create_then_every_job_is_claimed_and_finished_once(backend, tmp_path):
    url, portable = backend
    drop = None
    if url.startswith("postgresql"):
        url, drop = fresh_database(url)
    try:
        outs = [tmp_path / f"p{i}.json" for i in range(RACE_PROCESSES)]
        start_at = time.time() + 4  # after every process has imported: they open the database together
        procs = [subprocess.Popen([sys.executable, __file__, url, "race", str(o), str(start_at), *(["portable"] if portable else [])])
                 for o in outs]
        for p in procs:
            p.wait(timeout=240)
        results = [json.loads(o.read_text()) for o in outs]
        assert [r["error"] for r in results] == [None] * RACE_PROCESSES
        assert sorted(r["created"] for r in results) == [False] * (RACE_PROCESSES - 1) + [True]
        claimed = [k for r in results for k in r["claimed"]]
        assert len(claimed) == RACE_JOBS and len(set(claimed)) == RACE_JOBS
        queue = open_queue(url, "race", portable)
        assert queue.counts() == {"finished": RACE_JOBS, "failed": 0, "running": 0, "waiting": 0}
        assert all(r.run_id == f"run-{r.key}" and r.attempts == 0 for r in queue.rows())
        queue.engine.dispose()
    finally:
        if drop is not None:
            drop()


# -- leases -----------------------------------------------------------------------------------
def test_an_expired_lease_is_swept_by_the_next_claim_and_the_stale_holder_cannot_finish(make):
    stalled = make(1, lease_s=0.2, max_retries=1)
    other = make(campaign=stalled.campaign, lease_s=60, max_retries=1)
    first = stalled.claim("w-stalled")
    assert first.attempt == 1 and stalled.heartbeat(first) and stalled.set_run(first, "run-1")
    assert other.claim("w-other") is None  # leased: nothing to take
    time.sleep(0.35)
    second = other.claim("w-other")
    assert second is not None and second.key == first.key and second.attempt == 2 and second.token == first.token + 1
    lost = other.reclaimed
    assert [(x.key, x.run_id, x.worker, x.state) for x in lost] == [(first.key, "run-1", "w-stalled", "waiting")]
    assert lost[0].payload == {"cell": 0, "seed": 0}
    assert other.sweep() == [] and stalled.sweep() == []  # reported once
    assert not stalled.heartbeat(first) and not stalled.set_run(first, "x")
    assert not stalled.finish(first, 0.1, run_id="run-1")
    assert stalled.fail(first, "late") is None and not stalled.release(first, "late")
    assert other.heartbeat(second) and other.finish(second, 0.9, run_id="run-2")
    (row,) = other.rows()
    assert (row.state, row.value, row.run_id, row.worker, row.attempts, row.outcome) == ("finished", 0.9, "run-2", "w-other", 1, "finished")


def test_a_lease_lost_with_no_retry_left_fails_the_job_and_names_the_worker(make):
    queue = make(1, lease_s=0.05, max_retries=0)
    queue.claim("w-gone")
    time.sleep(0.15)
    assert [(x.state, x.worker) for x in queue.sweep()] == [("failed", "w-gone")]
    (row,) = queue.rows()
    assert (row.state, row.outcome, row.attempts) == ("failed", "lost", 1) and "w-gone" in row.reason
    assert queue.claim("w") is None and queue.active() == 0


def test_concurrent_sweeps_report_each_expired_job_once(make):
    from cnnbench.campaign.queue import jobs

    queue = make(30)
    for _ in range(30):
        queue.claim("w-dead")
    with queue.engine.begin() as conn:  # every lease expired at once (a claim with a short lease would sweep the earlier ones)
        conn.execute(jobs.update().where(jobs.c.campaign == queue.campaign).values(lease_expires=time.time() - 1))
    sweepers = [make(campaign=queue.campaign) for _ in range(3)]
    barrier, found = threading.Barrier(3), []

    def sweep(q) -> None:
        barrier.wait()
        found.extend(x.key for x in q.sweep())

    threads = [threading.Thread(target=sweep, args=(q,)) for q in sweepers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(found) == sorted(f"{i}:0" for i in range(30))
    assert queue.counts()["waiting"] == 30


# -- retries ----------------------------------------------------------------------------------
def test_failed_attempts_count_up_to_max_retries_and_an_interrupt_uses_none(make):
    queue = make(1, max_retries=2)
    claim = queue.claim("w")
    assert queue.release(claim, "Ctrl-C") and not queue.release(claim, "again")
    states, attempts = [], []
    for _ in range(3):
        claim = queue.claim("w")
        attempts.append(claim.attempt)
        states.append(queue.fail(claim, "x" * 5000, outcome="error"))
    assert attempts == [1, 2, 3] and states == ["waiting", "waiting", "failed"]
    assert queue.claim("w") is None
    (row,) = queue.rows()
    assert (row.state, row.attempts, row.outcome, len(row.reason)) == ("failed", 3, "error", 2000)
    assert queue.requeue_failed() == []  # no retry left under max_retries=2
    more = make(campaign=queue.campaign, max_retries=3)  # a resume given --max-retries 3
    assert more.requeue_failed() == ["0:0"]
    claim = more.claim("w")
    assert claim.attempt == 4 and more.fail(claim, "again") == "failed"
    more.max_retries = 4  # changed on a queue already used: its statements take it as a parameter
    assert more.requeue_failed() == ["0:0"]
    claim = more.claim("w")
    assert claim.attempt == 5 and more.finish(claim, None)
    assert more.rows()[0].value is None and more.counts()["finished"] == 1


def test_a_final_failure_uses_one_attempt_and_leaves_no_retry_in_this_command(make):
    queue = make(2, max_retries=3)
    claim = queue.claim("w")
    assert queue.fail(claim, "predicted 9 GiB > 4 GiB", outcome="skipped", final=True) == "failed"
    assert queue.fail(claim, "again", final=True) is None  # the claim is no longer current
    (row, other) = queue.rows()
    assert (row.state, row.attempts, row.outcome, row.reason) == ("failed", 1, "skipped", "predicted 9 GiB > 4 GiB")
    assert other.state == "waiting" and queue.claim("w").key == other.key  # the next claim is the other job


def test_transient_failures_use_no_attempt_and_stop_at_max_transient(make):
    from cnnbench.campaign.queue import JobQueue

    queue = make(1, max_retries=1)
    states = []
    for _ in range(JobQueue.MAX_TRANSIENT):
        claim = queue.claim("w")
        assert claim.attempt == 1
        states.append(queue.fail(claim, "store unreachable", outcome="store-error", counts=False))
    assert states == ["waiting"] * (JobQueue.MAX_TRANSIENT - 1) + ["failed"] == ["waiting", "waiting", "failed"]
    assert queue.rows()[0].attempts == 0
    assert queue.requeue_failed() == ["0:0"]  # attempts left: brought back, transient counter reset
    for expected in ("waiting", "waiting"):
        assert queue.fail(queue.claim("w"), "blip", counts=False) == expected
    assert queue.fail(queue.claim("w"), "bug") == "waiting"  # a counted failure: attempt 1 of 1 retry
    claim = queue.claim("w")
    assert claim.attempt == 2 and queue.fail(claim, "bug") == "failed"


# -- creating, joining, reading ---------------------------------------------------------------
def test_create_join_attrs_and_the_status_reads(make):
    from cnnbench.campaign.queue import Job

    queue = make(4)
    joiner = make(campaign=queue.campaign)
    assert joiner.exists() and not joiner.create(jobs_of(9), {"owner": "second"})
    assert joiner.wait_ready(timeout_s=1) == {"owner": "test"}
    joiner.update_attrs(parent="run-p", owner="test2")
    assert queue.attrs() == {"owner": "test2", "parent": "run-p"}
    assert queue.counts() == {"finished": 0, "failed": 0, "running": 0, "waiting": 4} and queue.active() == 4
    done = queue.claim("a")
    time.sleep(0.02)
    assert queue.finish(done, 0.5)
    assert queue.fail(queue.claim("b"), "nope") == "waiting"
    queue.claim("c")  # the failed one again: lowest id first
    assert queue.counts() == {"finished": 1, "failed": 0, "running": 1, "waiting": 2} and queue.active() == 3
    rows = queue.rows()
    assert [(r.key, r.state, r.worker) for r in rows] == [("0:0", "finished", "a"), ("1:0", "running", "c"),
                                                          ("2:0", "waiting", None), ("3:0", "waiting", None)]
    assert rows[1].attempts == 1 and rows[1].lease_expires > time.time() and rows[1].claimed_at <= time.time()
    (duration,) = queue.durations()
    assert 0.02 <= duration < 5 and duration == pytest.approx(rows[0].finished_at - rows[0].claimed_at)
    other = make(1)  # campaigns do not see each other's jobs
    assert other.counts()["waiting"] == 1 and other.claim("x").key == "0:0" and queue.counts()["running"] == 1
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):  # a key twice in one campaign: refused by the database itself
        make(campaign=f"{queue.campaign}-dup").create([Job("k", {}), Job("k", {})], {})


def test_wait_ready_refuses_a_campaign_never_marked_ready_or_missing(make):
    import sqlalchemy as sa

    from cnnbench.campaign.queue import campaigns
    from cnnbench.errors import ConfigError

    queue = make()
    with pytest.raises(ConfigError, match=queue.campaign):
        queue.wait_ready(timeout_s=0.2)
    with queue.engine.begin() as conn:  # a creator that died before marking it ready
        conn.execute(campaigns.insert().values(name=queue.campaign, attrs="{}", ready=False, created_at=time.time()))
    started = time.monotonic()
    with pytest.raises(ConfigError, match=f"{queue.campaign}.*never fully set up"):
        queue.wait_ready(timeout_s=0.3)
    assert time.monotonic() - started < 5
    with queue.engine.begin() as conn:
        conn.execute(campaigns.update().where(campaigns.c.name == queue.campaign).values(ready=sa.true()))
    assert queue.wait_ready(timeout_s=0.3) == {}


# -- the cost of a claim ----------------------------------------------------------------------
def statements_of_a_claim(queue) -> list[tuple[str, object]]:
    from sqlalchemy import event

    seen = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        seen.append((statement, parameters))

    event.listen(queue.engine, "before_cursor_execute", record)
    try:
        assert queue.claim("w") is not None
    finally:
        event.remove(queue.engine, "before_cursor_execute", record)
    return seen


def test_a_claim_issues_the_same_few_statements_on_5_and_on_5000_jobs(make, backend):
    small, large = make(5), make(5000)
    for queue in (small, large):
        for _ in range(3):
            queue.claim("warm")  # some running, as in a live campaign
    few, many = statements_of_a_claim(small), statements_of_a_claim(large)
    assert len(few) == len(many) <= 5, [s for s, _ in many]  # BEGIN, sweep, claim (+2 in the portable form)
    assert [s for s, _ in few] == [s for s, _ in many]
    if backend[0].startswith("sqlite"):  # and each goes through an index, never a scan of the table
        with large.engine.connect() as conn:
            for statement, parameters in many:
                if "cnnbench_jobs" in statement:
                    plan = " | ".join(r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters))
                    assert "SCAN cnnbench_jobs" not in plan and "USING" in plan, (statement, plan)


if __name__ == "__main__":
    race(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), portable=len(sys.argv) > 5)
