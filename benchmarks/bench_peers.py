"""A tracked run against its peers: cnnbench's default ``cnnbench train``, cnnbench with its artifacts off,
a hand-written torch + MLflow script and Lightning + ``MLFlowLogger``, on the same model (LeNet-5), data
(scikit-learn's embedded digits, 28x28) and epochs.

    python benchmarks/bench_peers.py [--repeats 3] [--epochs 8] [--train-size N] [--json OUT]

Paired and interleaved: each repeat runs A B C D in turn, each a fresh process in its own temporary folder
with its own new SQLite store, timed from launch to exit; the figure per side is the median over repeats.

- ``cnnbench``: ``cnnbench train`` with its defaults (every artifact, the self-contained model);
- ``cnnbench_no_artifacts``: the same with every artifact flag off but the logged model (``--no-kernels
  --no-tsne ...``: ``cnnbench train --help``, Artifacts), so it logs what the peers log: params, metrics, a model;
- ``torch_mlflow``: benchmarks/peers/torch_mlflow.py (params, per-epoch metrics, an ``mlflow.pytorch`` model);
- ``lightning``: benchmarks/peers/lightning_mlflow.py (Lightning's defaults: ModelCheckpoint, the checkpoint
  logged by ``MLFlowLogger(log_model=True)``). Needs the ``bench`` extra (``pip install -e .[bench]``);
  without Lightning the other three run and the report says it was skipped, and why.

Targets (ratios of the medians against Lightning's): the default run <= 1.0x, artifacts off <= 0.8x.
``--json OUT`` writes the unrounded walls, the CPU (model, torch's CPU capability) and the load average
before and after. Timings on a loaded machine are noisy: compare only ratios from one invocation.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEERS = Path(__file__).resolve().parent / "peers"
SIDES = ("cnnbench", "cnnbench_no_artifacts", "torch_mlflow", "lightning")
TARGETS = {"cnnbench": 1.0, "cnnbench_no_artifacts": 0.8}
ARTIFACTS_OFF = ["--no-kernels", "--no-tsne", "--no-retrieval", "--no-predictions", "--no-confusion",
                 "--no-curves", "--no-memory", "--no-summary"]


def cnnbench_exe() -> str:
    exe = Path(sys.executable).with_name("cnnbench")
    return str(exe) if exe.exists() else (shutil.which("cnnbench") or "cnnbench")


def commands(epochs: int, train_size: int | None) -> dict[str, list[str]]:
    size = [] if train_size is None else ["--train-size", str(train_size)]
    train = [cnnbench_exe(), "train", "--quiet", "--epochs", str(epochs), *size]
    peer = ["--epochs", str(epochs), *size]
    return {"cnnbench": train, "cnnbench_no_artifacts": [*train, *ARTIFACTS_OFF],
            "torch_mlflow": [sys.executable, str(PEERS / "torch_mlflow.py"), *peer],
            "lightning": [sys.executable, str(PEERS / "lightning_mlflow.py"), *peer]}


def lightning_missing() -> str | None:
    if importlib.util.find_spec("lightning") is None:
        return "lightning is not installed (pip install -e .[bench])"
    return None


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(key, None)
    return env


def finished_runs(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'FINISHED'").fetchone()[0]


def run_once(side: str, argv: list[str]) -> float:
    """One fresh process in a new folder with a new store: launch to exit, in seconds."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-peers-{side}-"))
    try:
        db = folder / "mlflow.db"
        uri = f"sqlite:///{db}"
        start = time.perf_counter()
        out = subprocess.run([*argv, "--tracking-uri", uri], cwd=folder, env=clean_env(), capture_output=True, text=True)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            sys.exit(f"bench_peers: {side} exited {out.returncode}: {' '.join(argv)}\n{out.stderr[-3000:]}")
        if finished_runs(db) != 1:
            sys.exit(f"bench_peers: {side} left no FINISHED run in its store ({uri})")
        return wall
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def cpu() -> dict[str, str]:
    import platform

    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"model": model, "capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8, help="epochs of every side (cnnbench's default: 8)")
    parser.add_argument("--train-size", type=int, default=None, help="a stratified subset of N training images")
    parser.add_argument("--json", help="also write the unrounded seconds, the CPU and the load average here")
    args = parser.parse_args()
    if args.repeats < 1 or args.epochs < 1:
        parser.error("--repeats and --epochs must be at least 1")
    skipped = lightning_missing()
    sides = [s for s in SIDES if not (s == "lightning" and skipped)]
    argv = commands(args.epochs, args.train_size)
    load_before = os.getloadavg()
    walls: dict[str, list[float]] = {s: [] for s in sides}
    for _ in range(args.repeats):
        for side in sides:  # interleaved: A B C D, A B C D, ...
            walls[side].append(run_once(side, argv[side]))
    load_after = os.getloadavg()
    median = {s: statistics.median(w) for s, w in walls.items()}
    base = median.get("lightning")
    ratios = {s: median[s] / base for s in sides} if base else None
    vs_hand = {s: median[s] / median["torch_mlflow"] for s in sides}
    machine = cpu()

    print(f"LeNet-5 / digits, {args.epochs} epochs, train size {args.train_size or 'all'}, {args.repeats} repeat(s), "
          f"interleaved; CPU {machine['model']} ({machine['capability']}, {machine['cores']} cores)")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f}")
    print(f"{'side':<24}{'median s':>10}{'vs lightning':>14}{'vs torch+mlflow':>17}  walls")
    for s in sides:
        vs = f"{ratios[s]:.2f}x" if ratios else "-"
        print(f"{s:<24}{median[s]:>10.2f}{vs:>14}{vs_hand[s]:>16.2f}x  {' '.join(f'{w:.2f}' for w in walls[s])}")
    if ratios:
        for s, target in TARGETS.items():
            print(f"target {s} <= {target:.1f}x lightning: {'met' if ratios[s] <= target else 'not met'} ({ratios[s]:.2f}x)")
    else:
        print(f"lightning skipped: {skipped}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "epochs": args.epochs, "train_size": args.train_size, "repeats": args.repeats, "model": "lenet5",
            "dataset": "digits", "commands": {s: argv[s] for s in sides}, "walls_s": walls, "median_s": median,
            "ratio_vs_lightning": ratios, "ratio_vs_torch_mlflow": vs_hand, "targets": TARGETS,
            "lightning_skipped": skipped, "cpu": machine, "load_before": list(load_before), "load_after": list(load_after),
        }, indent=2))


if __name__ == "__main__":
    main()
