"""How chatty the libraries under cnnbench are on the console: one call, ``configure(verbose, quiet)``,
made by the CLI before any command runs.

- default: MLflow and Alembic log warnings and errors only (no "Creating initial MLflow database
  tables", "Started monitoring system metrics", "Validating input example"...), no artifact
  download bars, and MLflow's advisory warnings (type hints, pickle) hidden;
- ``verbose``: everything MLflow and Python warnings normally print;
- ``quiet``: errors only (cnnbench itself prints the final run line and errors).

It sets environment variables as well as loggers, so worker processes (``tune --workers``) and
MLflow imported later inherit the same level; it never imports MLflow or Optuna itself (``--help``
stays fast). A variable the user set (``MLFLOW_LOGGING_LEVEL``, ...) wins over the default.
"""

from __future__ import annotations

import logging
import os
import warnings

LOGGERS = ("mlflow", "alembic", "urllib3")  # Optuna's own level is set by tune (its per-trial line replaces it)
# MLflow's advisory warnings, raised while logging a model: not the user's problem to fix.
ADVISORY = (
    r".*Add type hints to the `predict` method.*",
    r".*serialized using CloudPickle.*",
    r".*Saving pytorch model by Pickle.*",
    r".*Any type hint is inferred as AnyType.*",
)


def configure(verbose: bool = False, quiet: bool = False) -> None:
    """Set the console level for this process and the ones it starts (verbose wins over quiet)."""
    if verbose:
        _set("MLFLOW_LOGGING_LEVEL", "INFO", force=False)
        _levels(logging.INFO)
        return
    level = logging.ERROR if quiet else logging.WARNING
    _set("MLFLOW_LOGGING_LEVEL", logging.getLevelName(level), force=False)
    _set("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false", force=False)
    _levels(level)
    for pattern in ADVISORY:
        warnings.filterwarnings("ignore", message=pattern)
    if quiet:
        warnings.simplefilter("ignore")
        _set("PYTHONWARNINGS", "ignore", force=False)


def _levels(level: int) -> None:
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level)


def _set(name: str, value: str, *, force: bool) -> None:
    if force or name not in os.environ:
        os.environ[name] = value
