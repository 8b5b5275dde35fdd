"""The study's job source: claim a cell x seed from the campaign queue, train it (data reused per
worker), log it as a child of the study's parent run, repeat until no job is waiting or running
anywhere (a job whose worker died comes back after its lease expires and is run here too).

A child run is an ordinary ``cnnbench train`` run (the same callbacks: artifacts per the study's
switches, console progress, the MLflow tracker) nested under the parent, plus the study's tags.
Timings compare across cells: before a worker's first timed cell of a given model and input it
trains that model on a few batches (the one-off warm-up of kernels, allocator and thread pools is
kept out of ``fit_time_s``), and :class:`EpochClock` adds ``epoch_time_with_val_s`` (training plus
validation, as R0 and R2 time it) next to the engine's ``epoch_time_s`` (training only).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from cnnbench.campaign.faults import fault_hook
from cnnbench.campaign import DEFAULT_HEARTBEAT_S
from cnnbench.campaign import runs as identity
from cnnbench.campaign.data import DataCache
from cnnbench.campaign.queue import Claim, Job, JobQueue, Lost
from cnnbench.campaign.workers import LeaseKeeper, is_transient, thread_share
from cnnbench.config import TrainConfig
from cnnbench.errors import ConfigError
from cnnbench.events import Callback, RunState
from cnnbench.study.definition import Study, load

TAG_STUDY = "cnnbench.study"
TAG_ID = "cnnbench.study.id"
TAG_BUDGET = "cnnbench.study.budget"
TAG_DIGEST = "cnnbench.study.digest"
TAG_CELL = "cnnbench.study.cell"
TAG_SEED = "cnnbench.seed"
TAG_ATTEMPT = "cnnbench.study.attempt"
TAG_WORKER = "cnnbench.study.worker"
TAG_STORAGE = "cnnbench.study.storage"
TAG_DISCARDED = "cnnbench.study.discarded"  # a [search] trial run the report leaves out (its trial does not count)
WARMUP_STEPS = 3
REASON_MAX_CHARS = 4000
ENTRY = "cnnbench.study.run:work"  # what a worker process runs (cnnbench.campaign.workers)


def worker_id(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


def job_of(cell: int, label: str, seed: int) -> Job:
    return Job(f"{cell}:{seed}", {"cell": cell, "label": label, "seed": seed})


def lease_s(heartbeat_interval: float) -> float:
    """A job silent for twice the heartbeat interval is given to another worker."""
    return 2.0 * heartbeat_interval


@dataclass
class WorkerSpec:
    """Everything one worker needs (JSON-able: extra local workers are processes)."""

    source: str
    text: str
    budget: str | None
    sets: list[str]
    storage: str
    study_name: str
    parent_run_id: str
    experiment: str
    tracking_uri: str
    max_retries: int = 1
    heartbeat_interval: int = DEFAULT_HEARTBEAT_S
    index: int = 0
    workers: int = 1
    parent_pid: int | None = None
    device: str | None = None
    max_jobs: int | None = None
    entry: str = ENTRY
    finish: bool = False  # a detached campaign's remote worker: beat the parent; the last one writes the report


def work(spec: dict) -> None:
    """A worker process's job: run cells until none is left (``cnnbench.campaign.workers`` and the
    remote launchers call it). A detached campaign has no command following it: its workers keep the
    parent's heartbeat, and the one that ends the last job writes the report and ends the parent."""
    worker = Worker(WorkerSpec(**spec))
    if not worker.spec.finish:
        worker.run()
        return
    parent = identity.Parent(worker.client, worker.spec.parent_run_id)
    parent.attach()
    try:
        worker.run()
    finally:
        parent.detach()
    from cnnbench.study.session import finish_detached

    finish_detached(spec, stream=worker.stream)


@dataclass
class WorkerStats:
    finished: int = 0
    failed: int = 0
    seconds: list[float] = field(default_factory=list)


class EpochClock(Callback):
    """``epoch_time_with_val_s`` per epoch (train + validation) and ``fit_time_with_val_s`` in the
    summary. Placed before the tracker, it adds to the metrics the tracker logs."""

    def __init__(self) -> None:
        self.started = 0.0
        self.total = 0.0

    def on_epoch_start(self, run: RunState, epoch: int) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, run: RunState, epoch: int, metrics: dict[str, float]) -> None:
        spent = time.perf_counter() - self.started
        self.total += spent
        metrics["epoch_time_with_val_s"] = spent
        run.summary_metrics["fit_time_with_val_s"] = self.total


class CellRecord(Callback):
    """After the tracker: records the child run id on the claimed job (so whoever finds the worker
    dead can close the run)."""

    def __init__(self, queue: JobQueue, claim: Claim) -> None:
        self.queue, self.claim = queue, claim

    def on_run_start(self, run: RunState) -> None:
        if run.run_id:
            fault_hook("cell-run-created")
            self.queue.set_run(self.claim, run.run_id)


def close_lost(client: MlflowClient, lost: Lost) -> None:
    """A job whose lease expired: end its child run FAILED with the reason (the queue has already
    given the job to another worker, or failed it when no retry is left)."""
    if not lost.run_id:
        return
    then = "it is given to another worker" if lost.state == "waiting" else "no retry is left (--max-retries)"
    reason = (f"the worker running this cell ({lost.worker or '?'}) stopped renewing its lease (killed, lost or "
              f"paused); {then}")
    try:
        if client.get_run(lost.run_id).info.status == "RUNNING":
            client.log_batch(lost.run_id, tags=[RunTag("failure_reason", reason)])
            client.set_terminated(lost.run_id, "FAILED")
    except Exception:  # the run may be gone; the queue's state is what matters
        pass


def cell_config(study: Study, index: int, seed: int, *, tracking_uri: str, experiment: str,
                device: str | None = None) -> TrainConfig:
    from cnnbench.tracking.describe import campaign_run_name

    cell = study.cells[index]  # named by what differs first: `s0 lr=1e-3 bs=64 · lenet5`
    run = {"seed": seed, "tracking_uri": tracking_uri, "experiment": experiment,
           "run_name": campaign_run_name(cell.config, f"s{seed}", cell.axes, variant=cell.variant), "quiet": True}
    if device:
        run["device"] = device
    return cell.config.replace(run=run)


def open_queue(url: str, study_name: str, *, heartbeat_interval: float, max_retries: int) -> JobQueue:
    from cnnbench.campaign.storage import open_engine

    return JobQueue(open_engine(url), study_name, lease_s=lease_s(heartbeat_interval), max_retries=max_retries)


class Worker:
    def __init__(self, spec: WorkerSpec, *, queue: JobQueue | None = None, stream=None, progress=None) -> None:
        self.spec = spec
        self.stream = stream or sys.stderr
        self.progress = progress  # called after each job (worker 0 prints the campaign's progress line)
        kwargs = {"max_jobs": spec.max_jobs} if spec.max_jobs else {}
        self.study = load(spec.source, spec.text, budget=spec.budget, sets=spec.sets, **kwargs)
        self.queue = queue or open_queue(spec.storage, spec.study_name, heartbeat_interval=spec.heartbeat_interval,
                                         max_retries=spec.max_retries)
        self.queue.wait_ready()
        self.client = MlflowClient(spec.tracking_uri)
        self.experiment_id = self.client.get_run(spec.parent_run_id).info.experiment_id
        self.id = worker_id(spec.index)
        self.label = f"[worker {spec.index}] " if spec.workers > 1 else ""
        self.data = DataCache()
        self._warm: set[tuple] = set()
        self.stats = WorkerStats()

    def run(self) -> WorkerStats:
        with thread_share(self.spec.workers):
            return self._run()

    def _run(self) -> WorkerStats:
        keeper = LeaseKeeper(self.spec.heartbeat_interval)
        poll = min(2.0, max(0.2, self.spec.heartbeat_interval / 2))
        try:
            while True:
                claim = self.claim()
                if claim is None:
                    if self.queue.active() == 0:
                        return self.stats
                    time.sleep(poll)  # others are running: one may die and its cell come back
                    continue
                keeper.hold(lambda claim=claim: self.queue.heartbeat(claim))
                try:
                    self.run_cell(claim)
                except KeyboardInterrupt:
                    self.queue.release(claim, "interrupted (Ctrl-C / SIGTERM / SIGHUP); run again by any worker")
                    raise
                finally:
                    keeper.hold(None)
                if self.progress is not None:
                    self.progress()
        finally:
            keeper.stop()

    def claim(self) -> Claim | None:
        """The next job; the leases that expired meanwhile (dead workers of any command) are swept
        by the queue's claim first, and their runs closed here."""
        claim = self.queue.claim(self.id)
        while self.queue.reclaimed:
            close_lost(self.client, self.queue.reclaimed.pop())
        return claim

    def run_cell(self, claim: Claim) -> None:
        from cnnbench import api
        from cnnbench.tracking.mlflow_tracker import MlflowTracker

        spec, job = self.spec, claim.payload
        cell, label, seed = int(job["cell"]), str(job["label"]), int(job["seed"])
        started = time.perf_counter()
        config = cell_config(self.study, cell, seed, tracking_uri=spec.tracking_uri,
                             experiment=spec.experiment, device=spec.device)
        tags = {**identity.identity("cell", campaign=spec.study_name, job=claim.key, owner=False),
                TAG_STUDY: self.study.name, TAG_ID: spec.study_name, TAG_CELL: label,
                TAG_SEED: str(seed), TAG_WORKER: self.id, TAG_ATTEMPT: str(claim.attempt),
                **identity.campaign_source(self.client, spec.parent_run_id)}  # the parent's Source, not worker.py
        tracker = MlflowTracker(tracking_uri=spec.tracking_uri, experiment=spec.experiment, run_name=config.run.run_name,
                                nested=True, parent_run_id=spec.parent_run_id, log_model=config.artifacts.model,
                                system_metrics=False, extra_tags=tags)
        callbacks = [*api.run_callbacks(config, tracker=False), EpochClock(),
                     *api.tracker_callbacks(config, given={api.BUILTIN_TRACKER: tracker}), CellRecord(self.queue, claim)]
        skip = memory_skip(config)
        if skip:  # predicted not to fit: not launched into an out-of-memory
            self.record_failed(config, {**tags, "cnnbench.study.skipped": "memory"}, skip)
            self.queue.fail(claim, skip, outcome="skipped", final=True)  # the prediction would not change
            self.stats.failed += 1
            self._print(label, seed, "SKIPPED", skip, started)
            return
        try:
            data = self.data.get(config)
            fault_hook("data-loaded")
            self.warm_up(config, data)
            result = api.train(config, callbacks, data=data)
        except KeyboardInterrupt:
            raise
        except Exception as err:
            reason = (f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)[:REASON_MAX_CHARS]
            # the engine's message ends with how to resume the run by itself; a cell is resumed by its study
            reason = reason.split(" MLflow run ", 1)[0].rstrip()
            if tracker.run_id is None:  # failed before its run existed: record one, so the report shows it
                self.record_failed(config, tags, reason)
            transient = is_transient(err)
            state = self.queue.fail(claim, reason, outcome="transient" if transient else "failed", counts=not transient)
            if state is None:  # stalled past its lease before it failed: the cell is another worker's now
                self.lost_lease(tracker.run_id, label, seed, started, then=reason)
                _release_device_memory()
                return
            if state != "waiting":
                self.stats.failed += 1
            then = {"waiting": "; run again" + (" (transient store error, no retry used)" if transient else ""),
                    "failed": "; no retry left"}.get(state or "", "")
            self._print(label, seed, "FAILED", reason.splitlines()[0][:200] + then, started)
            _release_device_memory()
            return
        value = result.metrics.get(self.study.metric, float("nan"))
        if not self.queue.finish(claim, value if value == value else None, result.run_id):
            # this worker stalled past its lease: the cell was handed on meanwhile, so this run is not
            # the cell's (exactly one FINISHED run per cell x seed)
            self.lost_lease(result.run_id, label, seed, started)
            return
        self.stats.finished += 1
        self.stats.seconds.append(time.perf_counter() - started)
        self._print(label, seed, "FINISHED", f"{self.study.metric} {value:.4f}", started)

    def lost_lease(self, run_id: str | None, label: str, seed: int, started: float, then: str = "") -> None:
        """The queue refused this worker's result: it stalled past its lease and the cell was given
        to another worker meanwhile. Its run ends FAILED saying so (whatever it ended with)."""
        reason = ("the worker stopped renewing its lease (paused) and the cell was given to another worker "
                  "meanwhile; these metrics are not the study's" + (f" (the run then failed: {then})" if then else ""))
        if run_id:
            self.client.log_batch(run_id, tags=[RunTag("failure_reason", reason[:REASON_MAX_CHARS])])
            self.client.set_terminated(run_id, "FAILED")
        self._print(label, seed, "FAILED", reason.splitlines()[0][:300], started)

    def warm_up(self, config: TrainConfig, data) -> None:
        """A few training steps of a throwaway copy of the model on real batches, once per worker and
        model/input, so the one-off costs of the first steps stay out of the first cell's fit_time_s."""
        import torch

        from cnnbench import api

        key = (config.model.name, json.dumps(config.model.options, sort_keys=True, default=str),
               tuple(data.train.images.shape[1:]), config.optim.batch_size, config.run.device, config.run.amp)
        if key in self._warm:
            return
        self._warm.add(key)
        device = api.resolve_device(config.run.device)
        state = torch.random.get_rng_state()
        try:
            model = api.resolve(config).model.to(device).train()
            mean = torch.tensor(data.mean).view(1, -1, 1, 1) * 255.0
            std = torch.tensor(data.std).view(1, -1, 1, 1) * 255.0
            x = ((data.train.images[: config.optim.batch_size].float() - mean) / std).to(device)
            y = data.train.labels[: config.optim.batch_size].to(device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
            for _ in range(WARMUP_STEPS):
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
            with torch.no_grad():
                model.eval()(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        finally:
            torch.random.set_rng_state(state)

    def record_failed(self, config: TrainConfig, tags: dict[str, str], reason: str) -> None:
        identity.create_run(self.client, self.experiment_id, run_name=config.run.run_name, role="cell",
                            campaign=self.spec.study_name, job=tags[identity.TAG_JOB], parent_run_id=self.spec.parent_run_id,
                            tags={**tags, "failure_reason": reason, "cnnbench.model": config.model.name,
                                  "cnnbench.dataset": config.data.name}, params=config.flat_params(), ended="FAILED")

    def _print(self, label: str, seed: int, state: str, outcome: str, started: float) -> None:
        print(f"{self.label}{label} / seed {seed}  {state}  {outcome}  ({time.perf_counter() - started:.1f} s)",
              file=self.stream, flush=True)


def _release_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def memory_skip(config: TrainConfig) -> str:
    """Why a cell is not launched ("" when it fits): with a --memory-budget, or on a CUDA device (its
    total memory), the cell's predicted training peak (``cnnbench memory``) must fit."""
    from cnnbench import api

    device = api.resolve_device(config.run.device)
    budget = config.optim.memory_budget
    if (budget is None and device.type != "cuda") or config.optim.batch_size == "auto":
        return ""  # nothing to fit against, or the batch is already chosen to fit
    from cnnbench.memory.for_config import cell_fits

    resolved = api.resolve(config.replace(optim={"memory_budget": None}))
    fits, _, _, reason = cell_fits(resolved.config, resolved.info, device, budget_mb=budget)
    return "" if fits else f"skipped: {reason}"


def _without_fixed_budget(config: TrainConfig) -> TrainConfig:
    """A fixed batch above --memory-budget is a cell to skip (memory_skip), not a bad study."""
    return config if config.optim.batch_size == "auto" else config.replace(optim={"memory_budget": None})


def resolve_cells(study: Study) -> None:
    """``api.resolve`` every cell (plugin options typed, model fits the input) before anything runs;
    the first bad cell is one ConfigError naming it."""
    from cnnbench import api

    for cell in study.cells:
        try:
            api.resolve(_without_fixed_budget(cell.config))
        except ConfigError as err:
            raise type(err)(f"cell {cell.label!r}: {err}") from None
