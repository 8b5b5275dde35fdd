"""``mlflow run`` of this project: the run it creates is checked, placed and named.

MLflow 3.17's ``mlflow run`` (``mlflow/projects``) resolves the experiment, *then* creates the run
(``LocalBackend.run`` -> ``get_or_create_run``), *then* looks for conda; a missing conda raised
after the run existed and left it RUNNING in ``Default`` under a random name. Two pieces fix that:

- :class:`MlprojectExperimentProvider`, an ``mlflow.default_experiment_provider`` plugin: the one
  hook MLflow consults in the ``mlflow run`` process before the run exists. It is in context only
  inside MLflow's own ``mlflow run`` CLI command, for a local directory whose MLproject is named
  ``cnnbench``, with no ``--experiment-name``/``--experiment-id`` given (MLflow asks providers only
  then); everywhere else it answers "not in context" and MLflow goes on as without it. It refuses
  (one line, exit 1, no run created) when the environment would be built with conda and no conda
  is found, and otherwise returns the experiment the entry point names (its ``experiment``
  parameter, ``-P experiment=NAME``; default ``cnnbench``), created and tagged like every
  cnnbench experiment.
- :func:`name_adopted_run`, called by ``cnnbench train``/``tune`` when they attach to the run
  ``mlflow run`` created (``$MLFLOW_RUN_ID``): it gives the run cnnbench's name unless the
  ``mlflow run`` command line named it (``--run-name``), and says in one line when the run sits in
  ``Default`` while the entry point names another experiment (MLflow cannot move a run).

MLflow itself ends the run when the entry point fails (``_wait_for``: FAILED on a non-zero exit,
unless the command already ended it), so a failing entry point never leaves it RUNNING.

This module is imported by MLflow at ``import mlflow`` (entry points are loaded then): it imports
nothing heavy at module level.
"""

from __future__ import annotations

import os
import shutil
import sys

from mlflow.tracking.default_experiment.abstract_context import DefaultExperimentProvider

PROJECT_NAME = "cnnbench"  # the MLproject's ``name:``
EXPERIMENT_PARAM = "experiment"  # the entry point parameter naming the experiment


def _mlflow_run_context():
    """The click context of MLflow's ``mlflow run`` command when this process is running it, else None."""
    cli = sys.modules.get("mlflow.cli")  # imported by the mlflow console script; never imported here
    if cli is None or getattr(cli, "run", None) is None:
        return None
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.command is not cli.run:
        return None
    return ctx


def _this_project(ctx):
    """(project, entry point) of a local ``mlflow run`` of cnnbench's MLproject, else None."""
    params = ctx.params
    uri = params.get("uri")
    if params.get("backend") not in (None, "local") or not uri or not os.path.isdir(uri):
        return None
    from mlflow.projects import _project_spec

    try:
        project = _project_spec.load_project(uri)
    except Exception:  # MLflow reports a broken MLproject itself, after this
        return None
    entry_point = project.get_entry_point(params.get("entry_point") or "main") if project.name == PROJECT_NAME else None
    return (project, entry_point) if entry_point is not None else None


def _user_params(ctx) -> dict[str, str]:
    """The ``-P name=value`` pairs of the command line (MLflow's own parsing refuses a bad one later)."""
    pairs = (item.split("=", 1) for item in ctx.params.get("param_list") or ())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


def _conda_missing(project, env_manager: str | None) -> bool:
    """True when ``mlflow run`` would build the environment with conda and no conda executable is
    found where MLflow looks (``$MLFLOW_CONDA_HOME/bin``, next to ``$CONDA_EXE``, else ``PATH``)."""
    from mlflow.projects import env_type
    from mlflow.utils.conda import get_conda_bin_executable

    if project.env_type != env_type.CONDA or (env_manager or "conda") != "conda":
        return False
    return shutil.which(get_conda_bin_executable("conda")) is None


class MlprojectExperimentProvider(DefaultExperimentProvider):
    """MLflow plugin (``mlflow.default_experiment_provider``); see the module docstring."""

    def in_context(self) -> bool:
        ctx = _mlflow_run_context()
        if ctx is None or ctx.params.get("experiment_name") or ctx.params.get("experiment_id"):
            return False
        return _this_project(ctx) is not None

    def get_experiment_id(self) -> str:
        ctx = _mlflow_run_context()
        project, entry_point = _this_project(ctx)
        if _conda_missing(project, ctx.params.get("env_manager")):
            # SystemExit, not an exception: MLflow's provider registry turns any Exception into a
            # warning and falls back to 'Default', then creates the run the failure would leave RUNNING.
            sys.stderr.write(
                "cnnbench: `mlflow run` builds this project's conda.yaml environment with conda and no conda "
                "executable was found (PATH, $CONDA_EXE, $MLFLOW_CONDA_HOME); no run was created. Add "
                "--env-manager local to run in the current environment (cnnbench installed), or "
                "--env-manager virtualenv|uv\n"
            )
            raise SystemExit(1)
        declared = entry_point.parameters.get(EXPERIMENT_PARAM)
        name = _user_params(ctx).get(EXPERIMENT_PARAM) or (declared.default if declared else None) or PROJECT_NAME
        from mlflow.tracking import MlflowClient

        from cnnbench.tracking.experiments import ensure_experiment

        return ensure_experiment(MlflowClient(), str(name))


# -- inside the entry point's command ------------------------------------------------------
def mlflow_run_command_line() -> list[str] | None:
    """The arguments after ``run`` of the ``mlflow run`` command this process runs under (its
    nearest such ancestor: ``mlflow run`` -> ``bash -c`` -> cnnbench), else None."""
    try:
        import psutil

        ancestors = psutil.Process().parents()
    except Exception:
        return None
    for proc in ancestors:
        try:
            args = proc.cmdline()
        except Exception:  # gone, or not ours to read
            continue
        for i, arg in enumerate(args[:-1]):
            launcher = os.path.basename(arg) == "mlflow" or (arg == "mlflow" and i > 0 and args[i - 1] == "-m")
            if launcher and "run" in args[i + 1 : i + 4]:  # `mlflow [--env-file F] run ...`
                return args[args.index("run", i + 1) + 1 :]
    return None


def _option(args: list[str], name: str) -> str | None:
    """The value of long option ``name`` (``--name V`` or ``--name=V``) in ``args``; the last one wins."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def name_adopted_run(client, run_id: str, name: str, experiment: str) -> None:
    """Name the run ``mlflow run`` created ``name`` unless its command line gave ``--run-name`` (MLflow
    sets that one itself); one line on stderr when the run is in ``Default`` while the entry point
    names ``experiment``. Without an ``mlflow run`` command line among this process's ancestors
    (``mlflow.projects.run()`` called from Python) the run is left as its caller made it."""
    args = mlflow_run_command_line()
    if args is None:
        return
    if not _option(args, "--run-name"):
        client.set_tag(run_id, "mlflow.runName", name)
    chose = _option(args, "--experiment-name") or _option(args, "--experiment-id")
    if not chose and experiment != "Default" and client.get_run(run_id).info.experiment_id == "0":
        sys.stderr.write(
            f"cnnbench: this `mlflow run` run is in experiment 'Default', not {experiment!r} which the entry point "
            f"names (cnnbench's MLflow plugin is not installed where `mlflow` ran, or $MLFLOW_EXPERIMENT_ID chose it); "
            f"MLflow cannot move a run: next time add --experiment-name {experiment}\n"
        )
