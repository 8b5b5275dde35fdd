"""The options the built-in studies need (issue 15, item 2): each one's effect measured, not just accepted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_config

from cnnbench import api
from cnnbench.cli import main
from cnnbench.config import OPTIONS, TrainConfig, apply_values
from cnnbench.data.augment import AugmentParams, flip_crop, random_affine
from cnnbench.errors import ConfigError, ModelInputError
from cnnbench.models import build_model
from cnnbench.models.base import count_parameters

CIFAR = dict(num_classes=10, in_channels=3, image_size=(32, 32))
EDGES = dict(num_classes=3, in_channels=1, image_size=(28, 28))


# -- models --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,options,shape,expected", [
    ("strided_cnn", {"hidden": 1024}, CIFAR, 2_125_082),  # R0-G (D): Flatten -> Dense 1024 -> Dropout -> Dense 10
    ("maxpool_cnn", {"hidden": 1024}, CIFAR, 2_125_082),
    ("three_conv", {"batch_norm": True, "fc_batch_norm": "fc1"}, CIFAR, 969_930),  # R3 BN model: same count
    ("three_conv", {"hidden": (512,)}, CIFAR, 967_754 - (512 * 128 + 128) - (128 * 10 + 10) + (512 * 10 + 10)),
    ("three_conv", {"channels": (128, 128, 128)}, CIFAR,
     (3 * 9 * 128 + 128) + 2 * (128 * 9 * 128 + 128) + (2048 * 512 + 512) + (512 * 128 + 128) + 1290),
    ("simple_cnn", {"pool": "avg"}, EDGES, 606),
])
def test_study_model_variants_have_their_parameter_counts(name, options, shape, expected):
    assert count_parameters(build_model(name, options=options, **shape)) == expected


def test_xavier_init_gives_zero_biases_and_glorot_bounds():
    torch.manual_seed(0)
    model = build_model("strided_cnn", options={"init": "xavier"}, **CIFAR)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            assert torch.all(m.bias == 0)
            fan_in = m.weight[0].numel()
            fan_out = m.weight.shape[0] * m.weight[0, 0].numel() if m.weight.dim() == 4 else m.weight.shape[0]
            assert m.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-6
    default = build_model("strided_cnn", options={}, **CIFAR)
    assert not torch.all(default.classifier.bias == 0)
    # simple_cnn xavier (the homework): conv1 and classifier, conv2 keeps PyTorch's default (non-zero bias)
    cnn = build_model("simple_cnn", options={"init": "xavier"}, **EDGES)
    assert torch.all(cnn.features[0].bias == 0) and torch.all(cnn.classifier.bias == 0)
    assert not torch.all(cnn.features[3].bias == 0)


def test_fc1_batch_norm_leaves_fc2_unnormalised():
    torch.manual_seed(0)
    model = build_model("three_conv", options={"batch_norm": True, "fc_batch_norm": "fc1"}, **CIFAR).eval()
    norms = [m for m in model.head if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 1 and norms[0].num_features == 512
    x = torch.randn(4, 512)
    fc2, discarded = model.head[5], model.head[6]
    assert torch.equal(discarded(fc2(x)), fc2(x))
    assert sum(p.numel() for p in discarded.parameters()) == 256  # counted as the report's listing does


def test_three_conv_dense_refuses_plain_widths():
    with pytest.raises(ModelInputError, match="dense=true has its own"):
        build_model("three_conv", options={"dense": True, "channels": (64, 64, 64)}, **CIFAR)


def test_avg_pool_variant_uses_average_pooling():
    model = build_model("simple_cnn", options={"pool": "avg"}, **EDGES)
    assert isinstance(model.features[2], torch.nn.AvgPool2d)


def test_keras_totals_count_batch_norm_moving_statistics():
    from cnnbench.models.summary import model_info

    info = model_info(build_model("lenet5", options={"batch_norm": True}, num_classes=10, in_channels=1,
                                  image_size=(28, 28)), (1, 28, 28))
    assert (info["keras_params"], info["trainable_params"], info["keras_non_trainable_params"]) == (62_274, 61_990, 284)
    out = CliRunner().invoke(main, ["info", "lenet5", "--model-option", "batch_norm=true"])
    assert "62,274 total / 61,990 trainable / 284 non-trainable" in out.output


# -- optimisation ---------------------------------------------------------------------------------

def test_weight_decay_on_gives_decay_to_the_listed_optimizers_only():
    from cnnbench.engine.optim import build_optimizer

    model = torch.nn.Linear(2, 2)
    for optimizer, expected in (("adam", 3e-4), ("sgd", 0.0), ("rmsprop", 0.0), ("momentum", 0.0)):
        cfg = apply_values(TrainConfig(), {"optimizer": optimizer, "weight_decay": "3e-4", "weight_decay_on": "adam"})
        assert build_optimizer(cfg.optim, model).param_groups[0]["weight_decay"] == expected
        assert cfg.flat_params()["weight_decay_on"] == "adam"
    with pytest.raises(ConfigError, match="--weight-decay-on must be all or a comma-separated list"):
        apply_values(TrainConfig(), {"weight_decay_on": "adamx"})


def test_freeze_features_trains_only_the_classifier():
    config = tiny_config(model={"name": "simple_cnn", "options": {"kernel_size": 2}},
                         data={"name": "edges", "options": {"data_per_class": 30}, "train_size": None},
                         optim={"freeze": "features", "optimizer": "sgd", "lr": 0.05})
    torch.manual_seed(0)
    before = build_model("simple_cnn", options={"kernel_size": 2}, **EDGES).state_dict()
    result = api.train(config)
    after = result.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("features."))
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert sum(p.numel() for p in result.model.parameters() if p.requires_grad) == 12  # R4-C: 12 trainable of 66


def test_freeze_first_conv_refused_for_a_model_without_convolutions():
    with pytest.raises(ConfigError, match="has no convolution"):
        api.resolve(tiny_config(model={"name": "mlp"}, optim={"freeze": "first_conv"}))


# -- data -----------------------------------------------------------------------------------------

def test_asymmetric_crop_padding_shifts_as_torchvision_does():
    """padding 0,2,3,4 (left, top, right, bottom): an image moves 0..3 px left and 2 px down .. 4 px up."""
    x = torch.zeros(400, 1, 12, 12, dtype=torch.uint8)
    x[:, 0, 5, 5] = 255
    gen = torch.Generator().manual_seed(0)
    out = flip_crop(x, gen, padding=(0, 2, 3, 4), flip=False)
    where = out[:, 0].flatten(1).argmax(1)
    dy, dx = where // 12 - 5, where % 12 - 5
    assert set(dx.tolist()) == {0, -1, -2, -3}
    assert set(dy.tolist()) == set(range(-4, 3))
    flipped = flip_crop(x, torch.Generator().manual_seed(1), padding=(0, 2, 3, 4))
    cols = (flipped[:, 0].flatten(1).argmax(1) % 12).tolist()
    assert set(cols) == {5, 4, 3, 2} | {6, 5, 4, 3}  # mirrored column 6, then the same 0..3 px shift


def test_symmetric_padding_is_unchanged():
    x = torch.randint(0, 255, (16, 3, 8, 8), dtype=torch.uint8)
    a = flip_crop(x, torch.Generator().manual_seed(3), padding=4)
    b = flip_crop(x, torch.Generator().manual_seed(3), padding=(4, 4, 4, 4))
    assert torch.equal(a, b)


def test_strong_parameters_reach_the_warp():
    x = torch.rand(8, 1, 16, 16) * 255
    still = random_affine(x, torch.Generator().manual_seed(0), AugmentParams(rotation=0, shear=0, scale=0))
    assert torch.allclose(still, x, atol=1e-3)
    moved = random_affine(x, torch.Generator().manual_seed(0), AugmentParams(rotation=10, shear=10, scale=0.2))
    assert not torch.allclose(moved, x, atol=1.0)
    cfg = apply_values(TrainConfig(), {"augment": "strong", "aug_rotation": "10", "aug_scale": "0.2", "crop_padding": "0,2,3,4"})
    assert AugmentParams.from_config(cfg.data) == AugmentParams((0, 2, 3, 4), 10.0, 10.0, 0.2)
    assert {"aug_rotation", "aug_scale", "aug_shear", "crop_padding"} <= set(cfg.flat_params())
    with pytest.raises(ConfigError, match="--crop-padding must be one padding"):
        apply_values(TrainConfig(), {"crop_padding": "1,2"})


def test_train_on_train_plus_val_uses_both_and_refuses_early_stopping():
    base = tiny_config(data={"train_size": None, "val_split": 0.2})
    plain, merged = api.load_data(base), api.load_data(base.replace(data={"train_on": "train+val"}))
    assert len(merged.train) == len(plain.train) + len(plain.val) and len(merged.val) == 0
    result = api.train(base.replace(data={"train_on": "train+val", "train_size": None}, run={"epochs": 1}))
    assert result.metrics["test_accuracy"] > 0.3
    with pytest.raises(ConfigError, match="train\\+val leaves no validation images for early stopping"):
        api.resolve(base.replace(data={"train_on": "train+val"}, run={"patience": 2}))


def test_test_from_train_carves_the_test_split_out_of_train():
    config = tiny_config(data={"train_size": None, "test_from_train": 0.15})
    data, official = api.load_data(config), api.load_data(tiny_config(data={"train_size": None}))
    total = len(official.train) + len(official.val)
    assert len(data.test) == math.ceil(0.15 * total)
    assert len(data.train) + len(data.val) + len(data.test) == total
    rows = {bytes(img.numpy()) for img in data.test.images}
    assert not rows & {bytes(img.numpy()) for img in data.train.images}  # (digits has a few duplicates; none cross here)


def test_edges_unseen_shift_and_fixed_evaluation_set():
    from cnnbench.data.edges import load

    bundle = load(seed=7, data_per_class=10, possible_edge_location_ratio=0.5, shifted_eval="unseen", eval_per_class=50)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (30, 150, 150)

    def band_rows(split):  # rows fully bright in horizontal-class images
        x = split.images[split.labels == 0, 0]
        return set((x > 0.24 * 255).all(dim=2).nonzero()[:, 1].tolist())

    assert max(band_rows(bundle.train)) <= 13
    assert min(band_rows(bundle.val)) >= 14 and min(band_rows(bundle.test)) >= 14
    anywhere = load(seed=7, data_per_class=10, possible_edge_location_ratio=0.5)
    assert min(band_rows(anywhere.val)) < 14  # today's default: validation edges anywhere
    # the evaluation set does not move with the training size
    bigger = load(seed=7, data_per_class=40, eval_per_class=50)
    assert len(bigger.train) == 120 and torch.equal(bigger.test.images, load(seed=7, data_per_class=10, eval_per_class=50).test.images)


# -- artifacts ------------------------------------------------------------------------------------

def test_tsne_epochs_layer_and_missing_epoch_note(tmp_path):
    from cnnbench.artifacts.callbacks import LatentMaps

    config = tiny_config(run={"epochs": 6, "patience": 1}, optim={"lr": 1e-12},
                         artifacts={"tsne": True, "tsne_samples": 60, "tsne_epochs": "0,1,5,end", "tsne_layer": "fc.0"})
    maps = LatentMaps.from_config(config)
    result = api.train(config, [maps])
    assert maps.made == {"begin", "epoch001", "end"}
    assert result.history[-1]["epoch"] < 5
    with pytest.raises(ConfigError, match="--tsne-layer 'nope' is not a module"):
        api.resolve(config.replace(artifacts={"tsne_layer": "nope"}))
    with pytest.raises(ConfigError, match="--tsne-epochs must be a comma-separated list"):
        apply_values(TrainConfig(), {"tsne_epochs": "0,twenty"})


def test_tsne_missing_stage_is_a_note():
    from cnnbench.artifacts.callbacks import LatentMaps
    from cnnbench.events import Callback

    notes = []

    class Notes(Callback):
        def on_run_end(self, run, summary):
            notes.extend(run.notes)

    config = tiny_config(run={"epochs": 2}, artifacts={"tsne": True, "tsne_samples": 40, "tsne_epochs": "20,end"})
    api.train(config, [LatentMaps.from_config(config), Notes()])
    assert any("t-SNE map epoch020 (after epoch 20) not made: training ended at epoch 2" in n for n in notes)


def test_retrieval_layer_is_flattened_without_pooling():
    from cnnbench.artifacts.callbacks import Retrieval
    from cnnbench.engine.probes import collect_features

    config = tiny_config(run={"epochs": 1}, artifacts={"retrieval": True, "retrieval_layer": "features.2"})
    result = api.train(config, [Retrieval.from_config(config)])
    assert "retrieval_features.2_same_class" in result.metrics
    data = api.load_data(config)
    feats = collect_features(result.model, data.test.images[:3], mean=data.mean, std=data.std, which=(),
                             modules=("features.2",))["features.2"]
    assert feats.shape == (3, 6 * 14 * 14)  # lenet5 on digits (28x28): pool1 output 6x14x14, flattened, not pooled to 4x4


def test_named_layer_features_hook_only_that_layer():
    """Only the asked-for points and modules are captured: a module the forward pass never calls
    (three_conv's discarded fc2 BatchNorm with fc_batch_norm=fc1, R3's tsne-over-training recipe)
    is neither hooked nor expected (it was: KeyError 'head.6.unused')."""
    from cnnbench.engine.probes import collect_features
    from cnnbench.models import build_model

    model = build_model("three_conv", num_classes=10, in_channels=3, image_size=(32, 32),
                        options={"batch_norm": True, "fc_batch_norm": "fc1", "channels": (8, 8, 8), "hidden": (16, 12)})
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    feats = collect_features(model, images, mean=(0.5,) * 3, std=(0.25,) * 3, which=("logits",), modules=("head.5",))
    assert set(feats) == {"logits", "head.5"}
    assert feats["head.5"].shape == (5, 12) and feats["logits"].shape == (5, 10)
    assert set(collect_features(model, images, mean=(0.5,) * 3, std=(0.25,) * 3)) == {"penultimate", "intermediate", "logits"}


def test_new_options_are_train_flags_with_one_line_errors(tmp_path):
    for name in ("train_on", "test_from_train", "freeze", "weight_decay_on", "crop_padding", "aug_rotation",
                 "retrieval_layer", "tsne_layer", "tsne_epochs"):
        assert name in OPTIONS
    out = CliRunner().invoke(main, ["train", "--train-on", "val"])
    assert out.exit_code == 2 and "train+val" in out.output
    out = CliRunner().invoke(main, ["train", "--test-from-train", "1.5"])
    assert out.exit_code == 2 and "--test-from-train" in out.output


def test_numpy_mlp_half_sum_loss_is_the_reports_convention():
    from cnnbench.numpy_mlp import NumpyMLP, gradient_differences, random_batch

    net = NumpyMLP.random(12, 3, 1, seed=0)
    x, t = random_batch(8, 12, 1, seed=0)
    mean_loss, mean_grads = net.loss_and_gradients(x, t, "mean")
    half_loss, half_grads = net.loss_and_gradients(x, t, "half-sum")
    y, _ = net.forward(x)
    assert half_loss == pytest.approx(((y - t) ** 2).sum() / (2 * 8))
    assert half_loss == pytest.approx(mean_loss / 2)  # one output: the conventions differ by 2
    np.testing.assert_allclose(half_grads["b1"], mean_grads["b1"] / 2)
    assert max(gradient_differences(net, x, t, "half-sum").values()) < 1e-12
