"""A study file's ``[search]``: trial configurations from tune's sampler, each a cell over the
study's seeds. Load-time checks (one line each, before anything runs); then real runs on digits
(1 epoch, 200 images, 3 trials x 2 seeds): one parent, every trial x seed one FINISHED run, a rerun
adds nothing, a raised budget adds exactly the missing trials, and the report has one row per
trial configuration with the statistics of its seeds' runs.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import new_store
from cnnbench.errors import ConfigError
from cnnbench.study.definition import load

SEARCH = """
name = "lr-search"
description = "lr x optimizer on digits"
seeds = {seeds}

[base]
model = "lenet5"
dataset = "digits"
epochs = 1
train_size = 200
kernels = false
predictions = false
memory = false
confusion = false
summary = false

[search]
space = ["lr=loguniform(1e-3,1e-1)", "optimizer=choice(sgd,adam)"]
trials = {trials}
sampler = "random"
{extra}
[budgets.quick]
trials = 2
"""


def text(trials: int = 3, seeds: str = "2", extra: str = "", search: str | None = None) -> str:
    out = SEARCH.format(trials=trials, seeds=seeds, extra=extra)
    return out if search is None else out.split("[search]")[0] + "[search]\n" + search + "\n"


def refused(source: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        load("s.toml", source, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_search_loads_with_tune_canonical_space_and_its_budget():
    study = load("s.toml", text())
    assert study.search.space == ("lr=loguniform(0.001,0.1)", "optimizer=choice(sgd,adam)")
    assert (study.search.trials, study.search.sampler, study.search.pruner) == (3, "random", "none")
    assert (study.search.objective, study.search.direction) == ("val_accuracy", "maximize")
    assert [c.label for c in study.cells] == ["base"] and study.seeds == (0, 1)
    assert load("s.toml", text(), budget="quick").search.trials == 2
    described = study.describe()
    assert described["search"]["trials"] == 3 and described["cells"] == []


def test_the_digest_follows_the_search_but_not_its_budget():
    study = load("s.toml", text())
    assert load("s.toml", text(trials=7)).digest == study.digest  # more trials continue the same search
    changed = load("s.toml", text().replace("loguniform(1e-3,1e-1)", "loguniform(1e-4,1e-1)"))
    assert changed.digest != study.digest
    assert load("s.toml", text().replace('"random"', '"tpe"')).digest != study.digest
    assert "search" not in load("g.toml", 'name = "g"\n[grid]\nlr = [0.1, 0.01]\n').fingerprint()


@pytest.mark.parametrize("search, expected", [
    ('space = ["lr=loguniform(1e-3,1e-1)"]\ntrials = 3\nsamplr = "tpe"', "unknown key(s) samplr; valid keys: space, trials"),
    ('space = ["lr=loguniform(1,0.1)"]\ntrials = 3', "the low end (1.0) must be below the high end (0.1)"),
    ('space = ["lr=between(1,2)"]\ntrials = 3', "lr=between(1,2)"),
    ('space = ["nope=choice(1,2)"]\ntrials = 3', "unknown or unsearchable parameter 'nope'"),
    ('space = []\ntrials = 3', "space must be a non-empty list of expressions"),
    ('space = ["lr=loguniform(1e-3,1e-1)"]', "missing trials = N (the search's budget"),
    ('space = ["lr=loguniform(1e-3,1e-1)"]\ntrials = 0', "trials must be a whole number of trial configurations >= 1"),
    ('space = ["lr=loguniform(1e-3,1e-1)"]\ntrials = 6000', "6000 trials x 2 seeds = 12000 runs, above the limit of 10,000"),
    ('space = ["lr=loguniform(1e-3,1e-1)"]\ntrials = 3\nsampler = "cmaes"', "sampler must be one of tpe, random, grid"),
    ('space = ["lr=loguniform(1e-3,1e-1)"]\ntrials = 3\npruner = "asha"', "pruner must be one of median, hyperband, none"),
    ('space = ["lr=loguniform(1e-3,1e-1)"]\ntrials = 3\nobjective = "test_accuracy"', "objective must be one of val_accuracy"),
    ('space = ["lr=loguniform(1e-3,1e-1)"]\ntrials = 3\nsampler = "grid"', "sampler grid needs a finite space"),
    ('space = ["epochs=int(1,3)"]\ntrials = 3', "epochs is both fixed in [base] and searched"),
])
def test_a_bad_search_table_is_one_line_at_load_time(search, expected):
    message = refused(text(search=search))
    assert message.startswith("study file s.toml [search]: ") and expected in message, message


def test_a_search_refuses_what_names_cells_or_skips_seeds():
    assert "[search] and [grid]/[[variants]] together are not supported" in refused(text() + "[grid]\nl2 = [0.0, 0.1]\n")
    grid_first = text().replace("[search]", '[[variants]]\nname = "a"\n\n[search]')
    assert "together are not supported" in refused(grid_first)
    assert "reference names cells" in refused('reference = "base"\n' + text())
    assert "consecutive seeds" in refused(text(seeds="[0, 7]"))
    assert load("s.toml", text(seeds="[4, 5]")).seeds == (4, 5)
    assert "2 trials x 2 seeds" in refused(text(), budget="quick", max_jobs=3)


# -- real runs ------------------------------------------------------------------------------------------


def runs_of(uri: str, experiment: str, *, discarded: bool = False) -> tuple[list, list]:
    """(parents, trial runs) of the experiment; the runs of trials that do not count (interrupted)
    only with ``discarded``."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    role = lambda r: r.data.tags.get("cnnbench.role")  # noqa: E731
    trials = [r for r in found if role(r) == "trial" and discarded == ("cnnbench.study.discarded" in r.data.tags)]
    return [r for r in found if role(r) == "study"], trials


def check_once(uri: str, experiment: str, trials: int, seeds: int = 2) -> tuple:
    """One FINISHED parent; exactly one FINISHED run per trial configuration x seed, nothing else."""
    parents, children = runs_of(uri, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert [r.info.status for r in children] == ["FINISHED"] * len(children)
    pairs = [(r.data.tags["cnnbench.study.cell"], r.data.tags["cnnbench.seed"]) for r in children]
    assert len(set(pairs)) == len(pairs) == trials * seeds
    labels = {label for label, _ in pairs}
    assert len(labels) == trials and all(label.startswith("trial ") for label in labels)
    assert sorted(pairs) == sorted((label, str(s)) for label in labels for s in range(seeds))
    return parents[0], children


@pytest.mark.slow
def test_a_search_study_runs_each_trial_seed_once_resumes_to_its_budget_and_reports_trials_as_cells(
        cli, tracking_uri, experiment, tmp_path):
    path = tmp_path / "search.toml"
    path.write_text(text())
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = ["study", "run", path, "--tracking-uri", tracking_uri, "--experiment", experiment, "--storage", storage]
    show = cli("study", "show", path, "--no-estimate")
    assert show.exit_code == 0, show.output
    assert "search: 3 trials, random sampler, none pruner" in show.output and "runs: 3 trials x 2 seeds = 6" in show.output

    first = cli(*args, "--workers", "2")
    assert first.exit_code == 0, first.output
    parent, children = check_once(tracking_uri, experiment, 3)
    status = cli("study", "status", path, "--storage", storage, "--tracking-uri", tracking_uri)
    assert status.exit_code == 0, status.output
    assert "3/3 trials finished, 0 running, 0 failed, 0 waiting" in status.output
    assert parent.data.tags["cnnbench.study"] == "lr-search" and parent.data.tags["cnnbench.study.id"] == "lr-search"
    assert parent.data.metrics["jobs_finished"] == 3 and parent.data.metrics["failed_jobs"] == 0
    run = children[0]
    assert run.data.params["optimizer"] in ("sgd", "adam") and 1e-3 <= float(run.data.params["lr"]) <= 0.1
    assert run.data.tags["cnnbench.study.cell"].startswith(f"trial {run.data.tags['trial_number']} (lr=")

    again = cli(*args)  # nothing left: no worker, no run, the same report
    assert again.exit_code == 0, again.output
    assert "3 trials done" in again.output
    check_once(tracking_uri, experiment, 3)

    report = cli("study", "report", parent.info.run_id, "--tracking-uri", tracking_uri, "--format", "json")
    assert report.exit_code == 0, report.output
    rows = json.loads(report.output)
    assert sorted(r["cell"] for r in rows) == sorted({c.data.tags["cnnbench.study.cell"] for c in children})
    for row in rows:
        mine = [c for c in children if c.data.tags["cnnbench.study.cell"] == row["cell"]]
        values = [c.data.metrics["test_accuracy"] for c in mine]
        assert row["n"] == 2 and row["mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
        assert row["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert row["axis.optimizer"] == mine[0].data.params["optimizer"]
        assert row["axis.lr"] == pytest.approx(float(mine[0].data.params["lr"]))
    assert sum(r["best"] for r in rows) == 1

    path.write_text(text(trials=4))  # a larger budget continues the search: exactly the missing trial
    more = cli(*args)
    assert more.exit_code == 0, more.output
    assert "3 trials done" in more.output
    parent, children = check_once(tracking_uri, experiment, 4)
    final = cli(*args)
    assert final.exit_code == 0, final.output
    assert len(check_once(tracking_uri, experiment, 4)[1]) == 8
    changed = text(trials=4).replace('"random"', '"tpe"')
    path.write_text(changed)
    refused_run = cli(*args)
    assert refused_run.exit_code == 2 and "another definition (search sampler random -> tpe)" in refused_run.output


@pytest.mark.slow
def test_a_search_interrupted_by_sigterm_resumes_to_its_budget_with_each_trial_seed_once(tracking_uri, experiment, tmp_path):
    path = tmp_path / "search.toml"
    path.write_text(text())
    args = [sys.executable, "-m", "cnnbench.cli", "study", "run", str(path), "--tracking-uri", tracking_uri,
            "--experiment", experiment, "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # the first seed of the first trial has finished
        if [r for r in runs_of(tracking_uri, experiment)[1] if r.info.status == "FINISHED"]:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output
    parents, trials = runs_of(tracking_uri, experiment)
    assert [p.info.status for p in parents] == ["KILLED"] and "interrupted (SIGTERM/SIGHUP)" in output
    assert not [r for r in trials if r.info.status == "RUNNING"]

    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    parent, counted = check_once(tracking_uri, experiment, 3)  # the budget reached, never passed
    left_out = runs_of(tracking_uri, experiment, discarded=True)[1]
    assert not [r for r in left_out if r.info.status == "RUNNING"]
    report = json.loads(subprocess.run([sys.executable, "-m", "cnnbench.cli", "study", "report", parent.info.run_id,
                                        "--tracking-uri", tracking_uri, "--format", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    assert sorted(r["cell"] for r in report) == sorted({r.data.tags["cnnbench.study.cell"] for r in counted})
    assert [r["n"] for r in report] == [2, 2, 2]


def test_the_report_reads_trial_runs_as_cells_leaving_out_discarded_ones_and_counting_pruned_as_not_finished(tmp_path):
    """Without training: a [search] parent and trial runs written to a real SQLite store as the
    workers write them (a complete trial over 2 seeds, a pruned one, an interrupted one's run tagged
    discarded, another complete one)."""
    from cnnbench.study import report as reports

    uri = new_store(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment("search-report")
    study = load("s.toml", text())
    parent = client.create_run(exp, tags={"cnnbench.role": "study", "cnnbench.study.id": "lr-search"}).info.run_id
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "definition.json").write_text(json.dumps(study.describe(), default=str))
    client.log_artifacts(parent, str(tmp_path / "study"), "study")

    def trial(number: int, seed: int, lr: float, optimizer: str, accuracy: float | None, **tags: str) -> None:
        label = f"trial {number} (lr={lr}, optimizer={optimizer})"
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "cnnbench.role": "trial", "trial_number": str(number),
                                           "cnnbench.study.cell": label, "cnnbench.seed": str(seed),
                                           "trial_state": "COMPLETE", **tags}).info.run_id
        client.log_param(run, "lr", lr)
        client.log_param(run, "optimizer", optimizer)
        if accuracy is not None:
            client.log_metric(run, "test_accuracy", accuracy)
        else:
            client.log_metric(run, "pruned_at_epoch", 1.0)
        client.set_terminated(run, "FINISHED")

    trial(0, 0, 0.01, "sgd", 0.5)
    trial(0, 1, 0.01, "sgd", 0.6)
    trial(1, 0, 0.002, "adam", None, trial_state="PRUNED")
    trial(2, 0, 0.05, "adam", 0.9, **{"cnnbench.study.discarded": "interrupted"})
    trial(3, 0, 0.03, "adam", 0.7)
    trial(3, 1, 0.03, "adam", 0.8)
    rep = reports.build(client, parent)
    assert [c.label for c in rep.cells] == ["trial 0 (lr=0.01, optimizer=sgd)", "trial 1 (lr=0.002, optimizer=adam)",
                                            "trial 3 (lr=0.03, optimizer=adam)"]
    pruned = rep.cells[1]
    assert pruned.values == [] and pruned.failed == {0: "pruned after epoch 1"}
    table = rep.table.set_index("cell")
    assert table.loc["trial 3 (lr=0.03, optimizer=adam)", "mean"] == pytest.approx(0.75)
    assert table.loc["trial 0 (lr=0.01, optimizer=sgd)", "std"] == pytest.approx(statistics.stdev([0.5, 0.6]))
    assert table.loc["trial 0 (lr=0.01, optimizer=sgd)", "axis.lr"] == pytest.approx(0.01)
    assert rep.best == "trial 3 (lr=0.03, optimizer=adam)" and rep.pivot is None
