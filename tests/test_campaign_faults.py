"""The campaign layer through faults, as a cluster user meets them: both job sources started three
at once on one SQLite or PostgreSQL storage (``study run``: every cell x seed once; ``tune``: every
command's trials once, on a study none of them created first), one SIGKILLed and one SIGTERMed mid-cell (the survivor
finishes every cell x seed exactly once and exits 0), SIGTERM outside a cell (exit 143, parent
KILLED, no job left RUNNING), a live study's parent never called stale, and ``study status``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultkit import FAST
from mlflow.tracking import MlflowClient
from test_tune_study import postgres_url  # noqa: F401 -- the PostgreSQL server fixture, shared

pytestmark = pytest.mark.slow

STUDY = """
name = "faults"
seeds = 3
[base]
model = "lenet5"
dataset = "digits"
epochs = {epochs}
train_size = {train_size}
kernels = false
predictions = false
memory = false
confusion = false
summary = false
[grid]
optimizer = ["sgd", "adam"]
"""
PAIRS = {(f"optimizer={o}", str(s)) for o in ("sgd", "adam") for s in (0, 1, 2)}


def write(tmp_path: Path, epochs: int = 1, train_size: int = 200) -> Path:
    path = tmp_path / f"faults-{epochs}.toml"
    path.write_text(STUDY.format(epochs=epochs, train_size=train_size))
    return path


def command(uri: str, experiment: str, path: Path, storage: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "cnnbench.cli", "study", "run", str(path), "--tracking-uri", uri,
            "--experiment", experiment, "--storage", storage, *args]


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def runs(uri: str, experiment: str) -> tuple[list, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    found = client.search_runs([exp.experiment_id], max_results=1000)
    role = lambda r: r.data.tags.get("cnnbench.role")  # noqa: E731
    return [r for r in found if role(r) == "study"], [r for r in found if role(r) == "cell"]


def check_complete(uri: str, experiment: str, outputs) -> tuple:
    """Every cell x seed in exactly one FINISHED run, none RUNNING, one parent FINISHED with its report."""
    parents, cells = runs(uri, experiment)
    assert len(parents) == 1, outputs
    finished = [(r.data.tags["cnnbench.study.cell"], r.data.tags["cnnbench.seed"]) for r in cells if r.info.status == "FINISHED"]
    others = [(r.data.tags["cnnbench.study.cell"], r.data.tags["cnnbench.seed"], r.info.status, r.data.tags.get("failure_reason"))
              for r in cells if r.info.status != "FINISHED"]
    assert sorted(finished) == sorted(PAIRS), (others, outputs)  # none missing, none twice
    assert not [r for r in cells if r.info.status == "RUNNING"], others
    parent = MlflowClient(uri).get_run(parents[0].info.run_id)
    assert parent.info.status == "FINISHED", outputs
    assert parent.data.metrics["jobs_finished"] == len(PAIRS) and parent.data.metrics["missing_jobs"] == 0
    files = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/cells.csv"} <= files
    return parent, cells


def wait_for_cell(uri: str, experiment: str, proc: subprocess.Popen, timeout: float = 300):
    """The RUNNING cell run of ``proc`` (its worker tag holds its pid)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for r in runs(uri, experiment)[1]:
            if r.info.status == "RUNNING" and r.data.tags.get("cnnbench.study.worker", "").split(":")[1] == str(proc.pid):
                return r
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError(f"no cell of process {proc.pid} started within {timeout} s")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/queue.db"
    return request.getfixturevalue("postgres_url")


def test_three_commands_started_together_run_every_job_exactly_once(storage, tracking_uri, experiment, tmp_path):
    MlflowClient(tracking_uri).search_experiments()  # MLflow's own schema first: its migrations do not race
    if not storage.startswith("sqlite"):
        experiment += "-pg"
    path = write(tmp_path)
    procs = [start(command(tracking_uri, experiment, path, storage, "--study-name", experiment)) for _ in range(3)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    check_complete(tracking_uri, experiment, outputs)
    assert sum("(new)" in o for o in outputs) == 1 and sum("(joined" in o for o in outputs) == 2
    # the parent runs of the commands that lost the creation race were deleted, not left RUNNING
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    deleted = client.search_runs([exp.experiment_id], run_view_type=2)  # ViewType.DELETED_ONLY
    assert all(r.info.status != "RUNNING" or r.info.lifecycle_stage == "deleted" for r in deleted)


def test_three_tune_commands_started_together_each_get_their_trials_exactly_once(storage, tracking_uri, experiment):
    """The sampler's job source: three ``tune --trials 3`` on one new study at the same instant. Each
    command's parent counts its own 3 trials; 9 trials in the study, each with one FINISHED trial run
    naming it, no trial run twice or left RUNNING, no lost ``tell``."""
    import optuna

    from cnnbench.campaign.storage import open_storage

    MlflowClient(tracking_uri).search_experiments()
    if not storage.startswith("sqlite"):
        experiment += "-pg"
    cmd = [sys.executable, "-m", "cnnbench.cli", "tune", "--tracking-uri", tracking_uri, "--storage", storage,
           "--study-name", experiment, "--experiment", experiment, "--trials", "3", "--epochs", "1",
           "--train-size", "200", "--pruner", "none", "--quiet", "--search", "lr=loguniform(1e-3,1e-2)", *FAST]
    procs = [start(cmd) for _ in range(3)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    study = optuna.load_study(study_name=experiment, storage=open_storage(storage))
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 9, outputs
    client = MlflowClient(tracking_uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    parents = [r for r in found if r.data.tags.get("cnnbench.role") == "tune"]
    trial_runs = [r for r in found if r.data.tags.get("cnnbench.role") == "trial"]
    assert len(parents) == 3 and all(r.info.status == "FINISHED" for r in parents), outputs
    by_parent = {}
    for t in trials:
        by_parent.setdefault(t.user_attrs["cnnbench.parent_run_id"], []).append(t.number)
    assert sorted(len(v) for v in by_parent.values()) == [3, 3, 3] and set(by_parent) == {r.info.run_id for r in parents}
    assert sorted(r.data.tags["cnnbench.job"] for r in trial_runs) == sorted(f"trial-{t.number}" for t in trials)
    assert {r.info.status for r in trial_runs} == {"FINISHED"}
    assert sorted(t.user_attrs["mlflow_run_id"] for t in trials) == sorted(r.info.run_id for r in trial_runs)


def test_one_command_sigkilled_and_one_sigtermed_mid_cell_the_survivor_finishes_every_job(tracking_uri, experiment, tmp_path):
    MlflowClient(tracking_uri).search_experiments()
    path = write(tmp_path, epochs=3, train_size=600)
    cmd = command(tracking_uri, experiment, path, f"sqlite:///{tmp_path}/queue.db", "--heartbeat-interval", "1")
    killed_proc = start(cmd)
    try:
        wait_for_cell(tracking_uri, experiment, killed_proc)
        termed_proc, survivor = start(cmd), start(cmd)
        termed_cell = wait_for_cell(tracking_uri, experiment, termed_proc)
        termed_proc.send_signal(signal.SIGTERM)  # what Slurm's time limit and a pod eviction send
        killed_cell = wait_for_cell(tracking_uri, experiment, killed_proc)  # the one it runs now (cells take seconds)
        killed_proc.send_signal(signal.SIGKILL)  # no cleanup at all: only the expired lease tells
        termed_out = termed_proc.communicate(timeout=300)[0]
        survivor_out = survivor.communicate(timeout=900)[0]
    finally:
        for p in (killed_proc,):
            if p.poll() is None:
                p.kill()
    assert termed_proc.returncode == 143, termed_out
    assert "went back to the queue" in termed_out or "KILLED" in termed_out, termed_out
    assert survivor.returncode == 0, survivor_out
    parent, cells = check_complete(tracking_uri, experiment, [termed_out, survivor_out])
    client = MlflowClient(tracking_uri)
    assert client.get_run(termed_cell.info.run_id).info.status == "KILLED"
    dead = client.get_run(killed_cell.info.run_id)
    assert dead.info.status == "FAILED" and "stopped renewing its lease" in dead.data.tags["failure_reason"]
    status = subprocess.run([sys.executable, "-m", "cnnbench.cli", "study", "status", str(path), "--tracking-uri", tracking_uri,
                             "--storage", f"sqlite:///{tmp_path}/queue.db"], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert "optimizer=sgd" in status.stdout and "3 finished" in status.stdout
    assert "6/6 finished, 0 running, 0 failed, 0 waiting" in status.stdout


def test_ST3b_ST3e_sigterm_outside_a_cell_ends_the_parent_killed_with_no_job_running_and_the_same_command_resumes(tracking_uri, experiment, tmp_path):
    """FAULTS.md ST3b/ST3e: SIGTERM while the worker claims and loads data used to kill the command
    with rc -15, leaving the parent and the claimed job RUNNING."""
    MlflowClient(tracking_uri).search_experiments()
    path = write(tmp_path)
    storage = f"sqlite:///{tmp_path}/queue.db"
    proc = start(command(tracking_uri, experiment, path, storage))
    seen = ""
    deadline = time.time() + 300
    while "(new)" not in seen and time.time() < deadline:  # the header is printed just before the first claim
        line = proc.stdout.readline()
        assert line or proc.poll() is None, seen
        seen += line
    proc.send_signal(signal.SIGTERM)
    output = seen + proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, output
    assert "Resume with the same command: cnnbench study run" in output
    parents, cells = runs(tracking_uri, experiment)
    assert parents[0].info.status == "KILLED"
    assert not [r for r in cells if r.info.status == "RUNNING"]
    status = subprocess.run([sys.executable, "-m", "cnnbench.cli", "study", "status", str(path), "--tracking-uri", tracking_uri,
                             "--storage", storage], capture_output=True, text=True, timeout=120)
    assert " 0 running" in status.stdout, status.stdout + status.stderr
    resumed = subprocess.run(command(tracking_uri, experiment, path, storage), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    check_complete(tracking_uri, experiment, [output, resumed.stdout + resumed.stderr])


def test_ST21_a_live_studys_parent_is_never_called_stale_and_mark_failed_leaves_it_running(tracking_uri, experiment, tmp_path):
    """FAULTS.md ST21: the study parent had no owner or heartbeat tags, so `runs --stale --mark-failed`
    (the README's recovery advice) ended a live study FAILED while its cells trained."""
    MlflowClient(tracking_uri).search_experiments()
    path = write(tmp_path, epochs=3, train_size=600)
    proc = start(command(tracking_uri, experiment, path, f"sqlite:///{tmp_path}/queue.db"))
    try:
        wait_for_cell(tracking_uri, experiment, proc)
        parent = runs(tracking_uri, experiment)[0][0]
        assert {"cnnbench.owner", "cnnbench.heartbeat"} <= set(parent.data.tags)
        stale = subprocess.run([sys.executable, "-m", "cnnbench.cli", "runs", "--stale", "--mark-failed", "--tracking-uri",
                                tracking_uri, "--experiment", experiment], capture_output=True, text=True, timeout=120)
        assert stale.returncode == 0, stale.stderr
        assert parent.info.run_id not in stale.stdout
        assert MlflowClient(tracking_uri).get_run(parent.info.run_id).info.status == "RUNNING"
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output


def test_a_worker_paused_past_its_lease_has_its_late_result_refused(tracking_uri, experiment, tmp_path):
    """SIGSTOP a command mid-cell for longer than its lease: another command takes the cell; when the
    paused one wakes, its finished run is not the cell's (FAILED) and every job still has one run."""
    MlflowClient(tracking_uri).search_experiments()
    path = write(tmp_path, epochs=3, train_size=600)
    cmd = command(tracking_uri, experiment, path, f"sqlite:///{tmp_path}/queue.db", "--heartbeat-interval", "1")
    paused = start(cmd)
    try:
        cell = wait_for_cell(tracking_uri, experiment, paused)
        paused.send_signal(signal.SIGSTOP)
        other = start(cmd)
        deadline = time.time() + 300
        while time.time() < deadline:  # the other command has taken the paused one's cell
            taken = [r for r in runs(tracking_uri, experiment)[1] if r.info.run_id != cell.info.run_id
                     and (r.data.tags["cnnbench.study.cell"], r.data.tags["cnnbench.seed"]) == (cell.data.tags["cnnbench.study.cell"], cell.data.tags["cnnbench.seed"])]
            if taken:
                break
            time.sleep(0.3)
        assert taken, "the paused command's cell was never taken over"
        paused.send_signal(signal.SIGCONT)
        outputs = [paused.communicate(timeout=900)[0], other.communicate(timeout=900)[0]]
    finally:
        if paused.poll() is None:
            paused.send_signal(signal.SIGCONT)
            paused.kill()
    assert [paused.returncode, other.returncode] == [0, 0], outputs
    check_complete(tracking_uri, experiment, outputs)
    late = MlflowClient(tracking_uri).get_run(cell.info.run_id)
    assert late.info.status == "FAILED"
    assert "stopped renewing its lease" in late.data.tags["failure_reason"]
