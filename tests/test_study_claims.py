"""Exactly-once claims of ``cnnbench.study.coordinate`` under contention: several processes claim
many enqueued jobs as fast as they can (no training), on SQLite and on a real PostgreSQL server;
every job must be claimed by exactly one process, and no process may crash on a claim.

Run as a script, this file is one claiming process: ``python test_study_claims.py URL STUDY OUT [plain]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_tune_study import postgres_url  # noqa: F401 -- the PostgreSQL server fixture, shared

JOBS = 90
PROCESSES = 3


def claim_all(url: str, study: str, out: str, plain: bool = False) -> None:
    """Claim until the queue is empty; write the claimed job keys (and any error) to ``out``."""
    import optuna

    from cnnbench.study import coordinate

    if plain:  # Optuna's RDBStorage as it comes, for comparison
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {},
                                             heartbeat_interval=60)
    else:
        storage = coordinate.open_queue_storage(url, heartbeat_interval=60)
    queue = coordinate.Queue(storage, study)
    deadline = time.monotonic() + 60
    while not queue.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    queue.study = optuna.load_study(study_name=study, storage=storage)
    claimed, error = [], None
    try:
        while True:
            claim = queue.claim("w", max_retries=1)
            if claim is None:
                break
            claimed.append(claim.job.key)
            queue.finish(claim, 1.0)
    except Exception as err:  # recorded: the test shows it
        error = f"{type(err).__name__}: {err}"[:300]
    Path(out).write_text(json.dumps({"claimed": claimed, "error": error}))


def enqueue(url: str, study: str) -> None:
    from cnnbench.study import coordinate

    storage = coordinate.open_queue_storage(url, heartbeat_interval=60)
    jobs = [coordinate.Job(i, f"cell {i}", 0) for i in range(JOBS)]
    coordinate.Queue(storage, study).create_or_join(jobs, fingerprint={}, digest="d", make_parent=lambda: ("p", "e"))


def contend(url: str, study: str, folder: Path, plain: bool = False) -> tuple[list[str], list[str]]:
    enqueue(url, study)
    outs = [folder / f"{study}-{i}.json" for i in range(PROCESSES)]
    procs = [subprocess.Popen([sys.executable, __file__, url, study, str(o), *(["plain"] if plain else [])]) for o in outs]
    for p in procs:
        p.wait(timeout=300)
    results = [json.loads(o.read_text()) for o in outs]
    return [k for r in results for k in r["claimed"]], [r["error"] for r in results if r["error"]]


def test_sqlite_claims_are_exactly_once(tmp_path):
    claimed, errors = contend(f"sqlite:///{tmp_path}/q.db", "stress", tmp_path)
    assert errors == []
    assert len(claimed) == JOBS and len(set(claimed)) == JOBS


@pytest.mark.postgres
def test_postgresql_claims_are_exactly_once(postgres_url, tmp_path):
    claimed, errors = contend(postgres_url, "stress-pg", tmp_path)
    assert errors == []
    assert len(claimed) == JOBS and len(set(claimed)) == JOBS


if __name__ == "__main__":
    claim_all(sys.argv[1], sys.argv[2], sys.argv[3], plain=len(sys.argv) > 4)
