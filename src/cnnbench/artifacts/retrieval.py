"""Nearest-neighbour retrieval: does a layer's feature space put images of one class together?

For the first test image of each class, its top-k cosine neighbours among the other test images,
by an intermediate block's features and by the final layer's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cnnbench.artifacts.figures import safe_name, save, tile_figure


def first_of_each_class(labels: torch.Tensor, num_classes: int) -> dict[int, int]:
    """Class -> index of its first test image (classes absent from the test set are left out)."""
    found: dict[int, int] = {}
    for i, y in enumerate(labels.tolist()):
        if y not in found and 0 <= y < num_classes:
            found[y] = i
    return dict(sorted(found.items()))


def cosine_neighbours(features: torch.Tensor, query: int, k: int) -> torch.Tensor:
    """Indices of the ``k`` rows most cosine-similar to row ``query`` (itself excluded), best first."""
    x = F.normalize(features.float().flatten(1), dim=1)
    sims = x @ x[query]
    sims[query] = -float("inf")
    return sims.topk(min(k, len(x) - 1)).indices


def retrieve(layers: Mapping[str, torch.Tensor], labels: torch.Tensor, num_classes: int, k: int) -> dict[str, dict[int, torch.Tensor]]:
    """Layer name -> (query class -> neighbour indices) for the first test image of each class."""
    queries = first_of_each_class(labels, num_classes)
    return {name: {c: cosine_neighbours(feats, q, k) for c, q in queries.items()} for name, feats in layers.items()}


def summarise(neighbours: dict[str, dict[int, torch.Tensor]], labels: torch.Tensor, classes: Sequence[str], k: int) -> dict:
    """Fraction of neighbours sharing the query's class, per layer (mean and per class)."""
    layers = {}
    for name, by_class in neighbours.items():
        per_class = {classes[c]: float((labels[idx] == c).float().mean()) for c, idx in by_class.items()}
        layers[name] = {"same_class_fraction": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
                        "per_class": per_class}
    return {"k": k, "queries": len(next(iter(neighbours.values()), {})), "layers": layers}


def plot_query(images: torch.Tensor, labels: torch.Tensor, query: int, rows: Mapping[str, torch.Tensor], classes: Sequence[str], path: Path) -> Path:
    """One row per layer (labelled on the left): the query image, then its neighbours titled with
    their classes (red when the class differs from the query's)."""
    k = max(len(idx) for idx in rows.values())
    target = int(labels[query])
    tiles, titles, colors = [], [], []
    for idx in rows.values():
        picked = [int(i) for i in idx]
        tiles += [images[query], *(images[i] for i in picked), *([torch.full_like(images[query], 255)] * (k - len(picked)))]
        titles += [f"query: {classes[target]}", *(str(classes[int(labels[i])]) for i in picked), *([""] * (k - len(picked)))]
        colors += ["blue", *("black" if int(labels[i]) == target else "red" for i in picked), *(["black"] * (k - len(picked)))]
    fig = tile_figure(tiles, titles, colors, cols=k + 1, row_labels=list(rows))
    return save(fig, path, tight=False)


def write_retrieval(images: torch.Tensor, labels: torch.Tensor, layers: Mapping[str, torch.Tensor], classes: Sequence[str], k: int, out_dir: Path) -> dict:
    """Write ``<class>.png`` per query class and ``summary.json`` into ``out_dir``; return the summary."""
    labels = labels.cpu()
    neighbours = retrieve(layers, labels, len(classes), k)
    used: set[str] = set()
    for c, q in first_of_each_class(labels, len(classes)).items():
        name = safe_name(classes[c])
        name = name if name not in used else f"{name}_{c}"  # two class names that clean to one file name
        used.add(name)
        plot_query(images, labels, q, {layer: by_class[c] for layer, by_class in neighbours.items()}, classes,
                   out_dir / f"{name}.png")
    summary = summarise(neighbours, labels, classes, k)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
