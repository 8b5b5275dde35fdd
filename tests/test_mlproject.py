"""`mlflow run .` of this project (MLproject, conda.yaml, python_env.yaml, cnnbench.tracking.mlproject):
the run it creates is the one cnnbench logs into, named, in the experiment the entry point names,
never left RUNNING; without conda it stops before creating any run; the environment files are
pinned as setup.cfg says."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import mlflow
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from conftest import new_store

REPO = Path(__file__).resolve().parents[1]


def mlflow_run(tmp_path, *args, without_conda=False, timeout=1200, project=REPO):
    """`mlflow run PROJECT ARGS` in a subprocess against a fresh SQLite store: (completed process, client)."""
    uri = new_store(tmp_path)
    bin_dir = str(Path(sys.executable).parent)  # `mlflow run` takes python and cnnbench from PATH
    # MLflow's fluent API exports MLFLOW_EXPERIMENT_ID (and friends) into os.environ when earlier
    # in-process tests pick an experiment; a user's shell has none of them.
    dropped = {"MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"}
    if without_conda:
        dropped |= {"CONDA_EXE", "MLFLOW_CONDA_HOME"}
    inherited = {k: v for k, v in os.environ.items() if k not in dropped}
    path = [bin_dir] + os.environ["PATH"].split(os.pathsep)
    if without_conda:  # a machine without conda: no folder of PATH holds one
        path = [folder for folder in path if not shutil.which("conda", path=folder)]
    env = {**inherited, "PATH": os.pathsep.join(path), "MLFLOW_TRACKING_URI": uri}
    mlflow_cli = shutil.which("mlflow", path=env["PATH"])
    out = subprocess.run([mlflow_cli, "run", str(project), *args], capture_output=True, text=True, env=env,
                         timeout=timeout, cwd=tmp_path)
    return out, mlflow.tracking.MlflowClient(uri)


def all_runs(client):
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def pins(lines) -> dict[str, SpecifierSet]:
    """{normalised name: specifier} of requirement lines (the project itself, ``--editable .``, aside)."""
    found = {}
    for line in lines:
        if line.startswith("-") or line == ".":
            continue
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        assert name not in found, f"{req.name} listed twice"
        found[name] = req.specifier
    return found


def install_requires() -> dict[str, SpecifierSet]:
    return pins(line.strip() for line in setup_cfg()["options"]["install_requires"].splitlines() if line.strip())


def build_requires() -> dict[str, SpecifierSet]:
    return pins(tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"])


def test_conda_yaml_pins_every_package_as_setup_cfg_says():
    env = yaml.safe_load((REPO / "conda.yaml").read_text())
    conda_deps = [d for d in env["dependencies"] if isinstance(d, str)]
    pip_deps = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins(pip_deps) == install_requires()  # every package, each with setup.cfg's specifier
    assert all(str(spec) for spec in pins(pip_deps).values())  # none unpinned
    assert "--editable ." in pip_deps  # and cnnbench itself, from the project folder
    python = next(d.split("=", 1)[1] for d in conda_deps if d.startswith("python="))
    assert python == "3.11" and SpecifierSet(setup_cfg()["options"]["python_requires"]).contains("3.11.0")
    assert build_requires().items() <= pins(d for d in conda_deps if not d.startswith("python")).items()


def test_python_env_yaml_is_valid_for_mlflow_and_the_same_environment():
    from mlflow.utils.environment import _PythonEnv

    python_env = _PythonEnv.from_yaml(str(REPO / "python_env.yaml"))  # MLflow's own loader and checks
    assert python_env.python == "3.11"
    assert pins(python_env.dependencies) == install_requires()
    assert "--editable ." in python_env.dependencies
    assert build_requires().items() <= pins(python_env.build_dependencies).items()
    # `mlflow run --env-manager virtualenv|uv` builds its environment from conda.yaml (the MLproject's
    # conda_env, MLflow reads one environment file): the same environment
    assert _PythonEnv.from_conda_yaml(str(REPO / "conda.yaml")).to_dict() == python_env.to_dict()


def test_without_conda_mlflow_run_stops_before_creating_a_run(tmp_path):
    out, client = mlflow_run(tmp_path, "-P", "model=resnet18", "-P", "batch_size=64", without_conda=True,
                             timeout=300)
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr  # one line: no traceback, no MLflow error after it
    assert "--env-manager local" in lines[0] and "no conda executable" in lines[0] and "no run was created" in lines[0]
    assert all_runs(client) == []  # nothing RUNNING: nothing at all


@pytest.mark.slow
def test_mlflow_run_names_the_run_and_places_it_in_the_entry_points_experiment(tmp_path):
    out, client = mlflow_run(tmp_path, "--env-manager", "local", "-P", "epochs=1")
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = all_runs(client)  # none in Default
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "cnnbench"  # the MLproject's `experiment` parameter default
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"  # made like cnnbench's own
    assert run.info.run_name == "lenet5-digits-adam-lr1e-3"  # cnnbench's name, not MLflow's random one
    assert run.info.status == "FINISHED"
    assert run.data.params["experiment"] == "cnnbench" and "test_accuracy" in run.data.metrics


@pytest.mark.slow
def test_mlflow_run_of_the_tune_entry_point_names_its_parent(tmp_path):
    out, client = mlflow_run(tmp_path, "--env-manager", "local", "-e", "tune", "-P", "trials=1", "-P", "epochs=1",
                             "-P", "study_name=via-mlproject")  # storage left empty: cnnbench's default
    assert out.returncode == 0, out.stderr[-3000:]
    runs = all_runs(client)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert client.get_experiment(parent.info.experiment_id).name == "cnnbench"
    assert parent.data.tags["cnnbench.tune.study"] == "via-mlproject"  # -P study_name reached cnnbench tune
    assert parent.info.run_name.startswith("tune-") and "via-mlproject" in parent.info.run_name
    (trial,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {r.info.status for r in runs} == {"FINISHED"}

def test_the_plugin_leaves_other_mlflow_use_alone(tmp_path):
    """The experiment provider is in context only inside `mlflow run` of this project: not in this
    process, and another project's `mlflow run` goes to MLflow's Default as without cnnbench."""
    from mlflow.tracking.default_experiment import registry

    from cnnbench.tracking.mlproject import MlprojectExperimentProvider

    assert any(isinstance(p, MlprojectExperimentProvider) for p in registry._default_experiment_provider_registry)
    assert MlprojectExperimentProvider().in_context() is False
    other = tmp_path / "other"
    other.mkdir()
    (other / "MLproject").write_text("name: other\nconda_env: conda.yaml\nentry_points:\n  main:\n    command: 'true'\n")
    (other / "conda.yaml").write_text("name: other\ndependencies:\n  - python=3.11\n")
    out, client = mlflow_run(tmp_path, "--env-manager", "local", project=other, without_conda=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = all_runs(client)
    assert run.info.experiment_id == "0" and run.info.status == "FINISHED"

def test_a_failing_entry_point_ends_the_run_failed(tmp_path):
    out, client = mlflow_run(tmp_path, "--env-manager", "local", "-P", "optimizer=nope", "-P", "experiment=bad",
                             timeout=600)
    assert out.returncode == 1
    assert "nope" in out.stderr  # cnnbench's own refusal names the value
    (run,) = all_runs(client)
    assert client.get_experiment(run.info.experiment_id).name == "bad"  # -P experiment=NAME
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_mlflow_run_logs_into_the_run_it_created(tmp_path):
    out, client = mlflow_run(
        tmp_path, "--env-manager", "local", "--experiment-name", "mlproject", "--run-name", "given-name",
        "-P", "model=mlp", "-P", "batch_size=64", "-P", "epochs=1", "-P", "lr=1e-3",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("mlproject").experiment_id])
    assert len(runs) == 1  # cnnbench attached to mlflow's run instead of opening a second one
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "given-name"  # `mlflow run --run-name` wins over cnnbench's name
    p = run.data.params
    assert p["model"] == "mlp" and p["batch_size"] == "64" and p["epochs"] == "1"
    assert p["lr"] == "1e-3"  # mlflow's spelling kept; cnnbench's 0.001 is the same value, not a conflict
    assert p["param_count"] == "109386"  # mlp 784-128-64-10 (resnet18 here trained 60 s longer for the same checks)
    assert p["kernel_size"] == "auto" and "cnnbench.resolved.kernel_size" not in run.data.tags  # the mlp takes none
    assert "test_accuracy" in run.data.metrics
