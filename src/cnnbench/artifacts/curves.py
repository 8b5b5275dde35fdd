"""Learning curves: the per-epoch history as a CSV table and a loss/accuracy figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cnnbench.artifacts.figures import plt, save


def write_history_csv(history: list[dict[str, float]], path: Path) -> pd.DataFrame:
    """One row per epoch (column ``epoch`` first), every metric the engine reported."""
    frame = pd.DataFrame(history)
    if "epoch" in frame.columns:
        frame = frame[["epoch", *[c for c in frame.columns if c != "epoch"]]]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


def plot_learning_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Two panels by epoch: train/val loss and train/val accuracy."""
    frame = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            column = f"{split}_{kind}"
            if column in frame.columns and "epoch" in frame.columns:
                ax.plot(frame["epoch"], frame[column], style, label=split, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(kind)
        ax.set_title(kind)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    return save(fig, path)
