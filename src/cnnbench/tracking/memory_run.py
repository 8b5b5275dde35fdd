"""One MLflow run for a ``cnnbench memory`` sweep: params, metrics, the CSV and the plot.

Metrics are per optimizer with the batch size as the MLflow step (``predicted_peak_mb_adam`` at step
64 is the predicted peak of batch 64), so MLflow's own metric chart is memory against batch size.
The run is created only when the numbers exist, and ends FAILED if logging them fails.
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from cnnbench.campaign.runs import create_run
from cnnbench.tracking.experiments import ensure_experiment
from cnnbench.tracking.store import check_reachable, resolve_uri

METRIC_KEYS = ("predicted_peak_mb", "measured_peak_mb", "error_pct", "eval_peak_mb", "optimizer_state_size_mb",
               "saved_activations_mb")


def prepare(tracking_uri: str | None) -> str:
    """The store's URI, checked reachable now (before any work)."""
    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    return uri


def log_sweep(*, tracking_uri: str, experiment: str, run_name: str, params: dict[str, Any], rows: list[dict[str, Any]],
              columns: tuple[str, ...], summary: dict[str, float], write_plot: Callable[[Path], Path]) -> str:
    """Log one sweep as a finished run; returns its run id."""
    client = MlflowClient(tracking_uri)
    run_id = create_run(client, ensure_experiment(client, experiment), run_name=run_name, role="memory",
                        tags={"cnnbench.command": "memory"})
    try:
        now = int(time.time() * 1000)
        metrics = [Metric(f"{key}_{r['optimizer']}", float(r[key]), now, int(r["batch_size"]))
                   for r in rows for key in METRIC_KEYS if r.get(key) is not None]
        metrics += [Metric(key, float(value), now, 0) for key, value in summary.items()]
        client.log_batch(run_id, metrics=metrics[:1000], params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                         tags=[RunTag("mlflow.runName", run_name)])
        for start in range(1000, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "memory"
            folder.mkdir()
            with (folder / "prediction.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
            write_plot(folder / "memory_vs_batch_size.png")
            client.log_artifacts(run_id, str(folder), "memory")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
