"""The campaign worker main, with one signal policy, the lease keeper and the parent watch.

A campaign command (``study run --workers N``, ``tune --workers N``) runs worker 0 in its own
process and starts the others as ``python -m cnnbench.campaign.workers SPEC.json``. The spec
names its job source's entry point (``"module:function"``, called with the spec's dict), so this
module imports neither ``study`` nor ``tune``: any job source plugs in the same way, and a worker
on another machine (a Slurm task, a Ray task: :mod:`.launchers`) runs the same entry point.

A worker process stops with the command that started it (:func:`watch_parent`).

Signal policy, everywhere in a campaign process (claiming, loading data, creating the run,
mid-epoch, uploading, writing the report): SIGINT, SIGTERM and SIGHUP raise ``KeyboardInterrupt``
(:func:`cnnbench.api.interrupt_signals`: a second signal never cuts the cleanup short). The job
being run ends KILLED with its checkpoint and goes back to the queue without using a retry, the
parent ends KILLED with the command that resumes it, and the process exits 130 (SIGINT) or 143
(SIGTERM, SIGHUP: what a scheduler's time limit, a pod eviction or a closed terminal sends).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from cnnbench.campaign import EXIT_INTERRUPTED, EXIT_TERMINATED

PARENT_CHECK_S = 1.0
STOP_TIMEOUT_S = 60.0
# Errors of the tracking store or the queue's database that a second try does not repeat: a cell
# failing on one is put back in the queue without using a retry (MLflow's log_inputs check-then-insert
# race between two processes, a database locked past its busy timeout, a PostgreSQL serialisation
# failure or deadlock, a dropped connection).
TRANSIENT_MARKERS = ("UNIQUE constraint failed: datasets", "UNIQUE constraint failed: inputs",
                     "duplicate key value violates unique constraint", "database is locked",
                     "could not serialize access", "deadlock detected", "server closed the connection",
                     "connection reset by peer")


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) is a transient store error."""
    seen = 0
    while err is not None and seen < 8:
        text = f"{type(err).__name__}: {err}"
        if any(marker in text for marker in TRANSIENT_MARKERS):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def exit_code_for(err: KeyboardInterrupt) -> int:
    """130 for Ctrl-C / SIGINT, 143 for SIGTERM and SIGHUP (``interrupt_signals`` names the signal)."""
    text = str(err)
    return EXIT_TERMINATED if any(name in text for name in ("SIGTERM", "SIGHUP", "SIGUSR2")) else EXIT_INTERRUPTED


@contextmanager
def signal_policy(extra: tuple[str, ...] = ()) -> Iterator[None]:
    """The campaign's signal policy around a whole command or worker (see the module doc); ``extra``
    signals are handled the same way (a Slurm task's SIGUSR2, sent before its time limit)."""
    from cnnbench.api import interrupt_signals

    with interrupt_signals(extra=extra):
        yield


def acknowledge() -> None:
    """An interrupt is being handled: further signals only wait for the cleanup."""
    from cnnbench.engine import interrupts

    interrupts.acknowledge()


@contextmanager
def thread_share(workers: int) -> Iterator[None]:
    """torch's intra-op threads for one of ``workers`` workers on this machine (``cores // workers``,
    at least 1), restored afterwards: worker 0 runs in the command's own process, which an API user
    or a test may go on using."""
    if workers <= 1:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LeaseKeeper:
    """A daemon thread that renews the lease of the job this worker holds (``beat()`` every half
    interval)."""

    def __init__(self, interval_s: float) -> None:
        self.interval = max(0.2, float(interval_s))
        self._beat: Callable[[], Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cnnbench-lease", daemon=True)
        self._thread.start()

    def hold(self, beat: Callable[[], Any] | None) -> None:
        """Renew with ``beat`` from now on (None: nothing held)."""
        self._beat = beat

    def _loop(self) -> None:
        while not self._stop.wait(self.interval / 2):
            beat = self._beat
            if beat is None:
                continue
            try:
                beat()
            except Exception:  # a storage hiccup: the next beat tries again, the lease has slack
                pass

    def stop(self) -> None:
        self._stop.set()


def watch_parent(parent_pid: int) -> threading.Event:
    """A daemon thread that sends this process SIGTERM once the command that started it is gone
    (even by SIGKILL: this process is then re-parented); the signal policy ends the held job KILLED.
    Set the returned event to stop watching."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(PARENT_CHECK_S):
            if os.getppid() != parent_pid:
                print("worker: the command that started this worker is gone; stopping", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="cnnbench-parent-watch", daemon=True).start()
    return done


def write_spec(spec: dict[str, Any], folder: Path, name: str) -> Path:
    """A worker's spec, readable by this user only; the worker deletes it once read (it can hold a
    storage URL with a password: no copy is left behind by a killed worker's folder)."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(spec, handle)
    return path


def read_spec(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    spec = json.loads(path.read_text())
    try:
        path.unlink()
    except OSError:
        pass
    return spec


def without_secrets(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``spec`` with no password in it (FAULTS X25), and the environment that carries them instead:
    the storage URL's password as ``$CNNBENCH_STORAGE_PASSWORD`` (every storage opener reads it), an
    ``http://USER:PASSWORD@`` tracking URI's as MLflow's own variables; a config's tracking URI masked."""
    from urllib.parse import urlsplit, urlunsplit

    from cnnbench.tracking.store import mask_uri

    spec, env = dict(spec), {}
    storage = spec.get("storage")
    if isinstance(storage, str) and mask_uri(storage) != storage and "://" in storage:
        from sqlalchemy.engine import URL, make_url

        from cnnbench.campaign.storage import PASSWORD_ENV

        url = make_url(storage)
        if url.password:
            env[PASSWORD_ENV] = str(url.password)
            spec["storage"] = URL.create(url.drivername, url.username, None, url.host, url.port, url.database,
                                         url.query).render_as_string(hide_password=False)
    uri = spec.get("tracking_uri")
    if isinstance(uri, str) and uri.startswith(("http://", "https://")) and "@" in urlsplit(uri).netloc:
        parts = urlsplit(uri)
        env.setdefault("MLFLOW_TRACKING_USERNAME", parts.username or "")
        if parts.password:
            env.setdefault("MLFLOW_TRACKING_PASSWORD", parts.password)
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        spec["tracking_uri"] = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    if isinstance(spec.get("config"), dict) and isinstance(spec["config"].get("run"), dict):
        run = spec["config"]["run"]
        if run.get("tracking_uri"):
            spec["config"] = {**spec["config"], "run": {**run, "tracking_uri": mask_uri(run["tracking_uri"])}}
    return spec, {k: v for k, v in env.items() if os.environ.get(k) != v}


def run_local(spec: dict[str, Any], workers: int, run_here: Callable[[dict[str, Any]], Any]) -> tuple[Any, list[int]]:
    """Worker 0 in this process (``run_here(spec)``), workers 1..N-1 as worker processes on the same
    spec; returns worker 0's result and the others' exit codes. On any exception here (an interrupt
    included) the other workers are stopped first: each ends its job KILLED and exits.

    The spec files the processes read hold no password (:func:`without_secrets`: it goes through
    their environment), are this user's only (0600), deleted by the worker once read, and with their
    folder when this function ends."""
    procs: list[subprocess.Popen] = []
    shared, secrets = without_secrets(spec)
    child_env = {**os.environ, **secrets}
    with tempfile.TemporaryDirectory(prefix="cnnbench-campaign-") as folder:
        try:
            for index in range(1, workers):
                path = write_spec({**shared, "index": index, "parent_pid": os.getpid()}, Path(folder), f"w{index}.json")
                procs.append(subprocess.Popen([sys.executable, "-m", "cnnbench.campaign.workers", str(path)],
                                              env=child_env))
            result = run_here({**spec, "index": 0})
            codes = [p.wait() for p in procs]
        except BaseException as err:
            if isinstance(err, KeyboardInterrupt):
                acknowledge()
            stop_workers(procs)
            raise
    return result, codes


def stop_workers(procs: list[subprocess.Popen], *, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every live worker (each ends its running job KILLED and exits), then wait; a worker
    still alive after ``timeout_s`` is killed (its lease expires and the job is claimed again)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()


def entry_point(ref: str) -> Callable[[dict[str, Any]], Any]:
    import importlib

    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def main(argv: list[str]) -> int:
    """``python -m cnnbench.campaign.workers SPEC.json``: one worker. Exits 0 when no job is left,
    130/143 when interrupted (its job ends KILLED and goes back to the queue), 1 on an error
    outside a job (named on stderr)."""
    from cnnbench.errors import CnnbenchError

    if len(argv) != 1:
        print("usage: python -m cnnbench.campaign.workers SPEC.json", file=sys.stderr)
        return 2
    watching = None
    try:
        with signal_policy():
            spec = read_spec(argv[0])
            if spec.get("parent_pid"):
                watching = watch_parent(int(spec["parent_pid"]))
            entry_point(spec["entry"])(spec)
    except KeyboardInterrupt as err:
        acknowledge()
        return exit_code_for(err)
    except CnnbenchError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    finally:
        if watching is not None:
            watching.set()
    return 0


if __name__ == "__main__":
    from cnnbench.processes import prompt_exit

    prompt_exit(main(sys.argv[1:]))
