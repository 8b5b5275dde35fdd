"""Memory samples: process RSS always, CUDA allocator figures when training on a GPU.

On CPU a row holds only the RSS columns; on CUDA it adds allocated / reserved / peak-allocated MB
(``torch.cuda`` counters of the training device).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import torch

MB = 1024.0 * 1024.0
RSS_COLUMNS = ("step", "epoch", "elapsed_s", "rss_mb")
CUDA_COLUMNS = ("gpu_allocated_mb", "gpu_reserved_mb", "gpu_peak_allocated_mb", "gpu_peak_reserved_mb")


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def cuda_bytes(device: torch.device) -> dict[str, int] | None:
    """The CUDA allocator's counters for ``device``, or ``None`` when it is not a CUDA device."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return {
        "allocated": torch.cuda.memory_allocated(device),
        "reserved": torch.cuda.memory_reserved(device),
        "peak_allocated": torch.cuda.max_memory_allocated(device),
        "peak_reserved": torch.cuda.max_memory_reserved(device),
    }


def memory_row(step: int, epoch: int, elapsed_s: float, rss: int, cuda: dict[str, int] | None) -> dict[str, float]:
    """One CSV row in MB; the CUDA columns only when ``cuda`` counters are given."""
    row = {"step": step, "epoch": epoch, "elapsed_s": round(elapsed_s, 3), "rss_mb": round(rss / MB, 2)}
    if cuda is not None:
        row.update({f"gpu_{key}_mb": round(value / MB, 2) for key, value in cuda.items()})
    return row


@dataclass
class MemoryLog:
    """Rows sampled during a run, written as ``memory.csv``; peaks become summary metrics."""

    cuda: bool
    rows: list[dict[str, float]] = field(default_factory=list)

    @property
    def columns(self) -> tuple[str, ...]:
        return RSS_COLUMNS + (CUDA_COLUMNS if self.cuda else ())

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(row)

    def peaks(self) -> dict[str, float]:
        """``peak_rss_mb`` and, on CUDA, ``gpu_peak_allocated_mb`` / ``gpu_peak_reserved_mb``."""
        if not self.rows:
            return {}
        out = {"peak_rss_mb": max(r["rss_mb"] for r in self.rows)}
        if self.cuda:
            out["gpu_peak_allocated_mb"] = max(r["gpu_peak_allocated_mb"] for r in self.rows)
            out["gpu_peak_reserved_mb"] = max(r["gpu_peak_reserved_mb"] for r in self.rows)
        return out

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self.columns))
            writer.writeheader()
            writer.writerows(self.rows)
        return path
