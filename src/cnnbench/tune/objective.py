"""One trial = one ``api.train`` of the base configuration with the trial's suggested values.

Data is loaded once per worker and reused across trials; it is reloaded only when a searched value
changes what is loaded (dataset options, validation split, subset, image size, seed). A trial
records no artifacts and no model (its child run holds params and per-epoch metrics, like ``train``);
the retrained best run gets the full set.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from mlflow.tracking import MlflowClient

from cnnbench import api
from cnnbench.campaign.data import DATA_CACHE, DataCache
from cnnbench.campaign.faults import fault_hook
from cnnbench.config import TrainConfig
from cnnbench.tune.reporter import PruningReporter, best_of
from cnnbench.tune.space import SearchSpace, apply
from cnnbench.tune.tracker import TrialTracker, record_failed_trial

FAIL_REASON_MAX_CHARS = 2000
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a worker shares."""

    study_name: str
    parent_run_id: str
    experiment: str  # the parent run's experiment: children must live in it to nest in the UI
    tracking_uri: str
    experiment_id: str
    metric: str = "val_accuracy"
    maximize: bool = True
    study_tags: tuple[tuple[str, str], ...] = ()  # a study's [search]: its tags on every trial run, and cell labels


def trial_label(number: int, values: dict[str, Any]) -> str:
    """A trial configuration as a study's cell label: ``trial 3 (lr=0.0123, optimizer=adam)``."""
    from cnnbench.study.definition import short

    return f"trial {number} (" + ", ".join(f"{short(k)}={_short(v)}" for k, v in values.items()) + ")"


class Objective:
    """With ``seeds`` > 1 a trial trains its configuration once per seed (``--seed``, ``--seed + 1``,
    ...), each in its own child run, and scores the mean of the seeds' best epochs; the pruner
    watches the first seed (a pruned trial trains no other seed). The trial's ``result`` holds the
    spread (std and the study report's cell interval: a bootstrap over 3 or more seeds)."""

    def __init__(self, base: TrainConfig, space: SearchSpace, context: StudyContext, *, label: str = "", stream=None,
                 seeds: int = 1) -> None:
        self.base = base
        self.space = space
        self.context = context
        self.label = label
        self.stream = stream or sys.stdout
        self.seeds = seeds
        self._data = DataCache(min(seeds, DATA_CACHE))  # a trial's seeds each load their own split

    def data_for(self, config: TrainConfig):
        return self._data.get(api.resolve(config).config)  # typed dataset options (text "false" is not truthy)

    def __call__(self, trial: optuna.Trial) -> float:
        ctx = self.context
        started = time.perf_counter()
        trial.set_user_attr("worker", WORKER_ID)
        values = self.space.suggest(trial)
        config = apply(self.base, values).replace(run={"run_name": f"trial-{trial.number}", "quiet": True})
        results, seed_runs = [], None
        for index in range(self.seeds):
            if index:  # a later seed: its own run, no pruning (the first seed decided that)
                seed_runs = [] if seed_runs is None else seed_runs
                config = config.replace(run={"seed": self.base.run.seed + index,
                                             "run_name": f"trial-{trial.number}-seed{self.base.run.seed + index}"})
            results.append(self._train(trial, config, values, started, seed_runs, prune=index == 0))
        scores = [best_of(r.history, ctx.metric, ctx.maximize) for r in results]
        value = float(np.mean(scores))
        # one write (each user attr is a storage transaction): the test score is for reading, never for selection
        summary = {"test_accuracy": float(np.mean([r.metrics.get("test_accuracy", math.nan) for r in results])),
                   "fit_time_s": float(np.sum([r.metrics.get("fit_time_s", math.nan) for r in results])),
                   "trial_seconds": time.perf_counter() - started}
        if self.seeds > 1:
            from cnnbench.study.stats import cell_stats

            spread = cell_stats(scores)  # the study report's cell interval (none below 3 seeds)
            bound = lambda v: None if math.isnan(v) else v  # noqa: E731 -- JSON-safe
            summary.update(seeds=self.seeds, values=scores, value_std=spread.std, value_ci_low=bound(spread.low),
                           value_ci_high=bound(spread.high), value_interval=spread.interval)
        trial.set_user_attr("result", summary)
        return value

    def _train(self, trial: optuna.Trial, config: TrainConfig, values: dict, started: float,
               seed_runs: list[str] | None, *, prune: bool):
        """One training of the trial's configuration (one seed) in its own child run."""
        ctx = self.context
        extra = {}
        if ctx.study_tags:  # the study's report reads each trial configuration as a cell, each seed as its run
            from cnnbench.study.run import TAG_CELL

            extra = {**dict(ctx.study_tags), TAG_CELL: trial_label(trial.number, values)}
        tracker = TrialTracker(trial, study_name=ctx.study_name, parent_run_id=ctx.parent_run_id, tracking_uri=ctx.tracking_uri,
                               experiment=ctx.experiment, experiment_id=ctx.experiment_id, seed_runs=seed_runs,
                               extra_tags=extra)
        reporter = [PruningReporter(trial, metric=ctx.metric, maximize=ctx.maximize)] if prune else []
        try:
            data = self.data_for(config)
            fault_hook("data-loaded")
            from cnnbench.artifacts import artifact_callbacks

            # artifacts first (the tracker uploads what they wrote), the reporter last (it may prune)
            trackers = api.tracker_callbacks(config, given={api.BUILTIN_TRACKER: tracker})
            return api.train(config, [*artifact_callbacks(config), *trackers, *reporter], data=data)
        except optuna.TrialPruned:
            trial.set_user_attr("result", {"trial_seconds": time.perf_counter() - started})
            raise
        except Exception as err:
            reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
            if seed_runs is not None:
                reason = f"seed {config.run.seed}: {reason}"
            trial.set_user_attr("fail_reason", reason[:FAIL_REASON_MAX_CHARS])
            if tracker.run_id is None and seed_runs is None:  # failed before the run existed (e.g. a combination the model refuses)
                run_id = record_failed_trial(MlflowClient(ctx.tracking_uri), ctx.experiment_id, ctx.parent_run_id,
                                             trial, ctx.study_name, values, reason,
                                             extra_tags={**extra, "cnnbench.seed": str(config.run.seed)})
                trial.set_user_attr("mlflow_run_id", run_id)
            raise

    def progress(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Study callback: one line per finished trial."""
        shown = "  ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        state = trial.state.name
        if state == "COMPLETE":
            outcome = f"{self.context.metric} {trial.value:.4f}"
            spread = trial.user_attrs.get("result", {}).get("value_std")
            if spread is not None:
                outcome += f" +/- {spread:.4f} (mean, std over {self.seeds} seeds)"
        elif state == "FAIL":
            outcome = trial.user_attrs.get("fail_reason", "failed")[:200]
        else:
            epochs = max(trial.intermediate_values) if trial.intermediate_values else 0
            outcome = f"pruned after epoch {epochs}"
        seconds = trial.user_attrs.get("result", {}).get("trial_seconds")
        took = f"  ({seconds:.1f} s)" if seconds else ""
        print(f"{self.label}trial {trial.number:>3} {state:<8} {shown}  -> {outcome}{took}", file=self.stream, flush=True)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
