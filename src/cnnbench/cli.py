"""The ``cnnbench`` command group: options -> config -> api. No logic lives here.

Subcommands are imported lazily so ``cnnbench --help`` does not pay for torch or MLflow.
"""

from __future__ import annotations

import importlib
import sys

import click

from cnnbench import __version__
from cnnbench.cli_options import GroupedCommand, config_from_params, given_on_command_line, train_options
from cnnbench.config import OPTIONS
from cnnbench.errors import CnnbenchError, RunInterrupted

LAZY_COMMANDS = {
    "info": "cnnbench.commands.info:command",
    "gradcheck": "cnnbench.commands.gradcheck:command",
    "memory": "cnnbench.commands.memory:command",
    "tune": "cnnbench.commands.tune:command",
    "study": "cnnbench.study.command:command",
    "runs": "cnnbench.commands.runs:command",
    "filters": "cnnbench.commands.filters:command",
}


class CnnbenchGroup(click.Group):
    """Lazy subcommands; user errors become a one-line message and their exit code."""

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx, name):
        if name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name].split(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except ImportError as err:
                return _unavailable(name, err)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CnnbenchError as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(err.exit_code)
        except RunInterrupted as err:  # Ctrl-C / SIGTERM / SIGHUP: which run, its state, how to resume
            click.echo(str(err), err=True)
            ctx.exit(err.exit_code)


def _unavailable(name: str, err: Exception) -> click.Command:
    @click.command(name=name, help=f"(unavailable: {err})")
    def cmd():
        raise click.ClickException(f"'cnnbench {name}' is unavailable: {err}")

    return cmd


@click.group(cls=CnnbenchGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="cnnbench")
def main() -> None:
    """Train, tune and compare convolutional image classifiers; every run lands in MLflow."""


RESUME_COMPATIBLE = {"tracking_uri", "quiet", "verbose"}  # the only flags --resume takes: where the run is, how loud


@main.command(cls=GroupedCommand)
@train_options
@click.option("--resume", default=None, metavar="RUN_ID",
              help="continue an interrupted cnnbench run in place (with --tracking-uri/--quiet only)")
@click.pass_context
def train(ctx: click.Context, resume: str | None, **params) -> None:
    """Train one model on one dataset as one MLflow run."""
    from cnnbench import api
    from cnnbench.tracking.console import configure

    configure(verbose=params.get("verbose", False), quiet=params.get("quiet", False))

    if resume:
        others = sorted(OPTIONS[n].flag for n in given_on_command_line(ctx) - RESUME_COMPATIBLE)
        others += [f"--{p.replace('_', '-')}" for p in ("config_file", "model_options", "dataset_options", "kernel_size",
                                                              "use_file_destination")
                   if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
        if others:
            raise click.UsageError(f"--resume continues a run with the settings it was started with; drop "
                                   f"{', '.join(others)} (only --tracking-uri and --quiet go with --resume)")
        result = api.resume(resume, tracking_uri=params.get("tracking_uri"), quiet=params.get("quiet", False))
    else:
        config = config_from_params(ctx, params)
        result = api.train(config, api.run_callbacks(config, startup=True))  # time_startup_s: this process
    _report(result, quiet=params.get("quiet", False))


def _report(result, *, quiet: bool = False) -> None:
    from cnnbench.tracking.store import mask_uri, ui_hint

    acc = result.metrics.get("test_accuracy")
    click.echo(f"MLflow run: {result.run_id}  (tracking URI: {mask_uri(result.tracking_uri)})"
               + (f"  test_accuracy {acc:.4f}" if quiet and acc is not None else ""))
    if quiet:
        return
    click.echo(f"test_accuracy: {acc:.4f}" if acc is not None else "finished")
    link = _run_link(result.tracking_uri, result.run_id)
    if str(result.tracking_uri).startswith("http"):
        click.echo(f"See it in the MLflow UI: {link or mask_uri(result.tracking_uri)}")
    else:
        click.echo(f"See it in the MLflow UI: {ui_hint(result.tracking_uri)}, then open {link or 'http://127.0.0.1:5000'}")


def _run_link(tracking_uri: str | None, run_id: str | None) -> str | None:
    """The run's address in the MLflow UI (None when the store cannot say its experiment)."""
    from cnnbench.tracking.store import link_of_run

    return link_of_run(tracking_uri, run_id)


@main.command(name="list")
@click.argument("kind", required=False, type=click.Choice(["models", "datasets", "presets", "artifacts", "trackers"]))
def list_(kind: str | None) -> None:
    """List the registered plugins of each kind (name, description, source distribution): models,
    datasets and presets (with the options each sets); ``artifacts`` and ``trackers`` (the builders
    and trackers every run gets) only when named, as listing them imports torch and MLflow."""
    from cnnbench import registry

    kinds = [kind] if kind else ["models", "datasets", "presets"]
    for k in kinds:
        plugins = {"models": registry.MODELS, "datasets": registry.DATASETS, "presets": registry.PRESETS,
                   "artifacts": registry.ARTIFACTS, "trackers": registry.TRACKERS}[k]
        click.echo("presets (train --preset NAME; flags given beside it override its values):" if k == "presets" else f"{k}:")
        for entry in plugins.entries():
            if entry.plugin is None:
                click.echo(f"  {entry.name:<14} BROKEN  [{entry.distribution}] {entry.error}")
                continue
            if k in ("artifacts", "trackers"):
                doc = entry.plugin.__doc__ or sys.modules[entry.plugin.__module__].__doc__ or entry.plugin.__name__
                doc = " ".join(doc.strip().split("\n\n")[0].split())
                if k == "artifacts":
                    from cnnbench.artifacts import switched
                    from cnnbench.config import OPTIONS

                    flags = [OPTIONS[o].flag for o, target in switched().items() if target == entry.name]
                    doc += f" (off with --no-{flags[0][2:]})" if flags else " (every run)"
                click.echo(f"  {entry.name:<14} {doc}  [{entry.distribution}]")
                continue
            if k == "presets":
                click.echo(f"  {entry.name:<14} {entry.plugin.description}  [{entry.distribution}]")
                click.echo("                 " + "; ".join(entry.plugin.lines()))
                continue
            extra = _dataset_summary(entry.plugin) if k == "datasets" else ""
            if k == "models" and entry.plugin.channels_last_cpu:
                extra += " (channels-last on CPU)"
            click.echo(f"  {entry.name:<14} {entry.plugin.description}{extra}  [{entry.distribution}]")


def _dataset_summary(plugin) -> str:
    if plugin.needs_data_dir:
        return " (shape and classes from the files in --data-dir)"
    try:
        info = plugin.describe(**{o.name: o.default for o in plugin.options})
    except Exception as err:  # describe() of a third-party plugin may be broken
        return f" (metadata unavailable: {err})"
    sizes = ""
    if info.train_size is not None:
        sizes = f", {info.train_size} train"
        if info.test_size is not None:
            sizes += f" / {info.test_size} test"
    return f" ({info.channels}x{info.height}x{info.width}, {info.num_classes} classes{sizes})"


def entry() -> None:
    """The console script (and ``python -m cnnbench.cli``): :func:`main`, then
    :func:`cnnbench.processes.prompt_exit`, which exits as the interpreter would minus freeing every
    imported module (1-2 s after a ``cnnbench train`` whose run was already closed: the "remainder"
    of ``benchmarks/bench_run_overhead.py``). An exception other than ``SystemExit`` (a bug) takes
    the normal path, traceback included."""
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    from cnnbench.processes import prompt_exit

    prompt_exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
