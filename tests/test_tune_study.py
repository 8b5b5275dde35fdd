"""``cnnbench tune`` studies on digits with 2-epoch trials: the parent/child runs and trial states
in MLflow, median pruning, resuming, concurrent worker processes (SQLite and a real PostgreSQL
server started here), a dead worker's trial retried, and --retrain-best.

Each test reads back what Optuna stored and what MLflow holds, and checks they agree.
"""

from __future__ import annotations

import csv
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from cnnbench.campaign import EXIT_JOBS_FAILED
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

TRIAL_FLAGS = ["--epochs", "2", "--train-size", "300", "--batch-size", "32", "--no-tsne", "--no-retrieval",
               "--no-kernels", "--no-predictions", "--no-memory", "--no-log-model", "--quiet"]
EPOCH_KEYS = {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy", "fit_time_s"}


@pytest.fixture
def tune(cli, tracking_uri, experiment, tmp_path):
    """Run ``cnnbench tune`` in-process with the test's store, experiment and SQLite study storage."""
    storage = f"sqlite:///{tmp_path}/optuna.db"

    def run(*args: str, storage_url: str = storage, code: int = 0):
        result = cli("tune", "--tracking-uri", tracking_uri, "--experiment", experiment, "--storage", storage_url, *TRIAL_FLAGS, *args)
        assert result.exit_code == code, result.output
        return result

    run.storage = storage
    return run


def tune_process(tracking_uri: str, experiment: str, storage: str, *args: str) -> subprocess.Popen:
    """The same command as another worker would run it (e.g. on another machine)."""
    cmd = [sys.executable, "-m", "cnnbench.cli", "tune", "--tracking-uri", tracking_uri, "--experiment", experiment,
           "--storage", storage, *TRIAL_FLAGS, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def study_runs(tracking_uri: str, experiment: str) -> tuple[list, list, list]:
    """(parents, trial children, retrain runs) of the experiment."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    role = lambda r: r.data.tags.get("cnnbench.role")  # noqa: E731
    return ([r for r in runs if role(r) == "tune"], [r for r in runs if role(r) == "trial"],
            [r for r in runs if role(r) == "retrain"])


def metric_steps(tracking_uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, key))


def check_children_match_study(tracking_uri, children, study, parent_ids):
    """Every Optuna trial has exactly one child run under one of ``parent_ids``, with its state."""
    by_number = {int(r.data.tags["trial_number"]): r for r in children}
    assert len(by_number) == len(children) == len(study.trials)  # no duplicates, none lost
    for trial in study.trials:
        run = by_number[trial.number]
        assert run.data.tags["mlflow.parentRunId"] in parent_ids
        assert run.data.params["trial_number"] == str(trial.number)
        assert run.data.tags["trial_state"] == trial.state.name
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.info.status != "RUNNING"
        for name, value in trial.params.items():
            assert float(run.data.params[name]) == pytest.approx(float(value))
        if trial.state.name == "COMPLETE":
            assert run.info.status == "FINISHED"
            assert EPOCH_KEYS <= set(run.data.metrics)  # the same keys as `cnnbench train`
            assert metric_steps(tracking_uri, run.info.run_id, "val_accuracy") == [1, 2]
    return by_number


def test_parent_and_child_runs_hold_the_study_with_a_failed_trial_and_the_retrain(tune, tracking_uri, experiment):
    # lr=1e30 (within float32, as --search requires) blows the weights up on the first step: that trial must end FAIL,
    # the study go on, and the command exit EXIT_JOBS_FAILED naming it in one line
    result = tune("--sampler", "grid", "--pruner", "none", "--trials", "2", "--study-name", "structure",
                  "--search", "lr=choice(0.01,1e30)", "--retrain-best", "--retrain-epochs", "1", code=EXIT_JOBS_FAILED)
    assert "1 complete, 0 pruned, 1 failed" in result.output
    study = optuna.load_study(study_name="structure", storage=tune.storage)
    states = {t.params["lr"]: t for t in study.trials}
    assert states[0.01].state.name == "COMPLETE" and states[1e30].state.name == "FAIL"
    assert "non-finite loss" in states[1e30].user_attrs["fail_reason"]

    parents, children, retrains = study_runs(tracking_uri, experiment)
    assert len(parents) == 1 and len(retrains) == 1
    parent = parents[0]
    by_number = check_children_match_study(tracking_uri, children, study, {parent.info.run_id})
    failed = by_number[states[1e30].number]
    assert failed.info.status == "FAILED" and "non-finite loss" in failed.data.tags["failure_reason"]
    named = [line for line in result.output.splitlines() if line.startswith("  failed: ")]
    assert len(named) == 1 and f"trial {states[1e30].number} (lr=1e+30): " in named[0] and "non-finite loss" in named[0], result.output
    assert "1 of 2 trials failed (exit 3)" in result.output

    tags, params, metrics = parent.data.tags, parent.data.params, parent.data.metrics
    assert parent.info.status == "FAILED" and tags["failure_reason"].startswith("1 of 2 trials failed: trial ")
    assert (metrics["failed_jobs"], metrics["missing_jobs"]) == (1, 0)
    assert tags["cnnbench.failed_jobs"] == named[0].removeprefix("  failed: ")
    assert tags["cnnbench.tune.study"] == "structure" and tags["cnnbench.tune.storage"] == tune.storage
    # the one identity schema (campaign.runs.identity), the old role tag no longer written
    assert (tags["cnnbench.role"], tags["cnnbench.campaign"]) == ("tune", "structure")
    assert tags["cnnbench.owner"] and float(tags["cnnbench.heartbeat"]) > 0 and tags["cnnbench.version"]
    for number, run in by_number.items():
        assert (run.data.tags["cnnbench.role"], run.data.tags["cnnbench.campaign"], run.data.tags["cnnbench.job"]) == \
            ("trial", "structure", f"trial-{number}")
    assert not [r for r in [parent, *children, *retrains] if "cnnbench.tune.role" in r.data.tags]
    assert params["search.lr"] == "lr=choice(0.01,1e+30)" and params["best_lr"] == "0.01"
    assert params["best_trial_number"] == str(study.best_trial.number)
    assert metrics["best_val_accuracy"] == pytest.approx(study.best_value)
    assert study.best_value == pytest.approx(max(m.value for m in MlflowClient(tracking_uri).get_metric_history(
        by_number[study.best_trial.number].info.run_id, "val_accuracy")))  # a trial scores its best epoch
    assert (metrics["trials_complete"], metrics["trials_failed"], metrics["trials_pruned"]) == (1, 1, 0)
    client = MlflowClient(tracking_uri)
    folder = Path(client.download_artifacts(parent.info.run_id, "study"))
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert sorted(r["state"] for r in rows) == ["COMPLETE", "FAIL"]
    assert (folder / "plots" / "optimization_history.html").stat().st_size > 1000
    assert (folder / "plots" / "optimization_history.png").exists()

    retrain = retrains[0]
    assert retrain.data.tags["cnnbench.tune.parent_run_id"] == parent.info.run_id
    assert tags["cnnbench.tune.retrain_run_id"] == retrain.info.run_id
    assert retrain.data.tags["cnnbench.train_on"] == "train+val" == retrain.data.params["train_on"]  # what --train-on means
    assert math.isnan(retrain.data.metrics["val_accuracy"])  # no validation split left: the val images were trained on
    assert (retrain.data.tags["cnnbench.role"], retrain.data.tags["cnnbench.campaign"]) == ("retrain", "structure")
    assert retrain.data.params["lr"] == "0.01" and retrain.data.params["epochs"] == "1"
    assert "test_accuracy" in retrain.data.metrics and retrain.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in retrain.data.tags  # its own run, linked by tags


def test_median_pruner_prunes_hopeless_trials(tune, tracking_uri, experiment):
    # lr 1e-7 cannot learn; seed 4 draws G G G G b | G b b (G: 0.003), so the last two fall below the
    # median of the 5 startup trials at epoch 1
    tune("--sampler", "random", "--seed", "4", "--pruner", "median", "--trials", "8", "--study-name", "pruning",
         "--search", "lr=choice(0.003,1e-7)")
    study = optuna.load_study(study_name="pruning", storage=tune.storage)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, [(t.params, t.intermediate_values, t.state.name) for t in study.trials]
    assert all(t.params["lr"] == 1e-7 and list(t.intermediate_values) == [1] for t in pruned)
    parents, children, _ = study_runs(tracking_uri, experiment)
    by_number = check_children_match_study(tracking_uri, children, study, {parents[0].info.run_id})
    for trial in pruned:
        run = by_number[trial.number]
        assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == "PRUNED"
        assert metric_steps(tracking_uri, run.info.run_id, "val_accuracy") == [1]
        assert run.data.metrics["pruned_at_epoch"] == 1
    assert parents[0].data.metrics["trials_pruned"] == len(pruned)


def test_resume_adds_trials_to_the_same_study_and_keeps_the_best(tune, tracking_uri, experiment):
    tune("--trials", "2", "--study-name", "resume", "--pruner", "none")
    first_best = optuna.load_study(study_name="resume", storage=tune.storage).best_value
    result = tune("--trials", "2", "--study-name", "resume", "--pruner", "none")
    assert "resumed, 2 trials so far" in result.output
    study = optuna.load_study(study_name="resume", storage=tune.storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert study.best_value >= first_best
    parents, children, _ = study_runs(tracking_uri, experiment)
    assert len(parents) == 2 and {p.data.tags["cnnbench.tune.study"] for p in parents} == {"resume"}
    by_number = check_children_match_study(tracking_uri, children, study, {p.info.run_id for p in parents})
    second = next(p for p in parents if p.data.tags["cnnbench.tune.resumed"] == "True")
    assert {n for n, r in by_number.items() if r.data.tags["mlflow.parentRunId"] == second.info.run_id} == {2, 3}
    assert second.data.metrics["best_val_accuracy"] == pytest.approx(study.best_value)


def test_two_worker_processes_share_one_sqlite_study(tune, tracking_uri, experiment):
    tune("--workers", "2", "--trials", "4", "--study-name", "workers", "--pruner", "none")
    study = optuna.load_study(study_name="workers", storage=tune.storage)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both processes ran trials
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    parents, children, _ = study_runs(tracking_uri, experiment)
    assert len(parents) == 1
    check_children_match_study(tracking_uri, children, study, {parents[0].info.run_id})


def test_a_dead_workers_trial_is_failed_and_retried(tune, tracking_uri, experiment):
    worker = tune_process(tracking_uri, experiment, tune.storage, "--trials", "1", "--study-name", "dead",
                          "--heartbeat-interval", "1", "--pruner", "none", "--epochs", "40")
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until its trial is running and its child run exists
            try:
                trials = optuna.load_study(study_name="dead", storage=tune.storage).trials
            except KeyError:
                trials = []
            if trials and "mlflow_run_id" in trials[0].user_attrs:
                break
            assert worker.poll() is None, worker.stdout.read()
            time.sleep(0.5)
        worker.send_signal(signal.SIGKILL)  # no cleanup at all: only the missing heartbeat tells
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
    time.sleep(3)  # past the grace period (2 x heartbeat)
    tune("--trials", "1", "--study-name", "dead", "--heartbeat-interval", "1", "--pruner", "none")
    study = optuna.load_study(study_name="dead", storage=tune.storage)
    dead, retried = study.trials
    assert dead.state.name == "FAIL" and retried.state.name == "COMPLETE"
    assert retried.system_attrs["failed_trial"] == dead.number and retried.params == dead.params
    run = MlflowClient(tracking_uri).get_run(dead.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["trial_state"] == "FAIL"
    assert "stopped sending heartbeats" in run.data.tags["failure_reason"]


# -- PostgreSQL ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (tests/servers.py)."""
    import servers

    try:
        with servers.postgres() as url:
            yield url
    except servers.Unavailable as err:
        pytest.skip(str(err))


@pytest.mark.postgres
def test_two_commands_share_one_postgresql_study(postgres_url, tracking_uri, experiment):
    MlflowClient(tracking_uri).search_experiments()  # create the MLflow tables first: two processes racing MLflow's own migrations fail
    workers = [tune_process(tracking_uri, experiment, postgres_url, "--trials", "2", "--study-name", "pg",
                            "--pruner", "none", "--seed", str(seed)) for seed in (0, 1)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="pg", storage=postgres_url.replace("postgresql://", "postgresql+psycopg2://"))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    parents, children, _ = study_runs(tracking_uri, experiment)
    stored = postgres_url.replace("postgresql://", "postgresql+psycopg2://")  # the form optuna.load_study takes
    assert len(parents) == 2 and all(p.data.tags["cnnbench.tune.storage"] == stored for p in parents)
    check_children_match_study(tracking_uri, children, study, {p.info.run_id for p in parents})


def test_trials_record_the_cheap_artifacts_and_trials_csv_has_a_column_per_metric(cli, tracking_uri, experiment, tmp_path):
    """A trial is a train run: its curves, confusion matrix and memory peaks are there (t-SNE and
    retrieval stay off unless asked for); the study table unpacks each trial's results."""
    result = cli("tune", "--tracking-uri", tracking_uri, "--experiment", experiment, "--storage", f"sqlite:///{tmp_path}/o.db",
                 "--trials", "2", "--epochs", "1", "--train-size", "200", "--pruner", "none", "--no-log-model",
                 "--search", "lr=choice(0.001,0.003)", "--quiet")
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    for child in children:
        paths = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"metrics", "eval", "memory", "config.json"} <= paths and not {"latent", "retrieval", "checkpoints"} & paths
        assert "peak_rss_mb" in child.data.metrics and "test_macro_f1" in child.data.metrics
    parent = next(r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags)
    folder = Path(client.download_artifacts(parent.info.run_id, "study", str(tmp_path / "dl")))
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert len(rows) == 2 and all(float(r["result_test_accuracy"]) > 0 for r in rows)
    assert "user_attrs_result" not in rows[0]


def test_seeds_train_each_configuration_over_n_seeds_and_score_their_mean(tune, cli, tracking_uri, experiment, tmp_path):
    """``--seeds 2``: each trial trains its configuration with seed 0 and seed 1, each in its own
    child run under the parent; the trial's value is the mean of the two runs' best val_accuracy (read
    back from MLflow), its spread is on the trial and in trials.csv; resuming with another --seeds
    is refused before any run is created."""
    import statistics

    tune("--trials", "2", "--seeds", "2", "--study-name", "seeds", "--pruner", "none", "--epochs", "1",
         "--search", "lr=loguniform(1e-3,1e-2)")
    study = optuna.load_study(study_name="seeds", storage=tune.storage)
    parents, children, _ = study_runs(tracking_uri, experiment)
    assert len(parents) == 1 and len(children) == 4 and parents[0].data.params["seeds"] == "2"
    client = MlflowClient(tracking_uri)
    for trial in study.trials:
        runs = [r for r in children if r.data.tags["trial_number"] == str(trial.number)]
        assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
        assert sorted(r.info.run_id for r in runs) == sorted([trial.user_attrs["mlflow_run_id"],
                                                              *trial.user_attrs["mlflow_seed_run_ids"]])
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert sorted(r.data.tags["cnnbench.job"] for r in runs) == [f"trial-{trial.number}", f"trial-{trial.number}:seed-1"]
        best = [max(m.value for m in client.get_metric_history(r.info.run_id, "val_accuracy")) for r in runs]
        assert trial.value == pytest.approx(statistics.mean(best))
        result = trial.user_attrs["result"]
        assert result["seeds"] == 2 and sorted(result["values"]) == pytest.approx(sorted(best))
        assert result["value_std"] == pytest.approx(statistics.stdev(best))
        # two seeds: no interval over seeds (a bootstrap needs 3), said so instead of an unbounded t interval
        assert result["value_interval"] == "n too small" and result["value_ci_low"] is None
        assert [float(r.data.params["lr"]) for r in runs] == pytest.approx([trial.params["lr"]] * 2)
    folder = Path(client.download_artifacts(parents[0].info.run_id, "study", str(tmp_path / "dl")))
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert len(rows) == 2 and all(float(r["result_value_std"]) >= 0 for r in rows)

    refused = cli("tune", "--tracking-uri", tracking_uri, "--experiment", experiment, "--storage", tune.storage,
                  *TRIAL_FLAGS, "--trials", "1", "--seeds", "3", "--study-name", "seeds", "--epochs", "1",
                  "--search", "lr=loguniform(1e-3,1e-2)")
    assert refused.exit_code != 0 and "mean over 2 seed(s)" in refused.output and "--seeds 2" in refused.output
    assert len(study_runs(tracking_uri, experiment)[0]) == 1  # no parent run for the refused command
    bad = cli("tune", "--tracking-uri", tracking_uri, "--storage", tune.storage, "--seeds", "0", "--trials", "1")
    assert bad.exit_code != 0 and "--seeds must be between 1 and 100" in bad.output
