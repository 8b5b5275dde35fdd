"""Where a run's wall time goes, as ``time_<phase>_s`` summary metrics (logged with the run's other
summary metrics, in the same batch: no extra store round trip).

========================  ====================================================================
``time_startup_s``        cnnbench's own start, to the training entry: the interpreter's
                          bootstrap (the CPU seconds the process had used when ``cnnbench`` was
                          first imported) + the wall seconds since that import (``cnnbench.cli``,
                          option parsing); ``cnnbench train`` only (a library caller's process
                          started long before its run). Not the process's age: a shell that runs
                          ``pip install ... && cnnbench train`` may exec cnnbench in its own
                          process, whose age then counts the install (:func:`startup_s`)
``time_imports_s``        the lazy imports the run's callbacks need (torch, matplotlib, MLflow)
``time_store_s``          the tracking store: checked reachable, schema created on a new SQLite
                          file, the run created with its params, tags, description, config.json
``time_setup_s``          validation, the model built and checked on one input, memory prediction
``time_data_s``           the dataset loaded and prepared (absent when the caller passed ``data``)
``time_fit_s``            the epochs (training + validation + per-epoch logging and checkpoints)
                          and the test pass; ``fit_time_s`` is its training passes alone
``time_artifacts_s``      the artifact builders' work in every hook (model summary, t-SNE maps,
                          figures, reports); ``artifacts_time_s`` is its end-of-run part
``time_upload_s``         the staged artifacts uploaded to the store
``time_model_log_s``      the model exported (``torch.export``) and logged, test metrics linked
========================  ====================================================================

What follows the last write (closing the run) cannot be logged to it; ``benchmarks/
bench_run_overhead.py`` measures that as the remainder of the process's wall time.

:class:`PhaseTimer` is the callback pair that brackets the other callbacks: put ``timer`` first
and ``timer.tail`` right before the tracker (:func:`cnnbench.api.run_callbacks` does).
"""

from __future__ import annotations

import time
from typing import Any

from cnnbench.events import Callback, RunState

PHASES = ("startup", "imports", "store", "setup", "data", "fit", "artifacts", "upload", "model_log")


def metric(phase: str) -> str:
    return f"time_{phase}_s"


def process_age_s() -> float | None:
    """Seconds since this process was created (None where the OS does not say)."""
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())
    except Exception:  # psutil missing, or no access to the process table
        return None


def startup_s() -> float:
    """cnnbench's start so far: the CPU seconds the process had used when the ``cnnbench`` package
    was imported (the interpreter's bootstrap; never more than the process's age then), plus the
    wall seconds since that import. A shell's wait for a child (``pip install``) before it exec'd
    cnnbench is in neither: it is the child's CPU time, not this process's."""
    import cnnbench

    imported_at, cpu_before = cnnbench._STARTED
    since_import = max(0.0, time.perf_counter() - imported_at)
    age = process_age_s()
    if age is not None:
        cpu_before = min(cpu_before, max(0.0, age - since_import))
    return max(0.0, cpu_before) + since_import


def add(run: RunState, phase: str, seconds: float) -> None:
    key = metric(phase)
    run.summary_metrics[key] = run.summary_metrics.get(key, 0.0) + seconds


class PhaseTimer(Callback):
    """Startup and imports before the run (:meth:`lap`), then the fit and the artifact builders'
    share of it: each hook's time from this callback (first in the list) to :attr:`tail` (just
    before the tracker) is the builders'; the rest of the loop, up to the test pass's end, is fit's."""

    def __init__(self, *, startup: bool = False) -> None:
        self.before: dict[str, float] = {}
        if startup:
            self.before["startup"] = startup_s()
        self._lap = time.perf_counter()
        self._hook_start = 0.0
        self._fit_start: float | None = None
        self._artifacts_at_fit = 0.0  # the builders' seconds before the first epoch (at run start)
        self.tail = _Tail(self)

    def lap(self, phase: str) -> None:
        """Seconds since the previous lap (or creation) go to ``phase``."""
        now = time.perf_counter()
        self.before[phase] = self.before.get(phase, 0.0) + now - self._lap
        self._lap = now

    def skip(self) -> None:
        """Seconds since the previous lap are someone else's (measured by them)."""
        self._lap = time.perf_counter()

    def _enter(self) -> None:
        self._hook_start = time.perf_counter()

    def _leave(self, run: RunState) -> None:
        add(run, "artifacts", time.perf_counter() - self._hook_start)

    def on_run_start(self, run: RunState) -> None:
        for phase, seconds in self.before.items():
            add(run, phase, seconds)
        self.before = {}
        self._enter()

    def on_epoch_start(self, run: RunState, epoch: int) -> None:
        if self._fit_start is None:
            self._fit_start = time.perf_counter()
        self._enter()

    def on_epoch_end(self, run: RunState, epoch: int, metrics: dict[str, float]) -> None:
        self._enter()

    def on_checkpoint(self, run: RunState, path) -> None:
        self._enter()

    def on_eval_end(self, run: RunState, result) -> None:
        now = time.perf_counter()
        if self._fit_start is not None:  # minus the builders' per-epoch work, counted as theirs
            spent = now - self._fit_start - run.summary_metrics.get(metric("artifacts"), 0.0) + self._artifacts_at_fit
            add(run, "fit", max(0.0, spent))
        self._hook_start = now

    def on_run_end(self, run: RunState, summary: dict[str, float]) -> None:
        self._enter()

    def _fit_begins(self, run: RunState) -> None:
        self._artifacts_at_fit = run.summary_metrics.get(metric("artifacts"), 0.0)


class _Tail(Callback):
    """The closing bracket: everything between the timer and here was the builders' work."""

    def __init__(self, timer: PhaseTimer) -> None:
        self.timer = timer

    def on_run_start(self, run: RunState) -> None:
        self.timer._leave(run)
        self.timer._fit_begins(run)

    def on_epoch_start(self, run: RunState, epoch: int) -> None:
        self.timer._leave(run)

    def on_epoch_end(self, run: RunState, epoch: int, metrics: dict[str, float]) -> None:
        self.timer._leave(run)

    def on_checkpoint(self, run: RunState, path) -> None:
        self.timer._leave(run)

    def on_eval_end(self, run: RunState, result) -> None:
        self.timer._leave(run)

    def on_run_end(self, run: RunState, summary: dict[str, float]) -> None:
        self.timer._leave(run)


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The ``time_<phase>_s`` metrics among ``metrics``, in :data:`PHASES` order."""
    return {metric(p): float(metrics[metric(p)]) for p in PHASES if metric(p) in metrics}
