"""One `cnnbench train` = one complete MLflow run: params, per-epoch metrics, tags, the model, and
a terminal status (FINISHED / FAILED / KILLED) whatever happens."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from cnnbench import api
from cnnbench.config import TrainConfig
from cnnbench.events import Callback


def _run(runs, experiment):
    found = runs(experiment)
    assert len(found) == 1
    return found[0]


def test_train_logs_params_metrics_tags(cli, tracking_uri, experiment, runs_in, fast_flags):
    result = cli(
        "train", "--tracking-uri", tracking_uri, "--experiment", experiment, "--epochs", "2", "--batch-size", "32",
        "--lr", "2e-3", "--model-option", "dropout=0.1", "--dataset-option", "size=28", "--seed", "3", *fast_flags,
    )
    assert result.exit_code == 0, result.output
    run = _run(runs_in, experiment)
    assert run.info.status == "FINISHED"
    # --quiet (in fast_flags): the one run line, with the id and the test accuracy
    assert result.output.strip().splitlines() == [line for line in result.output.strip().splitlines() if line.startswith("MLflow run: ")]
    assert run.info.run_id in result.output and "test_accuracy" in result.output
    p = run.data.params
    expected = {"model": "lenet5", "dataset": "digits", "epochs": "2", "batch_size": "32", "lr": "0.002",
                "optimizer": "adam", "model.kernel_size": "5", "seed": "3", "val_split": "0.1", "param_count": "61706",
                "model.dropout": "0.1", "data.size": "28", "augment": "none"}
    assert {k: p.get(k) for k in expected} == expected
    client = mlflow.tracking.MlflowClient(tracking_uri)
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2]
    m = run.data.metrics
    for key in ("test_loss", "test_accuracy", "fit_time_s", "train_images_per_s"):
        assert key in m and np.isfinite(m[key])
    assert m["test_accuracy"] > 0.5 and m["train_images_per_s"] > 0  # 2 epochs on digits reach ~0.8; chance is 0.1
    tags = run.data.tags
    assert tags["cnnbench.version"] and tags["cnnbench.device"].startswith("cpu")
    assert tags["cnnbench.role"] == "train" and tags["cnnbench.owner"] and "cnnbench.campaign" not in tags


def test_default_run_learns_and_logged_model_predicts_the_same(tracking_uri, experiment):
    config = TrainConfig().replace(
        run={"tracking_uri": tracking_uri, "experiment": experiment, "quiet": True},
        artifacts={"tsne": False, "retrieval": False, "kernels": False, "predictions": False, "memory": False},
    )
    result = api.train(config, api.run_callbacks(config))
    assert result.metrics["test_accuracy"] > 0.85  # 10 classes: chance is 0.1
    # the logged model takes raw pixels (its normalisation inside) and answers probabilities per class
    loaded = mlflow.pyfunc.load_model(result.model_uri)
    data = api.load_data(config)
    pixels = data.test.images[:5]
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    result.model.eval()
    with torch.no_grad():
        expected = torch.softmax(result.model((pixels.float() / 255 - mean) / std), dim=1).numpy()
    frame = loaded.predict(pixels.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(frame.filter(like="prob_").to_numpy(), expected, atol=1e-5)
    info = mlflow.models.get_model_info(result.model_uri)
    assert info.metadata["input_shape"] == [1, 28, 28] and [c.name for c in info.signature.outputs.inputs][0] == "predicted_class"


class _Raise(Callback):
    def __init__(self, error: BaseException, at_epoch: int = 1) -> None:
        self.error, self.at_epoch = error, at_epoch

    def on_epoch_end(self, run, epoch, metrics):
        if epoch == self.at_epoch:
            raise self.error


@pytest.mark.parametrize("error, status", [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_run_always_ends(tracking_uri, experiment, runs_in, error, status):
    config = TrainConfig().replace(
        run={"tracking_uri": tracking_uri, "experiment": experiment, "epochs": 3, "quiet": True},
        data={"train_size": 200},
    )
    with pytest.raises(type(error)):
        api.train(config, [_Raise(error), *api.run_callbacks(config)])
    run = _run(runs_in, experiment)
    assert run.info.status == status
    if status == "FAILED":
        assert run.data.tags["failure_reason"] == "RuntimeError: boom"
    assert mlflow.active_run() is None


def test_nan_loss_fails_run_with_reason(cli, tracking_uri, experiment, runs_in, fast_flags):
    result = cli("train", "--tracking-uri", tracking_uri, "--experiment", experiment, "--optimizer", "sgd",
                 "--lr", "1e12", "--epochs", "2", *fast_flags)
    assert result.exit_code == 1
    assert "non-finite loss" in result.stderr
    run = _run(runs_in, experiment)
    assert run.info.status == "FAILED" and "non-finite loss" in run.data.tags["failure_reason"]
