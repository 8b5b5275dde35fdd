"""Console progress as a callback: a tqdm bar per epoch on a terminal, one line per epoch, the test
result at the end; nothing with ``quiet``."""

from __future__ import annotations

import sys
import time

from cnnbench.events import Callback, RunState

BAR_UPDATE_EVERY = 10  # optimizer steps between postfix updates (each one reads the loss: a device sync)


class ConsoleProgress(Callback):
    def __init__(self, *, quiet: bool = False, stream=None, bar: bool | None = None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.bar_enabled = (not quiet and self.stream.isatty()) if bar is None else bar
        self._bar = None
        self._loss_sum = 0.0
        self._updates = 0
        self._t0 = 0.0

    def on_run_start(self, run: RunState) -> None:
        if not self.quiet:
            cfg = run.config
            print(
                f"cnnbench: training {cfg.model.name} on {cfg.data.name} ({len(run.data.train)} train / "
                f"{len(run.data.val)} val / {len(run.data.test)} test images) on {run.device}",
                file=self.stream,
            )

    def on_epoch_start(self, run: RunState, epoch: int) -> None:
        if not self.bar_enabled:
            return
        from tqdm import tqdm

        self._bar = tqdm(total=run.steps_per_epoch or None, desc=f"epoch {epoch}/{run.config.run.epochs}",
                         unit="step", leave=False, dynamic_ncols=True, file=self.stream)
        self._loss_sum, self._updates, self._t0 = 0.0, 0, time.perf_counter()

    def on_step_end(self, run: RunState, step: int, loss) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        if self._bar.n % BAR_UPDATE_EVERY == 0 or self._bar.n == self._bar.total:
            self._loss_sum += float(loss)
            self._updates += 1
            images = self._bar.n * run.config.optim.batch_size * run.config.optim.grad_accum
            self._bar.set_postfix(loss=f"{self._loss_sum / self._updates:.4f}",
                                  img_s=f"{images / max(time.perf_counter() - self._t0, 1e-9):.0f}",
                                  refresh=self._bar.n == self._bar.total)

    def on_epoch_end(self, run: RunState, epoch: int, metrics: dict[str, float]) -> None:
        self._close()
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

    def on_failure(self, run: RunState, error: BaseException, status: str) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
