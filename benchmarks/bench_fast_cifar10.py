"""CPU time-to-accuracy of the ``fast-cifar10`` preset on CIFAR-10, end to end.

    python benchmarks/bench_fast_cifar10.py [--cifar-dir DIR] [--seeds 0,1,2] [--epochs N] [--quick] [--json]
                                            [-- EXTRA TRAIN FLAGS]

Each seed is one ``cnnbench train --preset fast-cifar10 --test-every-epoch`` process with tracking on
(a fresh SQLite store), timed from launch to exit. ``--test-every-epoch`` logs the test accuracy after
every epoch and ``run_time_s``, the seconds since the process started without those extra
evaluations, so one run gives the whole curve: time-to-85/88/90% is the ``run_time_s`` of the first
epoch at or above it (the DAWNBench convention). "wall" is the process's wall time less those extra
evaluations: what the same run costs without the curve. Medians over the seeds; the machine's load
before and after is printed, since a second process on a 2-core machine halves the throughput.
``--quick`` (CI's slow set): 2 epochs on 2,000 images, one seed; it reports, it asserts nothing.

DIR holds ``cifar-10-batches-py/``; without it CIFAR-10 is materialised from ../shared once.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data_pipeline import cifar_dir  # noqa: E402

TARGETS = (0.85, 0.88, 0.90)


def one_run(data: Path, seed: int, store: Path, extra: list[str]) -> dict:
    uri = f"sqlite:///{store}/mlflow.db"
    cmd = ["cnnbench", "train", "--preset", "fast-cifar10", "--data-dir", str(data), "--seed", str(seed),
           "--test-every-epoch", "--tracking-uri", uri, "--experiment", "bench-fast-cifar10", "--quiet", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=store)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"seed {seed}: cnnbench train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench-fast-cifar10")
    run = client.search_runs([exp.experiment_id], filter_string=f"params.seed = '{seed}'", max_results=1)[0]
    history = {k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
               for k in ("epoch_test_accuracy", "run_time_s", "curve_eval_s")}
    curve = list(zip(history["run_time_s"], history["epoch_test_accuracy"]))
    reached = {f"time_to_{round(t * 100)}": next((s for s, a in curve if a >= t), None) for t in TARGETS}
    extra_eval = history["curve_eval_s"][-1] if history["curve_eval_s"] else 0.0
    return {"seed": seed, "test_accuracy": run.data.metrics["test_accuracy"], "wall_s": wall - extra_eval,
            "fit_time_s": run.data.metrics["fit_time_s"], "epochs": len(curve), "curve": curve, **reached}


def median_or_none(values: list) -> float | None:
    """The median when every seed reached the target, else None (not reached by the median seed)."""
    got = [v for v in values if v is not None]
    if len(got) * 2 <= len(values) or not got:
        return None
    return statistics.median(sorted(values, key=lambda v: float("inf") if v is None else v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar-dir")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, help="override the preset's epochs")
    ap.add_argument("--quick", action="store_true", help="2 epochs on 2,000 images, one seed (CI)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("extra", nargs="*", help="more train flags (after --)")
    args = ap.parse_args()
    data = cifar_dir(args.cifar_dir)
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = list(args.extra)
    if args.epochs:
        extra += ["--epochs", str(args.epochs)]
    if args.quick:
        seeds = seeds[:1]
        extra += ["--epochs", "2", "--train-size", "2000", "--train-on", "train", "--no-log-model"]
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            rows.append(one_run(data, seed, Path(tmp), extra))
    load_after = os.getloadavg()[0]
    summary = {"cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after,
               "median_test_accuracy": statistics.median(r["test_accuracy"] for r in rows),
               "median_wall_s": statistics.median(r["wall_s"] for r in rows),
               **{f"median_time_to_{round(t * 100)}": median_or_none([r[f"time_to_{round(t * 100)}"] for r in rows])
                  for t in TARGETS}, "runs": rows}
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    show = lambda v: "-" if v is None else f"{v:.0f} s"  # noqa: E731
    print(f"fast-cifar10 on {os.cpu_count()} CPUs, load {load_before:.2f} before / {load_after:.2f} after; "
          f"extra flags: {' '.join(extra) or 'none'}")
    print(f"{'seed':>4} {'epochs':>6} {'test acc':>9} {'wall':>7} {'fit':>7} " + " ".join(f"{'to ' + str(round(t * 100)) + '%':>7}" for t in TARGETS))
    for r in rows:
        print(f"{r['seed']:>4} {r['epochs']:>6} {r['test_accuracy']:>9.4f} {r['wall_s']:>6.0f}s {r['fit_time_s']:>6.0f}s "
              + " ".join(f"{show(r[f'time_to_{round(t * 100)}']):>7}" for t in TARGETS))
    print(f"median {summary['median_test_accuracy']:.4f} test accuracy, {summary['median_wall_s']:.0f} s end to end; "
          + ", ".join(f"time to {round(t * 100)}%: {show(summary[f'median_time_to_{round(t * 100)}'])}" for t in TARGETS))
    for r in rows:
        print(f"curve seed {r['seed']}: " + ", ".join(f"{s:.0f}s {a:.4f}" for s, a in r["curve"]))


if __name__ == "__main__":
    main()
