"""Every run's wall time split into phases (``time_<phase>_s`` metrics), and the benchmark that
splits the quickstart's wall time with them (``benchmarks/bench_run_overhead.py``)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from cnnbench import api
from cnnbench.tracking import phases

from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
IN_RUN = ("imports", "store", "setup", "data", "fit", "artifacts", "upload", "model_log")


def test_every_run_logs_its_phases_and_they_fit_in_its_wall_time(tracking_uri, experiment):
    config = tiny_config(run={"tracking_uri": tracking_uri, "experiment": experiment, "epochs": 2},
                         artifacts={"curves": True, "summary": True, "confusion": True, "model": True})
    start = time.perf_counter()
    result = api.train(config, api.run_callbacks(config))
    wall = time.perf_counter() - start
    logged = mlflow.tracking.MlflowClient(tracking_uri).get_run(result.run_id).data.metrics
    times = phases.summary(logged)
    assert set(times) == {phases.metric(p) for p in IN_RUN}  # no startup: not the CLI's process
    assert all(v >= 0 for v in times.values())
    for phase in ("store", "setup", "data", "fit", "artifacts", "model_log"):
        assert times[phases.metric(phase)] > 0, phase
    assert logged["time_fit_s"] >= logged["fit_time_s"]  # fit_time_s: the training passes alone
    assert sum(times.values()) <= wall + 0.05  # disjoint phases of this call (the store check is in it too)
    assert sum(times.values()) > 0.5 * wall  # and they cover most of it


def test_cli_run_logs_its_startup(cli, tracking_uri, experiment, runs_in, fast_flags):
    result = cli("train", "--tracking-uri", tracking_uri, "--experiment", experiment, "--epochs", "1",
                 "--train-size", "100", *fast_flags)
    assert result.exit_code == 0, result.output
    (run,) = runs_in(experiment)
    # in-process (pytest): the "startup" is this test process's age, but it is there and positive
    assert run.data.metrics["time_startup_s"] > 0


def test_phase_timer_counts_builders_apart_from_fit():
    """Builders' hook time (between the timer and its tail) is artifacts, the rest of the loop fit."""
    from types import SimpleNamespace

    from cnnbench.events import Callback, dispatch

    class Slow(Callback):
        def on_run_start(self, run):
            time.sleep(0.05)

        def on_epoch_end(self, run, epoch, metrics):
            time.sleep(0.03)

        def on_eval_end(self, run, result):
            time.sleep(0.04)

    timer = phases.PhaseTimer()
    timer.lap("imports")
    callbacks = [timer, Slow(), timer.tail]
    run = SimpleNamespace(summary_metrics={})
    dispatch(callbacks, "on_run_start", run)
    for epoch in (1, 2):
        dispatch(callbacks, "on_epoch_start", run, epoch)
        time.sleep(0.02)  # the engine's epoch
        dispatch(callbacks, "on_epoch_end", run, epoch, {})
    time.sleep(0.02)  # the test pass
    dispatch(callbacks, "on_eval_end", run, None)
    dispatch(callbacks, "on_run_end", run, {})
    m = run.summary_metrics
    assert m["time_artifacts_s"] == pytest.approx(0.05 + 2 * 0.03 + 0.04, abs=0.03)
    assert m["time_fit_s"] == pytest.approx(3 * 0.02, abs=0.03)
    assert "time_imports_s" in m and "time_startup_s" not in m


@pytest.mark.slow
def test_benchmark_quick_prints_every_phase_and_they_add_up_to_the_wall_time():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_run_overhead.py"), "--quick"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {}
    for line in out.stdout.splitlines():
        found = re.match(r"^(\S.*?)\s{2,}(-?\d+\.\d+)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)$", line)
        if found:
            rows[found.group(1)] = [float(v) for v in found.groups()[1:]]
    phase_rows = ["interpreter", "cli imports + options", "lazy imports", "store", "setup", "data", "fit",
                  "artifacts", "upload", "model log", "remainder (close, exit)"]
    assert set(phase_rows) | {"wall", "outside fit"} <= set(rows), out.stdout
    for column in (0, 3):  # cold and warm medians (one repeat: every column is that run)
        for name in phase_rows:
            if name not in ("cli imports + options", "remainder (close, exit)"):  # differences of two clocks
                assert rows[name][column] > 0 or name == "upload", (name, out.stdout)
        assert rows["remainder (close, exit)"][column] > -0.5  # the phases do not claim more than the wall time
        total = sum(rows[name][column] for name in phase_rows)
        assert total == pytest.approx(rows["wall"][column], abs=0.07)
        assert rows["outside fit"][column] == pytest.approx(rows["wall"][column] - rows["fit"][column], abs=0.07)
    assert "outside fit" in out.stdout and "goal" in out.stdout
