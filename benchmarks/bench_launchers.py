"""``study run --launcher local | slurm | ray`` on one machine: wall time, time from submission to the
first cell's start, and the per-cell cost beyond ``--launcher local``, for one 8-cell quick study.

Every launcher runs the same study (8 cells x 1 seed, digits, LeNet-5, 2 epochs of 300 images) with
``--workers 2`` against the same real PostgreSQL queue and ``mlflow server`` (on PostgreSQL), so the
only difference is where the workers start: local processes, a one-node Slurm array (submitit), or
Ray tasks on a Ray head started here (``ray start --head --block``, stopped by its pid). The servers
and the Slurm daemons are the test suite's (tests/servers.py). Needs root for Slurm (as in CI).

    python benchmarks/bench_launchers.py [--repeats 3] [--launchers local,slurm,ray] [--quick] [--out results.json]

``--quick``: a 2-cell study, 1 epoch of 100 images. ``--stores sqlite`` (``--launchers local`` only): a
SQLite queue and MLflow store in the temp folder instead of the servers; the smoke size in
tests/test_benchmarks.py is ``--quick --launchers local --stores sqlite --repeats 1``. Where a server
cannot be started here it exits 77 (the reason on stderr).

Reported per launcher (median of --repeats, launchers interleaved in each round):
- wall: the command's wall time;
- first start: seconds from the command's start (local) or the submission (slurm, ray) to the first
  job's claim, from the queue's own timestamps;
- cell: median seconds a job held its claim (the cell's own time, the same training everywhere);
- overhead/cell beyond local: (wall - local wall) / 8 cells (the target: under 2 s for slurm and ray).
Run it on a quiet machine (nothing else on the cores); give the CPU flags with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import servers  # noqa: E402

CELLS = 8
STUDY = """
name = "bench-launchers"
seeds = 1
[base]
model = "lenet5"
dataset = "digits"
epochs = 2
train_size = 300
kernels = false
predictions = false
memory = false
confusion = false
summary = false
[grid]
lr = [0.001, 0.002, 0.005, 0.01]
optimizer = ["sgd", "adam"]
"""
QUICK_CELLS = 2
QUICK_STUDY = (STUDY.replace("epochs = 2", "epochs = 1").replace("train_size = 300", "train_size = 100")
               .replace("lr = [0.001, 0.002, 0.005, 0.01]", "lr = [0.001, 0.01]").replace('["sgd", "adam"]', '["sgd"]'))
UNAVAILABLE = 77  # exit status where a server cannot be started here (as automake's "skipped")
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_DISABLE_USAGE_STATS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def queue_times(queue: str, name: str) -> tuple[float, float]:
    """(first claim time, median claim-to-finish seconds) of the study's jobs."""
    from cnnbench.campaign.queue import JobQueue
    from cnnbench.campaign.storage import open_engine

    rows = JobQueue(open_engine(queue), name).rows()
    held = [r.finished_at - r.claimed_at for r in rows if r.finished_at and r.claimed_at]
    return min(r.claimed_at for r in rows if r.claimed_at), statistics.median(held)


def one(launcher: str, round_: int, folder: Path, queue: str, uri: str, env: dict[str, str]) -> dict:
    name = f"bench-{launcher}-{round_}-{int(time.time())}"
    cmd = [str(Path(sys.executable).with_name("cnnbench")), "study", "run", str(folder / "bench.toml"),
           "--workers", "2", "--launcher", launcher, "--storage", queue, "--tracking-uri", uri,
           "--study-name", name, "--experiment", name, "--heartbeat-interval", "5", "--format", "csv"]
    started = time.time()
    out = subprocess.run(cmd, env=env, cwd=folder, capture_output=True, text=True, timeout=900)
    wall = time.time() - started
    if out.returncode != 0:
        raise SystemExit(f"{launcher} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    submitted = started
    for line in out.stderr.splitlines():
        if line.startswith("first job started ") and " s after submission" in line:
            first_after = float(line.split()[3])
            break
    else:
        first_after = None
    first_claim, cell = queue_times(queue, name)
    return {"launcher": launcher, "wall_s": wall, "cell_s": cell,
            "first_start_s": first_after if first_after is not None else first_claim - submitted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--launchers", default="local,slurm,ray")
    parser.add_argument("--quick", action="store_true", help=f"a {QUICK_CELLS}-cell study, 1 epoch of 100 images (smoke)")
    parser.add_argument("--stores", choices=("servers", "sqlite"), default="servers",
                        help="servers: PostgreSQL queue + mlflow server (default); sqlite: files, --launchers local only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.stores == "sqlite" and args.launchers != "local":
        parser.error("--stores sqlite runs --launchers local only (Slurm and Ray workers use the servers)")
    try:
        run(args)
    except servers.Unavailable as err:
        print(f"cannot start the servers here: {err}", file=sys.stderr)
        sys.exit(UNAVAILABLE)


def run(args) -> None:
    cells = QUICK_CELLS if args.quick else CELLS
    launchers = args.launchers.split(",")
    folder = Path(tempfile.mkdtemp(prefix="bench-launchers-"))
    (folder / "bench.toml").write_text(QUICK_STUDY if args.quick else STUDY)
    if args.stores == "sqlite":
        results = [one("local", round_, folder, f"sqlite:///{folder}/queue.db", f"sqlite:///{folder}/mlflow.db", dict(os.environ))
                   for round_ in range(args.repeats)]
        for result in results:
            print(json.dumps(result), flush=True)
        report(args, launchers, cells, results)
        return
    results: list[dict] = []
    with servers.postgres() as pg:
        backend, queue = servers.create_database(pg, "mlflow"), servers.create_database(pg, "queue")
        (folder / "artifacts").mkdir()
        with servers.mlflow_server(backend, folder / "artifacts") as uri:
            env = {**os.environ, **RAY_ENV}
            slurm_cm = servers.slurm(folder / "slurm") if "slurm" in launchers else None
            ray_head = None
            try:
                if slurm_cm is not None:
                    env.update(slurm_cm.__enter__())
                if "ray" in launchers:
                    port = servers.free_port()
                    ray_head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                                                 "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
                                                 "--disable-usage-stats"], env=env, start_new_session=True,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
                    time.sleep(8)  # the head's GCS and raylet
                for round_ in range(args.repeats):
                    for launcher in launchers:
                        result = one(launcher, round_, folder, queue, uri, env)
                        print(json.dumps(result), flush=True)
                        results.append(result)
            finally:
                if ray_head is not None:
                    servers.stop(ray_head)
                if slurm_cm is not None:
                    slurm_cm.__exit__(None, None, None)
    report(args, launchers, cells, results)


def report(args, launchers: list[str], cells: int, results: list[dict]) -> None:
    summary = {}
    for launcher in launchers:
        mine = [r for r in results if r["launcher"] == launcher]
        summary[launcher] = {k: statistics.median(r[k] for r in mine) for k in ("wall_s", "first_start_s", "cell_s")}
    local = summary.get("local", {}).get("wall_s")
    print(f"\n{cells} cells, --workers 2, median of {args.repeats} (CPU: {os.cpu_count()} cores)")
    print(f"{'launcher':<8} {'wall s':>8} {'first start s':>14} {'cell s':>7} {'wall / local':>13} {'overhead/cell s':>16}")
    for launcher, m in summary.items():
        ratio = f"{m['wall_s'] / local:.2f}" if local else "-"
        over = f"{(m['wall_s'] - local) / cells:.2f}" if local else "-"
        m["overhead_per_cell_s"] = (m["wall_s"] - local) / cells if local else None
        print(f"{launcher:<8} {m['wall_s']:>8.1f} {m['first_start_s']:>14.1f} {m['cell_s']:>7.2f} {ratio:>13} {over:>16}")
    if args.out:
        args.out.write_text(json.dumps({"cells": cells, "runs": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
