"""The fit loop: epochs of steps over device loaders, validation, early stopping, test evaluation.

Pure: it reads a :class:`~cnnbench.events.RunState`, trains ``run.model`` in place and reports
everything through callbacks; it never imports MLflow. Checkpoints go to
``run.artifacts_dir/checkpoints``: ``last.pt`` (what ``--resume`` continues from, see
:mod:`cnnbench.engine.checkpoint`) and, when early stopping is on, ``best.pt`` (the weights of the
best validation accuracy). The state at every epoch end is kept in memory (a CPU copy: cheap) and
written as ``last.pt`` at most every ``CHECKPOINT_EVERY_S`` seconds, after the last epoch, and when
the run is interrupted or fails, so a tracker uploading the staging folder then always finds it,
without a disk write per epoch slowing short epochs down.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnbench.data.augment import AugmentParams
from cnnbench.data.loader import DeviceLoader
from cnnbench.engine import checkpoint, interrupts, precision
from cnnbench.engine.optim import (BUDGET_MARGIN, budget_steps, build_optimizer, build_scheduler, freeze, penalised_parameters, penalty,
                                   steps_per_batch)
from cnnbench.errors import ConfigError, TrainingError
from cnnbench.events import Callback, EvalResult, RunState, dispatch

log = logging.getLogger(__name__)

NAN_CHECK_EVERY = 16  # off CPU, checking the loss every step would stall the device queue
CHECKPOINT_EVERY_S = 60.0  # seconds between last.pt writes during training (see the module docstring)
BUDGET_MEASURE_SHARE = 0.03  # --time-budget: the share of epoch 1 timed (after one warm-up step) ...
BUDGET_MEASURE_STEPS = (3, 50)  # ... at least / at most this many steps


@dataclass
class FitResult:
    history: list[dict[str, float]]
    test: EvalResult
    summary: dict[str, float]


def make_loaders(run: RunState, channels_last: bool = False) -> dict[str, DeviceLoader]:
    cfg, data = run.config, run.data
    common = dict(batch_size=cfg.optim.batch_size, device=run.device, mean=data.mean, std=data.std,
                  seed=cfg.run.seed, channels_last=channels_last)
    return {
        "train": DeviceLoader(data.train, shuffle=True, augmentation=cfg.data.augment,
                              augment_params=AugmentParams.from_config(cfg.data), **common),
        "val": DeviceLoader(data.val, **common),
        "test": DeviceLoader(data.test, **common),
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, split: str, prec: precision.Precision | None = None,
             tta: str = "none") -> EvalResult:
    """Loss (plain cross-entropy, no label smoothing, so runs compare), accuracy and logits of a split;
    ``tta="flip"``: the logits are the mean of each image's and its mirror image's."""
    prec = prec or precision.Precision()
    was_training = model.training
    model.eval()
    logits = []
    try:
        with prec.autocast():
            for x, _ in loader:
                out = model(x).float()
                if tta == "flip":
                    out = (out + model(torch.flip(x, dims=(3,))).float()) / 2
                logits.append(out)
    finally:
        model.train(was_training)
    labels = loader.labels
    if not logits:
        empty = torch.zeros(0, dtype=torch.int64)
        return EvalResult(split, float("nan"), float("nan"), torch.zeros(0, 0), empty, empty)
    out = torch.cat(logits)
    preds = out.argmax(1)
    loss = float(nn.functional.cross_entropy(out, labels))
    acc = float((preds == labels).float().mean())
    return EvalResult(split, loss, acc, out.cpu(), labels.cpu(), preds.cpu())


class Trainer:
    """One run's training state; :func:`fit` is the entry point."""

    def __init__(self, run: RunState, callbacks: list[Callback]) -> None:
        cfg = run.config
        # --time-budget counts from the start of api.train: its phases so far are in the summary metrics
        self.origin = time.perf_counter() - sum(v for k, v in run.summary_metrics.items()
                                                if k.startswith("time_") and k.endswith("_s"))
        self.run, self.callbacks, self.cfg = run, callbacks, cfg
        nhwc = precision.channels_last_for(cfg.run.channels_last, run.device.type, cfg.model.name)
        run.params["memory_format"] = "channels_last" if nhwc else "contiguous"
        if run.device.type == "cpu":
            run.params["cpu_threads"] = precision.cpu_threads()
        self.prec = precision.setup(amp=cfg.run.amp, channels_last=nhwc, device=run.device, notes=run.notes)
        self.model = run.model.to(run.device)
        if self.prec.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loaders = make_loaders(run, self.prec.channels_last)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
        frozen = freeze(self.model, cfg.optim.freeze)
        if frozen:
            run.params["trainable_param_count"] = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.optimizer = build_optimizer(cfg.optim, self.model)
        steps = math.ceil(len(self.loaders["train"]) / cfg.optim.grad_accum)
        self.budget = cfg.run.time_budget
        self.epochs = cfg.run.epochs  # a --time-budget run lowers it once it has measured its speed
        self.plan: dict | None = None  # --time-budget: the chosen length (see plan_budget)
        self.measure: tuple[float, int, int] | None = None  # (time, global step, images) after the warm-up step
        self.speeds: dict[str, float] = {}  # measured by this process (a resumed run keeps its plan)
        self.elapsed_at_plan = 0.0
        self.last_lr = 0.0  # the rate of the last optimizer step
        # a --time-budget run starts on the schedule sized for --epochs; plan_budget rebuilds it for the chosen length
        self.scheduler = build_scheduler(cfg.optim, self.optimizer, epochs=cfg.run.epochs, steps_per_epoch=steps,
                                         total_steps=cfg.run.epochs * steps if self.budget is not None else None)
        self.per_step = steps_per_batch(cfg.optim, budgeted=self.budget is not None)
        if self.budget is not None:
            run.params["time_budget_s"] = self.budget
            spent = time.perf_counter() - self.origin
            if spent >= self.budget:
                raise ConfigError(f"--time-budget {self.budget:g} s was used up before training began ({spent:.1f} s "
                                  f"for imports, data and setup); give a larger budget")
        self.penalised = penalised_parameters(self.model, cfg.optim.penalty_on) if (cfg.optim.l1 or cfg.optim.l2) else []
        self.ckpt_dir = run.artifacts_dir / "checkpoints"
        self.best: dict = {"val_accuracy": -1.0, "epoch": 0}
        self.best_state: dict | None = None
        self.latest: dict | None = None  # CPU copy of the state at the last epoch end
        self.training_done = False  # the epochs are over (last one, or early stopping): test and artifacts remain
        self.written_at = time.perf_counter()
        self.train_time_s = 0.0
        self.train_images = 0
        self.curve_eval_s = 0.0  # --test-every-epoch evaluations, left out of run_time_s
        # on_step_end gets the loss tensor (no device sync unless a listener asks for a float)
        self.step_listeners = [cb for cb in callbacks if type(cb).on_step_end is not Callback.on_step_end]
        run.steps_per_epoch = steps

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict:
        run = self.run
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.prec.state_dict(),
            "epoch": run.epoch,
            "global_step": run.global_step,
            "history": list(run.history),
            "best": dict(self.best),
            "best_model": self.best_state,
            "timing": {"train_time_s": self.train_time_s, "train_images": self.train_images},
            "rng": checkpoint.rng_state(run.device),
            "training_done": self.training_done,
            "budget": self.plan,
        }

    def restore(self, state: dict) -> None:
        checkpoint.check_resumable(state)
        run = self.run
        self.model.load_state_dict(state["model"])
        if state.get("budget"):  # the length chosen when the run measured its speed (not measured again)
            self.apply_plan(state["budget"], done_steps=0)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        self.prec.load_state_dict(state.get("scaler"))
        run.epoch = run.start_epoch = int(state["epoch"])
        run.global_step = int(state["global_step"])
        run.history = list(state["history"])
        self.best = dict(state.get("best") or self.best)
        self.best_state = state.get("best_model")
        if self.best_state is not None:
            checkpoint.save(self.ckpt_dir / checkpoint.BEST, self.best_state)
        timing = state.get("timing") or {}
        self.train_time_s = float(timing.get("train_time_s", 0.0))
        self.train_images = int(timing.get("train_images", 0))
        if "rng" in state:
            checkpoint.set_rng_state(state["rng"], run.device)
        self.training_done = bool(state.get("training_done")) or run.epoch >= self.epochs

    def snapshot(self) -> None:
        """Keep a CPU copy of the current state (what the next ``last.pt`` will hold)."""
        self.latest = _cpu_copy(self.state())

    def save_last(self) -> Path | None:
        """Write the last snapshot as ``last.pt``; None when there is none yet."""
        if self.latest is None:
            return None
        self.written_at = time.perf_counter()
        return checkpoint.save(self.ckpt_dir / checkpoint.LAST, self.latest)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume_state: dict | None) -> FitResult:
        run, cfg = self.run, self.cfg
        if resume_state is not None:
            self.restore(resume_state)
        else:
            self.init_from_data()
        self.snapshot()  # an interrupt in the first epoch still leaves something to resume
        dispatch(self.callbacks, "on_run_start", run)
        # A run interrupted after its epochs (testing, artifacts, model logging) resumes right here.
        epoch = run.epoch
        while not self.training_done and epoch < self.epochs:  # a --time-budget run sets self.epochs in epoch 1
            epoch += 1
            epoch_started = time.perf_counter()
            dispatch(self.callbacks, "on_epoch_start", run, epoch)
            metrics = self.epoch(epoch)
            run.epoch = epoch
            run.history.append({"epoch": epoch, **metrics})
            self.track_best(epoch, metrics["val_accuracy"])
            stop = bool(cfg.run.patience) and epoch - self.best["epoch"] >= cfg.run.patience
            self.training_done = stop or epoch >= self.epochs
            self.snapshot()
            # the first epoch of a process is always written (and uploaded by the tracker): a run killed
            # without any cleanup (SIGKILL) can then be resumed; later ones at most every CHECKPOINT_EVERY_S
            due = (self.training_done or epoch == run.start_epoch + 1
                   or time.perf_counter() - self.written_at >= CHECKPOINT_EVERY_S)
            last = self.save_last() if due else None
            dispatch(self.callbacks, "on_epoch_end", run, epoch, metrics)
            if last is not None:
                dispatch(self.callbacks, "on_checkpoint", run, last)
            if self.speeds and epoch == run.start_epoch + 1 and not self.training_done:
                self.replan_budget(time.perf_counter() - epoch_started)
                self.training_done = epoch >= self.epochs
            if stop:
                note = (f"early stopping after epoch {epoch}: val_accuracy has not improved for {cfg.run.patience} "
                        f"epochs; testing the best epoch ({self.best['epoch']})")
                run.notes.append(note)
                log.info(note)
                break
        if cfg.run.patience and self.best_state is not None:
            checkpoint.save(self.ckpt_dir / checkpoint.BEST, self.best_state)  # kept as an artifact
            self.model.load_state_dict(self.best_state)
        test = evaluate(self.model, self.loaders["test"], "test", self.prec, cfg.data.tta)
        dispatch(self.callbacks, "on_eval_end", run, test)
        summary = {
            "test_loss": test.loss,
            "test_accuracy": test.accuracy,
            "fit_time_s": self.train_time_s,
            "train_images_per_s": self.train_images / self.train_time_s if self.train_time_s > 0 else 0.0,
            "best_epoch": float(self.best["epoch"]),
            "epochs_completed": float(run.epoch),
        }
        if self.plan is not None:
            summary["budget_last_step_lr"] = float(self.last_lr)  # the rate the last step trained with
        dispatch(self.callbacks, "on_run_end", run, summary)
        return FitResult(run.history, test, summary)

    def init_from_data(self) -> None:
        """A model that sets weights from the training images (``init_from_data``, e.g. fast_cnn's
        patch whitening) gets its ``init_images`` first training images (default all), normalised and
        unaugmented, before epoch 1."""
        hook = getattr(self.model, "init_from_data", None)
        if hook is None:
            return
        loader = self.loaders["train"]
        wanted = getattr(self.model, "init_images", None) or len(self.run.data.train.labels)
        batches, seen = [], 0
        for x, _ in DeviceLoader(self.run.data.train, batch_size=loader.batch_size, device=self.run.device,
                                 mean=self.run.data.mean, std=self.run.data.std):
            batches.append(x)
            seen += len(x)
            if seen >= wanted:
                break
        if batches:
            hook(torch.cat(batches))

    def epoch(self, epoch: int) -> dict[str, float]:
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trains with (onecycle: its start)
        t0 = time.perf_counter()
        train_loss, train_acc, n = self.train_epoch(epoch)
        epoch_time = time.perf_counter() - t0
        self.train_time_s += epoch_time
        self.train_images += n
        if self.scheduler is not None and not self.per_step:
            self.scheduler.step()
        val = evaluate(self.model, self.loaders["val"], "val", self.prec, self.cfg.data.tta)
        curve = {}
        if self.cfg.run.test_every_epoch:  # the time-to-accuracy curve: its own cost is left out of run_time_s
            t1 = time.perf_counter()
            curve["epoch_test_accuracy"] = evaluate(self.model, self.loaders["test"], "test", self.prec,
                                                    self.cfg.data.tta).accuracy
            self.curve_eval_s += time.perf_counter() - t1
            curve["run_time_s"] = time.time() - _process_start() - self.curve_eval_s
            curve["curve_eval_s"] = self.curve_eval_s
        return {
            **curve,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val.loss,
            "val_accuracy": val.accuracy,
            "lr": lr,
            "epoch_time_s": epoch_time,
            "epoch_images_per_s": n / epoch_time if epoch_time > 0 else 0.0,
        }

    def track_best(self, epoch: int, val_accuracy: float) -> None:
        if val_accuracy <= self.best["val_accuracy"]:
            return
        self.best = {"val_accuracy": val_accuracy, "epoch": epoch}
        if self.cfg.run.patience:
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def train_epoch(self, epoch: int) -> tuple[float, float, int]:
        """One pass over the training set; returns (mean loss, accuracy, images seen).

        With ``--grad-accum N`` each micro-batch's loss is weighted by its share of the images of
        its group of N batches, so a step's gradient is the mean over exactly those images (as one
        batch of that size would give), also for a shorter last group.
        """
        run, cfg, model, loader = self.run, self.cfg, self.model, self.loaders["train"]
        model.train()
        loader.set_epoch(epoch)
        accum, batch = cfg.optim.grad_accum, cfg.optim.batch_size
        total_images, num_batches = loader.num_images, len(loader)
        check_every = 1 if run.device.type == "cpu" else NAN_CHECK_EVERY
        loss_sum = torch.zeros((), device=run.device)
        correct = torch.zeros((), device=run.device, dtype=torch.int64)
        nonfinite = torch.zeros((), device=run.device, dtype=torch.bool)
        n = 0
        self.optimizer.zero_grad(set_to_none=True)
        started = time.perf_counter()
        for i, (x, y) in enumerate(loader):
            group_start = (i // accum) * accum
            group_end = min(group_start + accum, num_batches)
            group_images = min(group_end * batch, total_images) - group_start * batch
            with self.prec.autocast():
                out = model(x)
                loss = self.criterion(out, y)
            pen = penalty(self.penalised, cfg.optim.l1, cfg.optim.l2)
            total = loss if pen is None else loss + pen
            nonfinite |= ~torch.isfinite(total.detach())
            if (i + 1) % check_every == 0 or i + 1 == num_batches:
                self._check_finite(nonfinite, total, epoch, i)
            self.prec.backward(total * (len(y) / group_images))
            if i + 1 == group_end:
                self.prec.step(self.optimizer)
                self.last_lr = self.optimizer.param_groups[0]["lr"]
                self.optimizer.zero_grad(set_to_none=True)
                if self.per_step and self.scheduler is not None:
                    self.scheduler.step()
                run.global_step += 1
                if self.step_listeners:
                    detached = loss.detach()
                    for cb in self.step_listeners:
                        cb.on_step_end(run, run.global_step, detached)
            loss_sum += loss.detach().float() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            n += len(y)
            if i + 1 == group_end and self.budget is not None:
                if self.plan is None:
                    self.measure_budget(x, n, started, last=i + 1 == num_batches)
                if self.plan is not None and run.global_step >= self.plan["total_steps"]:
                    break  # the chosen length ends inside this epoch
        return float(loss_sum) / max(n, 1), float(correct) / max(n, 1), n

    # -- --time-budget -------------------------------------------------------------------------
    def measure_budget(self, x: torch.Tensor, images: int, epoch_started: float, *, last: bool) -> None:
        """Called after each optimizer step until the run has a plan: the first step is a warm-up
        (not timed), the next ones (BUDGET_MEASURE_SHARE of the epoch, within BUDGET_MEASURE_STEPS)
        measure the training speed; then :meth:`plan_budget`. An epoch shorter than that is timed
        whole (its first step included)."""
        run = self.run
        if self.measure is None and not last:
            self._sync()
            self.measure = (time.perf_counter(), run.global_step, images)
            return
        low, high = BUDGET_MEASURE_STEPS
        wanted = min(high, max(low, math.ceil(BUDGET_MEASURE_SHARE * run.steps_per_epoch)))
        if self.measure is not None and run.global_step - self.measure[1] < wanted and not last:
            return
        self._sync()
        t0, _, images0 = self.measure if self.measure is not None else (epoch_started, 0, 0)
        seconds = max(time.perf_counter() - t0, 1e-9)
        self.plan_budget(x, (images - images0) / seconds)

    def plan_budget(self, x: torch.Tensor, images_per_s: float) -> None:
        """Choose the run's length from the measured training speed and an evaluation speed timed on
        the batch ``x`` (see :meth:`choose_length`); refuse a budget too small for one more step."""
        self.speeds = {"images_per_s": images_per_s, "eval_images_per_s": self._eval_images_per_s(x),
                       "epoch_overhead_s": 0.0}
        if not self.choose_length():
            raise TrainingError(self._too_small())

    def replan_budget(self, epoch_s: float) -> None:
        """After the process's first epoch: what it cost beyond its predicted steps and evaluation
        (logging, snapshots, checkpoints: ``budget_epoch_overhead_s``) is added to every later
        epoch's cost and the length chosen again; no room for another step ends training here."""
        predicted = self.run.steps_per_epoch * self._step_s() + self._epoch_eval_s()
        self.speeds["epoch_overhead_s"] = max(0.0, epoch_s - predicted)
        if not self.choose_length():
            self.apply_plan({"total_steps": self.run.global_step, "epochs": self.run.epoch}, done_steps=self.run.global_step)

    def _step_s(self) -> float:
        return self.cfg.optim.batch_size * self.cfg.optim.grad_accum / self.speeds["images_per_s"]

    def _epoch_eval_s(self) -> float:
        data, rate = self.run.data, self.speeds["eval_images_per_s"]
        return (len(data.val.labels) + (len(data.test.labels) if self.cfg.run.test_every_epoch else 0)) / rate

    def choose_length(self) -> bool:
        """The most steps that fit in what is left of the budget (:func:`cnnbench.engine.optim.
        budget_steps`), ``--epochs`` the upper bound; logged (``budget_*`` summary metrics, a note) and
        the schedule sized to it. False when not one more step fits."""
        run, cfg, speeds = self.run, self.cfg, self.speeds
        elapsed = time.perf_counter() - self.origin
        spe = max(1, run.steps_per_epoch)
        max_steps = cfg.run.epochs * spe
        total = max_steps if run.global_step >= max_steps else budget_steps(
            budget_s=self.budget, elapsed_s=elapsed, step_s=self._step_s(),
            epoch_eval_s=self._epoch_eval_s() + speeds["epoch_overhead_s"],
            final_eval_s=len(run.data.test.labels) / speeds["eval_images_per_s"], steps_per_epoch=spe,
            done_steps=run.global_step, max_steps=max_steps)
        self.elapsed_at_plan = elapsed
        if total == 0:
            return False
        self.apply_plan({"total_steps": total, "epochs": math.ceil(total / spe)}, done_steps=run.global_step)
        run.summary_metrics.update({
            "budget_steps": float(total), "budget_epochs": total / spe,
            "budget_measured_images_per_s": speeds["images_per_s"],
            "budget_eval_images_per_s": speeds["eval_images_per_s"],
            "budget_epoch_overhead_s": speeds["epoch_overhead_s"],
            "budget_elapsed_s": elapsed, "budget_planned_at_step": float(run.global_step),
        })
        note = (f"--time-budget {self.budget:g} s: measured {speeds['images_per_s']:.0f} training images/s; "
                f"at {elapsed:.1f} s chose {total} steps ({total / spe:.2f} epochs)")
        run.notes[:] = [n for n in run.notes if not n.startswith("--time-budget")] + [note]
        log.info(note)
        return True

    def _too_small(self) -> str:
        need = self._step_s() + self._epoch_eval_s() + len(self.run.data.test.labels) / self.speeds["eval_images_per_s"]
        return (f"--time-budget {self.budget:g} s is too small: {self.elapsed_at_plan:.1f} s had passed after "
                f"{self.run.global_step} steps at {self.speeds['images_per_s']:.0f} images/s, and one more step "
                f"with the evaluations needs {need:.1f} s more; give at least "
                f"{math.ceil((self.elapsed_at_plan + need) / (1 - BUDGET_MARGIN)) + 1} s")

    def apply_plan(self, plan: dict, *, done_steps: int) -> None:
        """Train ``plan["total_steps"]`` steps: onecycle / cosine rebuilt for that length (from the
        base rate) and moved on past the ``done_steps`` already taken."""
        self.plan = dict(plan)
        self.epochs = min(self.cfg.run.epochs, int(plan["epochs"]))
        if self.cfg.optim.scheduler not in ("onecycle", "cosine"):
            return
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("initial_lr", group["lr"])
        self.scheduler = build_scheduler(self.cfg.optim, self.optimizer, epochs=self.epochs,
                                         steps_per_epoch=self.run.steps_per_epoch, total_steps=int(plan["total_steps"]))
        import warnings

        with warnings.catch_warnings():  # stepping without optimizer steps: the steps were taken already
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(done_steps):
                self.scheduler.step()

    @torch.no_grad()
    def _eval_images_per_s(self, x: torch.Tensor) -> float:
        """Evaluation speed (test-time augmentation included) on ``x``: the second of two passes."""
        model = self.model
        model.eval()
        try:
            seconds = 0.0
            for _ in range(2):
                self._sync()
                t0 = time.perf_counter()
                with self.prec.autocast():
                    model(x)
                    if self.cfg.data.tta == "flip":
                        model(torch.flip(x, dims=(3,)))
                self._sync()
                seconds = time.perf_counter() - t0
        finally:
            model.train()
        return len(x) / max(seconds, 1e-9)

    def _sync(self) -> None:
        if self.run.device.type == "cuda":
            torch.cuda.synchronize(self.run.device)

    def _check_finite(self, nonfinite: torch.Tensor, total: torch.Tensor, epoch: int, i: int) -> None:
        if bool(nonfinite):
            raise TrainingError(
                f"non-finite loss ({float(total.detach())}) at epoch {epoch}, batch {i + 1}: training diverged; "
                f"try a lower --lr (now {self.cfg.optim.lr}), a different --optimizer or --amp off"
            )


def fit(run: RunState, callbacks: list[Callback], *, resume_state: dict | None = None) -> FitResult:
    """Train ``run.model``; return history, test evaluation and the summary metrics.

    ``resume_state`` (a ``last.pt`` checkpoint, see :func:`cnnbench.engine.checkpoint.load`)
    continues a run at the epoch after the one it saved. Any exception is reported to the
    callbacks' ``on_failure`` (``KILLED`` for Ctrl-C / SIGTERM, else ``FAILED``) and re-raised.
    """
    trainer: Trainer | None = None
    try:
        trainer = Trainer(run, callbacks)
        return trainer.fit(resume_state)
    except KeyboardInterrupt as err:
        interrupts.acknowledge()  # cleanup starts: further signals only wait for it
        _save_for_resume(trainer)
        if trainer is not None and trainer.training_done:
            run.notes.append(f"interrupted after the last epoch ({run.epoch}), while testing or writing artifacts; "
                             f"checkpoints/last.pt holds epoch {run.epoch} and --resume runs the test pass and artifacts")
        else:
            run.notes.append(f"interrupted during epoch {run.epoch + 1}; checkpoints/last.pt holds epoch {run.epoch}")
        dispatch(callbacks, "on_failure", run, err, "KILLED")
        raise
    except BaseException as err:
        _save_for_resume(trainer)
        dispatch(callbacks, "on_failure", run, err, "FAILED")
        raise


def _process_start() -> float:
    """When this process started (epoch seconds): the origin of ``run_time_s``."""
    import psutil

    return psutil.Process().create_time()


def _cpu_copy(obj):
    """Tensors copied to CPU inside nested dicts / lists / tuples; other values as they are."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def _save_for_resume(trainer: Trainer | None) -> None:
    """Write the last epoch-end snapshot before the callbacks hear of the failure (the tracker
    uploads it then); a failure to write must not hide the original error."""
    if trainer is None:
        return
    try:
        trainer.save_last()
    except Exception as err:
        log.warning("could not write the resume checkpoint: %s", err)
