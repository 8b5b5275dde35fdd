"""Engine overhead: a tracked ``cnnbench`` training epoch vs a minimal hand-written PyTorch loop,
and the seconds spent building the end-of-run artifacts.

    python benchmarks/bench_engine_overhead.py [--epochs 5] [--train-size N] [--cifar-dir DIR | --no-cifar]
                                               [--cifar-train N] [--json OUT]

Both sides train the same model (same initial weights), on the same uint8 tensors already on the
device, with the same batch size, optimizer (Adam, lr 1e-3) and device, in one process. The epochs
are *interleaved*: at each cnnbench ``on_epoch_start`` a callback runs one hand-written epoch, so
load changes on a shared machine hit both sides alike.

- hand-written epoch: randperm shuffle, normalise each batch, forward, cross-entropy, backward,
  step; then a no-grad pass over the validation split (what any loop needs to pick a model).
- cnnbench epoch: the time from the end of one hand-written epoch to the next ``on_epoch_start``:
  the engine's train and validation passes, checkpoint, every callback's per-epoch work (memory
  samples, console line) and the MLflow tracker logging metrics to a SQLite store, with
  system-metrics logging on. The one-off middle-epoch t-SNE map falls in one of these intervals;
  the median keeps it out, the mean (also reported) does not.

Both are timed in wall seconds and in process CPU seconds; on a shared machine the CPU-time ratio
with ``--threads 1`` is the steadier one, and the paired ratio (each cnnbench epoch over the
hand-written epoch run right after it) cancels slow drifts in load.

The first hand-written epoch (cold) and the last cnnbench epoch (it ends with the test pass) are not
counted; ``--epochs N`` timed epochs each need N + 1 training epochs. End-of-run artifacts are timed
per builder (``artifacts_time_s``) and in total with the tracker's upload and model logging, on the
default run (lenet5 on digits) and on CIFAR-10 with its 10k test set (``--cifar-model``, default
lenet5, trained on a ``--cifar-train`` subset to bound the time). The smoke size (tests/test_benchmarks.py):
``--epochs 3 --train-size 300`` and a small fake CIFAR-10 folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_data_pipeline import cifar_dir  # the same cached CIFAR-10 (this script's folder is on sys.path)
from cnnbench import api
from cnnbench.artifacts.callbacks import ArtifactCallback
from cnnbench.config import TrainConfig
from cnnbench.events import Callback

class HandLoop:
    """The minimal loop: the same tensors and model architecture, nothing else."""

    def __init__(self, model: torch.nn.Module, data, batch_size: int, lr: float, device: torch.device) -> None:
        self.model = model.to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.batch = batch_size
        self.device = device
        c = data.channels
        self.mean = torch.tensor(data.mean, device=device).view(1, c, 1, 1) * 255
        self.std = torch.tensor(data.std, device=device).view(1, c, 1, 1) * 255
        self.x, self.y = data.train.images.to(device), data.train.labels.to(device)
        self.vx, self.vy = data.val.images.to(device), data.val.labels.to(device)

    def epoch(self) -> float:
        start = time.perf_counter()
        self.model.train()
        order = torch.randperm(len(self.y), device=self.device)
        for i in range(0, len(order), self.batch):
            idx = order[i : i + self.batch]
            x = (self.x[idx].float() - self.mean) / self.std
            loss = F.cross_entropy(self.model(x), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.model.eval()
        with torch.no_grad():
            for i in range(0, len(self.vy), self.batch):
                self.model((self.vx[i : i + self.batch].float() - self.mean) / self.std)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


class Interleave(Callback):
    """Runs one hand-written epoch at every cnnbench epoch start and times both sides, in wall
    seconds and in process CPU seconds (all threads: MLflow's logging and system-metrics threads
    count against cnnbench; with ``--threads 1`` CPU time hardly depends on other processes' load)."""

    def __init__(self, data, batch_size: int, lr: float) -> None:
        self.data, self.batch_size, self.lr = data, batch_size, lr
        self.hand: HandLoop | None = None
        self.hand_s: list[tuple[float, float]] = []  # (wall, cpu) per epoch
        self.cnnbench_s: list[tuple[float, float]] = []
        self.mark: tuple[float, float] | None = None

    def on_epoch_start(self, run, epoch: int) -> None:
        now = (time.perf_counter(), time.process_time())
        if self.mark is not None:
            self.cnnbench_s.append((now[0] - self.mark[0], now[1] - self.mark[1]))
        if self.hand is None:  # same initial weights as the cnnbench model
            self.hand = HandLoop(copy.deepcopy(run.model), self.data, self.batch_size, self.lr, run.device)
        cpu = time.process_time()
        wall = self.hand.epoch()
        self.hand_s.append((wall, time.process_time() - cpu))
        self.mark = (time.perf_counter(), time.process_time())


class EvalStart(Callback):
    """First in the list: marks when end-of-run work starts (after the test pass)."""

    def __init__(self) -> None:
        self.at = 0.0

    def on_eval_end(self, run, result) -> None:
        self.at = time.perf_counter()


def measure(config: TrainConfig, timed_epochs: int) -> dict:
    config = config.replace(run={"epochs": timed_epochs + 1, "quiet": True})
    data = api.load_data(api.resolve(config).config)
    start = EvalStart()
    recorded = api.run_callbacks(config)  # what `cnnbench train` records, the MLflow tracker last
    *builders, tracker = recorded
    interleave = Interleave(data, config.optim.batch_size, config.optim.lr)
    result = api.train(config, [start, *builders, interleave, tracker], data=data)
    end_of_run_s = time.perf_counter() - start.at
    hand, ours = interleave.hand_s[1:], interleave.cnnbench_s  # hand epoch i + 1 runs right after interval i
    per_builder = {}
    for cb in builders:
        if isinstance(cb, ArtifactCallback):
            for phase, seconds in cb.seconds.items():
                per_builder[phase] = round(seconds, 3)
    report = {
        "model": config.model.name,
        "dataset": config.data.name,
        "train_images": len(data.train),
        "test_images": len(data.test),
        "batch_size": config.optim.batch_size,
        "device": str(api.resolve_device(config.run.device)),
        "torch_threads": torch.get_num_threads(),
    }
    for k, clock in enumerate(("wall", "cpu")):
        h, o = [x[k] for x in hand], [x[k] for x in ours]
        report[f"hand_epoch_{clock}_s"] = [round(s, 3) for s in h]
        report[f"cnnbench_epoch_{clock}_s"] = [round(s, 3) for s in o]
        report[f"ratio_{clock}_median"] = round(statistics.median(o) / statistics.median(h), 4)
        report[f"ratio_{clock}_paired_median"] = round(statistics.median(a / b for a, b in zip(o, h)), 4)
        report[f"ratio_{clock}_mean"] = round(statistics.mean(o) / statistics.mean(h), 4)
    return {
        **report,
        "test_accuracy": round(result.metrics["test_accuracy"], 4),
        "artifacts_time_s": round(result.metrics.get("artifacts_time_s", 0.0), 3),
        "end_of_run_total_s": round(end_of_run_s, 3),
        "artifact_seconds": per_builder,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per side (>= 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cifar-dir", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--train-size", type=int, help="training subset of the default run (default: all of digits)")
    parser.add_argument("--no-cifar", action="store_true")
    parser.add_argument("--cifar-model", default="lenet5")
    parser.add_argument("--cifar-train", type=int, default=10000, help="training subset (the test set stays 10k)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs must be at least 3 (a median of at least 3 epochs per side)")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="cnnbench-bench-") as tmp:
        run = {"device": args.device, "tracking_uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "bench-engine-overhead"}
        default = TrainConfig().replace(run=run)
        if args.train_size:
            default = default.replace(data={"train_size": args.train_size})
        report = {"default_run": measure(default, args.epochs)}
        print(json.dumps(report["default_run"], indent=2), flush=True)
        if not args.no_cifar:
            cifar = TrainConfig().replace(
                model={"name": args.cifar_model},
                data={"name": "cifar10", "data_dir": str(cifar_dir(args.cifar_dir)), "train_size": args.cifar_train},
                run=run,
            )
            report["cifar10"] = measure(cifar, args.epochs)
            print(json.dumps(report["cifar10"], indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
