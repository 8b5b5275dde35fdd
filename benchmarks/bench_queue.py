"""The campaign job queue (:mod:`cnnbench.campaign.queue`) under load, with no-op jobs (no training,
no MLflow), on SQLite and on a throwaway PostgreSQL server started here on 127.0.0.1.

- drain: N jobs enqueued (timed: enqueue jobs/s), then W worker processes, released together,
  claim and finish until nothing waits: claims/s over the whole drain, p50/p99 claim latency, the
  CPU seconds the workers spent inside ``claim`` (client side; PostgreSQL's own server CPU is
  reported apart), and exactly-once counts (claims, distinct keys, duplicates, missing);
- target: p50 claim latency with 10,000 jobs waiting and 1,000 running (claimed first, left running);
- ``--baseline``: the Optuna-trial queue this replaced (``study/coordinate.py`` at 34061c9, extracted
  into a temp folder), drained the same way, 1,000 jobs and 1/4 workers only (it is O(N^2)).

Each figure is the median over ``--repeats`` runs, each on a new database. Usage::

    python benchmarks/bench_queue.py [--quick] [--baseline] [--repeats 3] [--out queue.json]

The smoke size (tests/test_benchmarks.py): ``--backends sqlite --jobs 200 --workers 1,2 --repeats 1
--target-waiting 500 --target-running 50 --target-claims 20``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

OLD_COMMIT = "34061c9"
REPO = Path(__file__).resolve().parents[1]


# -- databases ----------------------------------------------------------------------------------
@contextlib.contextmanager
def postgres_server():
    """A PostgreSQL server on 127.0.0.1 and a free port, as tests/test_tune_study.py starts one
    (initdb refuses root: run as 'postgres' then); always stopped by pg_ctl."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not candidates:
        raise SystemExit("PostgreSQL binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin")
    bin_dir = candidates[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="bench-queue-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True, timeout=120)
    try:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "60", "-o",
                        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200", "start"],
                       check=True, capture_output=True, timeout=120)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


class Databases:
    """A new database per run: a SQLite file in a temp folder, or a PostgreSQL database."""

    def __init__(self, folder: Path, pg_url: str | None) -> None:
        self.folder, self.pg_url = folder, pg_url

    @contextlib.contextmanager
    def fresh(self, backend: str):
        name = f"q_{uuid.uuid4().hex[:10]}"
        if backend == "sqlite":
            path = self.folder / f"{name}.db"
            try:
                yield f"sqlite:///{path}"
            finally:
                for p in self.folder.glob(f"{name}.db*"):
                    p.unlink()
            return
        import sqlalchemy as sa

        from cnnbench.campaign.storage import open_engine

        admin = open_engine(self.pg_url).execution_options(isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield self.pg_url.rsplit("/", 1)[0] + "/" + name
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def postgres_cpu_s() -> float:
    """CPU seconds (user + system) of the PostgreSQL server processes on this machine, the exited
    ones included (a backend's time goes to the postmaster's children times when it ends)."""
    import psutil

    total = 0.0
    for p in psutil.process_iter(["name"]):
        if p.info["name"] and p.info["name"].startswith("postgres"):
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
    return total


# -- the two queues, behind one small interface -------------------------------------------------
def load_old_coordinate():
    """``study/coordinate.py`` as of OLD_COMMIT, imported from a temp folder. Its storage opener moved
    from cnnbench.tune.storage to cnnbench.campaign.storage, which now serialises SQLite itself: the
    import line patched, and the module's own second serialisation dropped."""
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_COMMIT}:src/cnnbench/study/coordinate.py"],
                          check=True, capture_output=True, text=True).stdout
    text = text.replace("from cnnbench.tune.storage import open_storage", "from cnnbench.campaign.storage import open_storage")
    # the moved opener serialises SQLite itself now: a second BEGIN IMMEDIATE listener would nest transactions
    text = text.replace("    serialise_sqlite(storage)\n    return storage", "    return storage")
    folder = Path(tempfile.mkdtemp(prefix="bench-queue-old-"))
    path = folder / "old_coordinate.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_coordinate", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_coordinate"] = module
    spec.loader.exec_module(module)
    return module


class NewQueue:
    def __init__(self, url: str, campaign: str) -> None:
        from cnnbench.campaign.queue import JobQueue
        from cnnbench.campaign.storage import open_engine

        self.queue = JobQueue(open_engine(url), campaign, lease_s=3600, max_retries=1)

    def enqueue(self, n: int) -> None:
        from cnnbench.campaign.queue import Job

        assert self.queue.create((Job(f"{i}:0", {"cell": i, "seed": 0}) for i in range(n)), {"bench": True})

    def join(self) -> None:
        self.queue.wait_ready(timeout_s=60)

    def claim(self, worker: str):
        claim = self.queue.claim(worker)
        return None if claim is None else (claim.key, claim)

    def finish(self, claim) -> None:
        assert self.queue.finish(claim, 1.0)

    def finished(self) -> int:
        return self.queue.counts()["finished"]

    def close(self) -> None:
        self.queue.engine.dispose()


class OldQueue:
    def __init__(self, url: str, campaign: str) -> None:
        old = sys.modules.get("old_coordinate") or load_old_coordinate()
        old.quiet()
        self.old = old
        self.queue = old.Queue(old.open_queue_storage(url, heartbeat_interval=3600), campaign)

    def enqueue(self, n: int) -> None:
        jobs = [self.old.Job(i, f"cell {i}", 0) for i in range(n)]
        self.queue.create_or_join(jobs, fingerprint={}, digest="d", make_parent=lambda: ("p", "e"))

    def join(self) -> None:
        self.queue._wait_ready(60)

    def claim(self, worker: str):
        claim = self.queue.claim(worker, max_retries=1)
        return None if claim is None else (claim.job.key, claim)

    def finish(self, claim) -> None:
        assert self.queue.finish(claim, 1.0)

    def finished(self) -> int:
        self.join()
        return self.queue.summary()["finished"]

    def close(self) -> None:
        self.queue.storage.engine.dispose()


QUEUES = {"new": NewQueue, "old": OldQueue}


# -- one drain ----------------------------------------------------------------------------------
def worker(kind: str, url: str, campaign: str, index: int, bound: int, ready, go, results) -> None:
    """Claim and finish until nothing waits (at most ``bound`` claims); report keys, latencies, CPU."""
    try:
        queue = QUEUES[kind](url, campaign)
        queue.join()
    except Exception as err:  # reported, the parent stops the run
        ready.put(f"{type(err).__name__}: {err}")
        return
    ready.put(None)
    go.wait(timeout=300)
    keys, latencies, cpu = [], [], 0.0
    error = None
    try:
        for _ in range(bound):
            c0, t0 = time.process_time(), time.perf_counter()
            got = queue.claim(f"w{index}")
            latencies.append(time.perf_counter() - t0)
            cpu += time.process_time() - c0
            if got is None:
                latencies.pop()  # the empty claim is not a claim
                break
            keys.append(got[0])
            queue.finish(got[1])
    except Exception as err:
        error = f"{type(err).__name__}: {err}"[:300]
    queue.close()
    results.put({"keys": keys, "latencies": latencies, "cpu_s": cpu, "error": error})


def drain(kind: str, url: str, n_jobs: int, n_workers: int, postgres: bool, claims: int | None = None) -> dict:
    """Enqueue ``n_jobs``, then ``n_workers`` processes claim and finish until nothing waits (or, given
    ``claims``, until about that many are claimed: the old queue's drains take minutes)."""
    ctx = mp.get_context("fork")  # the modules are imported once; each worker opens its own engine
    campaign = "bench"
    queue = QUEUES[kind](url, campaign)
    t0 = time.perf_counter()
    queue.enqueue(n_jobs)
    enqueue_s = time.perf_counter() - t0
    queue.close()
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    bound = 2 * n_jobs + 10 if claims is None else -(-claims // n_workers)
    procs = [ctx.Process(target=worker, args=(kind, url, campaign, i, bound, ready, go, results), daemon=True)
             for i in range(n_workers)]
    for p in procs:
        p.start()
    try:
        errors = [e for e in (ready.get(timeout=300) for _ in procs) if e]
        if errors:
            raise RuntimeError(f"workers failed to start: {errors[:3]}")
        pg0 = postgres_cpu_s() if postgres else 0.0
        t0 = time.perf_counter()
        go.set()
        outs = [results.get(timeout=3600) for _ in procs]
        wall = time.perf_counter() - t0
        pg_cpu = postgres_cpu_s() - pg0 if postgres else None
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    keys = [k for o in outs for k in o["keys"]]
    latencies = sorted(x for o in outs for x in o["latencies"])
    check = QUEUES[kind](url, campaign)
    finished = check.finished()
    check.close()
    return {
        "enqueue_jobs_s": n_jobs / enqueue_s,
        "claims_s": len(keys) / wall,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "claim_cpu_s": sum(o["cpu_s"] for o in outs),
        "server_cpu_s": pg_cpu,
        "claims": len(keys),
        "distinct": len(set(keys)),
        "duplicates": len(keys) - len(set(keys)),
        "missing": n_jobs - len(set(keys) & {f"{i}:0" for i in range(n_jobs)}) if claims is None else None,
        "finished": finished,
        "drained": claims is None,
        "errors": [o["error"] for o in outs if o["error"]],
    }


def target(url: str, waiting: int, running: int, claims: int) -> dict:
    """p50 claim latency with ``waiting`` jobs waiting and ``running`` claimed and left running."""
    queue = NewQueue(url, "target")
    queue.enqueue(waiting + running)
    for _ in range(running):
        queue.claim("holder")
    latencies = []
    for _ in range(claims):
        t0 = time.perf_counter()
        got = queue.claim("measured")
        latencies.append(time.perf_counter() - t0)
        queue.finish(got[1])
    queue.close()
    latencies.sort()
    return {"p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99)}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def median_of(runs: list[dict]) -> dict:
    """Numbers: the median over runs; the exactly-once counts: the worst run (max duplicates/missing)."""
    out = {}
    for key, first in runs[0].items():
        if key in ("duplicates", "missing"):
            out[key] = None if first is None else max(r[key] for r in runs)
        elif key == "errors":
            out[key] = [e for r in runs for e in r[key]]
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            out[key] = statistics.median(r[key] for r in runs)
        else:
            out[key] = first
    return out


# -- the report ---------------------------------------------------------------------------------
def fmt(x, digits: int = 1) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.{digits}f}"


def table(rows: list[dict]) -> str:
    head = ("| queue | db | jobs | workers | enqueue jobs/s | claims/s | p50 claim ms | p99 claim ms | claim CPU s | "
            "server CPU s | claims | distinct | dup | missing |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['queue']} | {r['db']} | {r['jobs']:,} | {r['workers']} | {fmt(r['enqueue_jobs_s'])} | "
                     f"{fmt(r['claims_s'])} | {fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {fmt(r['claim_cpu_s'], 2)} | "
                     f"{fmt(r['server_cpu_s'], 2)} | {r['claims']:,.0f} | {r['distinct']:,.0f} | {r['duplicates']} | {'-' if r['missing'] is None else r['missing']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 and 10,000 jobs with 1 and 4 workers only")
    parser.add_argument("--baseline", action="store_true", help=f"also the Optuna-trial queue of {OLD_COMMIT} (1,000 jobs, 1/4 workers)")
    parser.add_argument("--baseline-jobs", type=int, default=1000)
    parser.add_argument("--baseline-claims", type=int, default=None,
                        help="stop the old queue's runs after about this many claims (default: drain them)")
    parser.add_argument("--baseline-repeats", type=int, default=None, help="repeats of the old queue's runs (default --repeats)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--jobs", default="1000,10000")
    parser.add_argument("--workers", default=None, help="comma-separated worker counts (default 1,4,16,32; quick: 1,4)")
    parser.add_argument("--target-waiting", type=int, default=10_000, help="jobs waiting in the latency target")
    parser.add_argument("--target-running", type=int, default=1_000, help="jobs claimed and left running in it")
    parser.add_argument("--target-claims", type=int, default=200, help="claims timed in it")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    backends = args.backends.split(",")
    job_counts = [int(x) for x in args.jobs.split(",")]
    workers = [int(x) for x in (args.workers or ("1,4" if args.quick else "1,4,16,32")).split(",")]
    rows, targets = [], []
    folder = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    with contextlib.ExitStack() as stack:
        pg_url = stack.enter_context(postgres_server()) if "postgresql" in backends else None
        dbs = Databases(folder, pg_url)
        plan = [("new", b, n, w) for b in backends for n in job_counts for w in workers]
        if args.baseline:
            plan = [("old", b, args.baseline_jobs, w) for b in backends for w in (1, 4)] + plan
        for kind, backend, n, w in plan:
            runs = []
            old = kind == "old"
            for _ in range(args.baseline_repeats or args.repeats if old else args.repeats):
                with dbs.fresh(backend) as url:
                    runs.append(drain(kind, url, n, w, postgres=backend == "postgresql",
                                      claims=args.baseline_claims if old else None))
            row = {"queue": kind, "db": backend, "jobs": n, "workers": w, **median_of(runs), "runs": runs}
            rows.append(row)
            print(f"{kind} {backend} {n} jobs x {w} workers: {fmt(row['claims_s'])} claims/s, p50 {fmt(row['p50_ms'], 2)} ms, "
                  f"dup {row['duplicates']} missing {row['missing']} errors {row['errors'][:1]}", file=sys.stderr, flush=True)
            save(args.out, rows, targets, args)
        for backend in backends:
            runs = []
            for _ in range(args.repeats):
                with dbs.fresh(backend) as url:
                    runs.append(target(url, waiting=args.target_waiting, running=args.target_running,
                                       claims=args.target_claims))
            targets.append({"db": backend, "waiting": args.target_waiting, "running": args.target_running,
                            **median_of(runs), "runs": runs})
            save(args.out, rows, targets, args)
    shutil.rmtree(folder, ignore_errors=True)
    print(table(rows))
    print()
    print("| db | waiting | running | p50 claim ms | p99 claim ms |\n|---|---|---|---|---|")
    for t in targets:
        print(f"| {t['db']} | {t['waiting']:,} | {t['running']:,} | {fmt(t['p50_ms'], 2)} | {fmt(t['p99_ms'], 2)} |")
    cpu = {(r["queue"], r["db"], r["workers"]): r["claim_cpu_s"] for r in rows if r["jobs"] == 10_000}
    if cpu:
        print("\nCPU seconds spent claiming, 10,000-job campaign (sum over worker processes, client side): "
              + ", ".join(f"{db} x{w}: {fmt(s, 2)}" for (q, db, w), s in cpu.items()))
    save(args.out, rows, targets, args)


def save(out: str | None, rows: list[dict], targets: list[dict], args) -> None:
    """The results so far as JSON (written after each row: a long run interrupted keeps what it measured)."""
    if out:
        Path(out).write_text(json.dumps({"drain": rows, "target": targets, "args": vars(args), "cpu": _cpu_model()}, indent=1))


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
