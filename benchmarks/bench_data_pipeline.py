"""Training images/s on CIFAR-10 with flip-crop: cnnbench's DeviceLoader vs the tutorial pipeline.

    python benchmarks/bench_data_pipeline.py [--cifar-dir DIR] [--batches 60] [--repeats 3] [--threads N]

DIR holds ``cifar-10-batches-py/``; without it CIFAR-10 is materialised once from ../shared with
``prepare_cifar10.py`` into ~/.cache/cnnbench-bench/cifar10. Both sides train the same model
(``strided_cnn`` from the registry, else a LeNet-sized stand-in) with the same optimiser, batch
128, on this CPU in one process; only the data path differs:

- tutorial: a torchvision-style dataset returning PIL images, ``Compose([RandomCrop(32, padding=4),
  RandomHorizontalFlip(), ToTensor(), Normalize])`` and a ``DataLoader`` (best of num_workers 0, 2);
- cnnbench: the uint8 split in memory, ``DeviceLoader`` shuffling, flip-crop and normalising whole
  batches (contiguous, and channels-last);
- bare loop: one prepared batch fed again and again (channels-last): the ceiling any data path can
  reach with this model, so ``cnnbench_channels_last_share_of_bare_loop`` near 1 means the data
  path costs almost nothing.

Each measurement times ``--batches`` training steps after 3 warm-up steps; the median of
``--repeats`` is reported with the ratio, the CIFAR-10 load time and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

BATCH = 128
WARMUP_STEPS = 3
SHARED = Path(__file__).resolve().parents[2] / "shared"


def cifar_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    dest = Path.home() / ".cache" / "cnnbench-bench" / "cifar10"
    script = SHARED / "data" / "prepare_cifar10.py"
    if not script.is_file():
        sys.exit(f"no --cifar-dir given and {script} is absent: pass a folder holding cifar-10-batches-py/")
    subprocess.run([sys.executable, str(script), str(dest)], check=True, stdout=subprocess.DEVNULL)
    return dest


def make_model() -> tuple[str, nn.Module]:
    from cnnbench.models import build_model
    from cnnbench.registry import MODELS

    if "strided_cnn" in MODELS.names():
        return "strided_cnn", build_model("strided_cnn", num_classes=10, in_channels=3, image_size=(32, 32))
    stand_in = nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 10))
    return "lenet-sized stand-in", stand_in


class PilCifar(torch.utils.data.Dataset):
    """What the tutorials do: one PIL image per item, transformed per sample."""

    def __init__(self, images_hwc, labels, transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def cpu_seconds() -> float:
    """CPU time of this process and its live children (DataLoader workers): robust to other load."""
    import psutil

    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def train_steps(model: nn.Module, batches, steps: int, channels_last: bool = False) -> tuple[float, float]:
    """(images per wall second, images per CPU second) over ``steps`` steps after the warm-up ones."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    it = iter(batches)
    start, cpu_start, seen = 0.0, 0.0, 0
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            start, cpu_start, seen = time.perf_counter(), cpu_seconds(), 0
        x, y = next(it)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start), seen / (cpu_seconds() - cpu_start)


def endless(make_iter):
    while True:
        yield from make_iter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar-dir")
    parser.add_argument("--batches", type=int, default=60, help="timed training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, = cores); "
                        "1 gives steadier numbers on a shared machine")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from torchvision import transforms

    from cnnbench.data.cifar import CIFAR10
    from cnnbench.data.loader import DeviceLoader
    from cnnbench.data.pipeline import channel_stats

    root = cifar_dir(args.cifar_dir)
    t0 = time.perf_counter()
    bundle = CIFAR10.load(data_dir=root, seed=0, download=False)
    load_s = time.perf_counter() - t0
    mean, std = channel_stats(bundle.train.images)
    name, model = make_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    tutorial_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                      transforms.ToTensor(), transforms.Normalize(mean, std)])
    hwc = bundle.train.images.permute(0, 2, 3, 1).numpy()
    dataset = PilCifar(hwc, bundle.train.labels.numpy(), tutorial_tf)

    def tutorial(workers: int):
        return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                                           persistent_workers=workers > 0, drop_last=True)

    def cnnbench_loader():
        return DeviceLoader(bundle.train, batch_size=BATCH, device=torch.device("cpu"), mean=mean, std=std,
                            shuffle=True, augmentation="flip-crop", seed=0)

    loaders = {"tutorial_w0": tutorial(0), "tutorial_w2": tutorial(2), "cnnbench": cnnbench_loader(),
               "cnnbench_cl": cnnbench_loader()}
    streams = {k: endless(lambda v=v: iter(v)) for k, v in loaders.items()}
    fixed = next(iter(cnnbench_loader()))  # the ceiling: one batch again and again, no data cost at all
    streams["bare_loop_cl"] = endless(lambda: iter([fixed]))
    results: dict[str, list[float]] = {k: [] for k in streams}
    per_cpu_s: dict[str, list[float]] = {k: [] for k in streams}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every variant alike
        for key, stream in streams.items():
            model.load_state_dict(initial)
            cl = key.endswith("_cl")
            model = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            wall, cpu = train_steps(model, stream, args.batches, channels_last=cl)
            results[key].append(wall)
            per_cpu_s[key].append(cpu)
    data_only = {"cnnbench": _data_only(cnnbench_loader()), "tutorial_w0": _data_only(tutorial(0))}
    median = {k: statistics.median(v) for k, v in results.items()}
    best_tutorial = max(median["tutorial_w0"], median["tutorial_w2"])
    report = {
        "model": name, "batch_size": BATCH, "timed_steps": args.batches, "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "train_images_per_s": {k: round(v) for k, v in median.items()},
        "ratio_cnnbench_vs_best_tutorial": round(median["cnnbench"] / best_tutorial, 2),
        "ratio_cnnbench_channels_last_vs_best_tutorial": round(median["cnnbench_cl"] / best_tutorial, 2),
        "ratio_bare_loop_channels_last_vs_best_tutorial": round(median["bare_loop_cl"] / best_tutorial, 2),
        "cnnbench_channels_last_share_of_bare_loop": round(median["cnnbench_cl"] / median["bare_loop_cl"], 2),
        "train_images_per_cpu_s": {k: round(statistics.median(v)) for k, v in per_cpu_s.items()},
        "data_only_images_per_s": {k: round(v) for k, v in data_only.items()},
        "cifar10_load_s": round(load_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "all_runs_images_per_s": {k: [round(x) for x in v] for k, v in results.items()},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def _data_only(loader, batches: int = 100) -> float:
    """Images/s of the data path alone (no model), one pass of ``batches`` batches."""
    start, seen = time.perf_counter(), 0
    for i, (x, y) in enumerate(loader):
        seen += len(y)
        if i + 1 == batches:
            break
    return seen / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
