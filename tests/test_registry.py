"""The plugin registry: typed options, entry-point discovery, broken and duplicate plugins."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cnnbench.errors import ConfigError, PluginError
from cnnbench.registry import MODEL_GROUP, ModelPlugin, Option, Registry, parse_key_values, resolve_options


def test_option_parses_each_type():
    assert Option("n", "int", 1, "").parse("42") == 42
    assert Option("x", "float", 0.0, "").parse("1e-3") == pytest.approx(0.001)
    assert Option("b", "bool", False, "").parse("yes") is True
    assert Option("b", "bool", True, "").parse("false") is False
    assert Option("h", "ints", (1,), "").parse("128, 64") == (128, 64)
    assert Option("s", "str", "a", "", choices=("a", "b")).parse("b") == "b"


@pytest.mark.parametrize(
    "option, raw, fragment",
    [
        (Option("n", "int", 1, ""), "4.5", "expects an integer"),
        (Option("b", "bool", False, ""), "maybe", "expects true or false"),
        (Option("s", "str", "a", "", choices=("a", "b")), "c", "must be one of a, b"),
        (Option("p", "float", 0.0, "", low=0.0, high=1.0), "1.5", "must be <= 1.0"),
    ],
)
def test_option_rejects_bad_values(option, raw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        option.parse(raw)


def test_resolve_options_fills_defaults_and_lists_valid_keys():
    declared = (Option("a", "int", 1, ""), Option("b", "float", 0.5, ""))
    assert resolve_options(declared, {"a": "3"}, owner="model x") == {"a": 3, "b": 0.5}
    with pytest.raises(ConfigError, match=r"unknown option\(s\) c for model x; valid options: a, b"):
        resolve_options(declared, {"c": "1"}, owner="model x")


def test_parse_key_values_requires_equals():
    assert parse_key_values(["a=1", "b = x"], flag="--model-option") == {"a": "1", "b": "x"}
    with pytest.raises(ConfigError, match="--model-option expects key=value"):
        parse_key_values(["oops"], flag="--model-option")


def test_builtins_come_from_entry_points():
    from cnnbench.registry import DATASETS, MODELS

    for name in ("mlp", "lenet5", "resnet18"):
        entry = next(e for e in MODELS.entries() if e.name == name)
        assert entry.distribution == "cnnbench" and entry.plugin is not None
    assert "digits" in DATASETS.names()


def test_unknown_name_lists_available():
    from cnnbench.registry import MODELS

    with pytest.raises(PluginError, match=r"unknown model 'nope'; available models: .*lenet5"):
        MODELS.get("nope")


def _fake_distribution(root: Path, dist: str, entry_points: str) -> None:
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_broken_plugin_is_recorded_not_raised(fake_site):
    _fake_distribution(fake_site, "broken-plugin", f"[{MODEL_GROUP}]\nbroken_net = no_such_module_xyz:NET\n")
    registry = Registry("model", MODEL_GROUP, ModelPlugin)
    entry = next(e for e in registry.entries() if e.name == "broken_net")
    assert entry.plugin is None and entry.distribution == "broken-plugin"
    assert "No module named 'no_such_module_xyz'" in entry.error
    assert "lenet5" in registry.names()  # the others still load
    with pytest.raises(PluginError, match="broken_net.*broken-plugin.*cannot be used.*no_such_module_xyz"):
        registry.get("broken_net")


def test_two_distributions_claiming_one_name_is_an_error_naming_both(fake_site):
    (fake_site / "dup_models.py").write_text("from cnnbench.models.mlp import MLP\n")
    _fake_distribution(fake_site, "first-dist", f"[{MODEL_GROUP}]\ndupnet = dup_models:MLP\n")
    _fake_distribution(fake_site, "second-dist", f"[{MODEL_GROUP}]\ndupnet = dup_models:MLP\n")
    registry = Registry("model", MODEL_GROUP, ModelPlugin)
    with pytest.raises(PluginError, match="claimed by more than one plugin: ") as err:
        registry.get("dupnet")
    assert "first-dist (dup_models:MLP)" in str(err.value) and "second-dist (dup_models:MLP)" in str(err.value)


def test_register_refuses_duplicates():
    from cnnbench.models.mlp import MLP

    registry = Registry("model", MODEL_GROUP, ModelPlugin)
    with pytest.raises(PluginError, match="'mlp' is already registered by cnnbench"):
        registry.register("mlp", MLP)


def test_cli_list_shows_broken_plugin(fake_site, cli):
    from cnnbench.registry import MODELS

    _fake_distribution(fake_site, "broken-plugin", f"[{MODEL_GROUP}]\nbroken_net = no_such_module_xyz:NET\n")
    MODELS.reload()
    try:
        result = cli("list", "models")
        assert result.exit_code == 0
        line = next(l for l in result.output.splitlines() if "broken_net" in l)
        assert "BROKEN" in line and "broken-plugin" in line and "no_such_module_xyz" in line
        bad = cli("train", "--model", "broken_net")
        assert bad.exit_code == 2 and "cannot be used" in bad.stderr
    finally:
        sys.modules.pop("dup_models", None)
        MODELS.reload()
