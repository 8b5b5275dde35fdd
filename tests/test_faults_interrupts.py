"""FAULTS.md section R, injected as it was found: a real ``cnnbench train`` process, a signal sent
when a given line appears (once, or twice in quick succession), SIGKILL, two ``--resume`` at once,
and a leftover ``MLFLOW_RUN_ID``. Each test reads back the MLflow state the fault left."""

from __future__ import annotations

import signal
import time

import pytest
from faultkit import FAST, Proc, artifact_paths, env, only_run, run_cli, signal_at, steps
import mlflow
from mlflow.tracking import MlflowClient
from conftest import new_store

pytestmark = pytest.mark.slow
# faultkit's processes beat every second: a killed one's heartbeat is past 3 missed beats after this
HEARTBEAT_GONE_S = 3.5


@pytest.fixture
def store(tmp_path):
    return new_store(tmp_path)


def train_args(store: str, experiment: str, epochs: int, *extra: str) -> list[str]:
    return ["train", "--tracking-uri", store, "--experiment", experiment, "--epochs", str(epochs), *FAST, *extra]


def resume_command_in(output: str, run_id: str, store: str) -> list[str]:
    """The resume command the interrupted process printed, as arguments."""
    line = next(line for line in output.splitlines() if "cnnbench train --resume" in line)
    command = line[line.index("cnnbench train --resume"):].split()
    assert command == ["cnnbench", "train", "--resume", run_id, "--tracking-uri", store], line
    return command[1:]


def test_ctrl_c_prints_run_state_and_resume_command_and_resume_is_exact(store, tmp_path):
    """R1 + item 9: the message names the run, its state and the command; running that command
    finishes the run in place with each epoch logged once."""
    done = signal_at(train_args(store, "int", 5), r"^epoch 2/5", signal.SIGINT, 0.2)
    assert done.rc == 130, done.output
    killed = only_run(store, "int")
    run_id = killed.info.run_id
    assert killed.info.status == "KILLED" and killed.data.tags["failure_reason"].startswith("KeyboardInterrupt")
    assert f"MLflow run {run_id} is KILLED" in done.output and "Aborted!" not in done.output
    assert "checkpoints/last.pt" in artifact_paths(store, run_id)
    resumed = run_cli(*resume_command_in(done.output, run_id, store))
    assert resumed.rc == 0, resumed.output
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED" and "failure_reason" not in run.data.tags
    assert steps(store, run_id, "val_accuracy") == [1, 2, 3, 4, 5]  # interrupted in epoch 3: nothing logged twice
    assert "checkpoints/last.pt" not in artifact_paths(store, run_id)  # a finished run keeps no resume state


@pytest.mark.parametrize("sig, gap", [(signal.SIGINT, 0.05), (signal.SIGINT, 0.2), (signal.SIGTERM, 0.15)],
                         ids=["int-0.05", "int-0.2", "term-0.15"])
def test_second_signal_during_cleanup_still_ends_killed_with_checkpoint(store, sig, gap):
    """R7-R10: pressing Ctrl-C (or sending SIGTERM) twice no longer leaves the run FINISHED without
    results or RUNNING: the second signal is acknowledged while the checkpoint is saved and uploaded."""
    done = signal_at(train_args(store, "dbl", 30, "--model", "mlp", "--model-option", "hidden=512,512"),
                     r"^epoch 1/30", sig, 0.1, again_after=gap)
    assert done.rc == 130, done.output
    run = only_run(store, "dbl")
    assert run.info.status == "KILLED", run.info.status
    assert "failure_reason" in run.data.tags
    assert "checkpoints/last.pt" in artifact_paths(store, run.info.run_id)
    assert f"cnnbench train --resume {run.info.run_id}" in done.output


def test_sighup_is_handled_like_sigterm(store):
    """R6: a closed terminal or SSH session ends the run KILLED, resumable."""
    done = signal_at(train_args(store, "hup", 30), r"^epoch 1/30", signal.SIGHUP, 0.2)
    assert done.rc == 130, done.output
    run = only_run(store, "hup")
    assert run.info.status == "KILLED" and "SIGHUP" in run.data.tags["failure_reason"]
    assert "checkpoints/last.pt" in artifact_paths(store, run.info.run_id)


@pytest.mark.parametrize("pattern, log_model", [(r"^epoch 3/3", False), (r"^test_loss", True)],
                         ids=["during-test-and-artifacts", "during-model-logging"])
def test_interrupt_after_the_last_epoch_resumes_into_the_test_and_artifact_phase(store, pattern, log_model):
    """R12/R13: stopped after training, the run is KILLED with a truthful note and --resume
    completes it (test metrics, artifacts, model) without training another epoch."""
    extra = [a for a in FAST if a != "--no-log-model"] if log_model else FAST
    args = ["train", "--tracking-uri", store, "--experiment", "late", "--epochs", "3", *extra]
    done = signal_at(args, pattern, signal.SIGINT, 0.0)
    assert done.rc == 130, done.output
    run = only_run(store, "late")
    assert run.info.status == "KILLED"
    assert "after the last epoch (3)" in run.data.tags["cnnbench.notes"] and "epoch 4" not in run.data.tags["cnnbench.notes"]
    resumed = run_cli("train", "--resume", run.info.run_id, "--tracking-uri", store)
    assert resumed.rc == 0, resumed.output
    assert "epoch 4" not in resumed.output and "epoch 3/3" not in resumed.output  # no training, just the end
    final = MlflowClient(store).get_run(run.info.run_id)
    assert final.info.status == "FINISHED" and "test_accuracy" in final.data.metrics
    assert steps(store, run.info.run_id, "train_loss") == [1, 2, 3]
    if log_model:
        assert MlflowClient(store).search_logged_models([final.info.experiment_id]), "model not logged"


def test_sigkill_leaves_a_resumable_run_that_runs_stale_lists_and_resume_takes_over(store, tmp_path):
    """R4/R5: the checkpoint is uploaded as it is written, so a SIGKILLed run can be resumed; it is
    RUNNING with its process gone, which ``cnnbench runs --stale`` reports and --resume takes over;
    the killed process's staging folder is removed by the next run (X8)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    environ = env(TMPDIR=str(scratch))
    done = signal_at(train_args(store, "kill", 6), r"^epoch 2/6", signal.SIGKILL, 0.3, environ=environ)
    assert done.rc == -9
    assert len(list(scratch.glob("cnnbench-run-*"))) == 1  # SIGKILL: no cleanup ran
    run = only_run(store, "kill")
    run_id = run.info.run_id
    assert run.info.status == "RUNNING" and "checkpoints/last.pt" in artifact_paths(store, run_id)
    time.sleep(HEARTBEAT_GONE_S)  # a fresh heartbeat is alive even without its pid (containers share host names)
    listed = run_cli("runs", "--stale", "--tracking-uri", store)
    assert listed.rc == 0 and run_id in listed.output and "process" in listed.output and "gone" in listed.output, listed.output
    resumed = run_cli("train", "--resume", run_id, "--tracking-uri", store, environ=environ)
    assert resumed.rc == 0, resumed.output
    assert MlflowClient(store).get_run(run_id).info.status == "FINISHED"
    assert set(steps(store, run_id, "train_loss")) == {1, 2, 3, 4, 5, 6}
    assert list(scratch.glob("cnnbench-*")) == []  # the next run removed it; the resume left nothing
    assert "no stale runs" in run_cli("runs", "--stale", "--tracking-uri", store).output


def test_runs_stale_mark_failed_closes_a_dead_run(store):
    done = signal_at(train_args(store, "dead", 30), r"^epoch 1/30", signal.SIGKILL, 0.1)
    assert done.rc == -9
    run_id = only_run(store, "dead").info.run_id
    time.sleep(HEARTBEAT_GONE_S)
    marked = run_cli("runs", "--stale", "--mark-failed", "--tracking-uri", store)
    assert marked.rc == 0 and "1 run(s) marked FAILED" in marked.output, marked.output
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FAILED" and "mark-failed" in run.data.tags["failure_reason"]


def test_two_concurrent_resumes_of_one_run_the_second_is_refused(store):
    """R18: two ``--resume`` of one KILLED run started together: one trains, the other is refused;
    no metric is logged twice."""
    first = signal_at(train_args(store, "twice", 5), r"^epoch 2/5", signal.SIGINT, 0.1)
    assert first.rc == 130, first.output
    run_id = only_run(store, "twice").info.run_id
    a = Proc("train", "--resume", run_id, "--tracking-uri", store)
    b = Proc("train", "--resume", run_id, "--tracking-uri", store)
    results = sorted([a.finish(), b.finish()], key=lambda d: d.rc)
    assert [r.rc for r in results] == [0, 2], [r.output for r in results]
    refused = results[1].lines()
    assert len(refused) == 1 and ("another resume" in refused[0] or "is RUNNING" in refused[0]), refused
    assert steps(store, run_id, "val_accuracy") == [1, 2, 3, 4, 5]
    assert len(steps(store, run_id, "test_accuracy")) == 1


def test_resume_of_a_running_run_whose_process_lives_is_refused(store):
    proc = Proc(*train_args(store, "alive", 30))
    proc.wait_for(r"^epoch 1/30")
    try:
        run_id = only_run(store, "alive").info.run_id
        refused = run_cli("train", "--resume", run_id, "--tracking-uri", store)
        assert refused.rc == 2 and "is RUNNING (process" in refused.output, refused.output
    finally:
        proc.signal(signal.SIGINT)
        assert proc.finish().rc == 130


def test_leftover_mlflow_run_id_of_a_finished_run_is_refused(cli, store, monkeypatch, fast_flags):
    """R22: ``MLFLOW_RUN_ID`` naming a FINISHED run (of another model) is refused, before any training,
    and the run is untouched; the RUNNING run ``mlflow run`` creates is still adopted."""
    client = MlflowClient(store)
    exp = client.create_experiment("adopt")
    finished = client.create_run(exp, tags={"cnnbench.version": "0.1.0", "cnnbench.model": "lenet5"}).info.run_id
    client.log_metric(finished, "test_accuracy", 0.7, step=6)
    client.set_terminated(finished, "FINISHED")
    monkeypatch.setenv("MLFLOW_RUN_ID", finished)
    result = cli("train", "--tracking-uri", store, "--model", "mlp", "--epochs", "1", *fast_flags)
    assert result.exit_code == 2 and "MLFLOW_RUN_ID" in result.stderr and "FINISHED" in result.stderr
    assert [m.value for m in client.get_metric_history(finished, "test_accuracy")] == [0.7]
    fresh = client.create_run(exp, tags={"mlflow.source.type": "PROJECT"}).info.run_id  # what `mlflow run` creates
    monkeypatch.setenv("MLFLOW_RUN_ID", fresh)
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("elsewhere")  # an in-process caller's fluent state must not block the adoption
    adopted = cli("train", "--tracking-uri", store, "--epochs", "1", *fast_flags)
    assert adopted.exit_code == 0, adopted.output
    assert client.get_run(fresh).info.status == "FINISHED" and "test_accuracy" in client.get_run(fresh).data.metrics
    monkeypatch.setenv("MLFLOW_RUN_ID", fresh)  # the same run again: it now holds a training
    again = cli("train", "--tracking-uri", store, "--epochs", "1", *fast_flags)
    assert again.exit_code == 2 and "MLFLOW_RUN_ID" in again.stderr


def test_resume_leaves_no_temporary_copies(store, tmp_path):
    """X8: the downloaded config.json and last.pt are read into memory and their folder removed."""
    done = signal_at(train_args(store, "tmp", 5), r"^epoch 2/5", signal.SIGINT, 0.1)
    assert done.rc == 130
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    resumed = run_cli("train", "--resume", only_run(store, "tmp").info.run_id, "--tracking-uri", store,
                      environ=env(TMPDIR=str(scratch)))
    assert resumed.rc == 0, resumed.output
    time.sleep(0.2)
    assert list(scratch.iterdir()) == []


def test_resume_of_a_tune_trial_or_parent_says_how_to_continue_the_study(cli, store):
    """R20: not "ended before its first epoch" but what to do instead."""
    client = MlflowClient(store)
    exp = client.create_experiment("tuneruns")
    trial = client.create_run(exp, tags={"cnnbench.version": "0.1.0", "cnnbench.tune.role": "trial",
                                         "cnnbench.tune.study": "s1", "trial_number": "3"}).info.run_id
    parent = client.create_run(exp, tags={"cnnbench.version": "0.1.0", "cnnbench.tune.role": "study",
                                          "cnnbench.tune.study": "s1"}).info.run_id
    for run_id in (trial, parent):
        client.set_terminated(run_id, "KILLED")
    result = cli("train", "--resume", trial, "--tracking-uri", store)
    assert result.exit_code == 2 and "(job trial-3) of tune campaign 's1'" in result.stderr and "--study-name s1" in result.stderr
    result = cli("train", "--resume", parent, "--tracking-uri", store)
    assert result.exit_code == 2 and "parent run of tune campaign 's1'" in result.stderr
