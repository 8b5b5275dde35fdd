"""`mlflow run .` creates the run; cnnbench logs into that same run without a param conflict."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mlflow_run_logs_into_the_run_it_created(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    bin_dir = str(Path(sys.executable).parent)  # `mlflow run` takes python and cnnbench from PATH
    # MLflow's fluent API exports MLFLOW_EXPERIMENT_ID (and friends) into os.environ when earlier
    # in-process tests pick an experiment; a user's shell has none of them.
    inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    env = {**inherited, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "MLFLOW_TRACKING_URI": uri}
    mlflow_cli = shutil.which("mlflow", path=env["PATH"])
    out = subprocess.run(
        [mlflow_cli, "run", str(REPO), "--env-manager", "local", "--experiment-name", "mlproject",
         "-P", "model=resnet18", "-P", "batch_size=64", "-P", "epochs=1", "-P", "lr=1e-3"],
        capture_output=True, text=True, env=env, timeout=1200, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mlproject").experiment_id])
    assert len(runs) == 1  # cnnbench attached to mlflow's run instead of opening a second one
    run = runs[0]
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["model"] == "resnet18" and p["batch_size"] == "64" and p["epochs"] == "1"
    assert p["lr"] == "1e-3"  # mlflow's spelling kept; cnnbench's 0.001 is the same value, not a conflict
    assert p["param_count"] == "11175370"  # resnet18, 1 input channel, 10 classes
    assert p["kernel_size"] == "auto" and "cnnbench.resolved.kernel_size" not in run.data.tags  # resnet takes none
    assert "test_accuracy" in run.data.metrics
