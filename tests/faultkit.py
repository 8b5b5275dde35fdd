"""Fault injection the way FAULTS.md found the faults: start ``cnnbench`` as a real process, wait
for a line of its output, then send it a signal (or two); start a second process at the same time;
put a loopback server in front of the tracking store that stops answering.

Used by tests/test_faults_*.py; not a test module itself.
"""

from __future__ import annotations

import http.server
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

FAST = ["--no-tsne", "--no-retrieval", "--no-kernels", "--no-predictions", "--no-memory", "--no-log-model"]
RUN_ID = re.compile(r"MLflow run ([0-9a-f]{32})")


def env(**extra: str) -> dict[str, str]:
    """A user-like environment: one thread (the machine is shared), unbuffered output, fast heartbeats."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    base.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", CNNBENCH_HEARTBEAT_S="1")
    base.update(extra)
    return base


@dataclass
class Done:
    rc: int
    output: str

    def lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.strip()]


class Proc:
    """A ``python -m cnnbench.cli ARGS`` process whose merged output is read line by line."""

    def __init__(self, *args: str, cwd: Path | None = None, environ: dict | None = None) -> None:
        self.popen = subprocess.Popen([sys.executable, "-m", "cnnbench.cli", *map(str, args)], cwd=cwd,
                                      env=environ or env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, bufsize=1, start_new_session=True)
        self.seen: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 240) -> str:
        """Block until an output line matches ``pattern`` (regex, searched); return that line."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"process ended before printing {pattern!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if regex.search(line):
                return line
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{''.join(self.seen)}")

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def finish(self, timeout: float = 240) -> Done:
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"process did not end within {timeout} s:\n{''.join(self.seen)}") from None
        self._reader.join(timeout=10)
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return Done(self.popen.returncode, "".join(self.seen))


def signal_at(args, pattern: str, sig: int, delay: float = 0.0, *, again_after: float | None = None,
              environ: dict | None = None, cwd: Path | None = None) -> Done:
    """sig.py / sig2.py of FAULTS.md: start, wait for ``pattern``, sleep ``delay``, send ``sig``
    (and once more after ``again_after`` seconds), then collect the rest."""
    proc = Proc(*args, environ=environ, cwd=cwd)
    proc.wait_for(pattern)
    time.sleep(delay)
    proc.signal(sig)
    if again_after is not None:
        time.sleep(again_after)
        if proc.popen.poll() is None:
            proc.signal(sig)
    return proc.finish()


def run_cli(*args: str, environ: dict | None = None, cwd: Path | None = None, timeout: float = 300) -> Done:
    proc = Proc(*args, environ=environ, cwd=cwd)
    return proc.finish(timeout)


def only_run(tracking_uri: str, experiment: str):
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def artifact_paths(tracking_uri: str, run_id: str, path: str | None = None) -> set[str]:
    client = MlflowClient(tracking_uri)
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_paths(tracking_uri, run_id, item.path) if item.is_dir else {item.path}
    return out


def steps(tracking_uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, key))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Freezable:
    """A loopback TCP proxy in front of ``target``; ``freeze()`` makes it stop answering: connections
    are still accepted but nothing is forwarded either way (a server that hangs, or a dead link)."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.frozen = threading.Event()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.frozen.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.frozen.is_set():
                self._held.append(client)  # accepted, never answered
                continue
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=30)
        except OSError:
            client.close()
            return
        pair = {client: upstream, upstream: client}
        try:
            while not self.frozen.is_set():
                ready, _, _ = select.select(list(pair), [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
            self._held.extend(pair)  # frozen: keep both ends open and silent
        except OSError:
            return

    def close(self) -> None:
        self.server.close()
        for sock in self._held:
            sock.close()


class HangingHealthServer:
    """Answers ``GET /health`` with 200 and never answers anything else (U12/U13). With
    ``credentials=(user, password)`` it also insists on that basic auth for /health (401 without)."""

    def __init__(self, credentials: tuple[str, str] | None = None, api_answers: bool = False) -> None:
        import base64

        expected = None if credentials is None else "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        release = threading.Event()
        self.release = release
        self.seen_auth: list[str | None] = []
        seen = self.seen_auth

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                seen.append(self.headers.get("Authorization"))
                if expected is not None and self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                if self.path.startswith("/health") or api_answers:
                    body = b"OK" if self.path.startswith("/health") else b'{"experiments": []}'
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                release.wait(120)  # hang

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()


def start_mlflow_server(backend: str, artifacts: Path, port: int, environ: dict | None = None) -> subprocess.Popen:
    """A real ``mlflow server`` on loopback; returns once /health answers."""
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", backend, "--artifacts-destination", str(artifacts), "--workers", "1"],
                            env=environ or env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("mlflow server did not answer /health within 120 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
