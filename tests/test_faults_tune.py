"""FAULTS.md section T (and N2), injected as found: ``kill -9`` of a worker process, SIGTERM to
``cnnbench tune`` between trials, SIGSTOP/SIGCONT of a worker, SIGKILL of the tune process, and a
study whose every trial fails. Each test reads back Optuna's and MLflow's state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from faultkit import FAST, Proc, env, run_cli
from mlflow.tracking import MlflowClient
from conftest import new_store

pytestmark = pytest.mark.slow

TRIAL = ["--epochs", "2", "--train-size", "300", *FAST, "--quiet", "--pruner", "none",
         "--search", "lr=loguniform(1e-3,1e-2)", "--search", "batch_size=choice(32,64)"]


@pytest.fixture
def where(tmp_path):
    return {"store": new_store(tmp_path), "storage": f"sqlite:///{tmp_path}/optuna.db"}


def tune_args(where, study: str, *extra: str) -> list[str]:
    return ["tune", "--tracking-uri", where["store"], "--storage", where["storage"], "--study-name", study,
            "--experiment", study, *TRIAL, *extra]


def runs_by_role(where, experiment: str):
    client = MlflowClient(where["store"])
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    role = lambda r: r.data.tags.get("cnnbench.role")  # noqa: E731
    return [r for r in runs if role(r) == "tune"], [r for r in runs if role(r) == "trial"]


def worker_pids(parent_pid: int) -> list[int]:
    """The worker processes (``cnnbench.campaign.workers``) started by ``parent_pid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                ppid = int(handle.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent_pid and b"cnnbench.campaign.workers" in cmdline:
            pids.append(int(entry))
    return pids


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_a_killed_workers_trials_are_retried_until_the_requested_count_completes(where):
    """T1/T2: ``kill -9`` of worker 1 during a trial: its trial is failed and retried with the same
    params, its share is run by the main process, and the study ends with 6 finished trials."""
    proc = Proc(*tune_args(where, "t1", "--trials", "6", "--workers", "2", "--heartbeat-interval", "2"))
    proc.wait_for(r"^\[worker 1\] trial")
    time.sleep(0.3)
    workers = worker_pids(proc.popen.pid)
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    done = proc.finish(timeout=600)
    assert done.rc == 0, done.output
    assert "6 complete" in done.output, done.output
    study = optuna.load_study(study_name="t1", storage=where["storage"])
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 6 and "RUNNING" not in states, states
    parents, children = runs_by_role(where, "t1")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert "RUNNING" not in {c.info.status for c in children}
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    for trial in failed:  # each lost trial was retried with its params
        assert any(t.params == trial.params and t.state.name == "COMPLETE" for t in study.trials if t.number > trial.number)


def test_sigterm_between_trials_ends_the_parent_killed_and_stops_the_workers(where):
    """T5: SIGTERM to the tune process (not only inside a training) stops it cleanly."""
    proc = Proc(*tune_args(where, "t5", "--trials", "12", "--workers", "2", "--heartbeat-interval", "2"))
    proc.wait_for(r"^study 't5' \(new\)")
    time.sleep(1.0)
    workers = worker_pids(proc.popen.pid)
    proc.signal(signal.SIGTERM)
    done = proc.finish(timeout=180)
    assert done.rc == 130, done.output
    assert "is KILLED" in done.output
    time.sleep(1.0)
    assert workers and not any(alive(pid) for pid in workers)
    parents, children = runs_by_role(where, "t5")
    assert [p.info.status for p in parents] == ["KILLED"]
    assert "RUNNING" not in {c.info.status for c in children}
    study = optuna.load_study(study_name="t5", storage=where["storage"])
    assert "RUNNING" not in {t.state.name for t in study.trials}


def test_workers_stop_when_the_tune_process_is_killed_and_runs_stale_finds_its_parent(where):
    """T4: SIGKILL of ``cnnbench tune``: its worker stops by itself, and the parent run left RUNNING
    is listed by ``cnnbench runs --stale`` and closed by ``--mark-failed``."""
    proc = Proc(*tune_args(where, "t4", "--trials", "12", "--workers", "2", "--heartbeat-interval", "2"))
    proc.wait_for(r"^\[worker 1\] trial")
    workers = worker_pids(proc.popen.pid)
    proc.signal(signal.SIGKILL)
    proc.finish()
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert workers and not any(alive(pid) for pid in workers)
    parents, _ = runs_by_role(where, "t4")
    time.sleep(3.5)  # faultkit's 1 s heartbeats: past 3 missed beats (a fresh heartbeat is alive, pid or not)
    listed = run_cli("runs", "--stale", "--mark-failed", "--tracking-uri", where["store"])
    assert listed.rc == 0 and parents[0].info.run_id in listed.output, listed.output
    assert MlflowClient(where["store"]).get_run(parents[0].info.run_id).info.status == "FAILED"


def test_a_paused_worker_does_not_crash_and_the_count_completes(where):
    """T8: SIGSTOP of a worker for longer than the heartbeat grace, then SIGCONT: its trial is
    failed and retried elsewhere; the worker goes on (no ``Cannot tell a FAIL trial`` crash) and
    the study reaches the requested count."""
    proc = Proc(*tune_args(where, "t8", "--trials", "8", "--workers", "2", "--heartbeat-interval", "1"))
    proc.wait_for(r"^\[worker 1\] trial")
    time.sleep(0.2)
    worker = worker_pids(proc.popen.pid)[0]
    os.kill(worker, signal.SIGSTOP)
    time.sleep(6)
    os.kill(worker, signal.SIGCONT)
    done = proc.finish(timeout=600)
    assert done.rc == 0, done.output
    assert "Cannot tell" not in done.output and "Traceback" not in done.output, done.output
    study = optuna.load_study(study_name="t8", storage=where["storage"])
    mine = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(mine) >= 8 and "RUNNING" not in {t.state.name for t in study.trials}
    parents, children = runs_by_role(where, "t8")
    assert [p.info.status for p in parents] == ["FINISHED"]
    states = {t.number: t.state.name for t in study.trials}
    for child in children:  # the paused worker's late result does not mark its failed trial COMPLETE
        assert child.data.tags["trial_state"] == states[int(child.data.tags["trial_number"])], child.data.tags


def test_a_study_whose_every_trial_failed_ends_its_parent_failed(where):
    """N2: exit 3 (EXIT_JOBS_FAILED), each trial named on one line, and the parent FAILED with the
    reason and failed_jobs / missing_jobs (it used to end FINISHED)."""
    args = ["tune", "--tracking-uri", where["store"], "--storage", where["storage"], "--study-name", "n2",
            "--experiment", "n2", "--epochs", "1", "--train-size", "300", *FAST, "--quiet", "--trials", "2",
            "--search", "lr=loguniform(1e3,1e9)", "--search", "batch_size=choice(32)"]
    done = run_cli(*args)
    assert done.rc == 3 and "2 of 2 trials failed (exit 3)" in done.output, done.output
    named = [line for line in done.output.splitlines() if line.startswith("  failed: trial ")]
    assert len(named) == 2 and all("(lr=" in line and "batch_size=32" in line for line in named), done.output
    parents, children = runs_by_role(where, "n2")
    assert [p.info.status for p in parents] == ["FAILED"]
    assert parents[0].data.tags["failure_reason"].startswith("2 of 2 trials failed: trial ")
    assert (parents[0].data.metrics["failed_jobs"], parents[0].data.metrics["missing_jobs"]) == (2, 0)
    assert {c.info.status for c in children} == {"FAILED"}


# -- a worker SIGKILLed between creating its trial's run and naming it on the trial ----------------
def test_a_worker_killed_before_its_trial_named_its_run_leaves_no_run_running(where):
    """The orphan sweep after the workers: worker 1 is SIGKILLed right after ``create_run`` (before
    ``mlflow_run_id`` reaches its trial), so no trial names that run and neither Optuna's stale
    callback nor fail_orphaned can close it; the sweep ends it FAILED, and the count completes."""
    environ = env(CNNBENCH_FAULT="trial-run-created:kill:worker")
    done = run_cli(*tune_args(where, "t9", "--trials", "4", "--workers", "2", "--heartbeat-interval", "2"),
                   environ=environ, timeout=600)
    assert done.rc == 0, done.output
    assert "4 complete" in done.output, done.output
    study = optuna.load_study(study_name="t9", storage=where["storage"])
    parents, children = runs_by_role(where, "t9")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert parents[0].data.tags["cnnbench.tune.worker_exit_codes"] == "-9"  # the fault did fire
    assert "RUNNING" not in {c.info.status for c in children}, [(c.info.run_id, c.info.status) for c in children]
    named = {t.user_attrs.get("mlflow_run_id") for t in study.trials}
    orphans = [c for c in children if c.info.run_id not in named]
    assert len(orphans) == 1, [(c.info.run_id, c.data.tags.get("trial_number")) for c in children]
    assert orphans[0].info.status == "FAILED" and orphans[0].data.tags["trial_state"] == "FAIL"
    assert "before trial" in orphans[0].data.tags["failure_reason"], orphans[0].data.tags
    assert "ended 1 trial run(s) left RUNNING by killed workers" in done.output


def test_a_tune_killed_before_its_trial_named_its_run_is_swept_when_the_study_resumes(where):
    """The sweep at the start of a resumed tune: the whole tune process SIGKILLed at that point
    leaves its parent and the trial run RUNNING; the next ``tune --study-name`` ends that run FAILED
    (its parent is dead and its trial names no run) and adds the trials."""
    first = run_cli(*tune_args(where, "t10", "--trials", "2", "--heartbeat-interval", "2"),
                    environ=env(CNNBENCH_FAULT="trial-run-created:kill"))
    assert first.rc == -9, first.output
    _, children = runs_by_role(where, "t10")
    assert [c.info.status for c in children] == ["RUNNING"]
    orphan = children[0].info.run_id
    time.sleep(3.5)  # the dead parent's 1 s heartbeat is past 3 missed beats
    again = run_cli(*tune_args(where, "t10", "--trials", "2", "--heartbeat-interval", "2"))
    assert again.rc == 0, again.output
    run = MlflowClient(where["store"]).get_run(orphan)
    assert run.info.status == "FAILED" and "before trial 0 recorded this run" in run.data.tags["failure_reason"], run.data.tags
    _, children = runs_by_role(where, "t10")
    assert "RUNNING" not in {c.info.status for c in children}


# -- Optuna's claims of re-queued (WAITING) trials through tune's opener -------------------------
ENQUEUED = 60
CLAIMERS = 3


def claim_enqueued(url: str, study_name: str, out: str, go: str) -> None:
    """One claiming process (this file run as a script): ``study.ask()`` until no enqueued trial is
    left, each claim told COMPLETE; the claimed numbers and any error are written to ``out``."""
    from cnnbench.campaign.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    Path(out + ".ready").touch()
    deadline = time.monotonic() + 120
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    claimed, errors = [], []
    while True:
        trial = study.ask()
        if trial.number >= ENQUEUED:  # no WAITING trial was left: ask() created a new one
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            break
        claimed.append(trial.number)
        try:
            study.tell(trial, 1.0)
        except Exception as err:  # a trial another process claimed too: recorded, the test shows it
            errors.append(f"{type(err).__name__}: {err}"[:300])
    Path(out).write_text(json.dumps({"claimed": claimed, "errors": errors}))


def test_requeued_trials_are_claimed_once_each_by_concurrent_processes_on_sqlite(tmp_path):
    """60 enqueued trials (as Optuna's retry callback re-queues them), 3 processes claiming at once
    through ``campaign.storage.open_storage``: 60 distinct claims and no tell error (pysqlite's reads
    outside a transaction used to let two processes take one WAITING trial: 83 claims measured)."""
    from cnnbench.campaign.storage import open_storage

    url = f"sqlite:///{tmp_path}/claims.db"
    study = optuna.create_study(study_name="claims", storage=open_storage(url))
    for i in range(ENQUEUED):
        study.enqueue_trial({"x": i}, skip_if_exists=False)
    go = tmp_path / "go"
    outs = [str(tmp_path / f"claimer{i}.json") for i in range(CLAIMERS)]
    procs = [subprocess.Popen([sys.executable, __file__, "claim", url, "claims", out, str(go)], env=env()) for out in outs]
    deadline = time.monotonic() + 120
    while not all(Path(out + ".ready").exists() for out in outs) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a claiming process ended before it was ready"
        time.sleep(0.05)
    go.touch()  # all at once
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    results = [json.loads(Path(out).read_text()) for out in outs]
    claimed = [n for r in results for n in r["claimed"]]
    assert [e for r in results for e in r["errors"]] == []
    assert sorted(claimed) == list(range(ENQUEUED))  # every trial once, none twice
    states = [t.state.name for t in optuna.load_study(study_name="claims", storage=url).trials if t.number < ENQUEUED]
    assert states == ["COMPLETE"] * ENQUEUED


if __name__ == "__main__" and sys.argv[1:2] == ["claim"]:
    claim_enqueued(*sys.argv[2:6])
