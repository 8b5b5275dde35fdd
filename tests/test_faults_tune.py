"""FAULTS.md section T (and N2), injected as found: ``kill -9`` of a worker process, SIGTERM to
``cnnbench tune`` between trials, SIGSTOP/SIGCONT of a worker, SIGKILL of the tune process, and a
study whose every trial fails. Each test reads back Optuna's and MLflow's state."""

from __future__ import annotations

import os
import signal
import time

import optuna
import pytest
from faultkit import FAST, Proc, run_cli
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

TRIAL = ["--epochs", "2", "--train-size", "300", *FAST, "--quiet", "--pruner", "none",
         "--search", "lr=loguniform(1e-3,1e-2)", "--search", "batch_size=choice(32,64)"]


@pytest.fixture
def where(tmp_path):
    return {"store": f"sqlite:///{tmp_path}/mlflow.db", "storage": f"sqlite:///{tmp_path}/optuna.db"}


def tune_args(where, study: str, *extra: str) -> list[str]:
    return ["tune", "--tracking-uri", where["store"], "--storage", where["storage"], "--study-name", study,
            "--experiment", study, *TRIAL, *extra]


def runs_by_role(where, experiment: str):
    client = MlflowClient(where["store"])
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    role = lambda r: r.data.tags.get("cnnbench.role")  # noqa: E731
    return [r for r in runs if role(r) == "tune"], [r for r in runs if role(r) == "trial"]


def worker_pids(parent_pid: int) -> list[int]:
    """The ``cnnbench.tune.worker`` processes started by ``parent_pid``."""
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
        if ppid == parent_pid and b"cnnbench.tune.worker" in cmdline:
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
    proc = Proc(*tune_args(where, "t1", "--trials", "6", "--n-jobs", "2", "--heartbeat-interval", "2"))
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
    proc = Proc(*tune_args(where, "t5", "--trials", "12", "--n-jobs", "2", "--heartbeat-interval", "2"))
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
    proc = Proc(*tune_args(where, "t4", "--trials", "12", "--n-jobs", "2", "--heartbeat-interval", "2"))
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
    proc = Proc(*tune_args(where, "t8", "--trials", "8", "--n-jobs", "2", "--heartbeat-interval", "1"))
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
    """N2: exit 1 and the parent FAILED with the reason (it used to end FINISHED)."""
    args = ["tune", "--tracking-uri", where["store"], "--storage", where["storage"], "--study-name", "n2",
            "--experiment", "n2", "--epochs", "1", "--train-size", "300", *FAST, "--quiet", "--trials", "2",
            "--search", "lr=loguniform(1e3,1e9)", "--search", "batch_size=choice(32)"]
    done = run_cli(*args)
    assert done.rc == 1 and "every trial of this run failed" in done.output, done.output
    parents, children = runs_by_role(where, "n2")
    assert [p.info.status for p in parents] == ["FAILED"]
    assert "every trial" in parents[0].data.tags["failure_reason"]
    assert {c.info.status for c in children} == {"FAILED"}
