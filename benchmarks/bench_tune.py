"""``cnnbench tune`` timings: per-trial overhead on a local store, and the default 30-trial study.

    python benchmarks/bench_tune.py overhead [--trials 10] [--json OUT]
    python benchmarks/bench_tune.py study [--trials 30] [--json OUT] [-- EXTRA TUNE FLAGS]
                                          # runs `cnnbench tune --trials N` with defaults (and EXTRA)

overhead: tiny trials (10 images, 1 epoch) in a SQLite study with a SQLite MLflow store; per trial, the
wall time minus what ``api.train`` itself spends outside tune's callbacks (so the load of a shared
machine on the training part does not blur the number).
study: wall time, trial states, best value and mean overhead of the default study on digits, read
back from the parent MLflow run. ``--json`` writes the figures unrounded. The smoke sizes (tests/
test_benchmarks.py): ``overhead --trials 2`` and ``study --trials 2 -- --epochs 1 --train-size 200``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def overhead(trials: int) -> dict:
    import optuna

    from cnnbench import api
    from cnnbench.config import TrainConfig
    from cnnbench.tune.objective import Objective, StudyContext
    from cnnbench.tune.reporter import PruningReporter
    from cnnbench.tune.space import parse_space
    from cnnbench.campaign.storage import open_storage
    from cnnbench.tune.study import quiet_optuna
    from cnnbench.tune.tracker import TrialTracker, best_logger, start_parent

    quiet_optuna()
    folder = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    uri = f"sqlite:///{folder}/mlflow.db"
    config = TrainConfig().replace(run={"epochs": 1, "tracking_uri": uri}, data={"train_size": 10}, optim={"batch_size": 10})
    space = parse_space(("lr=loguniform(1e-4,1e-2)",), config)
    data = api.load_data(config)
    parent = start_parent(tracking_uri=uri, experiment="bench", run_name="bench", campaign="bench", tags={}, params={})
    storage = open_storage(f"sqlite:///{folder}/optuna.db", heartbeat_interval=30)
    study = optuna.create_study(storage=storage, study_name="bench", direction="maximize")
    objective = Objective(config, space, StudyContext("bench", parent.run_id, parent.experiment_name, uri, parent.experiment_id),
                          stream=open(os.devnull, "w"))
    objective.data_for = lambda cfg: data  # the data cost is not overhead
    spent = {"train": 0.0, "callbacks": 0.0}
    _time_calls(api, "train", spent, "train")
    for cls in (TrialTracker, PruningReporter):
        for hook in ("on_run_start", "on_epoch_end", "on_run_end", "on_failure"):
            _time_calls(cls, hook, spent, "callbacks")
    log_best = best_logger(parent, "val_accuracy")
    overheads = []
    for _ in range(trials):
        before = dict(spent)
        start = time.perf_counter()
        study.optimize(objective, n_trials=1, callbacks=[objective.progress, log_best])
        wall = time.perf_counter() - start
        training = (spent["train"] - before["train"]) - (spent["callbacks"] - before["callbacks"])
        overheads.append(wall - training)
    overheads.sort()
    print(f"per-trial overhead (trial wall time minus api.train's own work; i.e. Optuna ask/tell/heartbeat/"
          f"reports/user attrs + the child run's creation, params, metrics and end + best-so-far on the parent): "
          f"median {statistics.median(overheads):.3f} s, max {overheads[-1]:.3f} s over {trials} trials "
          f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    return {"trials": trials, "overhead_s": overheads, "median_s": statistics.median(overheads), "max_s": overheads[-1]}


def _time_calls(owner, name: str, spent: dict, key: str) -> None:
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - start

    setattr(owner, name, timed)


def study(trials: int, extra: list[str] = ()) -> dict:
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="bench-tune-study-"))
    uri = f"sqlite:///{folder}/mlflow.db"
    cmd = [sys.executable, "-m", "cnnbench.cli", "tune", "--trials", str(trials), "--tracking-uri", uri, "--study-name", "bench", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=folder)
    wall = time.perf_counter() - start
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cnnbench")
    parent = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("cnnbench.role") == "tune")
    m = parent.data.metrics
    print(f"`{' '.join(cmd[2:])}`: wall {wall:.0f} s (study {m['tune_wall_time_s']:.0f} s), "
          f"{m['trials_complete']:.0f} complete / {m['trials_pruned']:.0f} pruned / {m['trials_failed']:.0f} failed, "
          f"best val_accuracy {m['best_val_accuracy']:.4f}, mean time per complete trial outside the training epochs {m.get('mean_trial_outside_fit_s', float('nan')):.2f} s "
          f"(incl. val/test evaluation), load average {os.getloadavg()[0]:.1f}")
    return {"trials": trials, "command": cmd[2:], "wall_s": wall, "metrics": dict(m)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("overhead", "study"))
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--json", help="also write the figures (unrounded) here")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.extra = argv[cut + 1:]  # study: more `cnnbench tune` flags (after --)
    if args.what == "overhead":
        if args.extra:
            parser.error("overhead takes no extra tune flags")
        result = overhead(args.trials or 10)
    else:
        result = study(args.trials or 30, args.extra)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
