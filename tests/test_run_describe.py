"""Runs say what they are in MLflow: a name from the config (trials: the varied values), a
description, MLflow's standard source/user/git tags, the three prepared splits as dataset inputs,
no empty artifact folders; tune stores its storage URL in the form Optuna's tools open, password
masked, with the objective named."""

from __future__ import annotations

import getpass
import importlib.util
import subprocess
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from cnnbench import api
from cnnbench.config import TrainConfig
from cnnbench.tracking import describe
from cnnbench.campaign import storage as storages

FAST = ["--no-tsne", "--no-retrieval", "--no-kernels", "--no-predictions", "--no-memory", "--no-log-model", "--quiet"]
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value, text", [(1e-3, "1e-3"), (2.5e-4, "2.5e-4"), (0.05, "0.05"), (0.1, "0.1"),
                                         (3, "3"), (1.0, "1"), (0.0, "0"), (1e-10, "1e-10")])
def test_format_value(value, text):
    assert describe.format_value(value) == text


def test_run_names():
    assert describe.run_name(TrainConfig()) == "lenet5-digits-adam-lr1e-3"
    config = TrainConfig().replace(optim={"lr": 2.5e-4, "optimizer": "sgd", "batch_size": 32})
    varied = {"lr": 2.5e-4, "batch_size": 32, "model.batch_norm": True, "model.dropout": 0.2, "augment": "flip-crop"}
    assert (describe.run_name(config, varied, label="trial3")
            == "lenet5-digits-sgd-lr2.5e-4-batch_size32-batch_norm-dropout0.2-augmentflip-crop-trial3")
    assert describe.run_name(config, {"model.batch_norm": False}) == "lenet5-digits-sgd-lr2.5e-4-no_batch_norm"


def test_prune_empty_dirs(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "plots" / "empty").mkdir(parents=True)
    (tmp_path / "plots" / "a.png").write_bytes(b"x")
    describe.prune_empty_dirs(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["plots", "plots/a.png"]


def test_train_run_describes_itself(cli, tracking_uri, experiment, runs_in):
    result = cli("train", "--tracking-uri", tracking_uri, "--experiment", experiment, "--epochs", "1", "--lr", "2e-3", *FAST)
    assert result.exit_code == 0, result.output
    (run,) = runs_in(experiment)
    assert run.info.run_name == "lenet5-digits-adam-lr2e-3"
    tags = run.data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"] == getpass.getuser()
    assert tags["mlflow.source.name"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
    note = tags["mlflow.note.content"]
    assert "**lenet5** on **digits**" in note and "1293 train / 144 validation / 360 test images of 1x28x28" in note
    assert "adam, lr 2e-3, batch 64, 1 epoch, seed 0" in note

    data = api.load_data(TrainConfig())
    inputs = MlflowClient(tracking_uri).get_run(run.info.run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i for i in inputs}
    assert set(by_context) == {"training", "validation", "test"}
    for context, split in (("training", data.train), ("validation", data.val), ("test", data.test)):
        found = by_context[context]
        assert found.dataset.name == "digits" and found.dataset.source_type == "code"
        assert found.dataset.digest == describe.split_digest(split)  # the prepared split, pixels and labels
        assert {t.key: t.value for t in found.tags}["images"] == str(len(split))
        assert f'"features_shape": [{len(split)}, 1, 28, 28]' in found.dataset.profile
    assert len({i.dataset.digest for i in inputs}) == 3

    artifacts = [a.path for a in MlflowClient(tracking_uri).list_artifacts(run.info.run_id)]
    assert "checkpoints" not in artifacts and "config.json" in artifacts


def test_an_explicit_run_name_wins(cli, tracking_uri, experiment, runs_in):
    result = cli("train", "--tracking-uri", tracking_uri, "--experiment", experiment, "--epochs", "1",
                 "--train-size", "200", "--run-name", "baseline", *FAST)
    assert result.exit_code == 0, result.output
    assert [r.info.run_name for r in runs_in(experiment)] == ["baseline"]


def test_storage_urls_are_canonical_and_masked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storages.redact("sqlite:///optuna.db") == f"sqlite:///{tmp_path.resolve()}/optuna.db"
    masked = storages.redact("postgresql://me:s3cret@db:5432/optuna?sslmode=require")
    assert "s3cret" not in masked and "me:***@db:5432/optuna" in masked
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        assert masked.startswith("postgresql+psycopg2://")  # what cnnbench connects with; a bare scheme needs psycopg 3


@pytest.mark.slow
def test_tune_names_trials_and_stores_an_openable_storage(cli, tracking_uri, experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("tune", "--tracking-uri", tracking_uri, "--experiment", experiment, "--storage", "sqlite:///rel.db",
                 "--study-name", "named", "--trials", "2", "--sampler", "grid", "--pruner", "none",
                 "--search", "batch_size=choice(16,32)", "--epochs", "1", "--train-size", "200", *FAST)
    assert result.exit_code == 0, result.output
    absolute = f"sqlite:///{tmp_path.resolve()}/rel.db"
    assert f"--storage {absolute}" in result.output  # the "add trials" hint works from any folder
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = next(r for r in runs if r.data.tags.get("cnnbench.role") == "tune")
    assert parent.data.tags["cnnbench.tune.storage"] == absolute
    assert parent.data.tags["mlflow.source.type"] == "LOCAL" and parent.data.tags["mlflow.user"] == getpass.getuser()
    study = optuna.load_study(study_name="named", storage=parent.data.tags["cnnbench.tune.storage"])
    assert study.metric_names == ["val_accuracy"]
    trials = sorted((r for r in runs if r.data.tags.get("cnnbench.role") == "trial"),
                    key=lambda r: int(r.data.tags["trial_number"]))
    names = {t.params["batch_size"]: f"t{t.number:02d} bs={t.params['batch_size']} · lenet5"
             for t in study.trials}
    assert sorted(r.info.run_name for r in trials) == sorted(names.values())
    for run in trials:
        assert run.data.tags["mlflow.source.type"] == "LOCAL" and "Trial" in run.data.tags["mlflow.note.content"]
        assert {i.dataset.name for i in client.get_run(run.info.run_id).inputs.dataset_inputs} == {"digits"}
    folder = Path(client.download_artifacts(parent.info.run_id, "study/plots"))
    html = sorted(folder.glob("*.html"))
    assert html and all(p.stat().st_size < 300_000 for p in html)  # plotly.js from its CDN, not 4.7 MB per file
    assert all(p.with_suffix(".png").exists() for p in html)
