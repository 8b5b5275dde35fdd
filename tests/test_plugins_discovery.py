"""One discovery mechanism for every extension point (cnnbench.registry): a plugin is one module
plus one entry-point line, in the group of its kind, found the way cnnbench's own built-ins are
(setup.cfg). Here a third-party distribution is a dist-info folder with an ``entry_points.txt`` on
sys.path, beside its module: a tracker and an artifact builder record a real ``cnnbench train`` run,
a preset is listed and applied, and a broken entry point of any kind is one line naming it."""

from __future__ import annotations

import json
import sys
from importlib.resources import files
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cnnbench import registry
from test_registry import _fake_distribution

PLUGIN = '''
import json

from cnnbench.artifacts.callbacks import ArtifactCallback
from cnnbench.events import Callback
from cnnbench.presets import Preset


class JsonlTracker(Callback):
    """Each epoch's metrics as one JSON line (jsonl/epochs.jsonl, uploaded with the run)."""

    @classmethod
    def for_config(cls, config, **context):
        return cls()

    def on_epoch_end(self, run, epoch, metrics):
        path = run.artifacts_dir / "jsonl" / "epochs.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as out:
            out.write(json.dumps({"epoch": epoch, **metrics}) + "\\n")


class ParamShare(ArtifactCallback):
    """The share of the parameters in the first layer, as a summary metric and a text file."""

    @classmethod
    def from_config(cls, config):
        return cls()

    def on_run_end(self, run, summary):
        sizes = [p.numel() for p in run.model.parameters()]
        run.summary_metrics["first_layer_share"] = sizes[0] / sum(sizes)
        (run.artifacts_dir / "share.txt").write_text(f"{sizes[0]} of {sum(sizes)}\\n")


TINY = Preset("digits at 8x8, one epoch", (("dataset", "digits"), ("data.size", 8), ("epochs", 1)))
'''


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path for fake distributions; every registry re-read before and after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for reg in registry.REGISTRIES:
        reg.reload()
    yield tmp_path
    monkeypatch.undo()
    sys.modules.pop("jsonl_plugin", None)
    for reg in registry.REGISTRIES:
        reg.reload()


def _install(site: Path, entry_points: str) -> None:
    (site / "jsonl_plugin.py").write_text(PLUGIN)
    _fake_distribution(site, "jsonl-plugin", entry_points)


def test_a_tracker_and_an_artifact_plugin_record_a_real_run(site, cli, tracking_uri, experiment, runs_in, fast_flags):
    _install(site, "[cnnbench.trackers]\njsonl = jsonl_plugin:JsonlTracker\n"  # the one registration line each
                   "[cnnbench.artifacts]\nfirst-layer-share = jsonl_plugin:ParamShare\n")
    listed = cli("list", "trackers")
    assert "jsonl" in listed.output and "[jsonl-plugin]" in listed.output and "mlflow" in listed.output
    share = next(line for line in cli("list", "artifacts").output.splitlines() if "first-layer-share" in line)
    assert "(every run)  [jsonl-plugin]" in share  # no switch names it
    result = cli("train", "--dataset", "digits", "--train-size", "200", "--epochs", "2", "--batch-size", "64",
                 "--device", "cpu", "--tracking-uri", tracking_uri, "--experiment", experiment, *fast_flags)
    assert result.exit_code == 0, result.output
    (run,) = runs_in(experiment)
    assert run.info.status == "FINISHED"
    client = MlflowClient(tracking_uri)
    # the tracker ran before MLflow's (the built-in is last), so its file was uploaded with the run
    lines = [json.loads(line) for line in
             Path(client.download_artifacts(run.info.run_id, "jsonl/epochs.jsonl", str(site))).read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
    assert {line["epoch"]: line["val_accuracy"] for line in lines} == pytest.approx(logged)
    # the artifact builder: its summary metric and its file
    first, total = map(int, Path(client.download_artifacts(run.info.run_id, "share.txt", str(site))).read_text().split(" of "))
    assert total == int(run.data.params["param_count"])
    assert run.data.metrics["first_layer_share"] == pytest.approx(first / total)


def test_default_runs_keep_their_callbacks_and_order():
    from cnnbench import api
    from conftest import tiny_config

    config = tiny_config(artifacts={"kernels": True, "curves": True})
    names = [type(cb).__name__ for cb in api.run_callbacks(config, tracker=False)]
    assert names == ["PhaseTimer", "RunRecord", "TestEvaluation", "KernelSnapshots", "LearningCurves",
                     "ConsoleProgress", "_Tail"]
    assert [n for n, _ in api._tracker_classes()] == ["mlflow"]


def test_presets_are_listed_from_the_registry(site, cli):
    from cnnbench.config import TrainConfig, apply_values

    _install(site, "[cnnbench.presets]\ntiny-digits = jsonl_plugin:TINY\n")
    assert registry.PRESETS.names() == ["fast-cifar10", "tiny-digits"]
    listed = cli("list", "presets").output
    assert "fast-cifar10" in listed and "[cnnbench]" in listed
    assert "tiny-digits" in listed and "[jsonl-plugin]" in listed and "data.size = 8; epochs = 1" in listed
    config = apply_values(TrainConfig(), {"preset": "tiny-digits"}, text=False).validate()
    assert (config.data.name, config.data.options["size"], config.run.epochs) == ("digits", 8, 1)


def test_every_builtin_study_file_is_an_entry_point():
    on_disk = {p.name[:-5] for p in files("cnnbench.studies").iterdir() if p.name.endswith(".toml")}
    declared = {e.name for e in registry.STUDIES.entries() if e.distribution == "cnnbench" and e.plugin}
    assert on_disk == declared and len(on_disk) >= 29


@pytest.mark.parametrize("group", ["trackers", "artifacts", "presets", "studies", "models", "datasets"])
def test_a_broken_entry_point_is_one_line_naming_it(site, group):
    _fake_distribution(site, "broken-plugin", f"[cnnbench.{group}]\nbroken = no_such_module_xyz:THING\n")
    reg = next(r for r in registry.REGISTRIES if r.group == f"cnnbench.{group}")
    with pytest.raises(registry.PluginError) as err:
        reg.get("broken")
    message = str(err.value)
    assert "\n" not in message and "broken-plugin" in message and "no_such_module_xyz:THING" in message
    assert "No module named 'no_such_module_xyz'" in message
    assert len(reg.names()) >= 1  # the built-ins still load


@pytest.mark.parametrize("group, flags", [("trackers", []), ("artifacts", []), ("presets", ["--preset", "broken"])])
def test_a_broken_tracker_artifact_or_preset_refuses_the_run_in_one_line(site, cli, tracking_uri, experiment, runs_in,
                                                                         group, flags):
    _install(site, f"[cnnbench.{group}]\nbroken = jsonl_plugin:{'JsonlTracker' if group == 'presets' else 'TINY'}\n")
    result = cli("train", "--dataset", "digits", "--train-size", "100", "--epochs", "1", "--device", "cpu",
                 "--tracking-uri", tracking_uri, "--experiment", experiment, "--quiet", *flags)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    expected = "a Preset" if group != "presets" else "the class JsonlTracker"
    assert "broken" in line and "jsonl-plugin" in line and "entry point jsonl_plugin:" in line and expected in line
    assert runs_in(experiment) == []


STUDY = """
name = "one-cell"
description = "one cell, to see a tracker plugin record a study cell"
seeds = 1

[base]
model = "mlp"
dataset = "digits"
epochs = 1
tsne = false
retrieval = false

[grid]
train_size = [100]
"""


@pytest.mark.slow
def test_a_tracker_plugin_records_study_cells_and_tune_trials(site, cli, tracking_uri, experiment, runs_in, monkeypatch):
    _install(site, "[cnnbench.trackers]\njsonl = jsonl_plugin:JsonlTracker\n")
    monkeypatch.setenv("PYTHONPATH", str(site))  # worker processes find the plugin too
    (site / "one.toml").write_text(STUDY)
    study = cli("study", "run", site / "one.toml", "--tracking-uri", tracking_uri, "--experiment", experiment,
                "--storage", f"sqlite:///{site}/optuna.db")
    assert study.exit_code == 0, study.output
    tune = cli("tune", "--tracking-uri", tracking_uri, "--experiment", experiment, "--storage", f"sqlite:///{site}/optuna.db",
               "--study-name", "t", "--trials", "1", "--epochs", "1", "--train-size", "100", "--no-tsne", "--no-retrieval",
               "--no-kernels", "--no-memory", "--no-predictions", "--no-log-model")
    assert tune.exit_code == 0, tune.output
    client = MlflowClient(tracking_uri)
    children = [r for r in runs_in(experiment) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2  # the study's cell and the tune trial
    for run in children:
        assert [a.path for a in client.list_artifacts(run.info.run_id, "jsonl")] == ["jsonl/epochs.jsonl"], run.info.run_name
