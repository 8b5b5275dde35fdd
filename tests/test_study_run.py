"""``cnnbench study run`` end to end on digits (1-epoch cells): exactly one FINISHED child run per
cell x seed under one parent with --workers 2, with two separate commands on one SQLite or
PostgreSQL storage, and after a worker is SIGKILLed mid-cell; the rerun of a finished study trains
nothing and prints the same report; the report's statistics agree with values computed here from
the child runs; failed cells, retries, Ctrl-C and resume; bad input refused before any run.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from scipy import stats
from test_tune_study import postgres_url  # noqa: F401 -- the PostgreSQL server fixture, shared
from conftest import new_store

pytestmark = pytest.mark.slow

GRID = """
name = "grid"
description = "optimizer x batch size on digits"
seeds = 2
reference = "optimizer=sgd, batch_size=32"

[base]
model = "lenet5"
dataset = "digits"
epochs = {epochs}
train_size = {train_size}
kernels = false
predictions = false
memory = false
confusion = false
summary = false

[grid]
optimizer = ["sgd", "adam"]
batch_size = [32, 64]

[published]
source = "a made-up report"
"optimizer=adam, batch_size=32" = 0.5
"""
PAIRS = {(f"optimizer={o}, batch_size={b}", str(s)) for o in ("sgd", "adam") for b in (32, 64) for s in (0, 1)}


@pytest.fixture
def study_file(tmp_path):
    def write(epochs: int = 1, train_size: int = 200, text: str = GRID) -> Path:
        path = tmp_path / f"study-{epochs}-{train_size}.toml"
        path.write_text(text.format(epochs=epochs, train_size=train_size))
        return path

    return write


def runs(uri: str, experiment: str) -> tuple[list, list]:
    """(parents, cell runs) of the experiment."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    found = client.search_runs([exp.experiment_id], max_results=1000)
    role = lambda r: r.data.tags.get("cnnbench.role")  # noqa: E731
    return [r for r in found if role(r) == "study"], [r for r in found if role(r) == "cell"]


def check_exactly_once(uri: str, experiment: str, outputs: list[str] | None = None) -> tuple:
    parents, cells = runs(uri, experiment)
    assert len(parents) == 1
    parent = parents[0]
    finished = [r for r in cells if r.info.status == "FINISHED"]
    pairs = [(r.data.tags["cnnbench.study.cell"], r.data.tags["cnnbench.seed"]) for r in finished]
    others = [(r.data.tags.get("cnnbench.study.cell"), r.data.tags.get("cnnbench.seed"), r.info.status,
               r.data.tags.get("failure_reason")) for r in cells if r.info.status != "FINISHED"]
    assert sorted(pairs) == sorted(PAIRS), (others, outputs)  # every cell x seed once, none twice
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in cells)
    assert not [r for r in cells if r.info.status == "RUNNING"]
    return parent, cells


def finished_of(cells: list, outputs: list[str]) -> list:
    """The finished cell runs of a fault-free study; any other run beside them is only a transient
    store error's (MLflow's log_inputs race between two commands, a locked SQLite store under
    load), retried without using a retry."""
    from cnnbench.campaign.workers import TRANSIENT_MARKERS

    for r in cells:
        if r.info.status != "FINISHED":
            reason = r.data.tags.get("failure_reason") or ""
            assert r.info.status == "FAILED" and any(m in reason for m in TRANSIENT_MARKERS), (reason, outputs)
    return [r for r in cells if r.info.status == "FINISHED"]


def command(uri: str, experiment: str, path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cnnbench.cli", "study", "run", str(path), "--tracking-uri", uri,
            "--experiment", experiment, *args]


def report_json(cli, uri: str, parent_id: str) -> list[dict]:
    result = cli("study", "report", parent_id, "--tracking-uri", uri, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def table_of(output: str) -> str:
    """The printed report: from its title line to the line naming the parent run."""
    start = output.index("study grid ")
    return output[start : output.index("parent run ", start)]


def test_two_local_workers_run_each_cell_seed_once_and_a_rerun_trains_nothing(cli, tracking_uri, experiment, study_file, tmp_path):
    path = study_file()
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = ["study", "run", path, "--tracking-uri", tracking_uri, "--experiment", experiment, "--storage", storage]
    first = cli(*args, "--workers", "2")
    assert first.exit_code == 0, first.output
    parent, cells = check_exactly_once(tracking_uri, experiment)
    assert len(cells) == 8 and parent.info.status == "FINISHED"
    assert len({r.data.tags["cnnbench.study.worker"].rsplit(":", 1)[1] for r in cells}) == 2  # both workers ran cells
    client = MlflowClient(tracking_uri)
    run = next(r for r in cells if r.data.tags["cnnbench.study.cell"] == "optimizer=adam, batch_size=64")
    assert run.info.run_name == f"s{run.data.tags['cnnbench.seed']} opt=adam bs=64 · lenet5"  # what differs first
    assert run.data.params["optimizer"] == "adam" and run.data.params["batch_size"] == "64"
    assert {"fit_time_s", "test_accuracy", "epoch_time_s", "epoch_time_with_val_s", "fit_time_with_val_s"} <= set(run.data.metrics)
    assert {"metrics/history.csv", "plots/learning_curves.png"} <= {
        a.path for folder in ("metrics", "plots") for a in client.list_artifacts(run.info.run_id, folder)}
    report_files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/cells.csv", "report/cells.json", "report/metric_by_cell.png",
            "report/learning_curves.png", "report/vs_batch_size.png", "report/intervals.png", "report/forest.png"} <= report_files
    assert {"eval/test_predictions.npz"} <= {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert parent.data.tags["cnnbench.study"] == "grid" and parent.data.tags["cnnbench.study.budget"] == "default"

    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert len(runs(tracking_uri, experiment)[1]) == 8  # no training: no new run
    assert "FINISHED  test_accuracy" not in again.output
    assert table_of(again.output) == table_of(first.output)

    # the report's statistics, computed here from the child runs' metrics
    rows = {r["cell"]: r for r in report_json(cli, tracking_uri, parent.info.run_id)}
    values = {}
    for r in cells:
        values.setdefault(r.data.tags["cnnbench.study.cell"], {})[int(r.data.tags["cnnbench.seed"])] = r.data.metrics["test_accuracy"]
    ref = [values["optimizer=sgd, batch_size=32"][s] for s in (0, 1)]
    raw = {}
    for label, by_seed in values.items():
        v = [by_seed[s] for s in (0, 1)]
        row = rows[label]
        assert row["n"] == 2
        assert row["mean"] == pytest.approx(statistics.mean(v)) and row["std"] == pytest.approx(statistics.stdev(v))
        # two seeds: no seed interval (a t interval on 2 seeds leaves [0, 1]); said so
        assert row["interval"] == "n too small" and row["ci_low"] is None and row["ci_high"] is None
        if label != "optimizer=sgd, batch_size=32":
            # seeds are shared, so the comparison is paired: the mean of per-seed differences, ttest_rel
            assert row["vs"] == "optimizer=sgd, batch_size=32" and row["design"] == "paired"
            assert row["diff"] == pytest.approx(statistics.mean(a - b for a, b in zip(v, ref)))
            if len({a - b for a, b in zip(v, ref)}) > 1:
                raw[label] = stats.ttest_rel(v, ref).pvalue
                assert row["p"] == pytest.approx(raw[label])
            assert row["star"] is False  # n = 2 is never starred
    if raw:  # Holm over the table's comparisons (the ones with a t statistic here)
        from statsmodels.stats.multitest import multipletests

        if len(raw) == 3:
            holm = dict(zip(raw, multipletests(list(raw.values()), method="holm")[1]))
            for label, p in holm.items():
                assert rows[label]["p_corrected"] == pytest.approx(p)
    adam = rows["optimizer=adam, batch_size=32"]
    assert adam["published"] == 0.5 and adam["measured_minus_published"] == pytest.approx(adam["mean"] - 0.5)
    best = max(rows.values(), key=lambda r: r["mean"])
    assert best["best"] and sum(r["best"] for r in rows.values()) == 1


def _two_commands(uri: str, experiment: str, path: Path, storage: str) -> list[str]:
    MlflowClient(uri).search_experiments()  # the MLflow schema exists before two processes race to use it
    procs = [subprocess.Popen(command(uri, experiment, path, "--storage", storage), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return outputs


def test_two_commands_share_one_sqlite_storage(tracking_uri, experiment, study_file, tmp_path):
    outputs = _two_commands(tracking_uri, experiment, study_file(), f"sqlite:///{tmp_path}/optuna.db")
    parent, cells = check_exactly_once(tracking_uri, experiment, outputs)
    assert len(finished_of(cells, outputs)) == 8 and parent.info.status == "FINISHED"
    assert sum("(new)" in o for o in outputs) == 1 and sum("(joined" in o for o in outputs) == 1


@pytest.mark.postgres
def test_two_commands_share_one_postgresql_storage(postgres_url, tracking_uri, experiment, study_file):  # noqa: F811
    outputs = _two_commands(tracking_uri, experiment, study_file(), postgres_url)
    parent, cells = check_exactly_once(tracking_uri, experiment, outputs)
    assert len(finished_of(cells, outputs)) == 8 and parent.info.status == "FINISHED"
    from cnnbench.campaign.storage import redact

    assert parent.data.tags["cnnbench.study.storage"] == redact(postgres_url)  # the installed driver named


def _wait_for_running_cell(uri: str, experiment: str, pid: int, proc, timeout: float = 300):
    """A cell of ``pid`` mid-training: RUNNING with its first epoch logged (a run exists, tagged, from
    its creation on, before its training begins)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        running = [r for r in runs(uri, experiment)[1]
                   if r.info.status == "RUNNING" and r.data.metrics
                   and r.data.tags.get("cnnbench.study.worker", "").split(":")[1] == str(pid)]
        if running:
            return running[0]
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError("no cell started")


def test_a_sigkilled_workers_cell_is_rerun_by_the_other_worker(tracking_uri, experiment, study_file, tmp_path):
    path = study_file(epochs=3, train_size=600)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    MlflowClient(tracking_uri).search_experiments()
    victim = subprocess.Popen(command(tracking_uri, experiment, path, "--storage", storage, "--heartbeat-interval", "1"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        killed = _wait_for_running_cell(tracking_uri, experiment, victim.pid, victim)
        other = subprocess.Popen(command(tracking_uri, experiment, path, "--storage", storage, "--heartbeat-interval", "1"),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        victim.send_signal(signal.SIGKILL)  # no cleanup at all: only the missing heartbeat tells
        victim.wait()
        output = other.communicate(timeout=900)[0]
    finally:
        for p in (victim,):
            if p.poll() is None:
                p.kill()
    assert other.returncode == 0, output
    parent, cells = check_exactly_once(tracking_uri, experiment)
    assert parent.info.status == "FINISHED"
    dead = MlflowClient(tracking_uri).get_run(killed.info.run_id)
    assert dead.info.status == "FAILED" and "stopped renewing its lease" in dead.data.tags["failure_reason"]
    rerun = [r for r in cells if r.info.status == "FINISHED"
             and (r.data.tags["cnnbench.study.cell"], r.data.tags["cnnbench.seed"]) == (killed.data.tags["cnnbench.study.cell"], killed.data.tags["cnnbench.seed"])]
    assert len(rerun) == 1 and rerun[0].data.tags["cnnbench.study.worker"].split(":")[1] == str(other.pid)


FAILING = """
name = "failing"
seeds = 1
[base]
model = "lenet5"
dataset = "digits"
epochs = 1
train_size = 200
optimizer = "sgd"
kernels = false
predictions = false
memory = false
[grid]
lr = [0.01, 1e12]
"""


def test_a_failed_cell_is_retried_in_the_same_command_then_the_study_exits_3_naming_it(cli, tracking_uri, experiment, tmp_path, monkeypatch):
    from cnnbench import api

    path = tmp_path / "failing.toml"
    path.write_text(FAILING)
    args = ["study", "run", path, "--tracking-uri", tracking_uri, "--experiment", experiment,
            "--storage", f"sqlite:///{tmp_path}/optuna.db", "--max-retries", "1"]
    loads = []
    real_load = api.load_data
    monkeypatch.setattr(api, "load_data", lambda config: loads.append(config.data.name) or real_load(config))
    for attempt in (1, 2):
        result = cli(*args)
        assert result.exit_code == 3, result.output  # the study ended, a job failed after its retries
        # the two cells share one data configuration: one load by the one worker; none when nothing is left to run
        assert len(loads) == 1
        parents, cells = runs(tracking_uri, experiment)
        failed = [r for r in cells if r.data.tags["cnnbench.study.cell"] == "lr=1000000000000.0"]
        assert [r.info.status for r in failed] == ["FAILED"] * 2  # the first try and its one retry, in the first command
        assert sorted(r.data.tags["cnnbench.study.attempt"] for r in failed) == ["1", "2"]
        assert all("non-finite loss" in r.data.tags.get("failure_reason", "") for r in failed), [(r.info.run_id, r.data.tags) for r in failed]
        ok = [r for r in cells if r.data.tags["cnnbench.study.cell"] == "lr=0.01"]
        assert [r.info.status for r in ok] == ["FINISHED"]
        parent = parents[0]
        assert parent.info.status == "FAILED" and "1 of 2 runs failed after their retries" in parent.data.tags["failure_reason"]
        assert parent.data.metrics["failed_jobs"] == 1 and parent.data.metrics["jobs_finished"] == 1
        assert parent.data.tags["cnnbench.failed_jobs"].startswith("lr=1000000000000.0 / seed 0: TrainingError: non-finite loss")
        assert "  failed: lr=1000000000000.0 / seed 0: TrainingError: non-finite loss" in result.output
        assert "progress:" not in result.output if attempt == 2 else "progress: 1/2 done" in result.output
    row = {r["cell"]: r for r in report_json(cli, tracking_uri, parents[0].info.run_id)}["lr=1000000000000.0"]
    assert row["n"] == 0 and row["failed_seeds"] == 1
    # a higher --max-retries gives the failed job another try (and it fails again: still exit 3)
    again = cli(*args[:-1], "2")
    assert again.exit_code == 3 and "(joined (1 of 2 runs finished, 1 re-queued))" in again.output
    assert len([r for r in runs(tracking_uri, experiment)[1] if r.info.status == "FAILED"]) == 3


def test_a_transient_store_error_is_retried_in_the_same_command_without_using_a_retry(cli, tracking_uri, experiment, study_file, tmp_path, monkeypatch):
    """MLflow's log_inputs check-then-insert race between two commands ends a cell with this error:
    with --max-retries 0 the cell still finishes, in the same command."""
    import sqlalchemy.exc

    from cnnbench import api

    real_train, raised = api.train, []

    def flaky(config, callbacks, **kwargs):
        if not raised:
            raised.append(config.run.run_name)
            raise sqlalchemy.exc.IntegrityError("INSERT INTO datasets", {}, Exception("UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest"))
        return real_train(config, callbacks, **kwargs)

    monkeypatch.setattr(api, "train", flaky)
    result = cli("study", "run", study_file(), "--tracking-uri", tracking_uri, "--experiment", experiment,
                 "--storage", f"sqlite:///{tmp_path}/optuna.db", "--max-retries", "0")
    assert result.exit_code == 0, result.output
    assert "transient store error, no retry used" in result.output
    parent, cells = check_exactly_once(tracking_uri, experiment, [result.output])
    assert parent.info.status == "FINISHED" and parent.data.metrics["failed_jobs"] == 0


TWO_AXES_VARIANTS = """
name = "two-axes"
description = "two numeric axes x two variants (the shape of domain-shift)"
seeds = 1

[base]
dataset = "digits"
epochs = 1
train_size = 100
kernels = false
predictions = false
memory = false
confusion = false
summary = false

[grid]
lr = [0.01, 0.1]
batch_size = [32]

[[variants]]
name = "LeNet-5"
model = "lenet5"

[[variants]]
name = "MLP"
model = "mlp"
"""


def test_two_numeric_axes_with_variants_get_one_heatmap_panel_per_variant_and_a_failed_report_never_leaves_the_parent_running(
        cli, tracking_uri, experiment, tmp_path, monkeypatch):
    """domain-shift (ratio x data_per_class x 3 variants) once failed in the heatmap ("Index contains
    duplicate entries") after every cell had finished, and left its parent run RUNNING."""
    from cnnbench.study import report as reports

    path = tmp_path / "two-axes.toml"
    path.write_text(TWO_AXES_VARIANTS)
    args = ["study", "run", path, "--tracking-uri", tracking_uri, "--experiment", experiment,
            "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    real = reports.figures

    def broken(*a, **k):
        raise ValueError("figure failed")

    monkeypatch.setattr(reports, "figures", broken)
    with pytest.raises(ValueError, match="figure failed"):
        cli(*args)
    parents, cells = runs(tracking_uri, experiment)
    assert [r.info.status for r in cells] == ["FINISHED"] * 4
    assert parents[0].info.status == "FAILED"
    assert "the study report could not be written (ValueError: figure failed)" in parents[0].data.tags["failure_reason"]

    monkeypatch.setattr(reports, "figures", real)
    result = cli(*args)  # the same command: nothing trains, the report is written, the parent ends FINISHED
    assert result.exit_code == 0, result.output
    parents, cells = runs(tracking_uri, experiment)
    assert len(cells) == 4 and parents[0].info.status == "FINISHED"
    assert "failure_reason" not in parents[0].data.tags  # the earlier command's reason no longer holds
    client = MlflowClient(tracking_uri)
    files = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/heatmap.png", "report/vs_lr.png", "report/vs_batch_size.png"} <= files
    from PIL import Image

    local = client.download_artifacts(parents[0].info.run_id, "report/heatmap.png", str(tmp_path))
    width, height = Image.open(local).size
    assert width > 1.5 * height  # two panels side by side (one per variant), not one pivot of all four cells


def test_ctrl_c_kills_the_running_cell_and_the_parent_and_the_same_command_resumes(cli, tracking_uri, experiment, study_file, tmp_path):
    path = study_file(epochs=3, train_size=600)
    cmd = command(tracking_uri, experiment, path, "--storage", f"sqlite:///{tmp_path}/optuna.db")
    MlflowClient(tracking_uri).search_experiments()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    running = _wait_for_running_cell(tracking_uri, experiment, proc.pid, proc)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output
    assert "Resume with the same command: cnnbench study run" in output
    client = MlflowClient(tracking_uri)
    assert client.get_run(running.info.run_id).info.status == "KILLED"
    parents, cells = runs(tracking_uri, experiment)
    assert parents[0].info.status == "KILLED" and not [r for r in cells if r.info.status == "RUNNING"]
    partial = cli("study", "report", parents[0].info.run_id, "--tracking-uri", tracking_uri)  # a partial study reports
    assert partial.exit_code == 0 and "[killed: partial]" in partial.output
    done = sum(r.info.status == "FINISHED" for r in cells)
    assert sum(r["n"] for r in report_json(cli, tracking_uri, parents[0].info.run_id)) == done
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    parent, _ = check_exactly_once(tracking_uri, experiment)
    assert parent.info.status == "FINISHED"


# -- bad input: one line, exit 2 (1 for unreachable stores), nothing left RUNNING --------------
@pytest.mark.parametrize("flags, code, message", [
    (["--storage", "postgresql://nobody@127.0.0.1:1/none"], 1, "cannot open the study storage"),
    (["--storage", "notadb://x"], 2, "unsupported database 'notadb'"),
    (["--tracking-uri", "http://127.0.0.1:1"], 1, "cannot reach the MLflow tracking server"),
    (["--workers", "0"], 2, "--workers must be at least 1"),
    (["--budget", "huge"], 2, "unknown --budget 'huge' for study 'grid'; accepted: none"),
])
def test_bad_run_options_are_refused_before_any_run(cli, tracking_uri, experiment, study_file, tmp_path, flags, code, message):
    result = cli("study", "run", study_file(), "--tracking-uri", tracking_uri, "--experiment", experiment,
                 "--storage", f"sqlite:///{tmp_path}/optuna.db", *flags)
    assert result.exit_code == code, result.output
    lines = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert len(lines) == 1 and message in lines[0]
    assert runs(tracking_uri, experiment) == ([], [])


def test_bad_study_file_and_bad_cell_are_refused_with_exit_2(cli, tracking_uri, experiment, tmp_path):
    bad = tmp_path / "bad.toml"
    for text, message in (('name = "b"\n[grid]\nlr = [0.1\n', "is not valid TOML"),
                          ('name = "b"\n[base]\nmodel = "lenet5"\ndataset = "digits"\n[grid]\n"model.kernel_size" = [5, 41]\n',
                           "cell 'kernel_size=41': ")):
        bad.write_text(text)
        result = cli("study", "run", bad, "--tracking-uri", tracking_uri, "--experiment", experiment)
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert runs(tracking_uri, experiment) == ([], [])


def test_a_changed_definition_under_the_same_name_is_refused_naming_the_keys(cli, tracking_uri, experiment, study_file, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    base = ["--tracking-uri", tracking_uri, "--experiment", experiment, "--storage", storage]
    assert cli("study", "run", study_file(), *base).exit_code == 0
    before = len(runs(tracking_uri, experiment)[1])
    changed = cli("study", "run", study_file(epochs=2), *base)
    assert changed.exit_code == 2
    assert "was started with another definition (cell 'optimizer=sgd, batch_size=32': epochs 1 -> 2" in changed.output
    assert "--study-name NEW" in changed.output and len(changed.output.strip().splitlines()) == 1
    assert len(runs(tracking_uri, experiment)[1]) == before


OVERSIZED = """
name = "memory-skip"
metric = "test_accuracy"
seeds = 1
[base]
model = "lenet5"
dataset = "digits"
epochs = 1
train_size = 200
memory_budget = 20
kernels = false
predictions = false
[grid]
batch_size = [16, 4096]
"""


def test_a_cell_predicted_not_to_fit_the_memory_budget_is_skipped_not_launched(cli, tracking_uri, experiment, tmp_path):
    """lenet5 at batch 4096 is predicted far above a 20 MiB budget: that cell ends FAILED with the
    prediction as its reason and never trains; the cell that fits trains; the study goes on."""
    from cnnbench.memory.for_config import predict_config
    from cnnbench import api
    from cnnbench.config import TrainConfig

    big = api.resolve(TrainConfig().replace(optim={"batch_size": 4096}))
    assert predict_config(big.config, big.info, api.resolve_device("cpu")).peak_mb > 20  # the premise
    path = tmp_path / "skip.toml"
    path.write_text(OVERSIZED)
    result = cli("study", "run", path, "--tracking-uri", tracking_uri, "--experiment", experiment,
                 "--storage", f"sqlite:///{tmp_path}/optuna.db", "--max-retries", "1")
    assert result.exit_code == 3, result.output  # a skipped cell is a job without a result
    assert "failed: batch_size=4096 / seed 0: skipped:" in result.output
    _, cells = runs(tracking_uri, experiment)
    by_cell = {r.data.tags["cnnbench.study.cell"]: r for r in cells}
    assert by_cell["batch_size=16"].info.status == "FINISHED"
    assert len(cells) == 2  # not retried: the prediction would not change
    skipped = by_cell["batch_size=4096"]
    assert skipped.info.status == "FAILED" and skipped.data.tags["cnnbench.study.skipped"] == "memory"
    assert "predicted to need" in skipped.data.tags["failure_reason"] and "budget is 20 MiB" in skipped.data.tags["failure_reason"]
    assert "train_loss" not in skipped.data.metrics  # never trained


UNTIL = """
name = "{name}"
seeds = 2
reference = "base"

[base]
model = "lenet5"
dataset = "digits"
epochs = 2
train_size = 300
optimizer = "adam"
lr = 0.01
kernels = false
predictions = false
memory = false
confusion = false
summary = false

[[variants]]
name = "base"

[[variants]]
name = "other"
{other}
"""


def _until(cli, tmp_path, name: str, other: str, *extra: str):
    path = tmp_path / f"{name}.toml"
    path.write_text(UNTIL.format(name=name, other=other))
    uri, storage = new_store(tmp_path), f"sqlite:///{tmp_path}/{name}.db"
    result = cli("study", "run", str(path), "--tracking-uri", uri, "--storage", storage, "--format", "json",
                 "--until-decided", "--max-seeds", "4", "--seed-batch", "1", *extra)
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    found = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in found if r.data.tags.get("cnnbench.role") == "study"]
    cells = [r for r in found if r.data.tags.get("cnnbench.role") == "cell"]
    pairs = sorted((r.data.tags["cnnbench.study.cell"], int(r.data.tags["cnnbench.seed"])) for r in cells)
    assert all(r.info.status == "FINISHED" for r in cells) and len(set(pairs)) == len(pairs)  # each once
    assert parent.info.status == "FINISHED"
    assert parent.data.params["until_decided.max_seeds"] == "4" and parent.data.params["until_decided.looks"] == "3"
    start = result.output.index("[\n")
    rows = {r["cell"]: r for r in json.loads(result.output[start:result.output.index("\n]", start) + 2])}
    return result.output, pairs, rows, client, parent


def test_until_decided_adds_seeds_until_a_clear_difference_is_significant(cli, tmp_path):
    output, pairs, rows, client, parent = _until(cli, tmp_path, "ud-differ", "lr = 1e-7")  # "other" cannot learn
    # seeds 0, 1: n = 2 decides nothing; one more seed each (through the queue) and the paired test at
    # alpha / 3 looks says the cells differ: no fourth seed
    assert pairs == [("base", 0), ("base", 1), ("base", 2), ("other", 0), ("other", 1), ("other", 2)]
    assert "--until-decided: 2 runs added to the cells of undecided comparisons (other + seed 2; base + seed 2)" in output \
        or "--until-decided: 2 runs added to the cells of undecided comparisons (base + seed 2; other + seed 2)" in output
    other = rows["other"]
    assert other["n_compared"] == 3 and other["design"] == "paired" and other["star"] is True
    assert other["decision"] == "differs" and other["p_corrected"] < 0.05 / 3
    values = {}
    for r in client.search_runs([parent.info.experiment_id], "tags.`cnnbench.role` = 'cell'"):
        values.setdefault(r.data.tags["cnnbench.study.cell"], {})[int(r.data.tags["cnnbench.seed"])] = r.data.metrics["test_accuracy"]
    assert other["p"] == pytest.approx(stats.ttest_rel([values["other"][s] for s in range(3)],
                                                       [values["base"][s] for s in range(3)]).pvalue)
    md = Path(client.download_artifacts(parent.info.run_id, "report/report.md", str(tmp_path / "dl"))).read_text()
    assert "alpha 0.05 / 3 looks = 0.01667 per look (--until-decided)" in md


def test_until_decided_stops_at_max_seeds_when_the_cells_do_not_differ(cli, tmp_path):
    # "other" trains as "base" does, in another memory layout: float noise at most, no difference to find
    output, pairs, rows, _, _ = _until(cli, tmp_path, "ud-same", "channels_last = \"on\"")
    assert pairs == [(c, s) for c in ("base", "other") for s in range(4)]  # seeds added up to --max-seeds
    assert output.count("--until-decided: 2 runs added") == 2
    other = rows["other"]
    assert other["n_compared"] == 4 and abs(other["diff"]) < 0.01 and other["star"] is False
    assert other["decision"] == "undecided at --max-seeds 4"

    # the same command again: the study is complete and decided as far as it may go; nothing runs
    again = cli("study", "run", str(tmp_path / "ud-same.toml"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                "--storage", f"sqlite:///{tmp_path}/ud-same.db", "--until-decided", "--max-seeds", "4", "--seed-batch", "1")
    assert again.exit_code == 0 and "FINISHED  test_accuracy" not in again.output
    other_cap = cli("study", "run", str(tmp_path / "ud-same.toml"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                    "--storage", f"sqlite:///{tmp_path}/ud-same.db", "--until-decided", "--max-seeds", "6")
    assert other_cap.exit_code != 0 and "this study ran --until-decided with --max-seeds 4 --seed-batch 1" in other_cap.output
