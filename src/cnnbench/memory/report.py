"""Rows, table and plot of a ``cnnbench memory`` sweep (optimizer x batch size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from cnnbench.memory.measure import Measurement
from cnnbench.memory.predict import Prediction

COLUMNS = ("optimizer", "batch_size", "predicted_peak_mb", "measured_peak_mb", "error_pct", "tracked_peak_mb",
           "parameters_mb", "gradients_mb", "optimizer_state_mb", "input_mb", "activations_mb", "temporary_mb",
           "workspace_mb", "peak_at", "saved_activations_mb", "optimizer_state_size_mb", "eval_peak_mb", "measured_eval_peak_mb",
           "reserved_peak_mb", "device_used_mb", "process_used_mb")


def error_pct(predicted: float, measured: float | None) -> float | None:
    """(predicted - measured) / measured in percent: negative when the prediction is low."""
    if measured is None or measured <= 0:
        return None
    return round(100.0 * (predicted - measured) / measured, 2)


def row(pred: Prediction, meas: Measurement | None = None) -> dict[str, Any]:
    """One CSV / JSON row: the prediction's numbers and, when measured, the measurement's."""
    out: dict[str, Any] = dict.fromkeys(COLUMNS)
    out.update({k: v for k, v in pred.to_dict().items() if k in COLUMNS})
    out["predicted_peak_mb"] = pred.peak_mb
    if meas is not None:
        out.update(measured_peak_mb=meas.peak_mb, error_pct=error_pct(pred.peak_mb, meas.peak_mb),
                   tracked_peak_mb=meas.tracked_peak_mb, measured_eval_peak_mb=meas.eval_peak_mb,
                   reserved_peak_mb=meas.reserved_peak_mb, device_used_mb=meas.device_used_mb,
                   process_used_mb=meas.process_used_mb)
    return out


def _fmt(value: Any, width: int) -> str:
    if value is None:
        return "--".rjust(width)
    if isinstance(value, float):
        return f"{value:{width}.1f}"
    return str(value).rjust(width)


def table(rows: Iterable[dict[str, Any]], *, measured: bool) -> str:
    """Text table: one line per optimizer x batch size; the breakdown columns sum to "predicted"."""
    cols = [("optimizer", "optimizer", 9), ("batch", "batch_size", 6), ("predicted", "predicted_peak_mb", 10)]
    if measured:
        cols += [("measured", "measured_peak_mb", 9), ("error%", "error_pct", 7)]
    cols += [("weights", "parameters_mb", 8), ("grads", "gradients_mb", 8), ("opt-state", "optimizer_state_mb", 9),
             ("input", "input_mb", 7), ("activ.", "activations_mb", 8), ("temp", "temporary_mb", 8),
             ("kernel-ws", "workspace_mb", 9),
             ("saved-act", "saved_activations_mb", 9), ("eval", "eval_peak_mb", 8)]
    lines = ["  ".join(title.rjust(width) if i else title.ljust(width) for i, (title, _, width) in enumerate(cols))
             + "  peak at"]
    for r in rows:
        cells = [str(r["optimizer"]).ljust(cols[0][2])] + [_fmt(r[key], width) for _, key, width in cols[1:]]
        lines.append("  ".join(cells) + f"  {r['peak_at']}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    """Peak memory against batch size, one line per optimizer (predicted solid, measured dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        for optimizer in dict.fromkeys(r["optimizer"] for r in rows):
            mine = sorted((r for r in rows if r["optimizer"] == optimizer), key=lambda r: r["batch_size"])
            xs = [r["batch_size"] for r in mine]
            (line,) = ax.plot(xs, [r["predicted_peak_mb"] for r in mine], marker="o", label=f"{optimizer} predicted")
            if any(r["measured_peak_mb"] is not None for r in mine):
                ax.plot(xs, [r["measured_peak_mb"] for r in mine], marker="x", linestyle="--", color=line.get_color(),
                        label=f"{optimizer} measured")
        ax.set_xlabel("batch size")
        ax.set_ylabel("peak memory of a training step (MiB)")
        ax.set_title(title, fontsize=10)
        if len({r["batch_size"] for r in rows}) > 2:
            ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
