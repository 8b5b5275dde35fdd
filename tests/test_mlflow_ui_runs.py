"""Issue 29 (2, 3, 4), in real SQLite stores: one-point metrics are bars in MLflow's chart view and
per-epoch metrics curves; study and tune parents carry what a user compares (cell means, the best
trial's metrics), a description saying what the campaign is with a link to its best run; child run
names lead with what differs; every run of a campaign shows one Source.

MLflow 3.17's chart view (runs-charts.types.ts, ``getBaseChartAndSectionConfigs``) draws a metric as
a LINE when any run's data trace "contains multiple epochs" -- its metric history has more than one
point where loaded, else its latest value's step is ``>= MIN_NUMBER_OF_STEP_FOR_LINE_COMPARISON``
(1) -- and as a BAR across runs otherwise; :func:`chart_type` is that rule.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from test_study_run import GRID, PAIRS  # a 2 x 2 grid study (optimizer x batch size), 2 seeds

from conftest import new_store
from cnnbench.study.report import metric_name  # `cell/optimizer_sgd/mean`: '=' is not a metric-name character
from cnnbench.tracking.campaign_notes import BEST_PREFIX, TAG_BEST_RUN

EPOCH_KEYS = {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s", "epoch_images_per_s"}
LINK = re.compile(r"\]\(#/experiments/(\d+)/runs/([0-9a-f]{32})\?workflowType=machine_learning\)")
SOURCE = ("mlflow.source.name", "mlflow.source.type")


def chart_type(client, runs, key: str) -> str:
    """MLflow's choice for ``key`` over ``runs`` (dataTraceMetricsContainMultipleEpochs, both branches)."""
    for run in runs:
        if key not in run.data.metrics:
            continue
        history = client.get_metric_history(run.info.run_id, key)
        latest = max(history, key=lambda m: (m.step, m.timestamp))
        if len(history) > 1 or latest.step >= 1:
            return "LINE"
    return "BAR"


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def by_role(client, experiment: str, role: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`cnnbench.role` = '{role}'", max_results=500)


def links(client, run) -> list:
    """The runs the description links to, each checked to exist in the experiment the link names."""
    found = []
    for exp_id, run_id in LINK.findall(run.data.tags["mlflow.note.content"]):
        linked = client.get_run(run_id)
        assert linked.info.experiment_id == exp_id
        found.append(linked)
    return found


# -- (2) bars and curves ---------------------------------------------------------------------
def test_one_point_metrics_are_one_point_at_step_0_and_epoch_metrics_one_per_epoch(cli, tmp_path, fast_flags):
    uri = new_store(tmp_path)
    flags = [f for f in fast_flags if f != "--no-log-model"]  # the test metrics logged with the model too
    for seed in ("0", "1"):
        result = cli("train", "--tracking-uri", uri, "--experiment", "bars", "--epochs", "2", "--train-size", "100",
                     "--seed", seed, *flags)
        assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    runs = by_role(client, "bars", "train")
    assert len(runs) == 2
    for run in runs:
        metrics = run.data.metrics
        curves = {k for k in metrics if k in EPOCH_KEYS}
        assert {"train_loss", "val_accuracy", "epoch_time_s"} <= curves
        for key in metrics:
            assert steps(client, run.info.run_id, key) == ([1, 2] if key in curves else [0]), key
        assert {"test_accuracy", "test_loss", "fit_time_s", "time_fit_s", "best_epoch"} <= set(metrics) - curves
    for key in runs[0].data.metrics:
        assert chart_type(client, runs, key) == ("LINE" if key in EPOCH_KEYS else "BAR"), key


# -- (3, 4) a study --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_study_parent_describes_itself_links_its_best_run_and_its_cells_name_seed_and_values(tmp_path):
    uri = new_store(tmp_path)
    path = tmp_path / "grid.toml"
    path.write_text(GRID.format(epochs=1, train_size=100))
    # its own process, as a user starts it (the description repeats its command line); two workers:
    # worker.py processes beside the command's own
    out = subprocess.run([sys.executable, "-m", "cnnbench.cli", "study", "run", str(path), "--tracking-uri", uri,
                          "--experiment", "ui-study", "--storage", f"sqlite:///{tmp_path}/queue.db", "--workers", "2"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    client = MlflowClient(uri)
    [parent], cells = by_role(client, "ui-study", "study"), by_role(client, "ui-study", "cell")
    assert len(cells) == len(PAIRS) and all(c.info.status == "FINISHED" for c in cells)

    # (4) names lead with the seed and the varied value; one Source for the whole study
    for cell in cells:
        seed, p = cell.data.tags["cnnbench.seed"], cell.data.params
        assert cell.info.run_name == f"s{seed} opt={p['optimizer']} bs={p['batch_size']} · lenet5"
    assert len({cell.data.tags["cnnbench.study.worker"] for cell in cells}) == 2
    assert len({tuple(r.data.tags.get(k) for k in SOURCE) for r in [parent, *cells]}) == 1
    assert parent.data.tags["mlflow.source.name"]

    # (3) per-cell means and interval bounds as one-point parent metrics (bars), the cells' test accuracy too
    for label in {label for label, _ in PAIRS}:
        for key in ("mean", "n"):  # ci_low / ci_high too from 3 seeds on (the report gives no interval below)
            assert steps(client, parent.info.run_id, metric_name("cell", label, key)) == [0]
        assert parent.data.metrics[metric_name("cell", label, "n")] == 2
        mean = sum(c.data.metrics["test_accuracy"] for c in cells if c.data.tags["cnnbench.study.cell"] == label) / 2
        assert parent.data.metrics[metric_name("cell", label, "mean")] == pytest.approx(mean)
    assert chart_type(client, cells, "test_accuracy") == "BAR" and chart_type(client, cells, "val_accuracy") == "LINE"

    # (3) the description: what it is, how to resume and read it, the best cell's runs linked
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("optimizer x batch size on digits")
    assert "**Study `grid`**" in note and "4 cells x 2 seeds = 8 runs" in note
    assert "Grid optimizer = sgd, adam; batch_size = 32, 64; seeds 0, 1." in note
    assert f"cnnbench study run {path}" in note and "--experiment ui-study" in note  # the command that resumes it
    assert "cell/<label>/mean" in note and "report/report.md" in note and "cnnbench study report grid" in note
    best = parent.data.tags["cnnbench.study.best_cell"]
    assert f"**Best cell**: `{best}`" in note
    linked = links(client, parent)
    assert sorted(r.info.run_id for r in linked) == sorted(c.info.run_id for c in cells
                                                            if c.data.tags["cnnbench.study.cell"] == best)
    assert parent.data.tags[TAG_BEST_RUN] in {r.info.run_id for r in linked}


# -- (3, 4) a tune ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_tune_parent_carries_the_best_trials_metrics_and_links_it_and_the_retrained_model(cli, tmp_path):
    uri = new_store(tmp_path)
    result = cli("tune", "--tracking-uri", uri, "--experiment", "ui-tune", "--storage", f"sqlite:///{tmp_path}/o.db",
                 "--study-name", "ui-tune", "--trials", "3", "--n-jobs", "2", "--epochs", "1", "--train-size", "100",
                 "--pruner", "none", "--search", "lr=loguniform(1e-3,1e-2)", "--search", "batch_size=choice(32,64)",
                 "--retrain-best", "--retrain-epochs", "1", "--no-tsne", "--no-retrieval", "--no-kernels",
                 "--no-predictions", "--no-memory", "--quiet")
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    [parent], trials = by_role(client, "ui-tune", "tune"), by_role(client, "ui-tune", "trial")
    [retrain] = by_role(client, "ui-tune", "retrain")
    assert len(trials) == 3

    # (4) `t07 lr=3.2e-3 bs=64 · lenet5`; the retrain `best t..`; one Source over parent, trials (two
    # processes) and retrain
    for trial in trials:
        number, p = int(trial.data.tags["trial_number"]), trial.data.params
        lr = float(f"{float(p['lr']):.2g}")
        assert re.fullmatch(rf"t{number:02d} lr=\S+ bs={p['batch_size']} · lenet5", trial.info.run_name)
        assert float(trial.info.run_name.split()[1][3:]) == pytest.approx(lr)
        assert steps(client, trial.info.run_id, "test_accuracy") == [0] and steps(client, trial.info.run_id, "val_accuracy") == [1]
    best_number = int(parent.data.tags["best_trial_number"])
    best_trial = next(t for t in trials if int(t.data.tags["trial_number"]) == best_number)
    assert retrain.info.run_name == f"best {best_trial.info.run_name}"
    assert len({tuple(r.data.tags.get(k) for k in SOURCE) for r in [parent, *trials, retrain]}) == 1

    # (3) the best trial's final metrics on the parent, one point each at step 0 (bars)
    best_metrics = {k[len(BEST_PREFIX):]: v for k, v in parent.data.metrics.items() if k.startswith(BEST_PREFIX)}
    assert best_metrics == pytest.approx(best_trial.data.metrics)
    for key in best_metrics:
        assert steps(client, parent.info.run_id, BEST_PREFIX + key) == [0]
    assert parent.data.metrics["retrain_test_accuracy"] == retrain.data.metrics["test_accuracy"]

    # (3) the description: the study, its space, the command that adds trials, the best trial and the retrain linked
    note = parent.data.tags["mlflow.note.content"]
    assert "**Tune `ui-tune`**" in note and "`lr=loguniform(" in note and "`batch_size=choice(32,64)`" in note
    assert "cnnbench tune --model lenet5 --dataset digits --epochs 1" in note and "--study-name ui-tune" in note
    assert f"**Best**: trial {best_number}" in note and "best/<metric>" in note
    assert [r.info.run_id for r in links(client, parent)] == [best_trial.info.run_id, retrain.info.run_id]
    assert parent.data.tags[TAG_BEST_RUN] == parent.data.tags["best_trial_run_id"] == best_trial.info.run_id
