"""The study in MLflow: one parent run per ``tune`` invocation (written with ``MlflowClient`` only, so
it never becomes the fluent active run) and one nested child run per trial (``TrialTracker``, the
train tracker plus the trial's number and state).

MLflow has no PRUNED status: a child's Optuna state is the tag ``trial_state`` (RUNNING, COMPLETE,
PRUNED, FAIL). Pruned runs end FINISHED (their metrics are real, just fewer epochs); failed ones
end FAILED (KILLED on Ctrl-C) with ``failure_reason``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from cnnbench.campaign.faults import fault_hook
from cnnbench.campaign.runs import create_run
from cnnbench.events import RunState
from cnnbench.tracking import describe
from cnnbench.tracking import runs as mlruns
from cnnbench.tracking.mlflow_tracker import FAILURE_REASON_MAX_CHARS, SUMMARY_STEP, MlflowTracker, git_commit

TAG_STUDY = "cnnbench.tune.study"
TAG_STORAGE = "cnnbench.tune.storage"
TAG_PARENT = "cnnbench.tune.parent_run_id"
TAG_RETRAIN = "cnnbench.tune.retrain_run_id"


class TrialTracker(MlflowTracker):
    """The child run of one trial, nested under the parent, with the train tracker's params, tags
    and metric keys, written lean (a trial's bookkeeping is per-trial overhead): ``MlflowClient``
    only, no fluent active run (so nothing global changes between trials), one create and one batch
    at start, one batch per epoch, one at the end; no artifacts and no model.

    The run id is stored on the trial right after the run is created (user attr ``mlflow_run_id``)
    so a dead worker's run can be closed by whoever notices the missing heartbeat; a worker killed
    in between leaves a run its trial does not name, which :func:`cnnbench.tune.study.sweep_orphan_runs`
    ends. While open, the run carries its owner and a heartbeat (``cnnbench runs --stale``).
    """

    def __init__(self, trial: optuna.Trial, *, study_name: str, parent_run_id: str, tracking_uri: str,
                 experiment: str, experiment_id: str, seed_runs: list[str] | None = None,
                 extra_tags: dict[str, str] | None = None) -> None:
        super().__init__(tracking_uri=tracking_uri, experiment=experiment, run_name=f"trial-{trial.number}", nested=True,
                         parent_run_id=parent_run_id, log_model=False, system_metrics=False)
        self.run_id = None  # never attach to $MLFLOW_RUN_ID: under `mlflow run` that is the parent
        self.trial = trial
        self.study_name = study_name
        self.experiment_id = experiment_id
        # --seeds > 1: a later seed of the trial (job trial-N:seed-S), its run id appended to the
        # trial's ATTR_SEED_RUNS (the runs of its earlier seeds, given here) instead of mlflow_run_id
        self.seed_runs = seed_runs
        self.extra_tags = dict(extra_tags or {})  # a study's [search]: the study's tags and the trial's cell label

    def on_run_start(self, run: RunState) -> None:
        number, seed = self.trial.number, run.config.run.seed
        later = self.seed_runs is not None
        job = f"trial-{number}:seed-{seed}" if later else f"trial-{number}"
        tags = {**self._tags(run), TAG_STUDY: self.study_name, "cnnbench.seed": str(seed), "trial_number": str(number),
                "trial_state": "RUNNING", **self.extra_tags, **run.tags,
                "mlflow.note.content": describe.description(run, heading=f"Trial {number} of study `{self.study_name}`"
                                                            + (f", seed {seed}." if later else "."))}
        name = describe.trial_run_name(run.config, number, self.trial.params, seed if later or self._seeded() else None)
        self.run_id = run.run_id = create_run(self.client, self.experiment_id, run_name=name, role="trial",
                                              campaign=self.study_name, job=job, parent_run_id=self.parent_run_id, tags=tags)
        self._ended = False
        fault_hook("trial-run-created")
        if later:
            from cnnbench.tune.study import ATTR_SEED_RUNS

            self.seed_runs.append(self.run_id)
            self.trial.set_user_attr(ATTR_SEED_RUNS, list(self.seed_runs))
        else:
            self.trial.set_user_attr("mlflow_run_id", self.run_id)  # first: a worker killed from here on leaves a named run
        self._heartbeat = mlruns.Heartbeat(self.client, self.run_id).start()
        self.client.log_inputs(self.run_id, datasets=describe.dataset_inputs(run))
        params = {**run.config.flat_params(), **run.params, "trial_number": self.trial.number}
        mlruns.log_params(self.client, self.run_id, params)

    def _seeded(self) -> bool:
        """The study trains each configuration over several seeds (its run names then say the seed)."""
        from cnnbench.tune.study import ATTR_SEEDS

        try:
            return int(self.trial.study.user_attrs.get(ATTR_SEEDS, 1)) > 1
        except Exception:  # a storage hiccup costs the seed in the name, not the trial
            return False

    def on_epoch_end(self, run: RunState, epoch: int, metrics: dict[str, float]) -> None:
        self._log(metrics, step=epoch)

    def on_checkpoint(self, run: RunState, path: Path) -> None:
        """Trials upload no artifacts: a stopped trial is failed and retried by Optuna, not resumed."""

    def interrupt_message(self, run: RunState) -> None:
        return None

    def on_run_end(self, run: RunState, summary: dict[str, float]) -> None:
        tags = {"trial_state": "COMPLETE", **run.tags}
        if run.notes:
            tags["cnnbench.notes"] = "\n".join(run.notes)[:FAILURE_REASON_MAX_CHARS]
        status = "FINISHED"
        if self._failed_meanwhile():  # this worker was paused past the heartbeat grace: Optuna failed and retried it
            tags.update(trial_state="FAIL", failure_reason="the worker stopped sending heartbeats (paused) and the trial "
                        "was failed and retried meanwhile; these metrics are not the study's")
            status = "FAILED"
        self._log({**summary, **run.summary_metrics}, step=SUMMARY_STEP, tags=tags)
        fault_hook("artifacts-uploading")
        self._upload(run)
        self._end(status)

    def _upload(self, run: RunState) -> None:
        """The trial's artifacts (curves, confusion, memory, ... as the study's switches say); no
        checkpoints: a trial is retried by Optuna, never resumed."""
        import shutil

        shutil.rmtree(Path(run.artifacts_dir) / "checkpoints", ignore_errors=True)
        if any(p.is_file() for p in Path(run.artifacts_dir).rglob("*")):
            self.client.log_artifacts(self.run_id, str(run.artifacts_dir))

    def _failed_meanwhile(self) -> bool:
        try:
            return self.trial.study._storage.get_trial(self.trial._trial_id).state.name != "RUNNING"
        except Exception:  # a storage hiccup must not fail a trial that trained
            return False

    def on_failure(self, run: RunState, error: BaseException, status: str) -> None:
        """Pruned: ``trial_state`` PRUNED and the run FINISHED (its metrics are real, just fewer
        epochs); any other error: FAIL, ``failure_reason``, and the engine's status (FAILED/KILLED)."""
        if self._ended or self.run_id is None:
            return
        try:
            if isinstance(error, optuna.TrialPruned):
                self._log({"pruned_at_epoch": float(run.epoch)}, step=SUMMARY_STEP,
                          tags={"trial_state": "PRUNED", "pruned_reason": str(error)[:FAILURE_REASON_MAX_CHARS]})
                status = "FINISHED"
            else:
                reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                self._log({}, step=run.epoch, tags={"trial_state": "FAIL", "failure_reason": reason[:FAILURE_REASON_MAX_CHARS]})
        finally:
            self._end(status)

    def _log(self, metrics: dict[str, float], *, step: int, tags: dict[str, str] | None = None) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
                              tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])

    def _end(self, status: str) -> None:
        self._stop_heartbeat()
        self.client.set_terminated(self.run_id, status)
        self._ended = True


def record_failed_trial(client: MlflowClient, experiment_id: str, parent_run_id: str, trial: optuna.Trial,
                        study_name: str, values: dict[str, Any], reason: str,
                        extra_tags: dict[str, str] | None = None) -> str:
    """A child run for a trial that failed before training started (so every trial has its run)."""
    return create_run(client, experiment_id, run_name=describe.trial_run_name(None, trial.number, values), role="trial",
                      campaign=study_name, job=f"trial-{trial.number}", parent_run_id=parent_run_id,
                      tags={**(extra_tags or {}), TAG_STUDY: study_name, "trial_number": str(trial.number),
                            "trial_state": "FAIL", "failure_reason": reason[:FAILURE_REASON_MAX_CHARS]},
                      params={**values, "trial_number": trial.number}, ended="FAILED")


def close_dead_trial_run(tracking_uri: str, trial: optuna.trial.FrozenTrial) -> None:
    """End the child run(s) a trial whose worker stopped sending heartbeats left RUNNING (with
    --seeds, the seed that was training; its finished seeds stay as they are)."""
    from cnnbench.tune.study import trial_run_ids

    ids = trial_run_ids(trial)
    if not ids:
        return
    client = MlflowClient(tracking_uri)
    reason = f"the worker running trial {trial.number} stopped sending heartbeats (killed or lost); Optuna retries the trial"
    for run_id in ids:
        if len(ids) > 1 and client.get_run(run_id).info.status != "RUNNING":
            continue
        client.log_batch(run_id, tags=[RunTag("trial_state", "FAIL"), RunTag("failure_reason", reason)])
        client.set_terminated(run_id, "FAILED")


def best_logger(parent, metric: str):
    """A study callback logging to the tune ``parent`` (a :class:`cnnbench.campaign.runs.Parent`) the
    best value so far as metric ``best_<metric>`` (step = trial number) and the best params as tags
    ``best_<name>`` (MLflow params cannot change; they are logged at the end)."""
    last: list[tuple] = []

    def log_best(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        best = best_trial(study)
        if best is None or [(best.number, best.value)] == last:
            return  # unchanged: no write (the metric's step plot keeps the level)
        last[:] = [(best.number, best.value)]
        parent.log_metrics({f"best_{metric}": best.value}, step=trial.number)
        parent.set_tags({**{f"best_{k}": v for k, v in best.params.items()}, "best_trial_number": best.number})

    return log_best


def start_parent(*, tracking_uri: str, experiment: str, run_name: str, campaign: str, tags: dict[str, Any],
                 params: dict[str, Any]):
    """The tune invocation's parent run (or the one ``mlflow run`` created, ``$MLFLOW_RUN_ID``), with
    its study tags, fixed settings, owner and heartbeat."""
    from cnnbench.campaign.runs import Parent

    commit = git_commit()
    parent = Parent.create(MlflowClient(tracking_uri), experiment, run_name=run_name, role="tune", campaign=campaign,
                           tags={**tags, **({"cnnbench.git_commit": commit} if commit else {})}, adopt=True).attach()
    parent.log_params(params)
    return parent


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None
