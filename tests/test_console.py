"""The console stays cnnbench's: after ``console.configure`` MLflow's INFO lines, download bars and
advisory warnings are gone (all back with verbose), and quiet leaves only the final run lines."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

TRAIN = ["train", "--epochs", "1", "--train-size", "200", "--no-tsne", "--no-retrieval", "--no-kernels",
         "--no-predictions"]
SCRIPT = ("import sys; from cnnbench.tracking import console; console.configure(verbose={verbose}, quiet={quiet}); "
          "from cnnbench.cli import main; main(sys.argv[1:])")


def run_train(tmp_path, *extra: str, verbose: bool = False, quiet: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["OMP_NUM_THREADS"] = "1"
    store = f"sqlite:///{tmp_path}/mlflow.db"  # a new store: MLflow logs its table creation at INFO
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(verbose=verbose, quiet=quiet), *TRAIN,
                           "--tracking-uri", store, *extra], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_default_console_has_no_mlflow_info(tmp_path):
    out = run_train(tmp_path)
    assert "epoch 1/1" in out and "MLflow run:" in out and "mlflow ui --backend-store-uri sqlite:" in out
    for noise in ("INFO mlflow", "Creating initial MLflow database tables", "Downloading artifacts", "UserWarning",
                  "type hints"):
        assert noise not in out, out


def test_verbose_shows_mlflow_info(tmp_path):
    out = run_train(tmp_path, "--no-log-model", verbose=True)
    assert "INFO mlflow" in out and "Creating initial MLflow database tables" in out


def test_quiet_prints_only_the_run_lines(tmp_path):
    out = run_train(tmp_path, "--quiet", quiet=True)
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines and all(line.startswith(("test_accuracy:", "MLflow run:", "See it in the MLflow UI")) for line in lines), out
