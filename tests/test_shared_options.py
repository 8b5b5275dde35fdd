"""Options several commands share are declared once (issue 32): the same flag, type, check and help
wherever they appear; only the default (and the words naming it) differs per command."""

from __future__ import annotations

import click
import pytest

from cnnbench.cli import main
from cnnbench.cli_options import SHARED, shared_option

COMMANDS = {
    "tracking_uri": ["train", "tune", "runs", "memory", "filters", "study run", "study status", "study report"],
    "device": ["train", "tune", "info", "memory", "study run"],
    "experiment": ["runs", "memory", "filters", "study run", "study report", "study export-k8s"],
    "model_options": ["train", "tune", "info", "memory"],
    "kernel_size": ["train", "tune", "info"],
    "storage": ["tune", "study run", "study status"],
    "study_name": ["tune", "study run", "study status", "study report", "study export-k8s"],
    "workers": ["tune", "study run", "study show"],
    "heartbeat_interval": ["tune", "study run", "study export-k8s"],
}


def command(path: str) -> click.Command:
    cmd: click.Command = main
    for part in path.split():  # the group loads its commands lazily, by name
        cmd = cmd.get_command(click.Context(cmd), part)  # type: ignore[attr-defined]
    return cmd


def param(cmd: click.Command, name: str) -> click.Parameter:
    found = [p for p in cmd.params if p.name == name]
    assert len(found) == 1, (cmd.name, name, [p.name for p in cmd.params])
    return found[0]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_shared_option_has_one_flag_type_and_help_everywhere(name):
    one = shared_option(name)
    for path in COMMANDS[name]:
        p = param(command(path), name)
        assert p.opts == one.opts, (path, p.opts)
        assert type(p.type) is type(one.type), (path, p.type)
        # the help is the declaration's, plus at most the words naming this command's default
        assert p.help.startswith(one.help.split(" (default:")[0]), (path, p.help)


def test_every_shared_declaration_is_used():
    assert set(SHARED) - set(COMMANDS) == {"max_retries"}
    assert param(command("study run"), "max_retries").opts == ["--max-retries"]


def test_values_are_checked_alike_by_every_command(cli):
    for args in (["tune", "--workers", "0"], ["study", "run", "nosuch", "--workers", "0"],
                 ["study", "show", "nosuch", "--workers", "0"]):
        result = cli(*args)
        assert result.exit_code == 2 and "--workers must be at least 1; got 0" in result.output, (args, result.output)
    for args in (["info", "lenet5", "--device", "tpu"], ["memory", "lenet5", "--device", "tpu"],
                 ["study", "run", "nosuch", "--device", "tpu"]):
        result = cli(*args)
        assert result.exit_code == 2 and "'tpu'" in result.output and "auto, cpu, cuda, mps" in result.output, (args, result.output)


def test_info_takes_kernel_size_auto_as_train_does(cli):
    result = cli("info", "lenet5", "--kernel-size", "auto", "--json")
    assert result.exit_code == 0, result.output
    result = cli("info", "lenet5", "--kernel-size", "3", "--json")
    assert result.exit_code == 0 and '"kernel_size": 3' in result.output, result.output


def test_n_jobs_is_a_deprecated_alias_of_workers(cli):
    from cnnbench.cli_options import deprecated_alias, take_alias

    @click.command()
    @click.pass_context
    def probe(ctx, **params):
        click.echo(f"workers={take_alias(params, 'workers', 'n_jobs', '--n-jobs', '--workers')}")

    probe.params = [shared_option("workers"), deprecated_alias("--n-jobs", "--workers", "n_jobs")]
    runner = click.testing.CliRunner()
    assert runner.invoke(probe, ["--workers", "3"]).output.strip() == "workers=3"
    old = runner.invoke(probe, ["--n-jobs", "2"])
    assert "note: --n-jobs is deprecated; use --workers" in old.output and "workers=2" in old.output
    both = runner.invoke(probe, ["--n-jobs", "2", "--workers", "3"])
    assert both.exit_code == 2 and "--n-jobs 2 and --workers 3 disagree" in both.output
    assert "--n-jobs" not in cli("tune", "--help").output  # hidden: the one name is --workers


@pytest.mark.parametrize("kind, raw, typed, expected", [
    ("bool", "Yes", False, True), ("bool", "off", False, False), ("bool", True, True, True),
    ("int", "12", False, 12), ("int", 3.0, True, 3), ("float", "1e-3", False, 1e-3), ("float", 2, True, 2.0),
    ("ints", "128, 64", False, (128, 64)), ("ints", [32, 64], True, (32, 64)), ("str", "adam", True, "adam"),
])
def test_one_value_parser_for_train_and_plugin_options(kind, raw, typed, expected):
    """config.TrainOption and registry.Option read values through cnnbench.values.convert alone."""
    from cnnbench.config import OPTIONS
    from cnnbench.registry import Option
    from cnnbench.values import convert

    assert convert(kind, raw, typed_source=typed) == expected
    if kind != "ints":
        assert Option("x", kind, None, "").parse(raw) == expected  # a plugin option takes the same words
    train = {"bool": "amp", "int": "epochs", "float": "lr", "str": "optimizer"}.get(kind)
    if train and not (kind == "float" and typed and isinstance(raw, int)):
        assert OPTIONS[train].parse(raw, text=not typed) == expected


@pytest.mark.parametrize("kind, raw, typed", [
    ("bool", "maybe", False), ("int", "1.5", False), ("int", 1.5, True), ("int", True, True), ("float", True, True),
    ("int", "5", True), ("ints", "", False), ("float", None, False),
])
def test_the_parser_refuses_alike(kind, raw, typed):
    from cnnbench.values import convert

    with pytest.raises((TypeError, ValueError)):
        convert(kind, raw, typed_source=typed)
