"""``--launcher slurm`` and ``--launcher ray`` on real engines, started here by process id: a one-node
Slurm (munged, slurmctld, slurmd), a ``ray.cluster_utils.Cluster`` of two one-CPU nodes, and behind
them a real PostgreSQL queue and a real ``mlflow server`` on PostgreSQL. Every study checks each
cell x seed FINISHED exactly once, nothing RUNNING, the parent FINISHED with its report. Faults: a
Slurm task cancelled mid-cell (detached study: the tasks finish it), the time limit (the task ends
its cell KILLED and is requeued), a Ray node removed mid-cell. Before any of that, the rules checked
before submitting (one-machine stores refused, passwords kept out of every file) need no engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import servers
from mlflow.tracking import MlflowClient
from test_campaign_faults import PAIRS, STUDY, check_complete, runs, write

from cnnbench.campaign import launchers
from cnnbench.campaign.launchers import LauncherOptions, check_remote, sbatch_parameters, slurm_minutes
from cnnbench.errors import ConfigError

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_DISABLE_USAGE_STATS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


# -- checked before anything is submitted (no engine needed) -------------------------------------
@pytest.mark.parametrize("text, minutes", [("30", 30), ("1:30", 2), ("02:00:00", 120), ("1-0", 1440),
                                           ("1-02:30", 1590), ("0-00:01:01", 2)])
def test_slurm_time_limits_in_every_sbatch_format(text, minutes):
    assert slurm_minutes(text) == minutes


@pytest.mark.parametrize("options, workers, message", [
    ({"name": "kubernetes"}, 1, "unknown --launcher 'kubernetes'; accepted: local, slurm, ray"),
    ({"name": "local", "detach": True}, 1, "--detach needs --launcher slurm"),
    ({"name": "ray", "detach": True}, 1, "ray job submit"),
    ({"name": "slurm", "time": "soon"}, 1, "--time 'soon' is not a Slurm time limit"),
    ({"name": "slurm", "time": "0"}, 1, "between 1 minute and 365 days"),
    ({"name": "slurm", "time": "2", "signal_delay_s": 120}, 1, "--signal-delay 120 s must be shorter than --time 2"),
    ({"name": "slurm", "mem": "lots"}, 1, "--mem 'lots' is not a Slurm memory size"),
    ({"name": "slurm", "sbatch": ("--array=0-9",)}, 1, "--array is set by cnnbench itself"),
    ({"name": "slurm", "sbatch": ("constraint=a100",)}, 1, "is not one sbatch option"),
    ({"name": "slurm", "partition": "gpu; rm -rf /"}, 1, "is not a Slurm name"),
    ({"name": "slurm", "cpus_per_task": 0}, 1, "--cpus-per-task must be a whole number >= 1"),
    ({"name": "ray", "num_cpus": -1}, 1, "--ray-num-cpus must be a number >= 0"),
    ({"name": "slurm"}, 0, "--workers must be at least 1"),
])
def test_bad_launcher_options_are_refused_with_what_is_accepted(options, workers, message):
    with pytest.raises(ConfigError, match=None) as caught:
        LauncherOptions(**options).check(workers)
    assert message in str(caught.value)


def test_extra_sbatch_lines_become_submitit_parameters():
    assert sbatch_parameters(["--constraint=a100", "#SBATCH --exclusive", "--mail-type=END"]) == {
        "constraint": "a100", "exclusive": True, "mail_type": "END"}


@pytest.mark.parametrize("storage, uri, message", [
    ("sqlite:///q.db", "http://127.0.0.1:5000", "is a SQLite file on this machine"),
    ("postgresql://u@db/q", "sqlite:///mlflow.db", "is a store on this machine"),
    ("postgresql://u@db/q", "file:///tmp/mlruns", "is a store on this machine"),
    ("postgresql://u@db/q", "/tmp/mlruns", "is a store on this machine"),
])
def test_remote_launchers_refuse_one_machine_stores(storage, uri, message):
    with pytest.raises(ConfigError) as caught:
        check_remote("slurm", storage, uri)
    assert message in str(caught.value) and "--launcher slurm" in str(caught.value)


def test_passwords_leave_the_urls_for_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    for key in ("PGPASSWORD", "CNNBENCH_STORAGE_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    dest = check_remote("ray", "postgresql://alice:s3cret@db.example:5433/queue", "https://bob:pw@mlflow.example/x")
    assert dest.storage == "postgresql+psycopg2://alice@db.example:5433/queue"
    assert dest.tracking_uri == "https://mlflow.example/x"
    assert dest.env == {"CNNBENCH_STORAGE_PASSWORD": "s3cret", "MLFLOW_TRACKING_USERNAME": "bob", "MLFLOW_TRACKING_PASSWORD": "pw",
                        "MLFLOW_TRACKING_TOKEN": "tok"}


def test_the_study_files_launcher_table_is_read_and_the_command_line_wins(tmp_path):
    from cnnbench.cli_options import launcher_from
    from cnnbench.study.definition import load

    text = STUDY.format(epochs=1, train_size=100) + '\n[launcher]\nname = "slurm"\npartition = "gpu"\ncpus-per-task = 4\ntime = "2:00:00"\n'
    study = load("table.toml", text)
    options = launcher_from({"launcher_partition": "cpu", "launcher_time": None}, study.launcher, "study file table.toml")
    assert (options.name, options.partition, options.cpus_per_task, options.time) == ("slurm", "cpu", 4, "2:00:00")
    with pytest.raises(ConfigError, match=r"\[launcher\]: unknown key 'nodes'; accepted: account, cpus_per_task"):
        load("bad.toml", STUDY.format(epochs=1, train_size=100) + "\n[launcher]\nnodes = 4\n")


def test_study_run_on_slurm_with_sqlite_is_refused_before_any_run(cli, tracking_uri, experiment, tmp_path):
    path = write(tmp_path)
    result = cli("study", "run", str(path), "--launcher", "slurm", "--workers", "2", "--tracking-uri", tracking_uri,
                 "--experiment", experiment, "--storage", f"sqlite:///{tmp_path}/q.db")
    assert result.exit_code != 0
    assert "--launcher slurm: the storage sqlite:///" in result.output and "SQLite file on this machine" in result.output
    assert runs(tracking_uri, experiment) == ([], [])  # nothing created
    assert not (tmp_path / "cnnbench-slurm").exists()


def test_tune_detach_is_refused(cli, tracking_uri, tmp_path):
    result = cli("tune", "--launcher", "slurm", "--detach", "--tracking-uri", tracking_uri, "--storage",
                 f"sqlite:///{tmp_path}/q.db", "--dataset", "digits")
    assert result.exit_code != 0 and "tune --detach is not available" in result.output


# -- real servers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A real PostgreSQL (queue database) and an mlflow server on PostgreSQL serving artifacts."""
    folder = tmp_path_factory.mktemp("stores")
    try:
        with servers.postgres() as pg:
            backend = servers.create_database(pg, "mlflow")
            queue = servers.create_database(pg, "queue")
            (folder / "artifacts").mkdir()
            with servers.mlflow_server(backend, folder / "artifacts") as uri:
                yield queue, uri
    except servers.Unavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        with servers.slurm(tmp_path_factory.mktemp("slurm")) as env:
            yield env
    except servers.Unavailable as err:
        pytest.skip(str(err))


def study_command(path: Path, queue: str, uri: str, experiment: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "cnnbench.cli", "study", "run", str(path), "--storage", queue, "--tracking-uri", uri,
            "--experiment", experiment, "--study-name", experiment, "--heartbeat-interval", "1", *args]


def wait_running(uri: str, experiment: str, timeout_s: float = 240, proc: subprocess.Popen | None = None):
    """A RUNNING cell run (its worker tag: host:pid:index)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        running = [r for r in runs(uri, experiment)[1] if r.info.status == "RUNNING"]
        if running:
            return running[0]
        if proc is not None and proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        time.sleep(0.3)
    raise AssertionError(f"no cell of {experiment} started within {timeout_s} s")


def wait_done(queue: str, name: str, timeout_s: float = 400) -> None:
    from cnnbench.campaign.queue import JobQueue
    from cnnbench.campaign.storage import open_engine

    q = JobQueue(open_engine(queue), name)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if q.exists() and q.active() == 0:
            return
        time.sleep(1)
    raise AssertionError(f"study {name} still has jobs after {timeout_s} s: {q.counts()}")


def no_password_anywhere(folder: Path, secret: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.slow
@pytest.mark.postgres
def test_submitit_local_executor_runs_the_study_and_no_file_holds_the_password(stores, experiment, tmp_path, monkeypatch):
    """The same task code as on Slurm through submitit's local executor, in-process through the API:
    the storage URL carries a password (the test server trusts any), which reaches the tasks only
    through $CNNBENCH_STORAGE_PASSWORD: not in submitit's pickles and scripts, not on the parent run."""
    from cnnbench.study.definition import load
    from cnnbench.study.session import RunRequest, prepare, run

    queue, uri = stores
    monkeypatch.chdir(tmp_path)
    secret = "s3cret-pw"
    with_password = queue.replace("postgres@", f"postgres:{secret}@")
    path = write(tmp_path)
    study = load(path.name, path.read_text())
    request = RunRequest(study=study, source=str(path), storage=with_password, study_name=experiment, experiment=experiment,
                         tracking_uri=uri, workers=2, heartbeat_interval=1,
                         launcher=LauncherOptions(name="slurm", submitit_cluster="local"))
    outcome = run(prepare(request))
    assert outcome.exit_code == 0
    parent, _ = check_complete(uri, experiment, [])
    assert {"cnnbench.launcher": "slurm"}.items() <= parent.data.tags.items()
    assert secret not in repr(parent.data.params) + repr(parent.data.tags)
    assert any((tmp_path / "cnnbench-slurm").rglob("*.pkl"))
    no_password_anywhere(tmp_path / "cnnbench-slurm", secret)
    assert "CNNBENCH_STORAGE_PASSWORD" not in os.environ  # set only while submitting


@pytest.mark.slow
@pytest.mark.postgres
def test_slurm_detached_study_survives_a_cancelled_task_and_its_tasks_finish_it(stores, slurm, experiment, tmp_path):
    """--detach returns once the array is submitted; one task is scancelled mid-cell: its cell ends
    KILLED, goes back to the queue and is run by the other task, which writes the report."""
    queue, uri = stores
    env = {**os.environ, **slurm}
    path = write(tmp_path, epochs=8, train_size=400)
    out = subprocess.run(study_command(path, queue, uri, experiment, "--launcher", "slurm", "--workers", "2", "--detach",
                                       "--time", "10", "--signal-delay", "60"),
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    job = next(line for line in out.stderr.splitlines() if line.startswith("submitted Slurm array job")).split()[4]
    assert f"cnnbench study status {path} --study-name {experiment} --storage" in out.stderr
    cell = wait_running(uri, experiment)
    task = cell.data.tags["cnnbench.study.worker"].split(":")[2]  # the worker's index is its array task id
    deadline = time.time() + 120  # mid-cell: training has logged its first epoch (the run exists from its creation on)
    while not MlflowClient(uri).get_run(cell.info.run_id).data.metrics and time.time() < deadline:
        time.sleep(0.2)
    subprocess.run(["scancel", f"{job}_{task}"], env=env, check=True, timeout=60)
    wait_done(queue, experiment)
    deadline = time.time() + 60
    while MlflowClient(uri).get_run(runs(uri, experiment)[0][0].info.run_id).info.status == "RUNNING" and time.time() < deadline:
        time.sleep(0.5)  # the last task writes the report, then ends the parent
    _, cells = check_complete(uri, experiment, [out.stderr])
    killed = MlflowClient(uri).get_run(cell.info.run_id)
    assert killed.info.status == "KILLED"  # SIGTERM from scancel: ended KILLED, its job run again elsewhere
    key = (cell.data.tags["cnnbench.study.cell"], cell.data.tags["cnnbench.seed"])
    assert [r.info.status for r in cells if (r.data.tags["cnnbench.study.cell"], r.data.tags["cnnbench.seed"]) == key
            ].count("FINISHED") == 1


@pytest.mark.slow
@pytest.mark.postgres
def test_slurm_time_limit_ends_the_cell_killed_and_a_live_task_claims_it(stores, slurm, experiment, tmp_path):
    """A detached one-task array with a one-minute limit and more work than that: SIGUSR2 before the
    limit ends its running cell KILLED (back in the queue, no retry used) and the task asks Slurm to
    requeue it. A second command's task (a longer limit) joins, claims what is left, writes the
    report and exits 0: every job FINISHED exactly once."""
    queue, uri = stores
    env = {**os.environ, **slurm}
    path = write(tmp_path, epochs=40, train_size=400)  # about 10 s a cell: more work than the limit allows
    first = subprocess.run(study_command(path, queue, uri, experiment, "--launcher", "slurm", "--workers", "1",
                                         "--detach", "--time", "1", "--signal-delay", "30"),
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    logs = lambda: "".join(p.read_text() for p in (tmp_path / "cnnbench-slurm").rglob("*.err"))  # noqa: E731
    killed = lambda: [r for r in runs(uri, experiment)[1] if r.info.status == "KILLED"]  # noqa: E731
    stopped = lambda: killed() or "requeueing Slurm task" in logs() or "TIME LIMIT" in logs()  # noqa: E731
    deadline = time.time() + 180
    while not stopped() and time.time() < deadline:  # SIGUSR2 (Slurm may send it up to a minute early) or the limit
        time.sleep(1)
    assert stopped(), "the time limit never stopped the task: " + logs()[-3000:]
    if not killed():  # the signal came between two cells: nothing was running to end KILLED
        assert "requeueing Slurm task" in logs() or "TIME LIMIT" in logs(), logs()[-3000:]
    second = subprocess.run(study_command(path, queue, uri, experiment, "--launcher", "slurm", "--workers", "1",
                                          "--time", "10"), env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=400)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "joined" in second.stderr
    check_complete(uri, experiment, [first.stderr, second.stderr])


def test_a_slurm_task_signalled_before_its_worker_started_is_requeued_by_submitit_within_the_bound(monkeypatch):
    """SIGUSR2 while the task still imports (before the campaign's signal policy) reaches submitit's
    own handler, which requeues a task whose function has a ``checkpoint`` returning a
    DelayedSubmission (submitit's Checkpointable protocol): the same task on the same spec, until
    --max-requeues is used up."""
    submitit = pytest.importorskip("submitit")
    spec = {"entry": "cnnbench.study.run:work", "max_requeues": 2, "index": 0}
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = launchers.SlurmTask().checkpoint(spec)
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert isinstance(again.function, launchers.SlurmTask) and again.args == (spec,)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert launchers.SlurmTask().checkpoint(spec) is None  # past the bound: submitit ends the task


def test_a_launcher_without_its_engine_is_refused_before_any_run(tmp_path, monkeypatch):
    from cnnbench.campaign.launchers import check_available

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(ConfigError, match="--launcher slurm: sbatch, squeue, scancel not found on PATH"):
        check_available("slurm")


@pytest.mark.slow
@pytest.mark.postgres
def test_a_refused_submission_fails_the_parent_and_keeps_the_jobs(stores, slurm, experiment, tmp_path):
    """sbatch refuses the array (no such partition): one line, non-zero exit, the parent FAILED (not
    RUNNING), every job still waiting for the same command."""
    queue, uri = stores
    path = write(tmp_path)
    out = subprocess.run(study_command(path, queue, uri, experiment, "--launcher", "slurm", "--partition", "nope"),
                         env={**os.environ, **slurm}, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "--launcher slurm: submitting the workers failed:" in out.stderr and "partition" in out.stderr
    assert "Traceback" not in out.stderr
    parents, cells = runs(uri, experiment)
    assert [p.info.status for p in parents] == ["FAILED"] and cells == []
    from cnnbench.campaign.queue import JobQueue
    from cnnbench.campaign.storage import open_engine

    assert JobQueue(open_engine(queue), experiment).counts()["waiting"] == len(PAIRS)


@pytest.mark.slow
@pytest.mark.postgres
def test_tune_on_slurm_runs_each_trial_once(stores, slurm, tmp_path):
    import optuna

    queue, uri = stores
    env = {**os.environ, **slurm}
    cmd = [sys.executable, "-m", "cnnbench.cli", "tune", "--launcher", "slurm", "--workers", "2", "--trials", "3",
           "--storage", queue, "--tracking-uri", uri, "--experiment", "tune-slurm", "--study-name", "tune-slurm",
           "--dataset", "digits", "--train-size", "200", "--epochs", "1", "--pruner", "none", "--no-log-model",
           "--search", "lr=loguniform(1e-3,1e-1)"]
    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitted 2 slurm workers" in out.stderr and "progress: 3/3 trials done" in out.stderr
    trials = optuna.load_study(study_name="tune-slurm", storage=queue).trials
    assert sorted(t.number for t in trials) == [0, 1, 2] and {t.state.name for t in trials} == {"COMPLETE"}
    assert len({t.user_attrs["worker"] for t in trials}) >= 1
    runs_ = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("tune-slurm").experiment_id])
    children = [r for r in runs_ if r.data.tags.get("cnnbench.role") == "trial"]
    assert sorted(r.data.tags["mlflow.runName"] for r in children) == sorted({r.data.tags["mlflow.runName"] for r in children})
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)


@pytest.fixture
def ray_cluster(monkeypatch):
    pytest.importorskip("ray", reason="ray is not installed (pip install ray)")
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}})
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        yield cluster, nodes
    finally:
        cluster.shutdown()


def _raylet_of(pid: int, nodes) -> object | None:
    import ray._private.ray_constants as constants

    raylets = {n.all_processes[constants.PROCESS_TYPE_RAYLET][0].process.pid: n for n in nodes}
    for _ in range(8):
        if pid in raylets:
            return raylets[pid]
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None
    return None


@pytest.mark.slow
@pytest.mark.postgres
def test_ray_node_lost_mid_cell_has_its_cell_claimed_again(stores, ray_cluster, experiment, tmp_path):
    queue, uri = stores
    cluster, nodes = ray_cluster
    path = write(tmp_path, epochs=8, train_size=400)
    proc = subprocess.Popen(study_command(path, queue, uri, experiment, "--launcher", "ray", "--workers", "2",
                                          "--ray-address", cluster.address),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, node = time.time() + 240, None
        while node is None and time.time() < deadline:
            cell = wait_running(uri, experiment, proc=proc)
            node = _raylet_of(int(cell.data.tags["cnnbench.study.worker"].split(":")[1]), nodes)
        assert node is not None, "no running cell could be traced to a Ray node"
        cluster.remove_node(node, allow_graceful=False)
        output = proc.communicate(timeout=400)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    _, cells = check_complete(uri, experiment, [output])
    lost = MlflowClient(uri).get_run(cell.info.run_id)
    assert lost.info.status == "FAILED" and "stopped renewing its lease" in lost.data.tags["failure_reason"]
    assert len([r for r in cells if r.info.status == "FINISHED"]) == len(PAIRS)


def test_follow_stops_when_no_worker_is_left():
    class Gone(launchers.Launched):
        def alive(self) -> bool:
            return False

    calls = []
    assert launchers.follow(Gone(), lambda: bool(calls.append(1)), poll_s=0) is False
    assert len(calls) == launchers.FOLLOW_CONFIRM + 1  # no worker seen several polls in a row, then done() once more
