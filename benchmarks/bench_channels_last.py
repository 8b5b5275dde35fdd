"""Channels-last vs NCHW on CPU, per model, and torch's thread count under a competing load.

    python benchmarks/bench_channels_last.py [--models a,b] [--steps 12] [--repeats 3] [--batch 128]
                                             [--competing N] [--threads-only] [--quick] [--json OUT]

Layout: each model is built for 3x32x32 inputs and 10 classes and trained (Adam, batch ``--batch``) for
``--steps`` steps after 2 warm-up steps, once contiguous and once channels-last (model and batches), in
alternating order, ``--repeats`` times; the median images/s of each and their ratio are printed. A
ratio above 1 is what ``ModelPlugin.channels_last_cpu`` (``--channels-last auto`` on CPU) declares.

Threads: the bare training loop of one model (``--thread-model``, default strided_cnn) with
``torch.set_num_threads`` 1 and the physical core count, on a quiet machine and with ``--competing``
busy processes (default 1: another job on the same cores), each as the ratio to the quiet
physical-core figure: how much of its speed a run keeps when something else shares the cores.
``--quick`` (CI's slow set): two models, 3 steps, one repeat. The figures report; nothing asserts.
``--json OUT`` also writes the unrounded rates and ratios (the table prints them rounded).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time

import psutil
import torch
from torch import nn

from cnnbench.models import build_model

MODELS = ("strided_cnn", "lenet5", "block_cnn", "three_conv", "resnet18", "fast_cnn")


def step_rate(name: str, channels_last: bool, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3, image_size=(32, 32))
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def busy(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def layouts(models: list[str], steps: int, repeats: int, batch: int) -> dict[str, dict]:
    print(f"channels-last on CPU ({os.cpu_count()} CPUs, {torch.get_num_threads()} threads, batch {batch}, "
          f"load {os.getloadavg()[0]:.2f}); images/s, median of {repeats}")
    print(f"{'model':<12} {'NCHW':>8} {'NHWC':>8} {'NHWC/NCHW':>10}")
    out = {}
    for name in models:
        rates: dict[bool, list[float]] = {False: [], True: []}
        for r in range(repeats):
            for cl in ((False, True) if r % 2 == 0 else (True, False)):
                rates[cl].append(step_rate(name, cl, steps, batch))
        a, b = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"{name:<12} {a:>8.0f} {b:>8.0f} {b / a:>10.2f}", flush=True)
        out[name] = {"nchw_images_s": a, "nhwc_images_s": b, "ratio": b / a}
    return out


def threads(model: str, steps: int, repeats: int, batch: int, competing: int) -> list[dict]:
    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    settings = sorted({1, physical})
    results: dict[tuple[int, int], float] = {}
    for load in (0, competing):
        stop = mp.Event()
        procs = [mp.Process(target=busy, args=(stop,), daemon=True) for _ in range(load)]
        for p in procs:
            p.start()
        try:
            for n in settings:
                torch.set_num_threads(n)
                results[(load, n)] = statistics.median(step_rate(model, True, steps, batch) for _ in range(repeats))
        finally:
            stop.set()
            for p in procs:
                p.join()
    torch.set_num_threads(physical)
    quiet = results[(0, physical)]
    print(f"threads ({model}, channels-last, {physical} physical cores; ratio to the quiet {physical}-thread loop)")
    print(f"{'threads':>7} {'competing':>9} {'images/s':>9} {'ratio':>6}")
    for (load, n), rate in sorted(results.items()):
        print(f"{n:>7} {load:>9} {rate:>9.0f} {rate / quiet:>6.2f}")
    return [{"threads": n, "competing": load, "images_s": rate, "ratio": rate / quiet}
            for (load, n), rate in sorted(results.items())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--competing", type=int, default=1)
    ap.add_argument("--thread-model", default="strided_cnn")
    ap.add_argument("--threads-only", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also write the unrounded figures here")
    args = ap.parse_args()
    models = args.models.split(",")
    if args.quick:
        models, args.steps, args.repeats = models[:2], 3, 1
    report = {"models": {}}
    if not args.threads_only:
        report["models"] = layouts(models, args.steps, args.repeats, args.batch)
    report["threads"] = threads(args.thread_model, args.steps, args.repeats, args.batch, args.competing)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
