"""Worker processes shared by ``tune --n-jobs`` and ``study run --workers``: a JSON spec a worker
is started with, and stopping the workers when their parent stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path


class JsonSpec:
    """Mixin for a worker's spec dataclass: written to a file, read back by the worker process."""

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self)))  # type: ignore[call-overload]
        return path

    @classmethod
    def load(cls, path: str | Path):
        return cls(**json.loads(Path(path).read_text()))


def stop_workers(procs: list[subprocess.Popen], *, timeout_s: float = 60.0) -> None:
    """SIGTERM every live worker (each ends its running trial/cell KILLED and exits), then wait;
    a worker still alive after ``timeout_s`` is killed."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()


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
