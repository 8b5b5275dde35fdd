"""Predicted vs measured training memory for every registered model on its natural input.

CPU: the prediction (fake tensors, :func:`cnnbench.memory.predict`) against the CPU allocator's peak
measured with ``torch.profiler(profile_memory=True)`` during the same two real training steps
(:func:`cnnbench.memory.measure`), for sgd / momentum / adam at 3 batch sizes (2 with ``--quick``),
each model on its plugin's natural input (the ResNets at 224 px, with small batches on a CPU);
prints the table, the worst cell and the cells outside the goal (10 %). ``tracked`` is the
prediction's own tracker run on the real tensors, without the convolution workspaces: it equals
the prediction made with ``workspace=False`` (the fake step behaves like the real one), and
measured - tracked is what kernels allocate outside the tensors they return (oneDNN reorders), the
part :mod:`cnnbench.memory.workspace` measures per layer shape at batch 4 and 8 and extrapolates.

CUDA (skipped without a GPU): ResNet-18/50/152 at 224 px, predicted vs ``max_memory_allocated`` vs
``max_memory_reserved`` vs device-level used memory, each cell in a fresh process as R4 measured
it (the R4-L figure: ResNet-152, batch 8, Adam: 3540 MB device-level on a 6 GB GPU).

    python benchmarks/bench_memory.py [--quick] [--models a,b] [--cuda-only] [--json out.json]

``--models`` limits the CPU section to those models (the smoke size in tests/test_benchmarks.py:
``--quick --models lenet5,mlp``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from cnnbench.memory import measure, predict  # noqa: E402
from cnnbench.memory.report import error_pct  # noqa: E402
from cnnbench.registry import DATASETS, MODELS  # noqa: E402

GOAL_PCT = 10.0
OPTIMIZERS = ("sgd", "momentum", "adam")
BATCHES = (8, 64, 256)
BIG = {"resnet18": (2, 8, 16), "resnet34": (2, 8, 16), "resnet50": (2, 4, 8), "resnet152": (2, 4, 8)}  # 224 px on CPU
QUICK = (8, 64)
QUICK_BIG = (2, 4)
CUDA_CELLS = [("resnet18", b, o) for b in (8, 64) for o in OPTIMIZERS] + \
    [("resnet50", 8, o) for o in OPTIMIZERS] + [("resnet152", 8, o) for o in OPTIMIZERS]


def natural_input(model: str) -> tuple[str, tuple[int, int, int], int]:
    """The input the model family was written for (its plugin's ``natural_input``), else CIFAR-10's."""
    plugin = MODELS.get(model)
    if plugin.natural_input is not None:
        shape = tuple(plugin.natural_input)
        return "x".join(map(str, shape)), shape, plugin.natural_classes or 10
    data = DATASETS.get("cifar10")
    info = data.describe(**{o.name: o.default for o in data.options})
    return "cifar10", (info.channels, info.height, info.width), info.num_classes


def cpu_section(quick: bool, models: list[str] | None = None) -> list[dict]:
    rows = []
    for model in models or MODELS.names():
        dataset, shape, classes = natural_input(model)
        batches = (QUICK_BIG if quick else BIG[model]) if model in BIG else (QUICK if quick else BATCHES)
        for optimizer in OPTIMIZERS:
            for batch in batches:
                t0 = time.perf_counter()
                pred = predict(model, shape, batch, optimizer, num_classes=classes, device="cpu")
                t_pred = time.perf_counter() - t0
                meas = measure(model, shape, batch, optimizer, num_classes=classes, device="cpu")
                rows.append({"model": model, "dataset": dataset, "optimizer": optimizer, "batch": batch,
                             "predicted": pred.peak_mb, "tracked": meas.tracked_peak_mb, "measured": meas.peak_mb,
                             "error_pct": error_pct(pred.peak_mb, meas.peak_mb), "peak_at": pred.peak_at,
                             "eval_predicted": pred.eval_peak_mb, "eval_measured": meas.eval_peak_mb,
                             "predict_s": round(t_pred, 2), "measure_s": meas.seconds})
                r = rows[-1]
                print(f"{model:<12} {dataset:<9} {optimizer:<9} {batch:>4}  {r['predicted']:>9.2f}  {r['tracked']:>9.2f}  "
                      f"{r['measured']:>9.2f}  {r['error_pct']:>+7.2f}%  {r['eval_predicted']:>8.2f} {r['eval_measured']:>8.2f}  "
                      f"{r['peak_at']:<22} {r['predict_s']:>5.2f}s", flush=True)
    return rows


def _cuda_cell(args: tuple[str, int, str], queue) -> None:
    model, batch, optimizer = args
    pred = predict(model, (3, 224, 224), batch, optimizer, num_classes=10, device="cuda")
    meas = measure(model, (3, 224, 224), batch, optimizer, num_classes=10, device="cuda")
    queue.put({"model": model, "batch": batch, "optimizer": optimizer, "predicted": pred.peak_mb,
               "tracked": meas.tracked_peak_mb, "allocated": meas.peak_mb, "reserved": meas.reserved_peak_mb,
               "device_used": meas.device_used_mb, "process_used": meas.process_used_mb,
               "device_used_before": meas.device_used_before_mb, "error_pct": error_pct(pred.peak_mb, meas.peak_mb)})


def cuda_section(quick: bool) -> list[dict]:
    if not torch.cuda.is_available():
        print("\nCUDA: skipped (no GPU: torch.cuda.is_available() is False)")
        return []
    print(f"\nCUDA ({torch.cuda.get_device_name()}), 3x224x224, 10 classes, one fresh process per cell (MiB):")
    print(f"{'model':<10} {'batch':>5} {'optimizer':<9} {'predicted':>9} {'allocated':>9} {'error':>7} {'reserved':>9} "
          f"{'device':>8} {'process':>8} {'before':>7}")
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for cell in (CUDA_CELLS[:3] + CUDA_CELLS[-3:]) if quick else CUDA_CELLS:
        queue = ctx.Queue()
        proc = ctx.Process(target=_cuda_cell, args=(cell, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"{cell}: failed with exit code {proc.exitcode}")
            continue
        r = queue.get()
        rows.append(r)
        fmt = lambda v: "--" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"{r['model']:<10} {r['batch']:>5} {r['optimizer']:<9} {r['predicted']:>9.1f} {r['allocated']:>9.1f} "
              f"{r['error_pct']:>+6.2f}% {fmt(r['reserved']):>9} {fmt(r['device_used']):>8} {fmt(r['process_used']):>8} "
              f"{fmt(r['device_used_before']):>7}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 batch sizes per model (CI)")
    parser.add_argument("--models", default=None, help="comma-separated models for the CPU section (default: every registered one)")
    parser.add_argument("--cuda-only", action="store_true", help="skip the CPU section")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    models = [m for m in (args.models or "").split(",") if m]
    unknown = sorted(set(models) - set(MODELS.names()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(MODELS.names())}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); MiB = 2**20 bytes; "
          f"error = (predicted - measured) / measured")
    rows: list[dict] = []
    if not args.cuda_only:
        print(f"{'model':<12} {'input':<9} {'optimizer':<9} {'batch':>4}  {'predicted':>9}  {'tracked':>9}  "
              f"{'measured':>9}  {'error':>8}  {'eval-pred':>8} {'eval-meas':>8}  {'peak at':<22} {'predict':>6}")
        rows = cpu_section(args.quick, models)
        worst = max(rows, key=lambda r: abs(r["error_pct"]))
        misses = [r for r in rows if abs(r["error_pct"]) > GOAL_PCT]
        bare = max(rows, key=lambda r: abs(error_pct(r["tracked"], r["measured"])))
        print(f"\nCPU: {len(rows)} cells; worst {worst['model']} {worst['optimizer']} batch {worst['batch']}: "
              f"{worst['error_pct']:+.2f}%; {len(misses)} outside +-{GOAL_PCT:g}%. Without the convolution workspaces "
              f"(tensors only, = 'tracked') the worst would be {bare['model']} {bare['optimizer']} batch {bare['batch']}: "
              f"{error_pct(bare['tracked'], bare['measured']):+.2f}%")
        for r in misses:
            print(f"  miss: {r['model']} {r['optimizer']} batch {r['batch']}: {r['error_pct']:+.2f}% "
                  f"(tracked {r['tracked']:.2f} vs measured {r['measured']:.2f}: {r['measured'] - r['tracked']:.2f} MiB outside tensors)")
    cuda = cuda_section(args.quick)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"cpu": rows, "cuda": cuda}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
