"""Per-cell bookkeeping of ``cnnbench study run`` against a plain ``train`` of the same cell.

Both sides train the same cell (LeNet-5 on digits, 1 epoch, 300 images, the study's default
artifacts) for the same seeds, in one process, with the data already loaded and imports warm:

- plain: ``api.train`` per seed with ``cnnbench train``'s callbacks (artifacts, progress, the MLflow tracker,
  which like a study cell's runs no MLflow system-metrics thread);
- study: a study of that one cell x the seeds, run by a :class:`cnnbench.study.run.Worker` (claim from
  the campaign queue, heartbeat, child run under the parent, the train callbacks, finish in the queue).

The overhead per cell is the difference of the mean wall times; the **per-cell overhead beyond fit** (the
issue's target: under 1 s on a warm worker) is each steady cell's wall minus its run's own ``time_fit_s``
(epochs, validation, test pass; read back from the store): everything else a cell costs. The claim + finish
of a job in the queue is also timed on its own. Usage: ``python benchmarks/bench_study.py [--seeds 8] [--threads 1] [--json OUT]``
(``--json``: the unrounded seconds; the smoke size in tests/test_benchmarks.py is ``--seeds 2``).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

STUDY = """
name = "bench"
seeds = {seeds}
[base]
model = "lenet5"
dataset = "digits"
epochs = 1
train_size = 300
[[variants]]
name = "cell"
"""


def cell_fit_seconds(db: Path, parent_run_id: str) -> list[float]:
    """Each study cell run's ``time_fit_s``, in the order the cells started."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT m.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId' "
            "JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = 'time_fit_s' "
            "WHERE t.value = ? ORDER BY r.start_time, r.run_uuid", (parent_run_id,)).fetchall()
    return [value for (value,) in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the seconds (unrounded) here")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (the first study cell, with the warm-up, is reported apart)")
    import torch

    torch.set_num_threads(args.threads)
    from cnnbench import api
    from cnnbench.campaign.data import data_key
    from cnnbench.campaign.queue import Job, JobQueue
    from cnnbench.study import definition, session
    from cnnbench.study.run import Worker, WorkerSpec, cell_config
    from cnnbench.tracking.mlflow_tracker import MlflowTracker

    folder = Path(tempfile.mkdtemp(prefix="bench-study-"))
    uri = f"sqlite:///{folder}/mlflow.db"
    text = STUDY.format(seeds=args.seeds)
    study = definition.load("bench.toml", text)
    configs = [cell_config(study, 0, s, tracking_uri=uri, experiment="bench-plain") for s in study.seeds]
    data = {s: api.load_data(c) for s, c in zip(study.seeds, configs)}

    def plain_callbacks(config):
        # what `cnnbench train` records, with the tracker set as study cells set it (no MLflow system-metrics thread)
        tracker = MlflowTracker(tracking_uri=uri, experiment="bench-plain", run_name=config.run.run_name,
                                log_model=config.artifacts.model, system_metrics=False)
        return [*api.run_callbacks(config, tracker=False), tracker]

    api.train(configs[0], plain_callbacks(configs[0]), data=data[0])  # imports, kernels, store warm
    plain = []
    for s, config in zip(study.seeds, configs):
        start = time.perf_counter()
        api.train(config, plain_callbacks(config), data=data[s])
        plain.append(time.perf_counter() - start)

    plan = session.prepare(session.RunRequest(study=study, source="bench.toml", tracking_uri=uri,
                                              storage=f"sqlite:///{folder}/optuna.db"))
    parent, experiment, _ = session.create_or_join(plan)
    spec = WorkerSpec(source="bench.toml", text=text, budget=None, sets=[], storage=plan.storage_url,
                      study_name=plan.queue.campaign, parent_run_id=parent.run_id, experiment=experiment, tracking_uri=uri)
    worker = Worker(spec, queue=plan.queue)
    for s, config in zip(study.seeds, configs):
        # the worker's cache pre-filled with the plain side's data (no data load inside a timed cell)
        worker.data._data[data_key(cell_config(study, 0, s, tracking_uri=uri, experiment=experiment))] = data[s]
    ends = []
    original = worker.run_cell

    def timed(claim):
        original(claim)
        ends.append(time.perf_counter())

    worker.run_cell = timed
    start = time.perf_counter()
    worker.run()
    total = time.perf_counter() - start
    # the first study cell also pays the worker's one warm-up of the model: reported apart
    per_cell = [b - a for a, b in zip([start, *ends[:-1]], ends)]

    queue = JobQueue(plan.queue.engine, "claims")
    queue.create([Job(str(i), {}) for i in range(20)], {})
    claims = []
    while True:
        t0 = time.perf_counter()
        claim = queue.claim("bench")
        if claim is None:
            break
        queue.finish(claim, 1.0)
        claims.append(time.perf_counter() - t0)

    steady = per_cell[1:]
    fits = cell_fit_seconds(folder / "mlflow.db", parent.run_id)
    if len(fits) != len(per_cell):
        raise SystemExit(f"bench_study: {len(fits)} study cell runs with time_fit_s in the store, {len(per_cell)} cells timed")
    beyond = [wall - fit for wall, fit in zip(per_cell[1:], fits[1:])]
    print(f"cell: lenet5 / digits, 1 epoch, 300 images, seeds {args.seeds}, threads {args.threads}")
    print(f"plain api.train + train callbacks: mean {statistics.mean(plain):.3f} s  median {statistics.median(plain):.3f} s")
    print(f"study worker, per cell (claim, heartbeat, child run, train, finish): mean {statistics.mean(steady):.3f} s  "
          f"median {statistics.median(steady):.3f} s  (first cell, with the model warm-up: {per_cell[0]:.3f} s; total {total:.1f} s)")
    print(f"overhead per cell: mean {statistics.mean(steady) - statistics.mean(plain):+.3f} s  "
          f"median {statistics.median(steady) - statistics.median(plain):+.3f} s")
    print(f"per-cell overhead beyond fit (cell wall - its run's time_fit_s): mean {statistics.mean(beyond):.3f} s  "
          f"median {statistics.median(beyond):.3f} s  (target < 1 s; fit itself: mean {statistics.mean(fits[1:]):.3f} s)")
    print(f"queue claim + finish alone (20 jobs, one process): mean {statistics.mean(claims) * 1000:.0f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seeds": args.seeds, "threads": args.threads, "plain_s": plain, "study_cell_s": per_cell, "total_s": total,
            "overhead_mean_s": statistics.mean(steady) - statistics.mean(plain),
            "overhead_median_s": statistics.median(steady) - statistics.median(plain), "claim_finish_s": claims,
            "cell_fit_s": fits, "beyond_fit_s": beyond, "beyond_fit_mean_s": statistics.mean(beyond),
            "beyond_fit_median_s": statistics.median(beyond),
        }, indent=2))


if __name__ == "__main__":
    main()
