"""The option declarations are the one source: every flag reaches its field, every option has help,
`--help` is grouped, checks come from the declaration, tune/study share one path, the README's table
is generated from them."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from cnnbench.config import GROUPS, OPTIONS, TrainConfig, apply_values
from cnnbench.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def _other_value(o):
    """A valid value that differs from the default, and how it is spelled on the command line."""
    if o.type == "bool":
        return (not o.default), [o.flag if not o.default else f"--no-{o.flag[2:]}"]
    if o.choices:
        value = next(c for c in o.choices if c != o.default)
    elif o.type == "int":
        value = (o.default or 0) + 3 if o.high is None else int(o.low) + 1
    elif o.type == "float":
        value = 0.25 if o.high is not None else (o.default or 0.0) + 0.5
    elif o.check is not None:  # free text with a grammar of its own: the first valid candidate
        value = next(v for v in ("2", "1,2,3,4", "sgd", "0,end", "0,2,end", "features", "fast-cifar10") if v != o.default and _valid(o, v))
    else:
        value = f"some-{o.name}"
    return value, [o.flag, str(value)]


def _valid(o, value) -> bool:
    try:
        o.validate(value)
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_declared_flag_reaches_its_config_field(name):
    from cnnbench.cli import main
    from cnnbench.cli_options import config_from_params

    o = OPTIONS[name]
    value, args = _other_value(o)
    ctx = main.get_command(None, "train").make_context("train", args)
    config = config_from_params(ctx, ctx.params)
    assert config.value(name) == value
    assert getattr(getattr(config, o.section), o.field) == value
    if name == "preset":  # a preset sets other options by design (tests/test_fast_recipe.py)
        return
    untouched = {n: config.value(n) for n in OPTIONS if n != name}
    assert untouched == {n: TrainConfig().value(n) for n in OPTIONS if n != name}


def test_every_option_has_help_and_a_group():
    for name, o in OPTIONS.items():
        assert o.help.strip(), name
        assert o.group in GROUPS, name


def test_train_help_lists_options_by_group():
    from cnnbench.cli import main

    ctx = click.Context(main.get_command(None, "train"), info_name="train")
    text = ctx.get_help()
    positions = [text.index(f"\n{title}:\n") for title in ("Model", "Data", "Optimisation", "Run and tracking", "Artifacts")]
    assert positions == sorted(positions)
    artifacts = text[positions[-1]:]
    assert "--no-tsne" in artifacts and "--lr" not in artifacts
    for flag in ("--batch-size", "--weight-decay", "--label-smoothing", "--seed", "--device", "--tsne-samples"):
        line = next(line for line in text.splitlines() if line.strip().startswith(flag))
        assert len(line.split(None, 2)) == 3, line  # flag, metavar and help text on its line


def test_tune_takes_every_train_option_but_its_own_epochs():
    from cnnbench.commands.tune import command

    names = {p.name for p in command.params}
    assert set(OPTIONS) <= names and sum(p.name == "epochs" for p in command.params) == 1


@pytest.mark.parametrize("values, message", [
    ({"lr": "inf"}, "--lr must be a finite number"),
    ({"momentum": "nan"}, "--momentum must be a finite number"),
    ({"grad_accum": 1e400}, "--grad-accum expects an integer >= 1; got inf"),
    ({"epochs": 1.5}, "--epochs expects an integer"),
    ({"epochs": True}, "--epochs expects an integer"),
    ({"seed": "x"}, "--seed expects an integer"),
    ({"optimizer": "lbfgs"}, "unknown --optimizer value 'lbfgs'; accepted: sgd, momentum"),
    ({"experiment": ""}, "--experiment must name an experiment"),
    ({"experiment": "x" * 501}, "at most 500 characters"),
    ({"lrr": 1}, "unknown option 'lrr'; accepted: model, dataset"),
])
def test_bad_values_are_refused_by_the_declaration(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        apply_values(TrainConfig(), values).validate()


def test_apply_values_types_text_and_resets_options_of_another_model():
    base = apply_values(TrainConfig(), {"model.dropout": "0.2"})
    config = apply_values(base, {"model": "mlp", "model.hidden": "64", "batch_size": "32", "kernel_size": "3"})
    assert config.model.name == "mlp" and config.optim.batch_size == 32
    assert config.model.options == {"hidden": "64", "kernel_size": "3"}  # lenet5's dropout does not carry over
    with pytest.raises(ConfigError, match="cannot be varied: 'experiment'"):
        apply_values(TrainConfig(), {"experiment": "x"}, varying=True)


def test_typed_sources_refuse_text_for_numbers():
    with pytest.raises(ConfigError, match=r"config: optim.lr: --lr expects a number > 0; got '0.1'"):
        TrainConfig.from_dict({"optim": {"lr": "0.1"}})
    with pytest.raises(ConfigError, match="model.options must be a mapping"):
        TrainConfig.from_dict({"model": {"options": "notadict"}})
    with pytest.raises(ConfigError, match="expected a JSON object"):
        TrainConfig.from_dict([1, 2])
    with pytest.raises(ConfigError, match="run.resume is not a setting"):
        TrainConfig.from_dict({"run": {"resume": "0123abcd"}})


def test_params_are_only_the_ones_that_mean_something():
    adam = TrainConfig().flat_params()
    assert "momentum" not in adam and "max_epochs" not in adam and "effective_batch_size" not in adam
    assert "step_size" not in adam and "penalty_on" not in adam and "data_dir" not in adam
    sgd = TrainConfig().replace(optim={"optimizer": "momentum", "grad_accum": 4, "scheduler": "step"}).flat_params()
    assert sgd["momentum"] == 0.9 and sgd["effective_batch_size"] == 256 and sgd["step_size"] == 10
    assert not {n for n, o in OPTIONS.items() if not o.param} & set(sgd)


def test_readme_option_table_is_generated_from_the_declarations():
    from cnnbench.docs import readme_with_table

    text = README.read_text()
    assert readme_with_table(text) == text, "README's option table is stale: run python scripts/update_readme.py"
    for o in OPTIONS.values():
        assert f"`{o.flag}" in text, o.flag


def test_optimizers_are_declared_once_and_built_from_the_declaration():
    import torch

    from cnnbench.config import OPTIMIZERS, OptimConfig
    from cnnbench.engine.optim import build_optimizer

    model = torch.nn.Linear(3, 2)
    for name, spec in OPTIMIZERS.items():
        opt = build_optimizer(OptimConfig(optimizer=name, momentum=0.7), model)
        assert type(opt).__name__ == spec.torch_class
        assert opt.param_groups[0].get("momentum", 0) == (0.7 if spec.momentum else opt.defaults.get("momentum", 0))
