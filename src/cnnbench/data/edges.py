"""``edges``: the synthetic edge-detection set of the inductive-bias study, generated in memory.

Each image is a flat background (intensity in [0, 0.2]) with bright bands (edge intensity in
[0.25, 1], width 1-4 px). Classes: horizontal, vertical, none; ``num_classes=4`` adds diagonal
(bands turned by 30, 45, 120 or 135 degrees), 5 adds both (horizontal and vertical bands).
``possible_edge_location_ratio < 1`` confines training edges to the first part of the image while
validation and test edges fall anywhere, or with ``shifted_eval=unseen`` only in the rest of the
image, as the homework (a train/test domain shift; the bundle then carries its own ``val`` split).
``eval_per_class=N`` makes validation and test separately generated sets of N per class, fixed
whatever ``data_per_class`` is (the homework's 50-per-class validation set), so training uses
exactly ``data_per_class`` images per class. ``use_permutation`` applies one fixed pixel permutation (by seed) to every image.
Train/val images and the permutation follow the seed; test images are the same for every seed.
Generation is vectorised (a loop over edges per image, never over images).
"""

from __future__ import annotations

import math
from pathlib import Path

from cnnbench.errors import ConfigError
from cnnbench.registry import DatasetInfo, DatasetPlugin, FakeData, Option

CLASS_ORDER = ("horizontal", "vertical", "none", "diagonal", "both")
DIAGONAL_ANGLES_DEG = (30.0, 45.0, 120.0, 135.0)
TEST_SEED = 0  # test images do not move with --seed (the permutation does: it must match train)
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2, "permutation": 3}

OPTIONS = (
    Option("num_classes", "int", 3, "3: horizontal, vertical, none; 4 adds diagonal; 5 adds both", choices=(3, 4, 5)),
    Option("data_per_class", "int", 1000, "images per class in each split (train, test, and val if shifted)", low=1),
    Option("spatial_resolution", "int", 28, "image side in pixels", low=8, high=512),
    Option("min_edge_width", "int", 1, "narrowest edge in pixels", low=1),
    Option("max_edge_width", "int", 4, "widest edge in pixels", low=1),
    Option("min_edge_intensity", "float", 0.25, "darkest edge (0-1)", low=0.0, high=1.0),
    Option("max_edge_intensity", "float", 1.0, "brightest edge (0-1)", low=0.0, high=1.0),
    Option("min_background_intensity", "float", 0.0, "darkest background (0-1)", low=0.0, high=1.0),
    Option("max_background_intensity", "float", 0.2, "brightest background (0-1)", low=0.0, high=1.0),
    Option("num_horizontal_edge", "int", 1, "horizontal bands per horizontal (and both) image", low=1, high=16),
    Option("num_vertical_edge", "int", 1, "vertical bands per vertical (and both) image", low=1, high=16),
    Option("num_diagonal_edge", "int", 1, "bands per diagonal image", low=1, high=16),
    Option("possible_edge_location_ratio", "float", 1.0,
           "below 1: training edges only in this leading fraction of the image; val/test anywhere", low=0.01, high=1.0),
    Option("use_permutation", "bool", False, "apply one fixed random pixel permutation to every image"),
    Option("shifted_eval", "str", "anywhere", "with possible_edge_location_ratio < 1: where validation/test edges "
           "fall: anywhere, or unseen (only in the part training never sees, as the homework)",
           choices=("anywhere", "unseen")),
    Option("eval_per_class", "int", 0, "images per class of a separately generated validation set and of the test "
           "set, the same for every data_per_class (the homework: 50); 0: data_per_class each, validation held "
           "out of train", low=0),
)
DEFAULTS = {o.name: o.default for o in OPTIONS}


def _check(o: dict) -> None:
    """Cross-option checks that single-option bounds cannot express."""
    for low, high in (("min_edge_width", "max_edge_width"), ("min_edge_intensity", "max_edge_intensity"),
                      ("min_background_intensity", "max_background_intensity")):
        if o[low] > o[high]:
            raise ConfigError(f"edges: {low} ({o[low]}) must not exceed {high} ({o[high]})")
    if o["max_edge_width"] >= o["spatial_resolution"] - 2:
        raise ConfigError(f"edges: max_edge_width must be below spatial_resolution - 2 "
                          f"({o['spatial_resolution'] - 2}); got {o['max_edge_width']}")
    if int(o["possible_edge_location_ratio"] * o["spatial_resolution"]) < 2:
        raise ConfigError(f"edges: possible_edge_location_ratio {o['possible_edge_location_ratio']} leaves no room "
                          f"for training edges at spatial_resolution {o['spatial_resolution']}; use a larger ratio")
    if (o["shifted_eval"] == "unseen" and o["possible_edge_location_ratio"] < 1.0
            and int(o["possible_edge_location_ratio"] * o["spatial_resolution"]) >= o["spatial_resolution"] - 1):
        raise ConfigError(f"edges: shifted_eval=unseen leaves no unseen rows with possible_edge_location_ratio "
                          f"{o['possible_edge_location_ratio']}; use a smaller ratio")


def _generator(seed: int, stream: str):
    import numpy as np
    import torch

    state = np.random.SeedSequence([seed, _SPLIT_STREAM[stream]]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def _bands(n: int, k: int, o: dict, hi: int, gen, *, diagonal: bool = False, lo: int = 1):
    """Start/end rows (N, K) of ``k`` bands per image inside rows [lo, hi), and their intensities."""
    import torch

    top = o["max_edge_width"]
    if diagonal:  # as in the study: a turned band looks wider, so narrow it by sqrt(2)
        top = max(o["min_edge_width"], int(top / math.sqrt(2)))
    width = torch.randint(o["min_edge_width"], top + 1, (n, k), generator=gen)
    start = torch.randint(lo, hi, (n, k), generator=gen)
    end = torch.minimum(start + width, torch.tensor(hi))  # never empty: start <= hi - 1
    lo_i, hi_i = o["min_edge_intensity"], o["max_edge_intensity"]
    intensity = lo_i + (hi_i - lo_i) * torch.rand((n, k), generator=gen, dtype=torch.float64)
    return start, end, intensity


def _paint(images, coord, start, end, intensity):
    """Set pixels whose ``coord`` (broadcast to (N, R, R)) lies in [start, end) of each band."""
    import torch

    for j in range(start.shape[1]):
        inside = (coord >= start[:, j, None, None]) & (coord < end[:, j, None, None])
        images = torch.where(inside, intensity[:, j, None, None], images)
    return images


def _class_images(kind: str, n: int, o: dict, hi: int, gen, lo: int = 1):
    """(N, R, R) float64 images in [0, 1] of one class, bands starting in [lo, hi)."""
    import torch

    r = o["spatial_resolution"]
    lo_b, hi_b = o["min_background_intensity"], o["max_background_intensity"]
    background = lo_b + (hi_b - lo_b) * torch.rand((n, 1, 1), generator=gen, dtype=torch.float64)
    images = background.expand(n, r, r).clone()
    rows = torch.arange(r, dtype=torch.float64)[None, :, None]
    cols = torch.arange(r, dtype=torch.float64)[None, None, :]
    if kind in ("horizontal", "both"):
        images = _paint(images, rows, *_bands(n, o["num_horizontal_edge"], o, hi, gen, lo=lo))
    if kind in ("vertical", "both"):
        images = _paint(images, cols, *_bands(n, o["num_vertical_edge"], o, hi, gen, lo=lo))
    if kind == "diagonal":
        start, end, intensity = _bands(n, o["num_diagonal_edge"], o, hi, gen, diagonal=True, lo=lo)
        for j in range(start.shape[1]):
            pick = torch.randint(0, len(DIAGONAL_ANGLES_DEG), (n,), generator=gen)
            angle = torch.deg2rad(torch.tensor(DIAGONAL_ANGLES_DEG, dtype=torch.float64)[pick])[:, None, None]
            c = r / 2.0  # rotate a horizontal band about the image centre (pixel centres at +0.5)
            turned = c + torch.cos(angle) * (rows + 0.5 - c) - torch.sin(angle) * (cols + 0.5 - c)
            images = _paint(images, turned.floor(), start[:, j:j + 1], end[:, j:j + 1], intensity[:, j:j + 1])
    return images


def _split(split: str, o: dict, seed: int, permutation):
    import torch

    from cnnbench.data.bundle import Split

    r = o["spatial_resolution"]
    n = o["eval_per_class"] if split != "train" and o["eval_per_class"] else o["data_per_class"]
    shift = o["possible_edge_location_ratio"] < 1.0
    seen = int(o["possible_edge_location_ratio"] * r)  # training edges start in [1, seen) and end before it
    lo, hi = 1, r - 1
    if shift and split == "train":
        hi = seen
    elif shift and o["shifted_eval"] == "unseen":
        lo = seen  # only where training never put an edge
    gen = _generator(TEST_SEED if split == "test" else seed, split)
    kinds = CLASS_ORDER[: o["num_classes"]]
    images = torch.cat([_class_images(kind, n, o, hi, gen, lo=lo) for kind in kinds])
    if permutation is not None:
        images = images.reshape(len(images), r * r)[:, permutation].reshape(len(images), r, r)
    pixels = (images * 255.0).round_().clamp_(0, 255).to(torch.uint8)[:, None]
    labels = torch.arange(len(kinds)).repeat_interleave(n)
    return Split(pixels, labels)


def load(*, data_dir: Path | None = None, seed: int = 0, download: bool = True, **options):
    import torch

    from cnnbench.data.bundle import DatasetBundle

    o = {**DEFAULTS, **options}
    _check(o)
    r = o["spatial_resolution"]
    permutation = torch.randperm(r * r, generator=_generator(seed, "permutation")) if o["use_permutation"] else None
    own_val = o["possible_edge_location_ratio"] < 1.0 or o["eval_per_class"] > 0
    val = _split("val", o, seed, permutation) if own_val else None
    return DatasetBundle(train=_split("train", o, seed, permutation), test=_split("test", o, seed, permutation),
                         classes=CLASS_ORDER[: o["num_classes"]], val=val)


def describe(**options) -> DatasetInfo:
    o = {**DEFAULTS, **options}
    size = o["data_per_class"] * o["num_classes"]
    test = (o["eval_per_class"] or o["data_per_class"]) * o["num_classes"]
    r = o["spatial_resolution"]
    return DatasetInfo(1, r, r, o["num_classes"], CLASS_ORDER[: o["num_classes"]], size, test)


def write_fake(root: Path, n: int = 6) -> FakeData:
    """Generated, so no files: the options of a tiny set (``n`` images per class and split)."""
    info = describe(data_per_class=n)
    return FakeData(train=info.train_size, test=info.test_size, options={"data_per_class": n})


EDGES = DatasetPlugin(
    load=load,
    describe=describe,
    description="synthetic edges of the inductive-bias study, optional location shift and pixel permutation (generated)",
    options=OPTIONS,
    write_fake=write_fake,
)
