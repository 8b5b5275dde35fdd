"""FAULTS.md sections C, X and the tracking-server rows of U, injected as found: 4 processes on a
new SQLite store, a crafted ``last.pt`` uploaded to a run, credentials in URIs, and a loopback
tracking server that stops answering in the middle of a run."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest
from faultkit import FAST, Freezable, HangingHealthServer, Proc, env, free_port, run_cli, start_mlflow_server, steps, stop
from mlflow.tracking import MlflowClient
from conftest import new_store

pytestmark = pytest.mark.slow


def test_four_concurrent_first_trainings_on_a_new_sqlite_store_all_finish(tmp_path):
    """C1: MLflow's schema is created once, under a file lock; the others wait and find it done."""
    store = f"sqlite:///{tmp_path}/new.db"
    procs = [Proc("train", "--tracking-uri", store, "--experiment", "conc", "--epochs", "1", "--seed", str(i),
                  "--train-size", "200", *FAST, "--quiet") for i in range(4)]
    results = [p.finish(timeout=400) for p in procs]
    assert [r.rc for r in results] == [0, 0, 0, 0], "\n---\n".join(r.output for r in results)
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("conc").experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["seed"] for r in runs} == {"0", "1", "2", "3"}


class Payload:
    """Unpickling this runs ``os.system`` (what the FAULTS.md exploit uploaded as last.pt)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(cli, tmp_path):
    """X1: resuming loads last.pt with weights_only=True: the payload is refused, not executed."""
    import torch

    from cnnbench.config import TrainConfig

    store = new_store(tmp_path)
    marker = tmp_path / "payload-ran"
    client = MlflowClient(store)
    exp = client.create_experiment("hostile")
    run_id = client.create_run(exp, tags={"cnnbench.version": "0.1.0"}).info.run_id
    (tmp_path / "config.json").write_text(json.dumps(TrainConfig().to_dict()))
    bad = tmp_path / "upload" / "last.pt"
    bad.parent.mkdir()
    torch.save({"model": Payload(marker), "optimizer": {}, "epoch": 1, "global_step": 1, "history": []}, bad)
    with open(tmp_path / "check.pkl", "wb") as handle:  # the payload is real: a plain unpickle runs it
        pickle.dump(Payload(tmp_path / "control"), handle)
    with open(tmp_path / "check.pkl", "rb") as handle:
        pickle.load(handle)
    assert (tmp_path / "control").exists()
    client.log_artifact(run_id, str(tmp_path / "config.json"))
    client.log_artifact(run_id, str(bad), "checkpoints")
    client.set_terminated(run_id, "KILLED")
    result = cli("train", "--resume", run_id, "--tracking-uri", store)
    assert result.exit_code == 2 and "refusing checkpoint" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    assert client.get_run(run_id).info.status == "KILLED"  # the claim is given back


def test_credentials_in_an_http_uri_reach_the_server_as_basic_auth_and_are_never_printed(monkeypatch):
    """U3/U4: a reachable server with URL credentials is not called unreachable; the password is
    never echoed; MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD are what the client then uses."""
    from cnnbench.tracking.store import check_reachable, mask_uri, resolve_uri

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    server = HangingHealthServer(credentials=("alice", "S3cretPW"), api_answers=True)
    try:
        uri = resolve_uri(f"http://alice:S3cretPW@127.0.0.1:{server.port}")
        assert uri == f"http://127.0.0.1:{server.port}"
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "S3cretPW"
        check_reachable(uri)  # /health and the API both demand the credentials: no error means they were sent
        assert server.seen_auth and all(a and a.startswith("Basic ") for a in server.seen_auth)
    finally:
        server.close()
    assert mask_uri("postgresql://bob:PgPass123@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_uri("http://h:1/?token=abc&x=1") == "http://h:1/?token=***&x=1"


def test_a_closed_server_with_credentials_is_reported_without_the_password():
    done = run_cli("train", "--tracking-uri", "http://alice:S3cretPW@127.0.0.1:9", "--epochs", "1", *FAST)
    assert done.rc == 1 and "S3cretPW" not in done.output and "cannot reach" in done.output, done.output
    assert len(done.lines()) == 1, done.output


def test_tracking_server_that_stops_answering_mid_run_stops_training_and_keeps_the_checkpoint(tmp_path):
    """U16: the server stops answering after epoch 2: training stops at the next epoch with one
    clear error, the checkpoint stays on this machine with the resume command, and once the
    server answers again that command finishes the run in place."""
    port = free_port()
    server = start_mlflow_server(new_store(tmp_path, "server.db"), tmp_path / "artifacts", port)
    proxy = Freezable(port)
    home = tmp_path / "home"
    environ = env(MLFLOW_HTTP_REQUEST_TIMEOUT="2", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", CNNBENCH_HOME=str(home))
    try:
        proc = Proc("train", "--tracking-uri", f"http://alice:S3cretPW@127.0.0.1:{proxy.port}", "--experiment", "srvdown",
                    "--epochs", "12", *FAST, environ=environ)
        proc.wait_for(r"^epoch 2/12")
        proxy.freeze()
        frozen_at = time.monotonic()
        done = proc.finish(timeout=300)
        assert done.rc == 1, done.output
        assert time.monotonic() - frozen_at < 120
        assert "S3cretPW" not in done.output
        error = [line for line in done.lines() if line.startswith("Error:")]
        assert len(error) == 1 and "stopped answering" in error[0] and "cnnbench train --resume" in error[0], done.output
        assert "epoch 12/12" not in done.output
        run_id = error[0].split("cnnbench train --resume ")[1].split()[0]
        kept = home / "resume" / run_id / "last.pt"
        assert kept.exists(), error[0]
        # the server is back (reached directly): the printed command takes the RUNNING run over
        resumed = run_cli("train", "--resume", run_id, "--tracking-uri", f"http://127.0.0.1:{port}", environ=environ)
        assert resumed.rc == 0, resumed.output
        run = MlflowClient(f"http://127.0.0.1:{port}").get_run(run_id)
        assert run.info.status == "FINISHED"
        assert set(steps(f"http://127.0.0.1:{port}", run_id, "val_accuracy")) == set(range(1, 13))  # epoch 3 from the kept checkpoint
    finally:
        proxy.close()
        stop(server)


def test_study_storage_password_can_come_from_the_environment(monkeypatch):
    """X5: ``mlflow run -P storage=...`` stores the value as a param in clear text; the URL can now be
    given without its password, which comes from $CNNBENCH_STORAGE_PASSWORD, and a password that
    did reach a param under ``mlflow run`` is reported."""
    from cnnbench.campaign import storage

    monkeypatch.setenv("CNNBENCH_STORAGE_PASSWORD", "TopSecret")
    assert storage.with_password("postgresql://alice@127.0.0.1:5432/db") == "postgresql://alice:TopSecret@127.0.0.1:5432/db"
    assert storage.with_password("postgresql://alice:other@h/db") == "postgresql://alice:other@h/db"  # given wins
    assert storage.with_password("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc")
    note = storage.warn_if_logged_by_mlflow_run("postgresql://alice:TopSecret@h/db")
    assert note and "CNNBENCH_STORAGE_PASSWORD" in note and "TopSecret" not in note
    assert storage.warn_if_logged_by_mlflow_run("postgresql://alice@h/db") is None


def test_a_database_tracking_uri_password_is_masked_in_config_json_and_output():
    """Item 2: nothing cnnbench stores or prints holds the password of a tracking URI."""
    from cnnbench.config import TrainConfig
    from cnnbench.tracking.store import recorded_config, ui_hint

    config = TrainConfig().replace(run={"tracking_uri": "postgresql://bob:PgPass123@db:5432/mlflow"})
    assert recorded_config(config)["run"]["tracking_uri"] == "postgresql://bob:***@db:5432/mlflow"
    assert config.run.tracking_uri.endswith("PgPass123@db:5432/mlflow")  # the config itself still connects
    assert "PgPass123" not in ui_hint(config.run.tracking_uri)
    assert not any("PgPass123" in str(v) for v in config.flat_params().values())


@pytest.fixture
def small_tmpfs(tmp_path):
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs (a full disk)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_under_the_sqlite_store_is_one_line(cli, small_tmpfs):
    """K2: the store's disk fills up: one line naming the store, exit 1, not five tracebacks."""
    from cnnbench.tracking.store import check_reachable

    store = f"sqlite:///{small_tmpfs}/mlflow.db"
    check_reachable(store)  # the schema fits; then the disk fills
    with open(small_tmpfs / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    result = cli("train", "--tracking-uri", store, "--epochs", "1", "--quiet", "--no-tsne", "--no-retrieval", "--no-log-model")
    lines = [line for line in result.stderr.splitlines() if line.strip() and " INFO mlflow" not in line]
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and "full" in lines[0] and str(small_tmpfs) in lines[0], lines
