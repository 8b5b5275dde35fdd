"""The Optuna side: samplers, pruners, creating or resuming a study (refusing a different search
space), and running ``--n-jobs`` worker processes on one storage.

A worker is described by a JSON-able :class:`WorkerSpec`; worker 0 runs in the ``tune`` process
(which already loaded everything), the others are ``python -m cnnbench.tune.worker SPEC.json``
processes, so each has its own interpreter (no GIL sharing, torch threads split between them) and a
worker on another machine is the same thing started by hand.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna

from cnnbench.config import TrainConfig
from cnnbench.errors import ConfigError
from cnnbench.tune import PRUNERS, SAMPLERS
from cnnbench.tune.space import SearchSpace, diff, parse_expression

ATTR_SPACE = "cnnbench.search_space"
ATTR_METRIC = "cnnbench.objective"
ATTR_BASE = "cnnbench.base_params"
DEFAULT_HEARTBEAT_S = 30


def build_sampler(name: str, seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise ConfigError(f"unknown --sampler {name!r}; accepted: {', '.join(SAMPLERS)}")


def build_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """``median``: stop a trial whose best-so-far is below the median of earlier trials at the same
    epoch, once 5 trials have finished (from epoch 1: on these data sets epoch 1 already separates
    hopeless settings); ``hyperband``: successive halving over 1..epochs."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown --pruner {name!r}; accepted: {', '.join(PRUNERS)}")


def open_study(storage, name: str, *, direction: str, space: SearchSpace, metric: str,
               base_params: dict[str, Any], sampler=None, pruner=None) -> tuple[optuna.Study, bool]:
    """Create the study, or load it to add trials; refuse a stored study whose search space,
    objective or direction differs. Returns (study, resumed)."""
    try:
        storage.get_study_id_from_name(name)
        exists = True
    except KeyError:
        exists = False
    if exists:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        check_resume(study, direction=direction, space=space, metric=metric, base_params=base_params)
        if ATTR_SPACE in study.user_attrs:
            return study, True
    else:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner, load_if_exists=True)  # another worker may have just created it
    study.set_user_attr(ATTR_SPACE, space.texts())
    study.set_user_attr(ATTR_METRIC, metric)
    study.set_metric_names([metric])  # optuna-dashboard's axis name instead of "Objective 0"
    study.set_user_attr(ATTR_BASE, {k: str(v) for k, v in base_params.items()})
    return study, False


def check_resume(study: optuna.Study, *, direction: str, space: SearchSpace, metric: str, base_params: dict[str, Any]) -> None:
    attrs = study.user_attrs
    if ATTR_SPACE not in attrs and not study.trials:
        return  # another worker created it a moment ago and is about to store the same attrs
    if ATTR_SPACE not in attrs:
        raise ConfigError(f"study {study.study_name!r} exists but was not created by cnnbench tune (no stored search space); pick another --study-name")
    stored = attrs.get(ATTR_BASE, {})
    for key in ("model", "dataset"):
        if key in stored and key in base_params and stored[key] != str(base_params[key]):
            raise ConfigError(f"study {study.study_name!r} tunes --{key} {stored[key]}, not {base_params[key]}; "
                              f"use --{key} {stored[key]} or start a new --study-name")
    differences = diff(attrs[ATTR_SPACE], space.texts())
    if differences:
        stored_flags = " ".join(f"--search '{t}'" for t in attrs[ATTR_SPACE].values())
        raise ConfigError(
            f"study {study.study_name!r} was created with a different search space, so its trials would not be "
            f"comparable: {'; '.join(differences)}. Resume with the stored space "
            f"({stored_flags}) "
            f"or start a new --study-name"
        )
    stored_direction = study.direction.name.lower()
    if stored_direction != direction or attrs.get(ATTR_METRIC, metric) != metric:
        raise ConfigError(
            f"study {study.study_name!r} {stored_direction}s {attrs.get(ATTR_METRIC)}; this command asks to "
            f"{direction} {metric}. Use the study's objective or start a new --study-name"
        )
    changed = sorted(k for k, v in base_params.items() if k in stored and stored[k] != str(v))
    if changed:
        shown = ", ".join(f"{k} {stored[k]} -> {base_params[k]}" for k in changed)
        warnings.warn(f"resuming study {study.study_name!r} with different fixed settings ({shown}); earlier trials used the old ones", stacklevel=2)


@dataclass
class WorkerSpec:
    """Everything one worker process needs (JSON-able)."""

    config: dict[str, Any]
    space: list[str]  # canonical expressions
    storage: str
    study_name: str
    parent_run_id: str
    experiment: str
    tracking_uri: str
    n_trials: int
    timeout: float | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    metric: str = "val_accuracy"
    direction: str = "maximize"
    heartbeat_interval: int | None = DEFAULT_HEARTBEAT_S
    index: int = 0
    n_jobs: int = 1
    notes: list[str] = field(default_factory=list)

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "WorkerSpec":
        return cls(**json.loads(Path(path).read_text()))


def run_worker(spec: WorkerSpec, storage=None) -> None:
    """Run ``spec.n_trials`` trials of the study (fewer when the timeout or the grid runs out).

    Any exception in a trial ends that trial FAIL (reason logged on the trial and its run) and the
    study goes on; Ctrl-C / SIGTERM stops the worker.
    """
    from mlflow.tracking import MlflowClient

    from cnnbench.tune.objective import Objective, StudyContext
    from cnnbench.tune.storage import open_storage
    from cnnbench.tune.tracker import ParentRun, close_dead_trial_run

    quiet_optuna()
    if spec.n_jobs > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.n_jobs))
    config = TrainConfig.from_dict(spec.config, source="worker spec")
    space = SearchSpace(tuple(parse_expression(t, config) for t in spec.space))
    if storage is None:
        storage = open_storage(spec.storage, heartbeat_interval=spec.heartbeat_interval,
                               on_stale=lambda study, trial: close_dead_trial_run(spec.tracking_uri, trial))
    study = optuna.load_study(study_name=spec.study_name, storage=storage, pruner=build_pruner(spec.pruner, config.run.epochs))
    # a seed per worker and per resume: identical random streams would propose the same trials again
    study.sampler = build_sampler(spec.sampler, spec.seed + spec.index + 7919 * len(study.trials), space)
    parent = ParentRun(MlflowClient(spec.tracking_uri), spec.parent_run_id, spec.experiment, spec.metric)
    context = StudyContext(spec.study_name, spec.parent_run_id, spec.experiment, spec.tracking_uri,
                           parent.experiment_id, spec.metric, spec.direction == "maximize")
    label = f"[worker {spec.index}] " if spec.n_jobs > 1 else ""
    objective = Objective(config, space, context, label=label)
    study.optimize(objective, n_trials=spec.n_trials, timeout=spec.timeout, catch=(Exception,),
                   callbacks=[objective.progress, parent.log_best], gc_after_trial=False)


def split_trials(n_trials: int, n_jobs: int) -> list[int]:
    """Trials per worker: together exactly ``n_trials`` (no overshoot from racing stop conditions)."""
    return [n for n in (n_trials // n_jobs + (i < n_trials % n_jobs) for i in range(n_jobs)) if n > 0]


def run_workers(spec: WorkerSpec, storage) -> list[int]:
    """Worker 0 here, the others as processes; returns the other workers' exit codes."""
    shares = split_trials(spec.n_trials, spec.n_jobs)
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="cnnbench-tune-") as folder:
        try:
            for index, share in enumerate(shares[1:], start=1):
                path = WorkerSpec(**{**asdict(spec), "n_trials": share, "index": index}).save(Path(folder) / f"worker{index}.json")
                procs.append(subprocess.Popen([sys.executable, "-m", "cnnbench.tune.worker", str(path)]))
            run_worker(WorkerSpec(**{**asdict(spec), "n_trials": shares[0], "index": 0}), storage)
            return [p.wait() for p in procs]
        except BaseException:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)  # they end their trial KILLED and exit
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
            raise


def quiet_optuna() -> None:
    """Our one line per trial replaces Optuna's INFO log; its warnings (failed trials) stay."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("alembic").setLevel(logging.WARNING)
