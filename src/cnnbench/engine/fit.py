"""The fit loop: epochs of steps over device loaders, validation, early stopping, test evaluation.

Pure: it reads a :class:`~cnnbench.events.RunState`, trains ``run.model`` in place and reports
everything through callbacks. Checkpoints go to ``run.artifacts_dir/checkpoints`` (``last.pt``
every epoch for resume; ``best.pt`` when early stopping is on).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnbench.data.loader import DeviceLoader
from cnnbench.engine.optim import build_optimizer, build_scheduler, steps_per_batch
from cnnbench.errors import TrainingError
from cnnbench.events import Callback, EvalResult, RunState, dispatch
from cnnbench.models.base import penalty_parameters


@dataclass
class FitResult:
    history: list[dict[str, float]]
    test: EvalResult
    summary: dict[str, float]


def make_loaders(run: RunState) -> dict[str, DeviceLoader]:
    cfg, data = run.config, run.data
    common = dict(batch_size=cfg.optim.batch_size, device=run.device, mean=data.mean, std=data.std, seed=cfg.run.seed)
    return {
        "train": DeviceLoader(data.train, shuffle=True, augmentation=cfg.data.augment, **common),
        "val": DeviceLoader(data.val, **common),
        "test": DeviceLoader(data.test, **common),
    }


def penalty(model: nn.Module, l1: float, l2: float, on: str) -> torch.Tensor | None:
    """L1 (sum |w|) and L2 (sum w^2) penalties on the marked parameters or on every weight."""
    if l1 == 0 and l2 == 0:
        return None
    params = penalty_parameters(model) if on == "head" else [p for n, p in model.named_parameters() if p.dim() > 1]
    total = 0.0
    if l1:
        total = total + l1 * sum(p.abs().sum() for p in params)
    if l2:
        total = total + l2 * sum(p.pow(2).sum() for p in params)
    return total


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, criterion: nn.Module, split: str) -> EvalResult:
    was_training = model.training
    model.eval()
    logits = []
    for x, _ in loader:
        logits.append(model(x).float())
    model.train(was_training)
    out = torch.cat(logits) if logits else torch.zeros(0)
    labels = loader.labels
    loss = float(criterion(out, labels)) if len(labels) else float("nan")
    preds = out.argmax(1)
    acc = float((preds == labels).float().mean()) if len(labels) else float("nan")
    return EvalResult(split, loss, acc, out.cpu(), labels.cpu(), preds.cpu())


def save_checkpoint(path: Path, run: RunState, optimizer, scheduler, extra: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": run.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": run.epoch,
        "global_step": run.global_step,
        "history": run.history,
        "torch_rng": torch.get_rng_state(),
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interrupt never leaves a half-written checkpoint


def fit(run: RunState, callbacks: list[Callback], *, resume_state: dict | None = None) -> FitResult:
    """Train ``run.model``; return history, test evaluation and the summary metrics."""
    cfg = run.config
    model = run.model.to(run.device)
    loaders = make_loaders(run)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    accum = cfg.optim.grad_accum
    optimizer = build_optimizer(cfg.optim, model)
    steps = math.ceil(len(loaders["train"]) / accum)
    scheduler = build_scheduler(cfg.optim, optimizer, epochs=cfg.run.epochs, steps_per_epoch=steps)
    per_step = steps_per_batch(cfg.optim)
    ckpt_dir = run.artifacts_dir / "checkpoints"
    best = {"val_accuracy": -1.0, "epoch": 0}
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if scheduler is not None and resume_state.get("scheduler"):
            scheduler.load_state_dict(resume_state["scheduler"])
        run.epoch = run.start_epoch = int(resume_state["epoch"])
        run.global_step = int(resume_state["global_step"])
        run.history = list(resume_state["history"])
        best = dict(resume_state.get("best", best))
        if resume_state.get("torch_rng") is not None:
            torch.set_rng_state(resume_state["torch_rng"])
    train_time = 0.0
    train_images = 0
    try:
        dispatch(callbacks, "on_run_start", run)
        for epoch in range(run.epoch + 1, cfg.run.epochs + 1):
            dispatch(callbacks, "on_epoch_start", run, epoch)
            t0 = time.perf_counter()
            train_loss, train_acc, n = _train_epoch(run, loaders["train"], epoch, criterion, optimizer, scheduler if per_step else None, callbacks)
            epoch_time = time.perf_counter() - t0
            train_time += epoch_time
            train_images += n
            if scheduler is not None and not per_step:
                scheduler.step()
            val = evaluate(model, loaders["val"], criterion, "val")
            metrics = {
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "val_loss": val.loss,
                "val_accuracy": val.accuracy,
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_time_s": epoch_time,
                "epoch_images_per_s": n / epoch_time if epoch_time > 0 else 0.0,
            }
            run.epoch = epoch
            run.history.append({"epoch": epoch, **metrics})
            improved = val.accuracy > best["val_accuracy"]
            if improved:
                best = {"val_accuracy": val.accuracy, "epoch": epoch}
            if cfg.run.patience and improved:
                torch.save(model.state_dict(), _mkdir(ckpt_dir) / "best.pt")
            save_checkpoint(ckpt_dir / "last.pt", run, optimizer, scheduler, {"best": best})
            dispatch(callbacks, "on_epoch_end", run, epoch, metrics)
            dispatch(callbacks, "on_checkpoint", run, ckpt_dir / "last.pt")
            if cfg.run.patience and epoch - best["epoch"] >= cfg.run.patience:
                run.notes.append(f"early stopping at epoch {epoch}: no val_accuracy gain for {cfg.run.patience} epochs")
                break
        if cfg.run.patience and (ckpt_dir / "best.pt").exists():
            model.load_state_dict(torch.load(ckpt_dir / "best.pt", map_location=run.device))
        test = evaluate(model, loaders["test"], criterion, "test")
        dispatch(callbacks, "on_eval_end", run, test)
        summary = {
            "test_loss": test.loss,
            "test_accuracy": test.accuracy,
            "fit_time_s": train_time,
            "train_images_per_s": train_images / train_time if train_time > 0 else 0.0,
            "best_epoch": float(best["epoch"]),
            "epochs_completed": float(run.epoch),
        }
        dispatch(callbacks, "on_run_end", run, summary)
        return FitResult(run.history, test, summary)
    except KeyboardInterrupt as err:
        dispatch(callbacks, "on_failure", run, err, "KILLED")
        raise
    except BaseException as err:
        dispatch(callbacks, "on_failure", run, err, "FAILED")
        raise


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _train_epoch(run, loader, epoch, criterion, optimizer, step_scheduler, callbacks):
    cfg = run.config
    model = run.model
    model.train()
    loader.set_epoch(epoch)
    accum = cfg.optim.grad_accum
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.int64)
    n = 0
    optimizer.zero_grad(set_to_none=True)
    num_batches = len(loader)
    for i, (x, y) in enumerate(loader):
        out = model(x)
        loss = criterion(out, y)
        pen = penalty(model, cfg.optim.l1, cfg.optim.l2, cfg.optim.penalty_on)
        total = loss if pen is None else loss + pen
        if not torch.isfinite(total):
            raise TrainingError(
                f"non-finite loss ({float(total)}) at epoch {epoch}, batch {i + 1}: training diverged; "
                f"try a lower --lr (now {cfg.optim.lr}) or a different optimizer"
            )
        (total / accum).backward()
        if (i + 1) % accum == 0 or i + 1 == num_batches:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step_scheduler is not None:
                step_scheduler.step()
            run.global_step += 1
            dispatch(callbacks, "on_step_end", run, run.global_step, float(loss.detach()))
        loss_sum += loss.detach() * len(y)
        correct += (out.detach().argmax(1) == y).sum()
        n += len(y)
    return float(loss_sum) / max(n, 1), float(correct) / max(n, 1), n
