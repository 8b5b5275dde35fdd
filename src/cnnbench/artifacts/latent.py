"""t-SNE maps of penultimate activations on a fixed, stratified test subset.

Cost is bounded so the map never dominates a run: features are reduced to at most 50 dimensions
with PCA first, the subset is capped (``--tsne-samples``), and the optimisation runs a modest,
fixed number of iterations with Barnes-Hut.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from cnnbench.artifacts.figures import as_numpy, plt, save

PCA_DIMS = 50
# sklearn's default is 1000, of which the first 250 are the early-exaggeration phase; 100 more
# keep trustworthiness within 0.005 of 500 iterations on 2,000 points at 70% of the cost
TSNE_ITERATIONS = 350
SUBSET_SEED = 0  # fixed on purpose: every run and every epoch maps the same test images
MIN_POINTS = 5


def stratified_subset(labels: torch.Tensor, size: int) -> np.ndarray:
    """Sorted indices of a class-stratified subset of ``size`` images (all of them if fewer)."""
    from cnnbench.data.pipeline import stratified_indices

    if size >= len(labels):
        return np.arange(len(labels))
    _, picked = stratified_indices(labels, None, SUBSET_SEED, count=size)
    return picked


def tsne_embed(features, seed: int = 0, *, perplexity: float = 30.0, iterations: int = TSNE_ITERATIONS) -> np.ndarray:
    """(N, D) features -> (N, 2) t-SNE coordinates (PCA to <= 50 dims first); the perplexity is
    capped at (N - 1) / 3 (scikit-learn refuses more)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = as_numpy(features).astype(np.float32).reshape(len(features), -1)
    n = len(x)
    if n < MIN_POINTS:
        raise ValueError(f"t-SNE needs at least {MIN_POINTS} points; got {n}")
    if x.shape[1] > PCA_DIMS and n > PCA_DIMS:
        x = PCA(n_components=PCA_DIMS, random_state=seed).fit_transform(x)
    perplexity = float(min(perplexity, (n - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=iterations,
                random_state=seed, n_jobs=1)
    # One thread: OpenMP spinning on a busy or small machine made t-SNE many times slower.
    with threadpool_limits(limits=1):
        return tsne.fit_transform(x).astype(np.float32)


def write_tsne(coords: np.ndarray, labels, indices: Sequence[int], classes: Sequence[str], stem: Path, title: str) -> pd.DataFrame:
    """Write ``<stem>.csv`` (test index, label, class, x, y) and ``<stem>.png`` (one colour per class)."""
    y = as_numpy(labels).astype(int)
    frame = pd.DataFrame({
        "test_index": np.asarray(indices, dtype=int),
        "label": y,
        "class": [classes[i] for i in y],
        "x": coords[:, 0],
        "y": coords[:, 1],
    })
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for k, name in enumerate(classes):
        mask = y == k
        if mask.any():
            ax.scatter(coords[mask, 0], coords[mask, 1], s=6, color=cmap(k % cmap.N), label=str(name))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=2, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), ncols=1 if len(classes) <= 20 else 2)
    save(fig, stem.with_suffix(".png"))
    return frame
