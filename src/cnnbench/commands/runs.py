"""``cnnbench runs --stale [--mark-failed]``: runs left RUNNING by a process that is gone.

A cnnbench process writes an owner tag (host and pid) and a heartbeat tag while its run is open.
A RUNNING run whose process no longer exists (same host), or whose heartbeat stopped (three
missed beats), was killed without cleanup (SIGKILL, power loss, a lost tracking server): it is
listed with what it holds, and ``--mark-failed`` ends it FAILED with a reason. Both a listed run
and a marked one can still be resumed with ``cnnbench train --resume RUN_ID`` when it uploaded a
checkpoint.
"""

from __future__ import annotations

import click


@click.command(name="runs")
@click.option("--stale", is_flag=True, default=False, help="list RUNNING runs whose process is gone (the only listing so far)")
@click.option("--mark-failed", is_flag=True, default=False, help="end the stale runs FAILED (with failure_reason)")
@click.option("--tracking-uri", default=None, metavar="URI", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's default)")
@click.option("--experiment", default=None, help="only this experiment (default: all)")
def command(stale: bool, mark_failed: bool, tracking_uri: str | None, experiment: str | None) -> None:
    """Find runs left RUNNING by killed processes (and close them with --mark-failed)."""
    from cnnbench.errors import ConfigError

    if not stale:
        raise ConfigError("cnnbench runs needs --stale (list RUNNING runs whose process is gone); add --mark-failed to close them")
    for line in stale_report(tracking_uri, experiment, mark_failed=mark_failed):
        click.echo(line)


def find_stale(client, experiment: str | None = None) -> list[tuple[object, str]]:
    """(run, why) for each cnnbench run that is RUNNING with its process gone."""
    from cnnbench.errors import ConfigError
    from cnnbench.tracking.runs import liveness

    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ConfigError(f"--experiment {experiment!r} does not exist in this tracking store")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    found = []
    for start in range(0, len(ids), 100):
        for run in client.search_runs(ids[start : start + 100], filter_string="attributes.status = 'RUNNING'", max_results=5000):
            if "cnnbench.version" not in run.data.tags:
                continue
            alive = liveness(run)
            if not alive.alive:
                found.append((run, alive.why))
    return found


def stale_report(tracking_uri: str | None, experiment: str | None, *, mark_failed: bool) -> list[str]:
    from mlflow.tracking import MlflowClient

    from cnnbench.tracking.runs import set_tags
    from cnnbench.tracking.store import check_reachable, mask_uri, resolve_uri

    uri = resolve_uri(tracking_uri)
    check_reachable(uri)
    client = MlflowClient(uri)
    stale = find_stale(client, experiment)
    if not stale:
        return [f"no stale runs in {mask_uri(uri)}"]
    lines = []
    for run, why in stale:
        info, tags = run.info, run.data.tags
        role = tags.get("cnnbench.tune.role", "train")
        epochs = len(client.get_metric_history(info.run_id, "train_loss")) if role != "study" else 0
        has_ckpt = any(a.path == "checkpoints/last.pt" for a in client.list_artifacts(info.run_id, "checkpoints"))
        what = "resumable: cnnbench train --resume " + info.run_id if has_ckpt and role == "train" else "no checkpoint"
        lines.append(f"{info.run_id}  {role:<6} {info.run_name or '':<24} {epochs} epoch(s) logged; {why}; {what}")
        if mark_failed:
            set_tags(client, info.run_id, {"failure_reason": f"process gone ({why}); marked FAILED by cnnbench runs --mark-failed"})
            client.set_terminated(info.run_id, "FAILED")
    verb = "marked FAILED" if mark_failed else "stale (add --mark-failed to end them FAILED)"
    lines.append(f"{len(stale)} run(s) {verb} in {mask_uri(uri)}")
    return lines
