"""At home in the MLflow UI (issue 29): experiments tagged so MLflow 3 opens the runs table, tune
figures readable offline, ``study report NAME`` picking the only budget that ran, and
``time_startup_s`` counting cnnbench's own start."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from mlflow.tracking import MlflowClient

from conftest import new_store
from cnnbench.tracking.experiments import KIND_MODEL_DEVELOPMENT, KIND_TAG, ensure_experiment

KIND = {KIND_TAG: KIND_MODEL_DEVELOPMENT}


def _kind(client, name: str) -> str | None:
    return client.get_experiment_by_name(name).tags.get(KIND_TAG)


def test_the_kind_is_the_one_mlflow_3_opens_on_the_runs_table():
    """The tag and value MLflow 3's UI reads (ExperimentKind.CUSTOM_MODEL_DEVELOPMENT)."""
    assert (KIND_TAG, KIND_MODEL_DEVELOPMENT) == ("mlflow.experimentKind", "custom_model_development")


# -- (1) the experiments cnnbench creates ------------------------------------------------------
def test_train_creates_a_model_development_experiment(cli, tracking_uri, experiment, fast_flags):
    result = cli("train", "--tracking-uri", tracking_uri, "--experiment", experiment, "--epochs", "1",
                 "--train-size", "100", *fast_flags)
    assert result.exit_code == 0, result.output
    assert _kind(MlflowClient(tracking_uri), experiment) == KIND_MODEL_DEVELOPMENT


def test_campaign_tune_and_files_experiments_are_tagged(tmp_path):
    from cnnbench.campaign.runs import Parent
    from cnnbench.tracking.files_run import log_folder
    from cnnbench.tune.tracker import start_parent

    uri = new_store(tmp_path)
    client = MlflowClient(uri)
    parent = Parent.create(client, "a-study", run_name="study x", role="study", campaign="x")
    parent.end("FINISHED")
    tune = start_parent(tracking_uri=uri, experiment="a-tune", run_name="tune", campaign="t",
                        tags={"cnnbench.tune.study": "t"}, params={})
    tune.end("FINISHED")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.txt").write_text("x")
    log_folder(tracking_uri=uri, experiment="some-filters", run_name="filters", command="filters", params={},
               metrics={}, folder=tmp_path / "f", artifact_path="filters")
    for name in ("a-study", "a-tune", "some-filters"):
        assert _kind(client, name) == KIND_MODEL_DEVELOPMENT, name


def test_an_existing_empty_experiment_is_tagged_one_with_runs_or_a_kind_is_not(tmp_path):
    client = MlflowClient(new_store(tmp_path))
    empty = client.create_experiment("empty")
    used = client.create_experiment("used")
    client.create_run(used)
    chosen = client.create_experiment("chosen", tags={KIND_TAG: "genai_development"})
    deleted_runs = client.create_experiment("deleted-runs")
    client.delete_run(client.create_run(deleted_runs).info.run_id)

    assert ensure_experiment(client, "empty") == empty and _kind(client, "empty") == KIND_MODEL_DEVELOPMENT
    assert ensure_experiment(client, "used") == used and _kind(client, "used") is None
    assert ensure_experiment(client, "chosen") == chosen and _kind(client, "chosen") == "genai_development"
    assert ensure_experiment(client, "deleted-runs") == deleted_runs and _kind(client, "deleted-runs") is None
    new = ensure_experiment(client, "new")
    assert client.get_experiment(new).tags.get(KIND_TAG) == KIND_MODEL_DEVELOPMENT


def test_the_tracker_tags_an_empty_experiment_and_leaves_one_with_runs(cli, tmp_path, fast_flags):
    uri = new_store(tmp_path)
    client = MlflowClient(uri)
    client.create_experiment("mine")
    client.create_run(client.get_experiment_by_name("mine").experiment_id)
    result = cli("train", "--tracking-uri", uri, "--experiment", "mine", "--epochs", "1", "--train-size", "100", *fast_flags)
    assert result.exit_code == 0, result.output
    assert _kind(client, "mine") is None  # the user's experiment with runs: untouched
    assert len(client.search_runs([client.get_experiment_by_name("mine").experiment_id])) == 2


# -- (5) tune figures offline ------------------------------------------------------------------
def test_tune_plots_need_no_network_and_share_one_script(tmp_path):
    import optuna

    from cnnbench.tune.plots import write_report

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    PLOTLY_JS = "plotly.min.js"
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1, log=True) * 3 + t.suggest_int("batch", 16, 64) / 100,
                   n_trials=6)
    notes = write_report(study, tmp_path, "val_accuracy")
    folder = tmp_path / "study" / "plots"
    html = sorted(folder.glob("*.html"))
    assert len(html) == 4, notes
    assert [p.name for p in folder.glob("*.js")] == [PLOTLY_JS]  # one shared copy
    assert (folder / PLOTLY_JS).stat().st_size > 1_000_000
    for page in html:
        text = page.read_text()
        assert page.stat().st_size < 500_000, page.name  # not 4.7 MB per plot
        assert "cdn.plot.ly" not in text and "https://cdn" not in text, page.name
        assert f'<script src="{PLOTLY_JS}"></script>' in text, page.name
        assert "data:image/png;base64," in text, page.name  # the static view where the script cannot load
        assert page.with_suffix(".png").exists(), page.name


# -- (8b) study report NAME without --budget ---------------------------------------------------
def _study_parent(client, exp_id: str, budget: str | None) -> str:
    """A study parent of digits-optimizers as session.create_parent tags it, with one cell run."""
    study_id = f"digits-optimizers-{budget}" if budget else "digits-optimizers"
    parent = client.create_run(exp_id, run_name=f"study {study_id}", tags={
        "cnnbench.role": "study", "cnnbench.study": "digits-optimizers", "cnnbench.study.id": study_id,
        "cnnbench.study.budget": budget or "default"}).info.run_id
    definition = {"study_id": study_id, "metric": "test_accuracy", "goal": "max", "seeds": [0], "published": {},
                  "published_source": "", "axes": [], "has_variants": True, "reference": None,
                  "cells": [{"index": 0, "label": "adam", "axes": {}, "variant": "adam"}]}
    folder = Path(client.tracking_uri.split("///", 1)[1]).parent / f"def-{study_id}"
    folder.mkdir()
    (folder / "definition.json").write_text(json.dumps(definition))
    client.log_artifacts(parent, str(folder), "study")
    cell = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, "cnnbench.role": "cell",
                                           "cnnbench.study.cell": "adam", "cnnbench.seed": "0"}).info.run_id
    client.log_metric(cell, "test_accuracy", 0.75)
    client.set_terminated(cell, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent


def test_study_report_picks_the_only_budget_that_ran_and_refuses_between_several(cli, tmp_path):
    uri = new_store(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment("studies")
    _study_parent(client, exp, "quick")
    result = cli("study", "report", "digits-optimizers", "--tracking-uri", uri, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["cell"] == "adam"

    _study_parent(client, exp, None)
    result = cli("study", "report", "digits-optimizers", "--tracking-uri", uri)
    assert result.exit_code != 0
    assert "several budgets" in result.output and "--budget quick" in result.output and "no --budget" in result.output
    assert cli("study", "report", "digits-optimizers", "--budget", "quick", "--tracking-uri", uri).exit_code == 0


# -- (9) time_startup_s ------------------------------------------------------------------------
def test_startup_counts_cnnbench_not_the_shell_that_exec_d_it():
    """`sh -c 'pip install ...; exec cnnbench train'` runs cnnbench in the shell's process: its age
    counts the install (here a 2 s sleep), cnnbench's start does not."""
    code = textwrap.dedent("""
        from cnnbench.tracking.phases import PhaseTimer, process_age_s
        print(PhaseTimer(startup=True).before["startup"], process_age_s())
    """)
    out = subprocess.run(["sh", "-c", f'sleep 2; exec "{sys.executable}" -c \'{code}\''], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    startup, age = map(float, out.stdout.split())
    assert age >= 2.0  # the process's age: the shell's wait included
    assert 0 < startup < 1.5, startup  # cnnbench's own start: interpreter bootstrap + imports
    assert startup < age - 1.5


def test_startup_is_at_least_the_wall_time_since_cnnbench_was_imported():
    import time

    import cnnbench
    from cnnbench.tracking.phases import startup_s

    since = time.perf_counter() - cnnbench._STARTED[0]
    assert startup_s() >= since
