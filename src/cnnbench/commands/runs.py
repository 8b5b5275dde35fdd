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
    from cnnbench.tracking.runs import stale_report

    for line in stale_report(tracking_uri, experiment, mark_failed=mark_failed):
        click.echo(line)
