"""The fast CIFAR-10 recipe's parts: presets (a named bundle of ordinary options, overridable, logged),
fast_cnn's patch whitening, flip test-time augmentation and the per-epoch test curve."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from cnnbench import api
from cnnbench.config import TrainConfig, apply_values, preset_values
from cnnbench.engine.fit import evaluate
from cnnbench.errors import ConfigError
from cnnbench.models import build_model
from cnnbench.registry import PRESETS

from conftest import new_store, tiny_config


def test_every_preset_names_declared_options_with_valid_values():
    for name in PRESETS.names():
        config = apply_values(TrainConfig(), {"preset": name}, text=False).validate()
        assert config.run.preset == name
        for key, value in preset_values(name).items():
            if key.startswith("model."):
                assert config.model.options[key[6:]] == value
            else:
                assert config.value(key) == value, key


def test_values_given_beside_a_preset_override_it():
    config = apply_values(TrainConfig(), {"preset": "fast-cifar10", "lr": "0.05", "model.widths": "8,8,8"})
    assert config.optim.lr == 0.05 and config.model.options["widths"] == "8,8,8"
    assert config.optim.optimizer == "nesterov" and config.data.tta == "flip"  # the rest from the preset


def test_an_unknown_preset_is_refused_with_the_accepted_ones():
    with pytest.raises(ConfigError, match=r"--preset is not a preset; accepted: fast-cifar10"):
        apply_values(TrainConfig(), {"preset": "fastest"})


def test_train_preset_logs_the_resolved_options_and_the_preset(cli, tmp_path, fast_flags):
    uri = new_store(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"optim": {"lr": 0.3, "weight_decay": 0.01}}))
    result = cli("train", "--preset", "fast-cifar10", "--config", config, "--dataset", "edges",
                 "--dataset-option", "data_per_class=20", "--model-option", "widths=4,4,4", "--epochs", "1",
                 "--batch-size", "16", "--tracking-uri", uri, "--experiment", "preset", "--device", "cpu", *fast_flags)
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("preset").experiment_id])
    params = run.data.params
    assert params["preset"] == "fast-cifar10" and params["model"] == "fast_cnn" and params["model.widths"] == "4,4,4"
    assert params["dataset"] == "edges" and params["batch_size"] == "16" and params["epochs"] == "1"  # flags win
    assert params["lr"] == "0.4"  # the preset is laid over the --config file; flags over both
    assert params["weight_decay"] == "0.0005" and params["tta"] == "flip" and params["train_on"] == "train+val"
    assert params["memory_format"] == "channels_last"  # fast_cnn declares NHWC faster on CPU


def test_list_presets_shows_each_preset_and_its_values(cli):
    result = cli("list", "presets")
    assert result.exit_code == 0
    assert "fast-cifar10" in result.output and "model = fast_cnn" in result.output and "tta = flip" in result.output


def test_bad_preset_flag_exits_2_before_any_work(cli, tmp_path):
    result = cli("train", "--preset", "nope", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")
    assert result.exit_code == 2 and "accepted: fast-cifar10" in result.output
    assert not (tmp_path / "mlflow.db").exists()


def test_whitening_makes_the_patch_covariance_the_identity():
    torch.manual_seed(0)
    mix = torch.randn(3, 3)  # correlated colour channels
    images = torch.einsum("ij,njhw->nihw", mix, torch.randn(400, 3, 16, 16))
    images = images + torch.roll(images, 1, dims=3)  # and correlated neighbours
    model = build_model("fast_cnn", num_classes=10, in_channels=3, image_size=(16, 16),
                        options={"widths": "4,4,4"})
    model.init_from_data(images)
    assert not model.whiten.weight.requires_grad
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, model.whiten.weight[:12])  # one sign of each filter, no bias
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = flat @ flat.T / flat.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=0.02)
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])


def test_whiten_false_leaves_the_first_conv_trainable():
    model = build_model("fast_cnn", num_classes=10, in_channels=3, image_size=(32, 32),
                        options={"widths": "4,4,4", "whiten": False})
    before = model.whiten.weight.clone()
    model.init_from_data(torch.randn(10, 3, 32, 32))
    assert torch.equal(before, model.whiten.weight) and model.whiten.weight.requires_grad


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror(tmp_path):
    config = tiny_config(run={"epochs": 1})
    data = api.load_data(config)
    from cnnbench.engine.fit import make_loaders
    from cnnbench.events import RunState

    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=data.image_size)
    run = RunState(config=config, data=data, model=model, device=torch.device("cpu"),
                   artifacts_dir=tmp_path)
    loader = make_loaders(run)["test"]
    plain = evaluate(model, loader, "test")
    flipped = evaluate(model, loader, "test", tta="flip")
    x = torch.cat([b for b, _ in loader])
    model.eval()
    with torch.no_grad():
        mirror = model(torch.flip(x, dims=(3,)))
    assert torch.allclose(flipped.logits, (plain.logits + mirror) / 2, atol=1e-5)
    assert not torch.allclose(flipped.logits, plain.logits)


def test_test_every_epoch_logs_a_time_to_accuracy_curve():
    config = tiny_config(run={"epochs": 3, "test_every_epoch": True})
    result = api.train(config, [])
    curve = [h["epoch_test_accuracy"] for h in result.history]
    times = [h["run_time_s"] for h in result.history]
    assert len(curve) == 3 and curve[-1] == pytest.approx(result.metrics["test_accuracy"])
    assert times == sorted(times) and times[0] > 0
    assert all(h["curve_eval_s"] > 0 for h in result.history)
    assert "epoch_test_accuracy" not in api.train(tiny_config(run={"epochs": 1}), []).history[0]
