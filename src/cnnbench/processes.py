"""Worker processes shared by ``tune --n-jobs`` and ``study run --workers``: a JSON spec a worker
is started with, and stopping the workers when their parent stops."""

from __future__ import annotations

import json
import signal
import subprocess
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
