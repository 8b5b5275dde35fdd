"""The one identity schema (``cnnbench.campaign.runs``) on the runs cnnbench writes, what reads it:
``train --resume`` refusing a campaign's trial, cell and parent runs, and ``cnnbench runs --stale``
judging every role, never listing a run whose heartbeat is fresh (FAULTS.md ST21)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from cnnbench.campaign.runs import RESUMED_BY, identity
from cnnbench.tracking import runs as mlruns

# a pid on this host that no process has: the owner of a run "written elsewhere" under our host name
DEAD_PID = 4_000_000


@pytest.fixture(autouse=True)
def _default_heartbeat(monkeypatch):
    monkeypatch.delenv("CNNBENCH_HEARTBEAT_S", raising=False)  # 30 s beats: stale after 90 s


def _exp(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def _owner_here(pid: int = DEAD_PID) -> str:
    return f"{socket.gethostname()}:{pid}:abcd1234"


# -- the schema on every run ----------------------------------------------------------------
def test_memory_and_filters_runs_carry_their_role(tracking_uri, experiment, tmp_path):
    from cnnbench.tracking.files_run import log_folder
    from cnnbench.tracking.memory_run import log_sweep

    def plot(path: Path) -> Path:
        path.write_bytes(b"png")
        return path

    rows = [{"optimizer": "adam", "batch_size": 8, "predicted_peak_mb": 1.5}]
    memory = log_sweep(tracking_uri=tracking_uri, experiment=experiment, run_name="mem", params={"model": "lenet5"},
                       rows=rows, columns=("optimizer", "batch_size", "predicted_peak_mb"), summary={}, write_plot=plot)
    folder = tmp_path / "filters"
    folder.mkdir()
    (folder / "f.png").write_bytes(b"png")
    filters = log_folder(tracking_uri=tracking_uri, experiment=experiment, run_name="flt", command="filters",
                         params={"model": "lenet5"}, metrics={"n": 1.0}, folder=folder, artifact_path="filters")
    client = MlflowClient(tracking_uri)
    for run_id, role in ((memory, "memory"), (filters, "filters")):
        run = client.get_run(run_id)
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["cnnbench.role"] == role and tags["cnnbench.version"] and tags["cnnbench.owner"]
        assert "cnnbench.campaign" not in tags and "cnnbench.job" not in tags


def test_a_trial_that_failed_before_training_has_the_trial_identity(tracking_uri, experiment):
    from cnnbench.tune.tracker import record_failed_trial

    client = MlflowClient(tracking_uri)
    exp_id = _exp(client, experiment)
    parent = client.create_run(exp_id).info.run_id
    run_id = record_failed_trial(client, exp_id, parent, SimpleNamespace(number=7), "camp", {"lr": 0.1}, "ValueError: no")
    run = client.get_run(run_id)
    tags = run.data.tags
    assert run.info.status == "FAILED" and tags["mlflow.parentRunId"] == parent
    assert (tags["cnnbench.role"], tags["cnnbench.campaign"], tags["cnnbench.job"]) == ("trial", "camp", "trial-7")
    assert "cnnbench.tune.role" not in tags
    assert "cnnbench.owner" not in tags  # created ended: no process writes it


@pytest.mark.parametrize("extra, role", [
    ({}, "train"),
    ({"cnnbench.role": "cell", "cnnbench.campaign": "abl", "cnnbench.job": "cell-3"}, "cell"),
    ({"cnnbench.study.role": "cell"}, "cell"),  # a caller still on the legacy tag
], ids=["train", "cell", "legacy-cell"])
def test_the_train_tracker_writes_train_unless_its_caller_names_the_role(tracking_uri, experiment, extra, role):
    from cnnbench import api
    from cnnbench.tracking.mlflow_tracker import MlflowTracker
    from conftest import tiny_config

    config = tiny_config(run={"epochs": 1, "quiet": True, "device": "cpu"}, data={"train_size": 100})
    tracker = MlflowTracker(tracking_uri=tracking_uri, experiment=experiment, log_model=False, extra_tags=extra)
    api.train(config, [tracker])
    tags = MlflowClient(tracking_uri).get_run(tracker.run_id).data.tags
    assert tags["cnnbench.role"] == role and tags["cnnbench.owner"] and tags["cnnbench.heartbeat"]
    for key, value in extra.items():
        assert tags[key] == value


# -- train --resume refuses a campaign's runs -------------------------------------------------
CAMPAIGN_RUNS = {
    "trial": ({**identity("trial", campaign="cmp-t", job="trial-3", owner=False), "trial_number": "3"}, "cmp-t", "trial"),
    "legacy-trial": ({"cnnbench.version": "0.1.0", "cnnbench.tune.role": "trial", "cnnbench.tune.study": "old-t",
                      "trial_number": "2"}, "old-t", "trial"),
    "cell": ({**identity("cell", campaign="cmp-s", job="lr=1e-3/seed0", owner=False)}, "cmp-s", "cell"),
    "legacy-cell": ({"cnnbench.version": "0.1.0", "cnnbench.study.role": "cell", "cnnbench.study.id": "old-s",
                     "cnnbench.study.cell": "lr=1e-3"}, "old-s", "cell"),
    "tune-parent": ({**identity("tune", campaign="cmp-t", owner=False)}, "cmp-t", "trial"),
    "legacy-tune-parent": ({"cnnbench.version": "0.1.0", "cnnbench.tune.role": "study", "cnnbench.tune.study": "old-t"},
                           "old-t", "trial"),
    "study-parent": ({**identity("study", campaign="cmp-s", owner=False)}, "cmp-s", "cell"),
}


@pytest.mark.parametrize("kind", list(CAMPAIGN_RUNS))
@pytest.mark.parametrize("status", ["KILLED", "RUNNING"])
def test_train_resume_refuses_a_campaigns_run_naming_the_command_that_resumes_it(cli, tracking_uri, experiment, kind, status):
    tags, campaign, child = CAMPAIGN_RUNS[kind]
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(_exp(client, experiment), tags=tags).info.run_id
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    before = client.get_run(run_id)
    result = cli("train", "--resume", run_id, "--tracking-uri", tracking_uri)
    assert result.exit_code == 2, result.output
    message = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(message) == 1, result.stderr  # one line, no traceback
    assert run_id in message[0] and f"campaign {campaign!r}" in message[0]
    assert RESUMED_BY[child].format(campaign=campaign) in message[0]
    after = client.get_run(run_id)  # refused before any work: nothing changed on the run
    assert after.info.status == before.info.status == status
    assert after.data.tags == before.data.tags and after.data.metrics == {} and after.data.params == {}
    assert after.info.end_time == before.info.end_time


# -- liveness and runs --stale ------------------------------------------------------------------
def _fake_run(tags: dict[str, str], *, started_s_ago: float) -> SimpleNamespace:
    return SimpleNamespace(data=SimpleNamespace(tags=tags), info=SimpleNamespace(start_time=int((time.time() - started_s_ago) * 1000)))


def test_liveness_a_fresh_heartbeat_is_alive_even_when_the_pid_is_not_found_here():
    fresh = {mlruns.TAG_OWNER: _owner_here(), mlruns.TAG_HEARTBEAT: f"{time.time() - 30:.1f}"}
    assert mlruns.liveness(_fake_run(fresh, started_s_ago=500)).alive
    old = {**fresh, mlruns.TAG_HEARTBEAT: f"{time.time() - 200:.1f}"}
    assert not mlruns.liveness(_fake_run(old, started_s_ago=500)).alive
    mine = {**old, mlruns.TAG_OWNER: _owner_here(os.getpid())}  # stale beat, but its process runs here
    assert mlruns.liveness(_fake_run(mine, started_s_ago=500)).alive


def test_liveness_without_a_heartbeat_tag_keeps_the_start_time_rule():
    assert mlruns.liveness(_fake_run({}, started_s_ago=30)).alive
    assert not mlruns.liveness(_fake_run({}, started_s_ago=200)).alive
    gone_here = {mlruns.TAG_OWNER: _owner_here()}
    assert not mlruns.liveness(_fake_run(gone_here, started_s_ago=30)).alive  # its pid checked on this host, as before


def _running(client, exp_id: str, tags: dict[str, str], *, started_s_ago: float, beat_s_ago: float | None) -> str:
    tags = dict(tags)
    if beat_s_ago is not None:
        tags[mlruns.TAG_HEARTBEAT] = f"{time.time() - beat_s_ago:.1f}"
    else:
        tags.pop(mlruns.TAG_HEARTBEAT, None)
    return client.create_run(exp_id, start_time=int((time.time() - started_s_ago) * 1000), tags=tags).info.run_id


def test_st21_a_live_parent_with_a_fresh_heartbeat_is_never_stale_nor_marked_failed(cli, tracking_uri, experiment):
    """ST21: a RUNNING study parent older than 90 s whose heartbeat is fresh (its command beats
    from another container under the same host name, so its pid is not found here) is not listed,
    and ``--mark-failed`` leaves it RUNNING."""
    client = MlflowClient(tracking_uri)
    exp_id = _exp(client, experiment)
    owner = {**identity("study", campaign="st21b"), mlruns.TAG_OWNER: _owner_here()}
    live = _running(client, exp_id, owner, started_s_ago=100, beat_s_ago=10)
    listed = cli("runs", "--stale", "--tracking-uri", tracking_uri, "--experiment", experiment)
    assert listed.exit_code == 0 and live not in listed.output and "no stale runs" in listed.output, listed.output
    marked = cli("runs", "--stale", "--mark-failed", "--tracking-uri", tracking_uri, "--experiment", experiment)
    assert marked.exit_code == 0 and live not in marked.output, marked.output
    run = client.get_run(live)
    assert run.info.status == "RUNNING" and "failure_reason" not in run.data.tags


def test_runs_stale_lists_every_role_by_its_identity_and_marks_only_the_dead(cli, tracking_uri, experiment):
    client = MlflowClient(tracking_uri)
    exp_id = _exp(client, experiment)
    dead = {}
    for role, campaign in (("tune", "cmp"), ("trial", "cmp"), ("study", "abl"), ("cell", "abl"), ("train", None),
                           ("retrain", "cmp"), ("memory", None), ("filters", None)):
        tags = {**identity(role, campaign=campaign, job="j1" if role in ("trial", "cell") else None),
                mlruns.TAG_OWNER: _owner_here()}
        dead[role] = _running(client, exp_id, tags, started_s_ago=600, beat_s_ago=300)
    legacy = _running(client, exp_id, {"cnnbench.version": "0.1.0", "cnnbench.tune.role": "study",
                                       "cnnbench.tune.study": "old"}, started_s_ago=600, beat_s_ago=None)
    young = _running(client, exp_id, {"cnnbench.version": "0.1.0"}, started_s_ago=5, beat_s_ago=None)
    fresh = _running(client, exp_id, {**identity("cell", campaign="abl", job="j2"), mlruns.TAG_OWNER: _owner_here()},
                     started_s_ago=600, beat_s_ago=5)
    listed = cli("runs", "--stale", "--tracking-uri", tracking_uri, "--experiment", experiment)
    assert listed.exit_code == 0, listed.output
    lines = {line.split()[0]: line for line in listed.output.splitlines() if line[:32].isalnum() and len(line.split()[0]) == 32}
    for role, run_id in dead.items():
        assert lines[run_id].split()[1] == role, lines[run_id]
    assert lines[legacy].split()[1] == "tune"  # an older tune parent (cnnbench.tune.role = study)
    assert "campaign 'cmp'" in lines[dead["trial"]] and "cnnbench tune" in lines[dead["trial"]]
    assert "cnnbench study run" in lines[dead["cell"]] and "train --resume" not in lines[dead["cell"]]
    assert young not in listed.output and fresh not in listed.output
    marked = cli("runs", "--stale", "--mark-failed", "--tracking-uri", tracking_uri, "--experiment", experiment)
    assert marked.exit_code == 0 and f"{len(dead) + 1} run(s) marked FAILED" in marked.output, marked.output
    assert {client.get_run(r).info.status for r in [*dead.values(), legacy]} == {"FAILED"}
    assert client.get_run(young).info.status == client.get_run(fresh).info.status == "RUNNING"
