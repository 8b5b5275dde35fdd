"""Run overhead: the quickstart's ``cnnbench train`` wall time split into its phases.

    python benchmarks/bench_run_overhead.py [--repeats 3] [--quick] [--json OUT]

Each repeat runs the quickstart command (``cnnbench train``, defaults: lenet5 on the embedded
digits, 8 epochs, every artifact, the model logged) as a new process in a new temporary folder, so
on a fresh SQLite store ``./mlflow.db`` (cold: the schema is created), then once more in the same
folder (warm: the store exists). The phases come from the run's own ``time_<phase>_s`` metrics (see
:mod:`cnnbench.tracking.phases`), read back from the store; the process's wall time is measured
here, around the command.

- interpreter: ``python -c pass`` (timed here, median of 5); cli imports: the run's
  ``time_startup_s`` (cnnbench's start, interpreter bootstrap included, to training entry) minus it;
- lazy imports (torch, matplotlib, MLflow), store, setup (validation, model, memory prediction),
  data, fit (epochs + validation + test pass), artifacts (the builders, every hook), upload, model
  log: the run's metrics;
- remainder: wall minus all of those: closing the run (heartbeat, end_run), interpreter exit, and
  anything no phase covers. ``outside fit`` = wall - fit; the goal is <= 5 s on a quiet machine.

``--quick`` (CI): one repeat of a 1-epoch run on 300 training images: checks the table, not speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_OUTSIDE_FIT_S = 5.0
QUICK_ARGS = ["--epochs", "1", "--train-size", "300"]
ROWS = [  # (label, metric or computed key)
    ("interpreter", "interpreter"),
    ("cli imports + options", "cli"),
    ("lazy imports", "time_imports_s"),
    ("store", "time_store_s"),
    ("setup", "time_setup_s"),
    ("data", "time_data_s"),
    ("fit", "time_fit_s"),
    ("artifacts", "time_artifacts_s"),
    ("upload", "time_upload_s"),
    ("model log", "time_model_log_s"),
    ("remainder (close, exit)", "remainder"),
]
PHASE_KEYS = [key for _, key in ROWS if key not in ("interpreter", "cli", "remainder")]


def command() -> list[str]:
    exe = Path(sys.executable).with_name("cnnbench")
    return [str(exe) if exe.exists() else (shutil.which("cnnbench") or "cnnbench"), "train"]


def clean_env() -> dict[str, str]:
    """The quickstart's environment: the default store (./mlflow.db), no run to adopt."""
    env = dict(os.environ)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(key, None)
    return env


def python_seconds(code: str, times: int = 5) -> float:
    spent = []
    for _ in range(times):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=clean_env())
        spent.append(time.perf_counter() - start)
    return statistics.median(spent)


def run_metrics(db: Path, run_id: str) -> dict[str, float]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = ?", (run_id,)).fetchall()
    return {key: float(value) for key, value in rows}


def one_run(folder: Path, extra: list[str], interpreter: float) -> dict[str, float]:
    start = time.perf_counter()
    out = subprocess.run([*command(), *extra], cwd=folder, env=clean_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"cnnbench train failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    found = re.search(r"MLflow run: ([0-9a-f]{32})", out.stdout)
    if not found:
        raise SystemExit(f"no run id in the output:\n{out.stdout[-2000:]}")
    metrics = run_metrics(folder / "mlflow.db", found.group(1))
    row = {"wall": wall, "interpreter": interpreter, "cli": metrics.get("time_startup_s", 0.0) - interpreter}
    row.update({key: metrics.get(key, 0.0) for key in PHASE_KEYS})
    row["remainder"] = wall - sum(row[key] for key in ("interpreter", "cli", *PHASE_KEYS))
    row["outside_fit"] = wall - row["time_fit_s"]
    row["fit_time_s"] = metrics.get("fit_time_s", 0.0)  # the training passes alone
    row["test_accuracy"] = metrics.get("test_accuracy", float("nan"))
    return row


def table(results: dict[str, list[dict[str, float]]]) -> str:
    kinds = list(results)
    head = f"{'phase (s)':<24}" + "".join(f"  {k + ' median':>13} {'min':>6} {'max':>6}" for k in kinds)
    lines = [head, "-" * len(head)]

    def line(label: str, key: str) -> str:
        cells = ""
        for kind in kinds:
            values = [r[key] for r in results[kind]]
            cells += f"  {statistics.median(values):>13.2f} {min(values):>6.2f} {max(values):>6.2f}"
        return f"{label:<24}" + cells

    lines += [line(label, key) for label, key in ROWS]
    lines.append("-" * len(head))
    lines.append(line("wall", "wall"))
    lines.append(line("outside fit", "outside_fit"))
    lines.append(line("(fit_time_s: train only)", "fit_time_s"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh folders (each: a cold run, then a warm one)")
    parser.add_argument("--quick", action="store_true", help=f"1 repeat of `cnnbench train {' '.join(QUICK_ARGS)}` (CI)")
    parser.add_argument("--json", help="also write every run's phases here")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    extra = QUICK_ARGS if args.quick else []
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"command: {' '.join(['cnnbench', 'train', *extra])}  (in a new folder: ./mlflow.db fresh, then warm); "
          f"{repeats} repeat(s); {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    interpreter = python_seconds("pass")
    cli_import = python_seconds("import cnnbench.cli")
    print(f"python -c pass: {interpreter:.3f} s; python -c 'import cnnbench.cli': {cli_import:.3f} s", flush=True)
    results: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    for i in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-run-overhead-") as folder:
            for kind in ("cold", "warm"):
                row = one_run(Path(folder), extra, interpreter)
                results[kind].append(row)
                print(f"  repeat {i + 1} {kind}: wall {row['wall']:.2f} s, fit {row['time_fit_s']:.2f} s, outside fit "
                      f"{row['outside_fit']:.2f} s, test_accuracy {row['test_accuracy']:.4f}", flush=True)
    print()
    print(table(results))
    for kind in results:
        median = statistics.median(r["outside_fit"] for r in results[kind])
        verdict = "within" if median <= GOAL_OUTSIDE_FIT_S else "above"
        print(f"{kind}: outside fit {median:.2f} s median, {verdict} the {GOAL_OUTSIDE_FIT_S:g} s goal")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"command": ["cnnbench", "train", *extra], "load": list(load), "interpreter_s": interpreter,
                       "cli_import_s": cli_import, **results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
