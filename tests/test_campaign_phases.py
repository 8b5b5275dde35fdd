"""A worker SIGKILLed at each phase of a job (campaign.faults points), for both job sources: the
rerun (``study run``) or the surviving process (``tune``) ends every job exactly once FINISHED,
nothing RUNNING, and the parent carries its report. Small: digits, 1 epoch, 2 cells x 1 seed."""

from __future__ import annotations

import optuna
import pytest
from faultkit import env, run_cli
from mlflow.tracking import MlflowClient
from test_campaign_faults import runs
from test_faults_tune import runs_by_role, tune_args, where  # noqa: F401 -- the stores fixture, shared

pytestmark = pytest.mark.slow

STUDY = """
name = "phases"
seeds = 1
[base]
model = "lenet5"
dataset = "digits"
epochs = 1
train_size = 150
batch_size = 32
kernels = false
predictions = false
memory = false
confusion = false
summary = false
tsne = false
retrieval = false
[grid]
optimizer = ["sgd", "adam"]
"""


@pytest.mark.parametrize("phase", ["job-claimed", "data-loaded", "cell-run-created", "artifacts-uploading", "report-writing"])
def test_study_run_sigkilled_at_a_phase_is_finished_by_the_rerun_with_every_cell_once(phase, tracking_uri, experiment, tmp_path):
    experiment = f"phases-{phase}"  # the fixture's name is cut to 80 characters: the same for every phase
    path = tmp_path / "phases.toml"
    path.write_text(STUDY)
    args = ["study", "run", str(path), "--tracking-uri", tracking_uri, "--experiment", experiment,
            "--storage", f"sqlite:///{tmp_path}/queue.db", "--heartbeat-interval", "1"]
    first = run_cli(*args, environ=env(CNNBENCH_FAULT=f"{phase}:kill"))
    assert first.rc == -9, first.output  # the fault fired: no cleanup at all
    again = run_cli(*args)
    assert again.rc == 0, again.output
    parents, cells = runs(tracking_uri, experiment)
    finished = sorted(r.data.tags["cnnbench.study.cell"] for r in cells if r.info.status == "FINISHED")
    assert finished == ["optimizer=adam", "optimizer=sgd"], [(r.data.tags, r.info.status) for r in cells]  # once each
    assert not [r for r in [*parents, *cells] if r.info.status == "RUNNING"]
    assert [p.info.status for p in parents] == ["FINISHED"]
    metrics = MlflowClient(tracking_uri).get_run(parents[0].info.run_id).data.metrics
    assert (metrics["jobs_finished"], metrics["failed_jobs"], metrics["missing_jobs"]) == (2, 0, 0)
    files = {a.path for a in MlflowClient(tracking_uri).list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/report.md", "report/cells.csv"} <= files


@pytest.mark.parametrize("phase", ["data-loaded", "artifacts-uploading"])
def test_tune_worker_sigkilled_at_a_phase_the_survivor_completes_every_trial_once(phase, where):  # noqa: F811
    name = f"ph-{phase}"
    done = run_cli(*tune_args(where, name, "--trials", "2", "--workers", "2", "--heartbeat-interval", "1",
                              "--epochs", "1"), environ=env(CNNBENCH_FAULT=f"{phase}:kill:worker"), timeout=600)
    assert done.rc == 0 and "2 complete" in done.output, done.output
    parents, children = runs_by_role(where, name)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert parents[0].data.tags["cnnbench.tune.worker_exit_codes"] == "-9"  # the fault did fire
    assert not [c for c in children if c.info.status == "RUNNING"]
    study = optuna.load_study(study_name=name, storage=where["storage"])
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2 and all(t.user_attrs.get("mlflow_run_id") for t in complete)
    by_id = {c.info.run_id: c for c in children}
    assert {by_id[t.user_attrs["mlflow_run_id"]].info.status for t in complete} == {"FINISHED"}
    assert (parents[0].data.metrics["failed_jobs"], parents[0].data.metrics["missing_jobs"]) == (0, 0)
    files = {a.path for a in MlflowClient(where["store"]).list_artifacts(parents[0].info.run_id, "study")}
    assert "study/trials.csv" in files
