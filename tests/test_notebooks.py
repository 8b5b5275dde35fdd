"""The notebooks run as shipped: executed with nbclient (parameters injected after the cell tagged
``parameters``, as papermill does) against a store this test fills with real cnnbench runs — train
runs, a tune study, and a study parent with cells x seeds — and their outputs checked against what
MLflow holds."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from cnnbench import api
from cnnbench.config import TrainConfig
from cnnbench.tracking.mlflow_tracker import MlflowTracker

pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FAST = ["--no-tsne", "--no-retrieval", "--no-kernels", "--no-predictions", "--no-memory", "--no-log-model", "--quiet"]
EXPERIMENT = "notebooks"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two train runs, one tune study (2 trials), one study parent with 2 cells x 2 seeds."""
    from click.testing import CliRunner

    from cnnbench.cli import main

    folder = tmp_path_factory.mktemp("nbstore")
    uri = f"sqlite:///{folder}/mlflow.db"
    common = ["--tracking-uri", uri, "--experiment", EXPERIMENT, "--epochs", "2", "--train-size", "300", *FAST]
    for lr in ("1e-3", "3e-3"):
        result = CliRunner().invoke(main, ["train", "--lr", lr, *common], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["tune", *common, "--storage", f"sqlite:///{folder}/optuna.db", "--study-name", "nb",
                                       "--trials", "2", "--sampler", "grid", "--pruner", "none",
                                       "--search", "batch_size=choice(16,32)"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parent = client.create_run(exp_id, run_name="study abl", tags={"cnnbench.study": "abl", "cnnbench.role": "study"})
    for cell, lr in (("lr=1e-3", 1e-3), ("lr=1e-2", 1e-2)):
        for seed in (0, 1):
            config = TrainConfig().replace(optim={"lr": lr}, run={"epochs": 2, "seed": seed, "quiet": True},
                                           data={"train_size": 300})
            tracker = MlflowTracker(tracking_uri=uri, experiment=EXPERIMENT, parent_run_id=parent.info.run_id, log_model=False,
                                    extra_tags={"cnnbench.study": "abl", "cnnbench.role": "cell",
                                                "cnnbench.study.cell": cell, "cnnbench.seed": str(seed)})
            api.train(config, [tracker])
    client.set_terminated(parent.info.run_id, "FINISHED")
    return {"uri": uri, "folder": folder, "client": client, "exp_id": exp_id, "parent": parent.info.run_id}


def execute(name: str, cwd: Path, **parameters) -> list:
    """Run notebooks/<name> with ``parameters`` injected after its parameters cell; return its cells."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb.cells


def text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def has_figure(cell) -> bool:
    return any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def test_compare_runs_separates_kinds_and_reports_them(store, tmp_path):
    cells = execute("compare_runs.ipynb", tmp_path, TRACKING_URI=store["uri"], EXPERIMENT=EXPERIMENT, FACTOR="params.lr")
    code = [c for c in cells if c.cell_type == "code"]
    summary = text(code[2])
    for line in ("train run: 2", "tune parent: 1", "tune trial: 2", "study parent: 1", "study cell: 4"):
        assert line in summary, summary
    client = store["client"]
    trains = [r for r in client.search_runs([store["exp_id"]]) if r.data.tags.get("cnnbench.role") == "train"]
    ranked = sorted(trains, key=lambda r: -r.data.metrics["test_accuracy"])
    table = text(code[3])
    positions = [table.index(r.info.run_name) for r in ranked]
    assert positions == sorted(positions)  # best test_accuracy first
    assert "lenet5-digits-adam-lr1e-3" in table and "lenet5-digits-adam-lr3e-3" in table
    assert "trial" not in table  # trials are not train runs
    assert has_figure(code[4])
    parent = next(r for r in client.search_runs([store["exp_id"]]) if r.data.tags.get("cnnbench.role") == "tune")
    tune_text = text(code[5])
    assert f"study 'nb' (parent run {parent.info.run_name}): 2 trials, searching batch_size; " \
           f"best val_accuracy {parent.data.metrics['best_val_accuracy']:.4f}" in tune_text
    assert "batch_size16-trial" in tune_text and "batch_size32-trial" in tune_text
    assert has_figure(code[6])
    assert "0.001" in text(code[7]) and "0.003" in text(code[7])


def test_study_report_summarises_cells_over_seeds(store, tmp_path):
    cells = execute("study_report.ipynb", tmp_path, TRACKING_URI=store["uri"], EXPERIMENT=EXPERIMENT, STUDY="abl")
    code = [c for c in cells if c.cell_type == "code"]
    assert f"study 'abl' (parent run {store['parent']}): 2 cells, 4 runs, 4 finished" in text(code[2])
    client = store["client"]
    children = client.search_runs([store["exp_id"]], filter_string=f"tags.mlflow.parentRunId = '{store['parent']}'")
    summary = text(code[3])
    for cell in ("lr=1e-3", "lr=1e-2"):
        values = [r.data.metrics["test_accuracy"] for r in children if r.data.tags["cnnbench.study.cell"] == cell]
        assert len(values) == 2
        assert f"{np.mean(values):.6f}" in summary, (cell, values, summary)
    assert has_figure(code[4]) and has_figure(code[5])


def test_a_missing_store_is_an_error_not_an_empty_store(tmp_path):
    missing = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(CellExecutionError, match="no MLflow store at"):
        execute("compare_runs.ipynb", tmp_path, TRACKING_URI=f"sqlite:///{missing}", EXPERIMENT=EXPERIMENT)
    assert not missing.exists()
