"""``cnnbench tune``: every ``train`` option (fixed for all trials) plus the study's own options.

Only Click and the option declarations are imported here; Optuna, MLflow and torch load when the
command runs, so ``cnnbench --help`` stays fast.
"""

from __future__ import annotations

import click

from cnnbench.cli_options import (LAUNCHER_FLAGS, GroupedCommand, config_from_params, deprecated_alias, given_on_command_line,
                                  launcher_from, shared_option, take_alias, train_parameters)
from cnnbench.tune import OBJECTIVES, PRUNERS, SAMPLERS

TRIAL_ARTIFACTS_OFF = ("tsne", "retrieval", "kernels", "predictions")  # off in trials unless given
TRIAL_EPOCHS = 3  # per trial: enough on the small data sets for epoch-1 pruning to separate settings
SEARCH_HELP = (
    "search expression NAME=loguniform(LOW,HIGH) | uniform(LOW,HIGH) | int(LOW,HIGH[,STEP]) | choice(V1,...), "
    "NAME a train option or model.<key>/data.<key> (repeatable; replaces the default space "
    "lr=loguniform(1e-5,1e-1) batch_size=choice(32,64,128,256) model.kernel_size=choice(3,5,7), from which the "
    "options given on the command line are left out)"
)


TUNE_PARAMETERS: list[click.Parameter] = [
    click.Option(["--trials"], type=int, default=30, show_default=True, help="trials to add to the study (split between --workers)"),
    click.Option(["--seeds"], type=int, default=1, show_default=True,
                 help="train each sampled configuration over this many seeds (--seed, --seed+1, ...), each in its own "
                      "run; a trial scores the mean of its seeds (std and 95%% interval on the trial), the pruner "
                      "watches the first seed"),
    click.Option(["--epochs"], type=int, default=TRIAL_EPOCHS, show_default=True, help="epochs per trial (the pruner's budget)"),
    click.Option(["--timeout"], type=float, default=None, metavar="SECONDS", help="start no new trial after this long"),
    click.Option(["--search"], multiple=True, metavar="EXPR", help=SEARCH_HELP),
    click.Option(["--sampler"], type=click.Choice(SAMPLERS), default="tpe", show_default=True),
    click.Option(["--pruner"], type=click.Choice(PRUNERS), default="median", show_default=True),
    shared_option("storage"),
    shared_option("study_name", default_text="a new MODEL-DATASET-TIME"),
    shared_option("workers"),
    deprecated_alias("--n-jobs", "--workers", "n_jobs"),
    click.Option(["--objective"], type=click.Choice(OBJECTIVES), default="val_accuracy", show_default=True,
                 help="the per-epoch metric; a trial scores its best epoch"),
    click.Option(["--direction"], type=click.Choice(("maximize", "minimize")), default=None,
                 help="default: maximize accuracies, minimize losses"),
    click.Option(["--retrain-best/--no-retrain-best"], default=False, show_default=True,
                 help="retrain the best configuration on train+val and test it, in its own run"),
    click.Option(["--retrain-epochs"], type=int, default=None, help="epochs of the retrain (default: train's default budget)"),
    shared_option("heartbeat_interval"),
    *LAUNCHER_FLAGS.values(),
]


def tune(**params) -> None:
    """Search hyper-parameters with Optuna: one parent MLflow run, a nested run per trial.

    Exit 0 when every trial completed or was pruned; 3 when any trial failed by its own error (each
    named on stderr, the parent run FAILED with failed_jobs / missing_jobs); 1 on a bad input or
    when no trial ran; 130 / 143 when interrupted.
    """
    from cnnbench.tune.session import TuneRequest, prepare, run

    from cnnbench.tracking.console import configure

    configure(verbose=params.get("verbose", False), quiet=params.get("quiet", False))
    launcher = launcher_from(params)  # pops the launcher_* values
    ctx = click.get_current_context()
    config = config_from_params(ctx, params)
    # Per trial, the cheap artifacts only, unless asked for: t-SNE, retrieval and kernel images cost
    # seconds a trial (the same defaults as a study's cells).
    asked = given_on_command_line(ctx)
    config = config.replace(artifacts={n: False for n in TRIAL_ARTIFACTS_OFF if n not in asked})
    given = given_on_command_line(ctx) | {f"model.{k}" for k in config.model.options}
    request = TuneRequest(
        config=config, search=tuple(params["search"]), fixed=frozenset(given), trials=params["trials"],
        timeout=params["timeout"], sampler=params["sampler"], pruner=params["pruner"], storage=params["storage"],
        study_name=params["study_name"], n_jobs=take_alias(params, "workers", "n_jobs", "--n-jobs", "--workers"), metric=params["objective"],
        direction=params["direction"], retrain_best=params["retrain_best"], retrain_epochs=params["retrain_epochs"],
        heartbeat_interval=params["heartbeat_interval"], seeds=params["seeds"], launcher=launcher,
    )
    outcome = run(prepare(request))
    _report(outcome, request)
    if outcome.exit_code:  # EXIT_JOBS_FAILED: trials failed by their own error (pruned trials are not failures)
        click.echo(f"{len(outcome.failed)} of {request.trials} trials failed (exit {outcome.exit_code}); the parent run "
                   f"is FAILED:", err=True)
        for line in outcome.failed:
            click.echo(f"  failed: {line}", err=True)
        ctx.exit(outcome.exit_code)


def _report(outcome, request) -> None:
    from cnnbench.cli import _run_link
    from cnnbench.tracking.store import mask_uri, ui_hint
    from cnnbench.campaign.storage import redact

    c = outcome.counts
    click.echo(f"study {outcome.study_name}: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed "
               f"in {outcome.wall_time_s:.0f} s")
    if outcome.best_value is not None:
        shown = " ".join(f"{k}={v}" for k, v in outcome.best_params.items())
        click.echo(f"best {request.metric}: {outcome.best_value:.4f}  ({shown})")
    if outcome.retrain_run_id:
        click.echo(f"retrained best: MLflow run {outcome.retrain_run_id}")
    click.echo(f"MLflow parent run: {outcome.parent_run_id}  (tracking URI: {mask_uri(outcome.tracking_uri)}; {ui_hint(outcome.tracking_uri)})")
    link = _run_link(outcome.tracking_uri, outcome.parent_run_id)
    if link:
        click.echo(f"open it: {link}")
    click.echo(f"add trials: cnnbench tune ... --study-name {outcome.study_name} --storage {redact(outcome.storage_url)}")


command = GroupedCommand(
    name="tune",
    callback=tune,
    params=[*TUNE_PARAMETERS, *train_parameters(exclude=("epochs",))],
    help=tune.__doc__,
    short_help="Search hyper-parameters with Optuna (one parent MLflow run, nested trials).",
    context_settings={"max_content_width": 110},
)
