"""Exiting a cnnbench process promptly once its work is closed (the console script and the
campaign's worker processes)."""

from __future__ import annotations

import os
import sys
import threading


def prompt_exit(code: object) -> None:
    """Exit now with ``code`` (``sys.exit``'s argument) as the interpreter would, minus freeing
    every module: threading's exit hooks run and non-daemon threads joined, ``atexit`` handlers
    run, stdout/stderr flushed, then ``os._exit``. For the console script and the worker processes,
    whose work is closed by then; the teardown it skips costs 1-2 s once torch, MLflow and
    scikit-learn are imported."""
    import atexit

    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        code = 1
    # What the interpreter itself runs first: threading's exit hooks (concurrent.futures tells its
    # pools' workers to stop, e.g. MLflow's artifact upload pool), then it joins the non-daemon
    # threads. Joining them without those hooks waits forever on an idle pool worker.
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`cnnbench list | head`): nothing more to say
            pass
    os._exit(code & 0xFF)
