"""The notebooks run as shipped: executed with nbclient (parameters injected after the cell tagged
``parameters``, as papermill does) against a store this test fills with real cnnbench runs — train
runs and a tune study in one experiment, and a real ``cnnbench study run`` (2 cells x 2 seeds) in the
experiment named after the study — and their outputs checked against what MLflow holds, the study's
against its own report (``cnnbench.study.report.build``)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from conftest import new_store


pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
FAST = ["--no-tsne", "--no-retrieval", "--no-kernels", "--no-predictions", "--no-memory", "--no-log-model", "--quiet"]
EXPERIMENT = "notebooks"


STUDY_FILE = """
name = "abl"
seeds = 2

[base]
model = "lenet5"
dataset = "digits"
epochs = 2
train_size = 300
kernels = false
predictions = false
memory = false
confusion = false
summary = false

[grid]
lr = [0.001, 0.01]
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two train runs and one tune study (2 trials) in experiment 'notebooks'; then a study 'abl' of
    2 cells x 2 seeds, run as a user runs it (no --experiment: it logs into experiment 'abl')."""
    from click.testing import CliRunner

    from cnnbench.cli import main

    folder = tmp_path_factory.mktemp("nbstore")
    uri = new_store(folder)
    common = ["--tracking-uri", uri, "--experiment", EXPERIMENT, "--epochs", "2", "--train-size", "300", *FAST]
    for lr in ("1e-3", "3e-3"):
        result = CliRunner().invoke(main, ["train", "--lr", lr, *common], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["tune", *common, "--storage", f"sqlite:///{folder}/optuna.db", "--study-name", "nb",
                                       "--trials", "2", "--sampler", "grid", "--pruner", "none",
                                       "--search", "batch_size=choice(16,32)"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (folder / "abl.toml").write_text(STUDY_FILE)
    result = CliRunner().invoke(main, ["study", "run", str(folder / "abl.toml"), "--tracking-uri", uri,
                                       "--storage", f"sqlite:///{folder}/queue.db"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    study_exp = client.get_experiment_by_name("abl").experiment_id
    parent = client.search_runs([study_exp], filter_string="tags.`cnnbench.role` = 'study'")
    assert len(parent) == 1
    return {"uri": uri, "folder": folder, "client": client, "exp_id": exp_id, "study_exp": study_exp,
            "parent": parent[0].info.run_id}


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
        parts.append(out.get("data", {}).get("text/markdown", ""))
    return "\n".join(parts)


def has_figure(cell) -> bool:
    return any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def test_compare_runs_separates_kinds_and_reports_them(store, tmp_path):
    cells = execute("compare_runs.ipynb", tmp_path, TRACKING_URI=store["uri"], EXPERIMENT=EXPERIMENT, FACTOR="params.lr")
    code = [c for c in cells if c.cell_type == "code"]
    summary = text(code[2])
    for line in ("train run: 2", "tune parent: 1", "tune trial: 2"):
        assert line in summary, summary
    assert "study" not in summary  # the study logged into its own experiment
    client = store["client"]
    trains = [r for r in client.search_runs([store["exp_id"]]) if r.data.tags.get("cnnbench.role") == "train"]
    ranked = sorted(trains, key=lambda r: -r.data.metrics["test_accuracy"])
    table = text(code[3])
    positions = [table.index(r.info.run_name) for r in ranked]
    assert positions == sorted(positions)  # best test_accuracy first
    assert "lenet5-digits-adam-lr1e-3" in table and "lenet5-digits-adam-lr3e-3" in table
    assert " · " not in table  # trials (named `t00 bs=16 · lenet5`) are not train runs
    assert has_figure(code[4])
    parent = next(r for r in client.search_runs([store["exp_id"]]) if r.data.tags.get("cnnbench.role") == "tune")
    tune_text = text(code[5])
    assert f"study 'nb' (parent run {parent.info.run_name}): 2 trials, searching batch_size; " \
           f"best val_accuracy {parent.data.metrics['best_val_accuracy']:.4f}" in tune_text
    assert "bs=16 · lenet5" in tune_text and "bs=32 · lenet5" in tune_text  # the trials, named by their values
    assert has_figure(code[6])
    assert "0.001" in text(code[7]) and "0.003" in text(code[7])


def check_study_report(store, cells) -> None:
    from cnnbench.study import report as study_report

    code = [c for c in cells if c.cell_type == "code"]
    assert f"study 'abl' (parent run {store['parent']}, experiment 'abl'): 2 cells, 4 runs, 4 finished" in text(code[2])
    client = store["client"]
    report = study_report.build(client, store["parent"])
    children = client.search_runs([store["study_exp"]], filter_string=f"tags.mlflow.parentRunId = '{store['parent']}'")
    shown = text(code[3])
    assert study_report.render(report, "md").strip() in shown  # the report itself, as `study report --format md`
    for cell in ("lr=0.001", "lr=0.01"):
        values = [r.data.metrics["test_accuracy"] for r in children if r.data.tags["cnnbench.study.cell"] == cell]
        assert len(values) == 2
        assert f"{np.mean(values):.6f}" in shown, (cell, values, shown)  # the table's mean, from MLflow's values
        assert f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" in shown, (cell, shown)
    assert "paired" in shown and "lr=0.001" in shown
    assert "t-interval" not in "".join(c.source for c in cells)  # no interval code of its own
    assert has_figure(code[4]) and has_figure(code[5])


def test_study_report_shows_the_studys_own_report(store, tmp_path):
    cells = execute("study_report.ipynb", tmp_path, TRACKING_URI=store["uri"], EXPERIMENT="abl", STUDY="abl")
    check_study_report(store, cells)


def test_study_report_without_an_experiment_finds_the_study_in_its_own_experiment(store, tmp_path):
    """As shipped after `cnnbench study run`: no EXPERIMENT, no STUDY; the study is in experiment 'abl'."""
    cells = execute("study_report.ipynb", tmp_path, TRACKING_URI=store["uri"], EXPERIMENT=None, STUDY=None)
    check_study_report(store, cells)


def test_compare_runs_without_an_experiment_compares_the_studys_cells(store, tmp_path):
    cells = execute("compare_runs.ipynb", tmp_path, TRACKING_URI=store["uri"], EXPERIMENT=None, FACTOR="params.lr")
    code = [c for c in cells if c.cell_type == "code"]
    summary = text(code[2])
    assert "5 runs in experiment 'abl'" in summary and "study parent: 1" in summary and "study cell: 4" in summary, summary
    assert "train run" not in summary
    client = store["client"]
    children = client.search_runs([store["study_exp"]], filter_string=f"tags.mlflow.parentRunId = '{store['parent']}'")
    table = text(code[3])
    shown = sorted(children, key=lambda r: table.index(r.info.run_name))  # every cell x seed is listed
    accuracies = [r.data.metrics["test_accuracy"] for r in shown]
    assert accuracies == sorted(accuracies, reverse=True)  # best test_accuracy first
    assert has_figure(code[4])
    assert "no cnnbench tune parent runs here" in text(code[5])
    factor = text(code[7])
    for lr in ("0.001", "0.01"):
        values = [r.data.metrics["test_accuracy"] for r in children if r.data.params["lr"] == lr]
        assert len(values) == 2 and f"{np.mean(values):.6f}" in factor, (lr, factor)


def test_a_missing_store_is_an_error_not_an_empty_store(tmp_path):
    missing = tmp_path / "nowhere" / "mlflow.db"
    with pytest.raises(CellExecutionError, match="no MLflow store at"):
        execute("compare_runs.ipynb", tmp_path, TRACKING_URI=f"sqlite:///{missing}", EXPERIMENT=EXPERIMENT)
    assert not missing.exists()
