"""Console progress: one line per epoch (a progress bar is added by the engine on a terminal)."""

from __future__ import annotations

import sys

from cnnbench.events import Callback, RunState


class ConsoleProgress(Callback):
    def __init__(self, *, quiet: bool = False, stream=None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr

    def on_run_start(self, run: RunState) -> None:
        if not self.quiet:
            cfg = run.config
            print(
                f"cnnbench: training {cfg.model.name} on {cfg.data.name} ({len(run.data.train)} train / "
                f"{len(run.data.val)} val / {len(run.data.test)} test images) on {run.device}",
                file=self.stream,
            )

    def on_epoch_end(self, run: RunState, epoch: int, metrics: dict[str, float]) -> None:
        if self.quiet:
            return
        print(
            f"epoch {epoch}/{run.config.run.epochs}  train_loss {metrics['train_loss']:.4f}  "
            f"train_acc {metrics['train_accuracy']:.4f}  val_loss {metrics['val_loss']:.4f}  "
            f"val_acc {metrics['val_accuracy']:.4f}  {metrics.get('epoch_images_per_s', 0):.0f} img/s",
            file=self.stream, flush=True,
        )

    def on_run_end(self, run: RunState, summary: dict[str, float]) -> None:
        if not self.quiet:
            print(
                f"test_loss {summary['test_loss']:.4f}  test_accuracy {summary['test_accuracy']:.4f}  "
                f"fit_time {summary['fit_time_s']:.1f}s",
                file=self.stream,
            )
