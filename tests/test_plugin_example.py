"""The example plugin under plugins/ installs as its own distribution, is found by `cnnbench list`
and trains — exactly what a third party's package would do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import new_store

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugins" / "cnnbench-example"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """pip-install the plugin into its own folder (the test environment itself stays untouched)."""
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(PLUGIN)],
        check=True, capture_output=True, text=True,
    )
    assert any(p.name.startswith("cnnbench_example-0.1.0.dist-info") for p in target.iterdir())
    return target


def _cnnbench(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "cnnbench.cli", *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_example_plugin_is_listed_and_trains(plugin_site, tmp_path):
    listed = _cnnbench(plugin_site, "list", "models")
    assert listed.returncode == 0, listed.stderr
    line = next(l for l in listed.stdout.splitlines() if l.strip().startswith("tiny_cnn"))
    assert "[cnnbench-example]" in line

    uri = new_store(tmp_path)
    trained = _cnnbench(
        plugin_site, "train", "--model", "tiny_cnn", "--model-option", "width=4", "--epochs", "1",
        "--tracking-uri", uri, "--experiment", "plugin", "--no-tsne", "--no-log-model", "--quiet",
    )
    assert trained.returncode == 0, trained.stderr
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("plugin").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "tiny_cnn" and run.data.params["model.width"] == "4"
    assert run.data.params["param_count"] == str(4 * 9 + 4 + 8 * 4 * 9 + 8 + 8 * 10 + 10)
    assert client.list_artifacts(run.info.run_id, "kernels")  # feature points work for a plugin model

    bad = _cnnbench(plugin_site, "train", "--model", "tiny_cnn", "--model-option", "depth=3")
    assert bad.returncode == 2 and "valid options: kernel_size, width" in bad.stderr
