"""PruningReporter: the engine callback that reports each epoch's objective to the Optuna trial and
stops a hopeless trial by raising ``optuna.TrialPruned`` (the engine then ends the run and re-raises)."""

from __future__ import annotations

import math

import optuna

from cnnbench.events import Callback, RunState

EPOCH_METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")


class PruningReporter(Callback):
    """Reports the best value so far (the objective is the trial's best epoch) at ``step=epoch``.

    Never prunes after the last epoch: the trial is complete by then, and its result is worth keeping.
    """

    def __init__(self, trial: optuna.Trial, *, metric: str = "val_accuracy", maximize: bool = True) -> None:
        self.trial = trial
        self.metric = metric
        self.maximize = maximize
        self.best: float | None = None

    def on_epoch_end(self, run: RunState, epoch: int, metrics: dict[str, float]) -> None:
        value = float(metrics[self.metric])
        if not math.isfinite(value):
            return
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best = value
        self.trial.report(self.best, step=epoch)
        if epoch < run.config.run.epochs and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: best {self.metric} {self.best:.4f} is worse than the pruner accepts at this epoch")


def best_of(history: list[dict[str, float]], metric: str, maximize: bool) -> float:
    """The objective of a finished trial: the best epoch's ``metric`` (NaN when there is none)."""
    values = [float(h[metric]) for h in history if metric in h and math.isfinite(float(h[metric]))]
    if not values:
        return float("nan")
    return max(values) if maximize else min(values)
