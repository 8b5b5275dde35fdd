"""The model zoo: published parameter counts, a forward/backward pass of every registered model on
every built-in dataset shape (timm-style, parametrised over the registry), feature points, and
clear errors for inputs a model cannot take."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnbench.errors import ConfigError, ModelInputError
from cnnbench.models import build_model
from cnnbench.models.base import count_parameters, first_conv_weight, penalty_parameters, points
from cnnbench.registry import DATASETS, MODELS

CIFAR = (3, 32, 32)
GRAY28 = (1, 28, 28)

# (model, options, input shape, classes, parameters): the studies' numbers, then the variants measured here
PARAM_COUNTS = [
    ("strided_cnn", {}, CIFAR, 10, 37_146),
    ("strided_cnn", {"extra_layers": True}, CIFAR, 10, 23_314),
    ("maxpool_cnn", {"modules": 2}, CIFAR, 10, 37_146),
    ("maxpool_cnn", {"modules": 3}, CIFAR, 10, 82_330),
    ("maxpool_cnn", {"modules": 4}, CIFAR, 10, 298_650),
    ("maxpool_cnn", {"modules": 2, "extra_layers": True}, CIFAR, 10, 23_314),
    ("mlp", {}, GRAY28, 10, 109_386),
    ("lenet5", {}, GRAY28, 10, 61_706),
    ("lenet5", {"dropout": 0.5}, GRAY28, 10, 61_706),
    ("lenet5", {"batch_norm": True}, GRAY28, 10, 61_706 + 2 * (6 + 16 + 120)),
    ("block_cnn", {"blocks": 2}, CIFAR, 10, 9_160_394),
    ("block_cnn", {"blocks": 3}, CIFAR, 10, 5_851_338),
    ("block_cnn", {"blocks": 2, "batch_norm": True, "dropout": 0.2}, CIFAR, 10, 9_160_394 + 2 * (64 + 128)),
    ("block_cnn", {"blocks": 3, "batch_norm": True}, CIFAR, 10, 5_851_338 + 2 * (64 + 128 + 256)),
    ("three_conv", {}, CIFAR, 10, 967_754),
    ("three_conv", {"batch_norm": True}, CIFAR, 10, 967_754 + 2 * (256 + 128 + 64) + 2 * (512 + 128)),
    ("three_conv", {"dense": True}, CIFAR, 10, 8_657_418),
    ("three_conv", {"dense": True, "batch_norm": True}, CIFAR, 10, 8_657_418 + 2 * (128 + 64 + 32) + 2 * (1024 + 128)),
    ("simple_cnn", {}, GRAY28, 3, 606),
    ("simple_cnn", {"kernel_size": 2}, GRAY28, 3, 66),
    ("wider_cnn", {}, GRAY28, 3, 2_091),
    ("deeper_cnn", {}, GRAY28, 3, 1_494),
    ("edge_mlp", {}, (1, 8, 8), 3, 615),  # 9 hidden units: the nearest to simple_cnn's 606
    ("edge_mlp", {}, GRAY28, 3, 791),  # 1 hidden unit: an MLP on 784 pixels cannot be as small as 606
    ("resnet18", {}, CIFAR, 10, 11_181_642),
    ("resnet152", {}, CIFAR, 10, 58_164_298),
]


@pytest.mark.parametrize("name,options,shape,classes,expected", PARAM_COUNTS,
                         ids=[f"{p[0]}-{p[1]}" for p in PARAM_COUNTS])
def test_published_parameter_counts(name, options, shape, classes, expected):
    with torch.device("meta"):  # shapes without storage or weight init: counting resnet152 takes no time
        model = build_model(name, num_classes=classes, in_channels=shape[0], image_size=shape[1:], options=options)
    assert count_parameters(model) == expected


def test_resnet152_size_is_232_66_mb_in_float32():
    with torch.device("meta"):
        model = build_model("resnet152", num_classes=10, in_channels=3, image_size=(32, 32))
    assert round(sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6, 2) == 232.66


def _builtin_shapes() -> list[tuple[int, int, int, int]]:
    """(C, H, W, classes) of every built-in dataset that describes itself without files, plus digits at 8x8."""
    shapes = {(1, 8, 8, 10)}
    for name in DATASETS.names():
        try:
            meta = DATASETS.get(name).describe(**DATASETS.get(name).defaults())
        except Exception:  # needs a data_dir or options (imagefolder): no fixed shape
            continue
        if min(meta.height, meta.width, meta.num_classes) > 0:  # imagefolder: unknown until it reads files
            shapes.add((meta.channels, meta.height, meta.width, meta.num_classes))
    return sorted(shapes)


SHAPES = _builtin_shapes()
# Inputs a model refuses on purpose (the ResNet imagenet stem halves 4 times before layer4; LeNet-5
# uses valid convs): (model, side) -> the minimum side its error must name.
UNSUPPORTED = {
    **{(f"resnet{d}", 8): 16 for d in (18, 34, 50, 152)},
    ("lenet5", 8): 28,
    ("fast_cnn", 8): 9,
}
# Same builder as resnet18, which runs on every shape: one shape each is enough. resnet152's pass costs
# ~15 s on a loaded 2-core CI machine; it trains for an epoch in test_models_train.py (slow) instead.
ONE_SHAPE = {"resnet34", "resnet50"}
HEAVY = {"resnet50", "resnet152"}  # built on the meta device where only structure is checked


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_trains_on_every_builtin_shape(name, shape):
    channels, height, width, classes = shape
    if (name, height) in UNSUPPORTED:
        with pytest.raises(ModelInputError, match=f"at least {UNSUPPORTED[name, height]}x"):
            build_model(name, num_classes=classes, in_channels=channels, image_size=(height, width))
        return
    if name == "resnet152":
        pytest.skip("forward/backward of resnet152 runs in the slow one-epoch training test")
    if name in ONE_SHAPE and shape != (3, 32, 32, 10):
        pytest.skip("resnet18 covers this builder on every shape; this depth runs on 3x32x32")
    torch.manual_seed(0)
    model = build_model(name, num_classes=classes, in_channels=channels, image_size=(height, width))
    x = torch.randn(2, channels, height, width)
    logits = model(x)
    assert logits.shape == (2, classes)
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, classes - 1]))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", MODELS.names())
def test_feature_points_name_real_layers(name):
    torch.manual_seed(0)
    with torch.device("meta" if name in HEAVY else "cpu"):  # same builder as resnet18, which runs below
        model = build_model(name, num_classes=7, in_channels=3, image_size=(32, 32)).eval()
    pts = points(model)
    modules = dict(model.named_modules())
    classifier = modules[pts.classifier]
    assert isinstance(classifier, nn.Linear) and classifier.out_features == 7
    assert penalty_parameters(model)[0] is classifier.weight
    if name in HEAVY:
        assert isinstance(modules[pts.first_conv], nn.Conv2d) and pts.intermediate in modules
        return
    seen = {}
    hooks = [modules[pts.classifier].register_forward_hook(lambda m, i, o: seen.__setitem__("logits", o)),
             modules[pts.intermediate].register_forward_hook(lambda m, i, o: seen.__setitem__("intermediate", o))]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert torch.equal(seen["logits"], out)  # the classifier really is the last layer
    assert seen["intermediate"].shape[0] == 2 and seen["intermediate"].ndim >= 2
    weight = first_conv_weight(model)
    if name in {"mlp", "edge_mlp"}:
        assert pts.first_conv is None and weight is None
    else:
        assert isinstance(modules[pts.first_conv], nn.Conv2d)
        assert weight.shape[1] == 3  # it sees the input image


@pytest.mark.parametrize("name", [n for n in MODELS.names() if MODELS.get(n).option("kernel_size") and n != "edge_mlp"])
def test_kernel_size_option_reaches_the_convolutions(name):
    model = build_model(name, num_classes=10, in_channels=3, image_size=(32, 32), options={"kernel_size": 5})
    assert first_conv_weight(model).shape[-2:] == (5, 5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("options,cnn_params,hidden", [
    ({}, 606, 9),  # simple_cnn 7x7
    ({"kernel_size": 5}, 318, 5),
    ({"match_params_of": "wider_cnn"}, 2_091, 31),
    ({"match_params_of": "none", "hidden": 4}, None, 4),
])
def test_edge_mlp_matches_the_cnn_parameter_count(options, cnn_params, hidden):
    mlp = build_model("edge_mlp", num_classes=3, in_channels=1, image_size=(8, 8), options=options)
    assert mlp.classifier.in_features == hidden
    if cnn_params is not None:
        cnn_name = options.get("match_params_of", "simple_cnn")
        cnn = build_model(cnn_name, num_classes=3, in_channels=1, image_size=(8, 8),
                          options={k: v for k, v in options.items() if k == "kernel_size"})
        assert count_parameters(cnn) == cnn_params
        per_hidden_unit = 64 + 1 + 3
        assert abs(count_parameters(mlp) - cnn_params) <= per_hidden_unit / 2


def test_edge_mlp_without_a_target_or_width_is_an_error():
    with pytest.raises(ModelInputError, match="hidden=N or match_params_of"):
        build_model("edge_mlp", num_classes=3, in_channels=1, image_size=(8, 8), options={"match_params_of": "none"})


@pytest.mark.parametrize("name", ["strided_cnn", "maxpool_cnn", "lenet5", "block_cnn", "three_conv"])
def test_same_padding_models_refuse_even_kernels(name):
    with pytest.raises(ModelInputError, match="odd kernel sizes"):
        build_model(name, num_classes=10, in_channels=3, image_size=(32, 32), options={"kernel_size": 4})


@pytest.mark.parametrize("name,options,shape,minimum", [
    ("lenet5", {}, (1, 8, 8), 28),
    ("lenet5", {"kernel_size": 3}, (1, 12, 12), 16),
    ("maxpool_cnn", {"modules": 4}, (3, 8, 8), 16),
    ("maxpool_cnn", {"modules": 2, "extra_layers": True}, (3, 4, 4), 8),
    ("block_cnn", {"blocks": 3}, (3, 4, 4), 8),
    ("three_conv", {}, (3, 4, 4), 8),
    ("resnet18", {}, (3, 8, 8), 16),
    ("resnet18", {"stem": "cifar"}, (3, 2, 2), 4),
])
def test_too_small_inputs_name_the_minimum(name, options, shape, minimum):
    with pytest.raises(ModelInputError, match=f"at least {minimum}x{minimum}"):
        build_model(name, num_classes=10, in_channels=shape[0], image_size=shape[1:], options=options)


def test_resnet_cifar_stem_takes_8x8_that_the_imagenet_stem_refuses():
    model = build_model("resnet18", num_classes=10, in_channels=1, image_size=(8, 8), options={"stem": "cifar"})
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, nn.Identity)


@pytest.mark.parametrize("name,options,match", [
    ("block_cnn", {"blocks": 4}, "blocks.*2, 3"),
    ("maxpool_cnn", {"modules": 1}, "modules.*2, 3, 4"),
    ("mlp", {"depth": 3}, "unknown option.*depth.*valid options: dropout, hidden"),
    ("lenet5", {"dropout": "lots"}, "dropout.*number"),
    ("simple_cnn", {"init": "sobel"}, "init.*default, xavier, edge"),
])
def test_bad_options_are_config_errors(name, options, match):
    with pytest.raises(ConfigError, match=match):
        build_model(name, num_classes=10, in_channels=3, image_size=(32, 32), options=options)


def _keyword_parameters(build) -> tuple[set[str], set[str]]:
    """(keyword-only parameter names, those with a default) of a builder, partials unwrapped."""
    import functools
    import inspect

    fixed = set()
    while isinstance(build, functools.partial):
        fixed |= set(build.keywords)
        build = build.func
    params = inspect.signature(build).parameters.values()
    kw = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY} - fixed
    return kw, {p.name for p in params if p.default is not inspect.Parameter.empty and p.name not in fixed}


@pytest.mark.parametrize("name", MODELS.names())
def test_model_builders_take_exactly_their_declared_options_without_defaults(name):
    """One default per option: the declaration's. A builder keyword the declaration lacks (or the
    reverse), or a default of the builder's own, would drift from what the CLI shows."""
    plugin = MODELS.get(name)
    keywords, with_defaults = _keyword_parameters(plugin.build)
    assert keywords - {"num_classes", "in_channels", "image_size"} == {o.name for o in plugin.options}
    assert not with_defaults


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_loaders_take_exactly_their_declared_options_without_defaults(name):
    import inspect

    plugin = DATASETS.get(name)
    for function, own in ((plugin.load, {"data_dir", "seed", "download"}), (plugin.describe, {"data_dir"})):
        keywords, with_defaults = _keyword_parameters(function)
        takes_rest = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(function).parameters.values())
        if takes_rest:  # e.g. edges' ten options: filled from the declaration's defaults, none of its own
            assert keywords - own == set(), function
        else:
            assert keywords - own == {o.name for o in plugin.options}, function
        assert not (with_defaults - own), function


def test_builder_errors_name_the_model_once():
    with pytest.raises(ModelInputError, match=r"^model 'block_cnn' uses 'same' padding"):
        build_model("block_cnn", num_classes=10, in_channels=3, image_size=(32, 32), options={"kernel_size": 4})
    with pytest.raises(ModelInputError, match=r"^model 'lenet5' needs inputs of at least 28x28"):
        build_model("lenet5", num_classes=10, in_channels=1, image_size=(8, 8))


def test_kernel_size_is_an_ordinary_model_option():
    with pytest.raises(ModelInputError, match="takes no kernel size"):
        build_model("mlp", num_classes=10, in_channels=1, image_size=(28, 28), options={"kernel_size": 3})
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=(28, 28), options={"kernel_size": "3"})
    assert first_conv_weight(model).shape[-1] == 3


def test_strided_and_maxpool_mark_the_dense_layer_for_l1():
    for name in ("strided_cnn", "maxpool_cnn"):
        model = build_model(name, num_classes=10, in_channels=3, image_size=(32, 32))
        assert points(model).penalty == ("classifier.weight",)
        assert [p.shape for p in penalty_parameters(model)] == [(10, 2048)]


def test_dropout_and_batch_norm_options_insert_the_layers():
    lenet = build_model("lenet5", num_classes=10, in_channels=1, image_size=(28, 28),
                        options={"dropout": 0.5, "batch_norm": True})
    kinds = [type(m).__name__ for m in lenet.features]
    assert kinds.count("Dropout") == 3 and kinds.count("BatchNorm2d") == 3
    assert kinds.index("BatchNorm2d") == kinds.index("Conv2d") + 1  # after the conv, before ReLU
    assert len({id(m) for m in lenet.features}) == len(lenet.features)  # no module shared between slots
    block = build_model("block_cnn", num_classes=10, in_channels=3, image_size=(32, 32),
                        options={"batch_norm": True, "dropout": 0.2})
    assert [type(m).__name__ for m in block.features[0]][-2:] == ["MaxPool2d", "BatchNorm2d"]
    assert [m.p for m in block.head if isinstance(m, nn.Dropout)] == [0.2, 0.2]


def test_dense_three_conv_feeds_every_conv_all_earlier_outputs():
    model = build_model("three_conv", num_classes=10, in_channels=3, image_size=(32, 32), options={"dense": True})
    in_channels = [seq[0].in_channels for seq in model.features[0].convs]
    assert in_channels == [3, 3 + 128, 3 + 128 + 64]
    assert model.head[1].in_features == 32 * 16 * 16  # one pool after the last conv
