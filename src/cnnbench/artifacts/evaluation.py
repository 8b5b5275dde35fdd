"""Test-set evaluation tables and figures: confusion matrix, classification report, the
majority-class baseline and the grid of the first test predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

# matplotlib and pandas are imported by the tables and figures that use them: a run with --no-confusion
# --no-predictions writes its test predictions and majority baseline without either
from cnnbench.artifacts.arrays import as_numpy

if TYPE_CHECKING:
    import pandas as pd


PREDICTIONS_FILE = "test_predictions.npz"


def write_test_predictions(images: torch.Tensor, labels, predictions, path: Path) -> Path:
    """Every test example's label and prediction (``eval/test_predictions.npz``, ~4 bytes per
    example), so two runs can be compared example by example after the fact (McNemar's test in the
    study report), with a hash of the test images: only runs that saw the same test set pair."""
    import hashlib

    labels, predictions = as_numpy(labels), as_numpy(predictions)
    dtype = np.uint16 if max(int(labels.max(initial=0)), int(predictions.max(initial=0))) < 2**16 else np.int64
    digest = hashlib.blake2b(np.ascontiguousarray(images.cpu().numpy()).tobytes(), digest_size=16).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, labels=labels.astype(dtype), predictions=predictions.astype(dtype),
                        images_digest=np.array(digest))
    return path


def read_test_predictions(path: Path) -> tuple[np.ndarray, str]:
    """(per-example correctness as booleans, the test images' digest) of a predictions file."""
    with np.load(path, allow_pickle=False) as f:
        return f["labels"] == f["predictions"], str(f["images_digest"])


def confusion_tables(labels, predictions, classes: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(counts, row-normalised) confusion matrices; rows are true classes, columns predicted.

    Every class appears on both axes even when absent from the test set (its row is then zeros).
    """
    import pandas as pd
    from sklearn.metrics import confusion_matrix

    names = list(classes)
    k = len(names)
    counts = confusion_matrix(as_numpy(labels), as_numpy(predictions), labels=np.arange(k))
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    index = pd.Index(names, name="true")
    columns = pd.Index(names, name="predicted")
    return pd.DataFrame(counts, index=index, columns=columns), pd.DataFrame(normalised, index=index, columns=columns)


def write_confusion(labels, predictions, classes: Sequence[str], out_dir: Path) -> pd.DataFrame:
    """Write ``confusion_matrix.csv`` (counts), ``confusion_matrix_normalized.csv`` and the
    two-panel ``confusion_matrix.png`` into ``out_dir``; return the counts."""
    from cnnbench.artifacts.figures import plt, save

    counts, normalised = confusion_tables(labels, predictions, classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts.to_csv(out_dir / "confusion_matrix.csv")
    normalised.to_csv(out_dir / "confusion_matrix_normalized.csv", float_format="%.4f")
    k = len(classes)
    side = max(4.0, 0.4 * k + 1.5)  # inches per panel
    label_in = 0.45 + 0.075 * max(len(str(c)) for c in classes)  # room for tick labels and axis title
    width, height = 2 * side + 2 * label_in + 1.0, side + label_in + 0.4
    fig, axes = plt.subplots(1, 2, figsize=(width, height))
    # a fixed layout instead of bbox_inches="tight": the tight pass draws every annotation twice
    fig.subplots_adjust(left=label_in / width, right=1 - 0.9 / width, bottom=label_in / height, top=1 - 0.4 / height,
                        wspace=label_in / side)
    annotate = k <= 30
    for ax, table, title, fmt in ((axes[0], counts, "counts", "d"), (axes[1], normalised, "row-normalised", ".2f")):
        values = table.to_numpy()
        image = ax.imshow(normalised.to_numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(k), labels=list(classes), rotation=90 if k > 10 else 0)
        ax.set_yticks(range(k), labels=list(classes))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        if annotate:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if normalised.iat[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=axes, fraction=0.03, pad=0.02)
    save(fig, out_dir / "confusion_matrix.png", tight=False)
    return counts


def write_classification_report(labels, predictions, classes: Sequence[str], out_dir: Path) -> dict:
    """Per-class precision, recall, F1 and support as ``classification_report.json`` and ``.txt``."""
    from sklearn.metrics import classification_report

    y, p = as_numpy(labels), as_numpy(predictions)
    common = dict(labels=np.arange(len(classes)), target_names=[str(c) for c in classes], zero_division=0)
    report = classification_report(y, p, output_dict=True, **common)
    text = classification_report(y, p, digits=4, **common)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classification_report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "classification_report.txt").write_text(text)
    return report


def majority_baseline(train_labels, test_labels, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 on test of always predicting the most frequent training class."""
    from sklearn.dummy import DummyClassifier
    from sklearn.metrics import accuracy_score, f1_score

    y_train, y_test = as_numpy(train_labels), as_numpy(test_labels)
    dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(y_train), 1)), y_train)
    guess = dummy.predict(np.zeros((len(y_test), 1)))
    return {
        "baseline_accuracy": float(accuracy_score(y_test, guess)),
        "baseline_macro_f1": float(f1_score(y_test, guess, average="macro", labels=np.arange(num_classes), zero_division=0)),
    }


def plot_predictions(images: torch.Tensor, labels, predictions, classes: Sequence[str], path: Path, count: int = 25) -> Path:
    """The first ``count`` (default 25) uint8 (N, C, H, W) images in a square grid, each titled
    ``GT:<class> P:<class>`` (red when wrong)."""
    from cnnbench.artifacts.figures import save, tile_figure

    n = min(count, len(images))
    cols = int(np.ceil(np.sqrt(count)))
    y, p = as_numpy(labels), as_numpy(predictions)
    fig = tile_figure([images[i] for i in range(n)], [f"GT:{classes[y[i]]} P:{classes[p[i]]}" for i in range(n)],
                      ["black" if y[i] == p[i] else "red" for i in range(n)], cols)
    return save(fig, path, tight=False)
