"""The identity every run cnnbench creates carries, and every tag name the campaign layer writes.

One schema for all roles, so ``cnnbench runs --stale``, ``train --resume``, the reports and the
notebooks read one tag instead of guessing from ``cnnbench.tune.role`` / ``cnnbench.study.role``:

- ``cnnbench.role``: train | tune | trial | study | cell | retrain | memory | filters
- ``cnnbench.version``: the cnnbench that wrote it
- ``cnnbench.owner`` / ``cnnbench.heartbeat``: the process writing a RUNNING run and its last beat
  (:mod:`cnnbench.tracking.runs`), on parents as on children
- ``cnnbench.campaign``: for tune, trial, study, cell and retrain runs, the campaign (study) name
  in its storage; ``cnnbench.job``: for trial and cell runs, the job key in that campaign's queue.

A trial or cell run belongs to its campaign's queue: only the campaign command resumes it
(:data:`RESUMED_BY`), never ``train --resume``, or one job would end with two FINISHED runs.
"""

from __future__ import annotations

from typing import Any

TAG_ROLE = "cnnbench.role"
TAG_VERSION = "cnnbench.version"
TAG_CAMPAIGN = "cnnbench.campaign"
TAG_JOB = "cnnbench.job"
ROLES = ("train", "tune", "trial", "study", "cell", "retrain", "memory", "filters")
PARENT_ROLES = ("tune", "study")
# roles whose runs only their campaign command may resume, and how to say it
RESUMED_BY = {
    "trial": "cnnbench tune ... --study-name {campaign} (the same command adds the missing trials)",
    "cell": "cnnbench study run ... --study-name {campaign} (the same command that started the study)",
}
# the tags older cnnbench versions wrote instead of TAG_ROLE, and what their values mean (read, never written)
LEGACY_ROLE_TAGS = {"cnnbench.tune.role": {"study": "tune", "trial": "trial", "retrain_best": "retrain"},
                    "cnnbench.study.role": {"study": "study", "cell": "cell"}}


def identity(role: str, *, campaign: str | None = None, job: str | None = None, owner: bool = True) -> dict[str, str]:
    """The identity tags of a new run of ``role`` (owner and heartbeat included unless ``owner=False``,
    for runs created already ended)."""
    import cnnbench
    from cnnbench.tracking import runs as mlruns

    if role not in ROLES:
        raise ValueError(f"unknown run role {role!r}; one of {', '.join(ROLES)}")
    tags = {TAG_ROLE: role, TAG_VERSION: cnnbench.__version__}
    if campaign is not None:
        tags[TAG_CAMPAIGN] = campaign
    if job is not None:
        tags[TAG_JOB] = job
    if owner:
        tags.update(mlruns.owner_tags())
    return tags


SOURCE_TAGS = ("mlflow.source.name", "mlflow.source.type")
_SOURCES: dict[tuple[str, str], dict[str, str]] = {}


def campaign_source(client, parent_run_id: str) -> dict[str, str]:
    """The Source (``mlflow.source.name`` / ``type``) of a campaign's parent run, for each of its
    child runs to carry too: one Source for the campaign in the runs table, whichever process trained
    a child (the command itself, a ``worker.py`` process, a Slurm or Ray task). Read once per process
    and parent; empty when the parent has none."""
    key = (str(client.tracking_uri), parent_run_id)
    if key not in _SOURCES:
        tags = client.get_run(parent_run_id).data.tags
        _SOURCES[key] = {k: tags[k] for k in SOURCE_TAGS if k in tags}
    return dict(_SOURCES[key])


def role_of(tags: dict[str, Any]) -> str:
    """A run's role from its tags (runs of older versions by their legacy tags); ``train`` when none."""
    role = tags.get(TAG_ROLE)
    if role is None:
        for key, meaning in LEGACY_ROLE_TAGS.items():
            if key in tags:
                role = meaning.get(tags[key])
                break
    return role if role in ROLES else "train"


def role_filter(role: str) -> str:
    """An MLflow ``search_runs`` clause selecting runs of ``role``."""
    return f"tags.`{TAG_ROLE}` = '{role}'"


def quote(value: str) -> str:
    """``value`` as a string literal of MLflow's filter grammar, which has no escape character: in
    single quotes, or in double quotes when it holds a single quote; holding both is refused."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r} holds both quote characters, which an MLflow filter string cannot carry")


CHILD_ROLES = ("trial", "cell")  # a campaign's job runs: they carry the parent's Source


def create_run(client, experiment_id: str, *, run_name: str | None, role: str, campaign: str | None = None,
               job: str | None = None, parent_run_id: str | None = None, tags: dict[str, Any] | None = None,
               params: dict[str, Any] | None = None, ended: str | None = None) -> str:
    """Create a run of ``role`` with ``MlflowClient.create_run`` and return its id: the identity tags
    (:func:`identity`), ``tags``, the standard tags ``mlflow.start_run`` would add, and for a child
    ``mlflow.parentRunId``, a trial or cell also its campaign's Source (:func:`campaign_source`);
    then ``params``. ``ended``: a run recorded already ended with that status (no owner, no
    heartbeat), e.g. a job that failed before its training started. The one place cnnbench creates
    a run."""
    from cnnbench.tracking import describe
    from cnnbench.tracking import runs as mlruns

    written = {**identity(role, campaign=campaign, job=job, owner=ended is None), **(tags or {})}
    if parent_run_id:
        written["mlflow.parentRunId"] = parent_run_id
        if role in CHILD_ROLES:
            written.update(campaign_source(client, parent_run_id))
    run_id = client.create_run(experiment_id, run_name=run_name,
                               tags={k: mlruns.text(v) for k, v in describe.standard_tags(written).items()}).info.run_id
    if params:
        mlruns.log_params(client, run_id, params)
    if ended:
        client.set_terminated(run_id, ended)
    return run_id


class Parent:
    """A campaign's parent run, written with ``MlflowClient`` only (never the fluent active run): its
    identity, a heartbeat while a command works on it (so ``runs --stale`` sees a live campaign as
    live, whichever of its commands is running), and its end."""

    def __init__(self, client, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self._beat = None

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    @property
    def experiment_name(self) -> str:
        return self.client.get_experiment(self.experiment_id).name

    @classmethod
    def create(cls, client, experiment: str, *, run_name: str, role: str, campaign: str,
               tags: dict[str, Any] | None = None, adopt: bool = False) -> "Parent":
        """A new parent run in ``experiment``; with ``adopt``, the run ``mlflow run`` created
        (``$MLFLOW_RUN_ID``) instead, in its own experiment, tagged the same."""
        import os

        from cnnbench.tracking.experiments import ensure_experiment

        adopted = os.environ.get("MLFLOW_RUN_ID") if adopt else None
        if adopted:
            from cnnbench.tracking.mlproject import name_adopted_run

            name_adopted_run(client, adopted, run_name, experiment)  # unless `mlflow run --run-name` named it
            parent = cls(client, adopted)
            parent.set_tags({**(tags or {}), **identity(role, campaign=campaign)})
            return parent
        return cls(client, create_run(client, ensure_experiment(client, experiment), run_name=run_name, role=role,
                                      campaign=campaign, tags=tags))

    def attach(self) -> "Parent":
        """This command works on the campaign from now on: owner and heartbeat tags, RUNNING."""
        from cnnbench.tracking import runs as mlruns

        if self.client.get_run(self.run_id).info.status != "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")
        self.set_tags(mlruns.owner_tags())
        if self._beat is None:
            self._beat = mlruns.Heartbeat(self.client, self.run_id).start()
        return self

    def detach(self) -> None:
        """This command stops working on the campaign (others go on): no more heartbeats from here."""
        if self._beat is not None:
            self._beat.stop()
            self._beat = None

    def set_tags(self, tags: dict[str, Any]) -> None:
        from cnnbench.tracking import runs as mlruns

        _retrying(lambda: mlruns.set_tags(self.client, self.run_id, tags))

    def log_params(self, params: dict[str, Any]) -> None:
        from cnnbench.tracking import runs as mlruns

        mlruns.log_params(self.client, self.run_id, params, skip=self.client.get_run(self.run_id).data.params)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_folder(self, folder) -> None:
        self.client.log_artifacts(self.run_id, str(folder))

    def end(self, status: str, reason: str | None = None) -> None:
        """End with ``status``; ``reason`` becomes ``failure_reason`` (an earlier command's is removed
        when the campaign now ends FINISHED)."""
        self.detach()
        if reason:
            self.set_tags({"failure_reason": reason})
        elif status == "FINISHED" and "failure_reason" in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, "failure_reason")
        _retrying(lambda: self.client.set_terminated(self.run_id, status))


STORE_RETRIES = 6  # a parent's end must not be lost to a store locked for a moment (SQLite under load)


def _retrying(write, attempts: int = STORE_RETRIES):
    """``write()``, again after a transient store error (a locked database, a dropped connection),
    with a growing pause; the last error is raised."""
    import time

    from cnnbench.campaign.workers import is_transient

    for attempt in range(attempts):
        try:
            return write()
        except Exception as err:
            if attempt == attempts - 1 or not is_transient(err):
                raise
            time.sleep(0.5 * (attempt + 1))
