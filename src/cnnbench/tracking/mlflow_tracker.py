"""MlflowTracker: the callback that records a training run in MLflow.

It opens the run (or attaches to the one ``mlflow run`` created via ``MLFLOW_RUN_ID``, or to the
run being resumed), logs flat params, per-epoch metrics with ``step=epoch`` (1, 2, ...), the
end-of-run summary once at ``step=0`` (:data:`SUMMARY_STEP`), tags, the artifacts
the other callbacks staged in ``run.artifacts_dir``, and the model; and it always ends the run:
FINISHED, FAILED (with ``failure_reason``) or KILLED.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

import cnnbench
from cnnbench.campaign.faults import fault_hook
from cnnbench.errors import CnnbenchError, TrackingError
from cnnbench.campaign import runs as campaign_runs
from cnnbench.campaign.storage import full_disk
from cnnbench.events import Callback, RunState
from cnnbench.tracking import describe, phases
from cnnbench.tracking import runs as mlruns
from cnnbench.tracking.experiments import ensure_experiment
from cnnbench.tracking.store import mask_uri, recorded_config

FAILURE_REASON_MAX_CHARS = 4000
# The step of the one-point metrics (test_accuracy, fit_time_s, time_*_s, ...), logged once at the end.
# MLflow's chart view draws a metric as a line when any run's latest step of it is >= 1, else as bars
# across runs (runs-charts.types.ts, dataTraceMetricsContainMultipleEpochs: `metrics[key].step >=
# MIN_NUMBER_OF_STEP_FOR_LINE_COMPARISON`, 1); per-epoch metrics start at step 1, so they stay curves.
SUMMARY_STEP = 0


class MlflowTracker(Callback):
    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        nested: bool = False,
        parent_run_id: str | None = None,
        log_model: bool = True,
        system_metrics: bool = False,
        extra_tags: dict[str, str] | None = None,
        register_model: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.run_id = run_id  # attach to this run (resume, `mlflow run`); None: create one
        self.nested = nested
        self.parent_run_id = parent_run_id
        self.log_model_enabled = log_model
        self.system_metrics = system_metrics
        self.extra_tags = extra_tags or {}
        self.register_model = register_model  # a Model Registry name for the logged model
        self.client = MlflowClient(tracking_uri)
        self.model_uri: str | None = None
        self._ended = False
        self._heartbeat: mlruns.Heartbeat | None = None
        self._pending = None  # the previous epoch's asynchronous metric write
        # steps each metric already has in the run being attached to (a resume re-trains the epochs
        # after its checkpoint that a SIGKILLed process had logged: they are not logged again)
        self._logged: dict[str, set[int]] = {}
        self._store_error: BaseException | None = None  # the store stopped answering mid-run
        self._disk_full: str | None = None  # the artifact location whose disk filled up mid-run
        self.local_checkpoint: Path | None = None  # kept on disk when the store could not take it
        self.status: str | None = None  # how the run ended
        self.store_check_s = 0.0  # for_config's store check (schema creation on a new SQLite file)
        self.adopted_mlflow_run = False  # attached to the run `mlflow run` created ($MLFLOW_RUN_ID)

    @classmethod
    def for_config(cls, config, *, run_id: str | None = None, adopt_mlflow_run: bool = True,
                   **options: Any) -> "MlflowTracker":
        """The tracker of a ``cnnbench train`` run: its store resolved and checked reachable now
        (before any data is loaded); attached to ``run_id``, or (``adopt_mlflow_run``) to the run
        ``mlflow run`` created (``MLFLOW_RUN_ID``), else a new run in ``config.run.experiment``."""
        from cnnbench.tracking.store import check_reachable, resolve_uri

        started = time.perf_counter()
        uri = resolve_uri(config.run.tracking_uri)
        check_reachable(uri)
        adopted = os.environ.get("MLFLOW_RUN_ID") if adopt_mlflow_run and not run_id else None
        if adopted:  # only the RUNNING run `mlflow run` just created, never a leftover or finished one
            mlruns.check_mlflow_run_id(MlflowClient(uri), adopted)
        tracker = cls(
            tracking_uri=uri, experiment=describe.experiment_name(config.run.experiment), run_name=config.run.run_name,
            register_model=config.run.register_model,
            run_id=run_id or adopted, log_model=config.artifacts.model,
            system_metrics=config.artifacts.memory, **options,
        )
        tracker.adopted_mlflow_run = bool(adopted)
        tracker.store_check_s = time.perf_counter() - started
        return tracker

    # -- events -----------------------------------------------------------------------------
    def on_run_start(self, run: RunState) -> None:
        import logging

        db_log = logging.getLogger("mlflow.store.db.utils")  # logs each SQL error with its traceback
        level = db_log.level
        db_log.setLevel(logging.CRITICAL)
        started = time.perf_counter()
        try:
            self._open(run)
            phases.add(run, "store", self.store_check_s + time.perf_counter() - started)
        except Exception as err:  # the store refused (disk full, locked, permissions): one line, not 5 tracebacks
            if isinstance(err, CnnbenchError):
                raise
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            first = lines[0][:300] if lines else type(err).__name__
            raise TrackingError(f"the MLflow store {mask_uri(self.tracking_uri)} refused the run: {mask_uri(first)}") from None
        finally:
            db_log.setLevel(level)

    def _open(self, run: RunState) -> None:
        mlflow.set_tracking_uri(self.tracking_uri)
        attached = self.run_id is not None
        if self.run_id is None:
            exp_id = ensure_experiment(self.client, self.experiment)  # tagged: the UI opens on the runs table
            mlflow.set_experiment(experiment_id=exp_id)
            # a campaign child carries its identity, worker and parent's Source from its creation on: a
            # run that is findable as a cell (its role tag) already names its worker
            self.run_id = campaign_runs.create_run(self.client, exp_id, run_name=self.run_name or describe.run_name(run.config),
                                                   role=campaign_runs.role_of(self.extra_tags),
                                                   parent_run_id=self.parent_run_id, tags=self.extra_tags)
        else:  # fluent start_run refuses a run outside the experiment an earlier set_experiment chose
            if self.adopted_mlflow_run:  # named like any cnnbench run, unless `mlflow run --run-name` named it
                from cnnbench.tracking.mlproject import name_adopted_run

                name_adopted_run(self.client, self.run_id, self.run_name or describe.run_name(run.config), self.experiment)
            mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)
        active = mlflow.start_run(run_id=self.run_id, nested=self.nested or mlflow.active_run() is not None, log_system_metrics=self.system_metrics or None)
        run.run_id = active.info.run_id
        run.tracking_uri = self.tracking_uri
        self._ended = False
        self._log_params(run)
        # the identity schema: role train unless the caller's tags name one (a study cell, a retrain)
        identity = campaign_runs.identity(campaign_runs.role_of(self.extra_tags))
        mlflow.set_tags({**self._tags(run), **identity, **self.extra_tags, **run.tags, **mlruns.owner_tags()})
        self._heartbeat = mlruns.Heartbeat(self.client, run.run_id).start()
        self._logged = logged_steps(self.client, run.run_id) if attached else {}
        if run.start_epoch > 0:
            self._log_missing_epochs(run)
        if run.start_epoch == 0:  # a resumed run has its description and inputs already
            describe.log_run_description(self.client, run.run_id, run)
        # Logged now so even a run that dies early can be resumed or reproduced (the artifact callback
        # stages the same content).
        mlflow.log_dict(recorded_config(run.config), "config.json")

    def on_epoch_end(self, run: RunState, epoch: int, metrics: dict[str, float]) -> None:
        # Asynchronous: a synchronous SQLite write per epoch cost 40-70 ms wall, enough to put a small
        # run's epoch 5-10% behind a hand-written loop. end_run() flushes the queue. The previous
        # epoch's write is checked now: a store that stopped answering stops the run here (one
        # epoch late at most) instead of training on while every write is dropped.
        self._check_store(run, epoch)
        # an epoch re-trained by a resume (logged before the kill, after the checkpoint) is logged once
        fresh = {k: float(v) for k, v in metrics.items() if epoch not in self._logged.get(k, ())}
        if fresh:
            self._pending = mlflow.log_metrics(fresh, step=epoch, synchronous=False)

    def on_checkpoint(self, run: RunState, path: Path) -> None:
        """Upload ``last.pt`` as soon as it is written (the engine writes it at most every minute), so
        a run killed without any cleanup (SIGKILL, power loss) can still be resumed from it."""
        try:
            self.client.log_artifact(run.run_id, str(path), "checkpoints")
        except Exception as err:
            self._store_failed(run, err, f"uploading checkpoints/last.pt of epoch {run.epoch}", artifacts=True)

    def _check_store(self, run: RunState, epoch: int) -> None:
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                pending.wait()
        except Exception as err:
            self._store_failed(run, err, f"logging the metrics of epoch {epoch - 1}")
        beat = self._heartbeat.error if self._heartbeat is not None else None
        if beat is not None:
            self._store_failed(run, beat, "writing the run's heartbeat")

    def _store_failed(self, run: RunState, err: BaseException, doing: str, *, artifacts: bool = False) -> None:
        full = full_disk(err) if artifacts else None
        if full is not None:  # the artifact disk, not the store: the run is closed FAILED with its reason
            self._disk_full = self._artifact_location(run, full)
            why = f"[Errno {full.errno}] {full.strerror}" if isinstance(full, OSError) else str(full)
            raise CnnbenchError(f"no space left on the disk of the run's artifacts at {self._disk_full} ({doing}: "
                                f"{why}); training stopped after epoch {run.epoch}") from None
        self._store_error = err
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise TrackingError(
            f"the MLflow tracking store {mask_uri(self.tracking_uri)} stopped answering ({doing}: {mask_uri(first)}); "
            f"training stopped after epoch {run.epoch}"
        ) from None

    def on_run_end(self, run: RunState, summary: dict[str, float]) -> None:
        metrics = {**summary, **run.summary_metrics}
        # the test metrics are logged with the model (linked to it), once
        model_metrics = {k: v for k, v in metrics.items() if k.startswith("test_")} if self.log_model_enabled else {}
        summary_batch = {k: float(v) for k, v in metrics.items() if k not in model_metrics}
        if run.tags:
            mlflow.set_tags(run.tags)
        if run.notes:
            mlflow.set_tag("cnnbench.notes", "\n".join(run.notes)[:FAILURE_REASON_MAX_CHARS])
        # A finished run cannot be resumed: its last.pt (weights + optimizer state, ~4x the model for
        # Adam, hundreds of MB for a ResNet-152) would be dead weight; best.pt, when early stopping
        # wrote one, stays.
        (Path(run.artifacts_dir) / "checkpoints" / "last.pt").unlink(missing_ok=True)
        # The summary is logged after the upload and the model, in one batch with their seconds
        # (time_upload_s, time_model_log_s); when either fails it is still logged, before the error.
        try:
            started = time.perf_counter()
            fault_hook("artifacts-uploading")
            self._upload(run)
            summary_batch[phases.metric("upload")] = time.perf_counter() - started
            if self.log_model_enabled:
                started = time.perf_counter()
                self.model_uri = run.model_uri = self._log_model(run, model_metrics)
                summary_batch[phases.metric("model_log")] = time.perf_counter() - started
        except BaseException:
            try:
                mlflow.log_metrics(summary_batch, step=SUMMARY_STEP)
            except Exception:  # the store is down: the run's own error is the one to report
                pass
            raise
        mlflow.log_metrics(summary_batch, step=SUMMARY_STEP)
        self._stop_heartbeat()
        mlruns.delete_artifact(self.client, run.run_id, "checkpoints/last.pt")  # uploaded during training
        if run.start_epoch > 0:
            self._forget_interruption(run)
            _drop_local_copy(run.run_id)
        mlflow.end_run("FINISHED")
        self._ended = True
        self.status = "FINISHED"

    def on_failure(self, run: RunState, error: BaseException, status: str) -> None:
        # By run id, not MLflow's active run: an interrupt inside end_run() can land after MLflow
        # popped the run but before it wrote the status, which used to leave it RUNNING.
        if self._ended or run.run_id is None:
            return
        self._stop_heartbeat()
        self.status = status
        try:
            if self._store_error is not None:
                raise self._store_error  # the store is down: do not wait minutes on each write
            reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            tags = {"failure_reason": reason[:FAILURE_REASON_MAX_CHARS]}
            if run.notes:
                tags["cnnbench.notes"] = "\n".join(run.notes)[:FAILURE_REASON_MAX_CHARS]
            mlruns.set_tags(self.client, run.run_id, tags)
            full = full_disk(error) if self._disk_full is None else None
            if full is not None:
                self._disk_full = self._artifact_location(run, full)
            if self._disk_full is not None:  # uploading would hit the same full disk
                self.local_checkpoint = _keep_locally(run)
            else:
                self._upload(run)  # keeps the checkpoint for --resume
        except Exception as err:  # the store refused: keep the checkpoint on this machine instead
            self._store_error = self._store_error or err
            self.local_checkpoint = _keep_locally(run)
        finally:
            try:
                active = mlflow.active_run()
                if active is not None and active.info.run_id == run.run_id:
                    mlflow.end_run(status)
                self.client.set_terminated(run.run_id, status)
            except Exception:  # the store is down: the run stays RUNNING there; --resume takes it over
                self.status = "RUNNING"
            self._ended = True

    def interrupt_message(self, run: RunState) -> str | None:
        """What the user needs after an interrupt or failure: the run, its state, how to resume."""
        if run.run_id is None:
            return None
        uri = mask_uri(self.tracking_uri)
        command = f"cnnbench train --resume {run.run_id} --tracking-uri {uri}"
        if self._disk_full is not None:
            kept = f"is kept on this machine at {self.local_checkpoint}" if self.local_checkpoint else "could not be kept"
            return (f"MLflow run {run.run_id} is {self.status} (failure_reason tagged); its checkpoint (epoch {run.epoch}) "
                    f"{kept}. A resume writes to the same full disk: free space at {self._disk_full} first, then: "
                    f"{command}")
        if self.local_checkpoint is not None:
            return (f"MLflow run {run.run_id} could not be closed cleanly ({self.status or 'RUNNING'} in the store); its "
                    f"checkpoint (epoch {run.epoch}) is kept on this machine at {self.local_checkpoint}. When the store "
                    f"answers again, resume with: {command}")
        if self.status in ("KILLED", "FAILED"):
            return f"MLflow run {run.run_id} is {self.status}; checkpoints/last.pt holds epoch {run.epoch}. Resume with: {command}"
        return None

    def _artifact_location(self, run: RunState, err: BaseException) -> str:
        """Where the full disk is: the file the error names, else the run's artifact location."""
        if getattr(err, "filename", None):
            return str(err.filename)
        try:
            return mask_uri(self.client.get_run(run.run_id).info.artifact_uri)
        except Exception:  # the store is down too
            return "the run's artifact location"

    def _log_missing_epochs(self, run: RunState) -> None:
        """Epochs the checkpoint holds but the store never got (its server stopped answering, the
        process was killed before the asynchronous write) are logged now, from the checkpoint's
        history, so the resumed run's curves have no hole."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        missing = [Metric(k, float(v), now, int(row["epoch"])) for row in run.history for k, v in row.items()
                   if k != "epoch" and int(row["epoch"]) not in self._logged.get(k, ())]
        for start in range(0, len(missing), 1000):
            self.client.log_batch(run.run_id, metrics=missing[start : start + 1000])
        for m in missing:
            self._logged.setdefault(m.key, set()).add(m.step)

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def _forget_interruption(self, run: RunState) -> None:
        """A resumed run that finished is no longer a failure: drop the reason, keep a record."""
        try:
            mlflow.set_tag("cnnbench.resumed_from_epoch", str(run.start_epoch))
            if "failure_reason" in self.client.get_run(run.run_id).data.tags:
                self.client.delete_tag(run.run_id, "failure_reason")
        except Exception:  # cosmetic
            pass

    # -- helpers ----------------------------------------------------------------------------
    def _log_params(self, run: RunState) -> None:
        """Log params, skipping keys the run already holds (``mlflow run`` logs its ``-P`` values,
        and MLflow refuses a second value for a key): an equal value is skipped silently, a
        different spelling of the same setting (``1e-3`` vs ``0.001``) too; a real difference is
        kept as tag ``cnnbench.resolved.<key>``."""
        params: dict[str, Any] = {**run.config.flat_params(), **run.params}
        existing = self.client.get_run(run.run_id).data.params
        new, resolved = {}, {}
        for key, value in params.items():
            text = "None" if value is None else str(value)
            if key not in existing:
                new[key] = text
            elif not _same(existing[key], text):
                resolved[f"cnnbench.resolved.{key}"] = text
        if new:
            mlruns.log_params(self.client, run.run_id, new)
        if resolved:
            mlruns.set_tags(self.client, run.run_id, resolved)

    def _tags(self, run: RunState) -> dict[str, str]:
        tags = {
            "cnnbench.version": cnnbench.__version__,
            "cnnbench.device": device_name(run.device),
            "cnnbench.model": run.config.model.name,
            "cnnbench.dataset": run.config.data.name,
        }
        commit = git_commit()
        if commit:
            tags["cnnbench.git_commit"] = commit
        return tags

    def _upload(self, run: RunState) -> None:
        folder = Path(run.artifacts_dir)
        if folder.exists():
            describe.prune_empty_dirs(folder)  # e.g. checkpoints/ once last.pt is gone
        if folder.exists() and any(folder.iterdir()):
            self.client.log_artifacts(run.run_id, str(folder))

    def _log_model(self, run: RunState, metrics: dict[str, float]) -> str | None:
        from cnnbench.tracking import model_export

        return model_export.log_model_with_metrics(run, metrics, step=SUMMARY_STEP, register_model=self.register_model)


def logged_steps(client: MlflowClient, run_id: str) -> dict[str, set[int]]:
    """Each metric of the run and the steps it has (its history)."""
    keys = client.get_run(run_id).data.metrics
    return {key: {m.step for m in client.get_metric_history(run_id, key)} for key in keys}


def _keep_locally(run: RunState) -> Path | None:
    """Copy the staged ``last.pt`` and ``config.json`` where ``--resume`` looks first."""
    import shutil

    from cnnbench.tracking.resume import local_checkpoint_dir

    source = Path(run.artifacts_dir) / "checkpoints" / "last.pt"
    if run.run_id is None or not source.exists():
        return None
    folder = local_checkpoint_dir(run.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, folder / "last.pt")
    (folder / "config.json").write_text(json.dumps(recorded_config(run.config)))
    return folder / "last.pt"


def _drop_local_copy(run_id: str) -> None:
    """A resumed run that finished needs no local checkpoint any more."""
    import shutil

    from cnnbench.tracking.resume import local_checkpoint_dir

    shutil.rmtree(local_checkpoint_dir(run_id), ignore_errors=True)


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return a.lower() in ("", "none", "auto") and b.lower() in ("", "none", "auto")


@functools.lru_cache(maxsize=None)  # platform.processor() may spawn `uname -p`
def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"cpu ({platform.processor() or platform.machine()})"


@functools.lru_cache(maxsize=1)  # a subprocess: once per process, not once per run (tune trials)
def git_commit() -> str | None:
    """The commit of the cnnbench source tree when it is a git checkout (editable installs)."""
    src = Path(cnnbench.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
