"""``cnnbench runs --stale [--mark-failed]``: runs left RUNNING by a process that is gone.

A cnnbench process writes an owner tag (host and pid) and a heartbeat tag while its run is open,
for every role (train, tune parent, trial, study parent, cell, retrain, memory, filters). A
RUNNING run whose heartbeat stopped (three missed beats) and whose process is not running on this
host, was killed without cleanup (SIGKILL, power loss, a lost tracking server): it is listed with
its role and what it holds, and ``--mark-failed`` ends it FAILED with a reason. A run whose
heartbeat is fresh is never listed, even when its pid is not found here (containers and cluster
nodes share host names). A listed or marked train run can still be resumed with ``cnnbench train
--resume RUN_ID`` when it uploaded a checkpoint; a trial, cell or parent run by its campaign's
command (named in the listing).
"""

from __future__ import annotations

import click

from cnnbench.cli_options import shared


@click.command(name="runs")
@click.option("--stale", is_flag=True, default=False, help="list RUNNING runs whose process is gone (the only listing so far)")
@click.option("--mark-failed", is_flag=True, default=False, help="end the stale runs FAILED (with failure_reason)")
@shared("tracking_uri")
@shared("experiment", default_text="every experiment")
def command(stale: bool, mark_failed: bool, tracking_uri: str | None, experiment: str | None) -> None:
    """Find runs left RUNNING by killed processes (and close them with --mark-failed)."""
    from cnnbench.errors import ConfigError

    if not stale:
        raise ConfigError("cnnbench runs needs --stale (list RUNNING runs whose process is gone); add --mark-failed to close them")
    from cnnbench.tracking.runs import stale_report

    for line in stale_report(tracking_uri, experiment, mark_failed=mark_failed):
        click.echo(line)
