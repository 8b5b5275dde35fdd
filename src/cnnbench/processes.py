"""Exiting a cnnbench process promptly once its work is closed (the console script and the
campaign's worker processes)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

# CPython's own exit sequence, as ``Py_FinalizeEx`` runs it before freeing the modules: threading's
# exit hooks and the join of the non-daemon threads (``threading._shutdown``), then the ``atexit``
# handlers (``atexit._run_exitfuncs``). Both are private, so they are called only on the CPython
# versions they were checked on (tests/test_cli.py fails if one of these lacks them or changes their
# signature); any other interpreter exits the ordinary way (SystemExit: the full teardown).
PRIVATE_EXIT_VERSIONS = ((3, 11), (3, 12), (3, 13), (3, 14))


def private_exit_hooks() -> tuple[Callable[[], None], Callable[[], None]] | None:
    """``(threading._shutdown, atexit._run_exitfuncs)`` where this interpreter is a CPython of
    :data:`PRIVATE_EXIT_VERSIONS` that has both; else None (the caller exits the ordinary way)."""
    import atexit

    if sys.implementation.name != "cpython" or tuple(sys.version_info[:2]) not in PRIVATE_EXIT_VERSIONS:
        return None
    shutdown = getattr(threading, "_shutdown", None)
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if not (callable(shutdown) and callable(run_exitfuncs)):
        return None
    return shutdown, run_exitfuncs


def prompt_exit(code: object) -> None:
    """Exit now with ``code`` (``sys.exit``'s argument) as the interpreter would, minus freeing
    every module: threading's exit hooks run and non-daemon threads joined, ``atexit`` handlers
    run, stdout/stderr flushed, then ``os._exit``. For the console script and the worker processes,
    whose work is closed by then; the teardown it skips costs 1-2 s once torch, MLflow and
    scikit-learn are imported. On an interpreter outside :data:`PRIVATE_EXIT_VERSIONS` it raises
    ``SystemExit`` instead: the same status, output, threads and handlers, with the full teardown."""
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    hooks = private_exit_hooks()
    if hooks is None:
        raise SystemExit(code)
    shutdown, run_exitfuncs = hooks
    # What the interpreter itself runs first: threading's exit hooks (concurrent.futures tells its
    # pools' workers to stop, e.g. MLflow's artifact upload pool), then it joins the non-daemon
    # threads. Joining them without those hooks waits forever on an idle pool worker.
    shutdown()
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`cnnbench list | head`): nothing more to say
            pass
    os._exit(code & 0xFF)
