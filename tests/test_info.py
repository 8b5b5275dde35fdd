"""``cnnbench info`` and the summary behind it: counts, MACs, the memory prediction, JSON, bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cnnbench.cli import main
from cnnbench.models.summary import model_info, summary_text
from cnnbench.models import build_model

# strided_cnn on 3x32x32: (parameters, output pixels) of each conv, then the dense layer
STRIDED_CONVS = [(448, 32 * 32), (2_320, 16 * 16), (4_640, 16 * 16), (9_248, 8 * 8)]
STRIDED_DENSE = 20_490


@pytest.fixture(scope="module")
def strided_info():
    model = build_model("strided_cnn", num_classes=10, in_channels=3, image_size=(32, 32))
    return model_info(model, (3, 32, 32), batch_size=64)


def test_counts_size_and_macs(strided_info):
    assert strided_info["params"] == strided_info["trainable_params"] == 37_146
    assert strided_info["size_mb"] == round(37_146 * 4 / 1e6, 2) == 0.15
    # a conv's MACs: its parameters (weights + bias) once per output pixel; the dense layer: once
    assert strided_info["macs"] == sum(p * pixels for p, pixels in STRIDED_CONVS) + STRIDED_DENSE == 2_852_874


def test_layers_carry_shape_params_and_macs(strided_info):
    by_name = {row["name"]: row for row in strided_info["layers"]}
    assert by_name["features.0"] == {"name": "features.0", "type": "Conv2d", "depth": 2, "output_shape": [16, 32, 32],
                                     "params": 448, "macs": 448 * 32 * 32, "leaf": True}
    assert by_name["classifier"]["output_shape"] == [10] and by_name["classifier"]["params"] == STRIDED_DENSE
    assert by_name["flatten"]["output_shape"] == [2048]
    assert by_name["features"]["macs"] == strided_info["macs"] - STRIDED_DENSE  # a container sums its leaves


def test_memory_is_the_prediction_with_its_state_sizes(strided_info):
    """info shows cnnbench.memory's prediction (MiB), the state each optimizer keeps growing with it."""
    from cnnbench.config import OPTIMIZERS
    from cnnbench.memory import predict

    memory, detail = strided_info["memory_estimate_mb"], strided_info["memory"]
    assert set(memory) == set(OPTIMIZERS) == {"sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"}
    assert memory["adam"] == round(predict("strided_cnn", (3, 32, 32), 64, "adam").peak_mb, 2)
    weights_mib = 37_146 * 4 / 2**20
    for optimizer, spec in OPTIMIZERS.items():
        assert detail[optimizer]["optimizer_state_size_mb"] == pytest.approx(spec.state_copies * weights_mib, abs=0.01)
    assert memory["sgd"] < memory["momentum"] == memory["nesterov"] < memory["adam"] == memory["adamw"]
    assert strided_info["memory_unit"] == "MiB" and strided_info["memory_device"] == "cpu"


def test_activation_memory_scales_with_batch_size():
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=(28, 28))
    small, large = (model_info(model, (1, 28, 28), batch_size=b, optimizers=("sgd",)) for b in (10, 1000))
    saved = [info["memory"]["sgd"]["saved_activations_mb"] for info in (small, large)]
    assert saved[1] == pytest.approx(100 * saved[0], rel=0.02)
    assert large["params"] == small["params"] == 61_706


def test_frozen_parameters_need_no_gradients_or_state():
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=(28, 28))
    for p in model.features.parameters():
        p.requires_grad_(False)
    info = model_info(model, (1, 28, 28), batch_size=1, optimizers=("adam",))
    frozen = 61_706 - info["trainable_params"]
    assert frozen == 156 + 2_416 + 48_120
    full = model_info(build_model("lenet5", num_classes=10, in_channels=1, image_size=(28, 28)), (1, 28, 28), 1,
                      optimizers=("adam",))
    # adam: a trainable weight keeps 2 states of 4 bytes; a frozen one none
    state = [i["memory"]["adam"]["optimizer_state_size_mb"] for i in (full, info)]
    assert state[0] - state[1] == pytest.approx(frozen * 8 / 2**20, abs=0.01)
    assert info["memory_estimate_mb"]["adam"] < full["memory_estimate_mb"]["adam"]


def test_summary_text_lists_layers_and_totals():
    model = build_model("mlp", num_classes=10, in_channels=1, image_size=(28, 28))
    text = summary_text(model, (1, 28, 28), batch_size=32)
    assert "classifier (Linear)" in text and "hidden.0 (Linear)" in text
    assert "Total params: 109,386" in text and "batch size 32" in text
    assert "adamw" in text


def _run(*args):
    return CliRunner().invoke(main, ["info", *args])


def test_info_json_has_the_fields_scripts_rely_on():
    result = _run("maxpool_cnn", "--input-shape", "3,32,32", "--model-option", "modules=3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"params", "trainable_params", "size_mb", "macs", "layers", "memory_estimate_mb"} <= set(data)
    assert data["params"] == 82_330 and data["options"]["modules"] == 3 and data["num_classes"] == 10
    assert data["memory_estimate_mb"]["adam"] > data["memory_estimate_mb"]["sgd"] > data["size_mb"]


def test_info_takes_the_shape_from_dataset_metadata():
    result = _run("lenet5", "--dataset", "digits", "--kernel-size", "3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["input_shape"] == [1, 28, 28] and data["options"]["kernel_size"] == 3
    first = next(row for row in data["layers"] if row["type"] == "Conv2d")
    assert first["params"] == 6 * 9 + 6
    resized = json.loads(_run("mlp", "--dataset", "digits", "--dataset-option", "size=8", "--json").output)
    assert resized["params"] == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    as_train = json.loads(_run("mlp", "--dataset", "digits", "--image-size", "8", "--json").output)
    assert as_train["input_shape"] == [1, 8, 8] and as_train["params"] == resized["params"]


def test_info_without_a_dataset_uses_the_models_natural_input():
    """lenet5 is trained on 1x28x28: its info must count 61,706 parameters, as every run logs."""
    lenet = json.loads(_run("lenet5", "--json").output)
    assert lenet["input_shape"] == [1, 28, 28] and lenet["params"] == 61706
    edges = json.loads(_run("simple_cnn", "--json").output)
    assert edges["input_shape"] == [1, 28, 28] and edges["num_classes"] == 3 and edges["params"] == 606


def test_info_reads_an_image_folder_given_its_files(tmp_path):
    from test_data_imagefolder import write_tree

    write_tree(tmp_path, {"train": {"a": 2, "b": 2, "c": 2}}, mode="L", size=(12, 12))
    data = json.loads(_run("mlp", "--dataset", "imagefolder", "--data-dir", str(tmp_path), "--json").output)
    assert data["input_shape"] == [1, 12, 12] and data["num_classes"] == 3


def test_info_text_shows_options_and_the_table():
    result = _run("strided_cnn", "--model-option", "extra_layers=true")
    assert result.exit_code == 0, result.output
    assert "extra_layers = True  (bool, default False)" in result.output
    assert "Total params: 23,314" in result.output


@pytest.mark.parametrize("args,message", [
    (["nosuchnet"], "unknown model 'nosuchnet'; available models: block_cnn"),
    (["mlp", "--model-option", "width=3"], "unknown option(s) width for model 'mlp'"),
    (["mlp", "--model-option", "hidden=wide"], "expects comma-separated integers"),
    (["strided_cnn", "--kernel-size", "4"], "odd kernel sizes"),
    (["mlp", "--kernel-size", "3"], "takes no kernel size"),
    (["lenet5", "--dataset", "digits", "--dataset-option", "size=8"], "at least 28x28"),
    (["block_cnn", "--model-option", "blocks=5"], "blocks' must be one of 2, 3"),
    (["maxpool_cnn", "--model-option", "modules=1"], "modules' must be one of 2, 3, 4"),
    (["mlp", "--input-shape", "1,28"], "three positive integers"),
    (["mlp", "--dataset", "digits", "--input-shape", "1,8,8"], "not both"),
    (["mlp", "--dataset", "nosuchdata"], "unknown dataset 'nosuchdata'"),
    (["mlp", "--dataset", "imagefolder"], "dataset 'imagefolder' takes its shape and classes from its files: give --data-dir"),
    (["lenet5", "--dataset", "imagefolder"], "give --data-dir"),
])
def test_bad_input_exits_2_with_a_message(args, message):
    result = _run(*args)
    assert result.exit_code == 2
    assert message in result.output
