"""The artifact builders as engine callbacks: each writes its files under ``run.artifacts_dir``
(uploaded by the tracker at the end) and puts its numbers into ``run.summary_metrics``.

Which of them a run gets is declared in :mod:`cnnbench.artifacts` (the registry). Seconds spent in end-of-run work are added to the ``artifacts_time_s``
summary metric (and kept per builder in ``.seconds`` for benchmarks).
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import time
from contextlib import contextmanager
from typing import Iterator

import torch

from cnnbench.artifacts import memory
from cnnbench.config import TrainConfig
from cnnbench.engine.probes import collect_features, evaluating
from cnnbench.events import Callback, EvalResult, RunState
from cnnbench.models.base import first_conv_weight


class _OnFirstUse:
    """A builder module imported when a builder first uses it: a run whose figure artifacts are off never
    imports matplotlib (about a second of a run's start)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(f"cnnbench.artifacts.{self._name}"), attr)


curves, evaluation, kernels, latent, retrieval = map(_OnFirstUse, ("curves", "evaluation", "kernels", "latent", "retrieval"))

log = logging.getLogger(__name__)


class ArtifactCallback(Callback):
    """Base: timing of end-of-run work, and failures that never mask the run's own error."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timed(self, run: RunState, phase: str, end_of_run: bool = True) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self.seconds[phase] = self.seconds.get(phase, 0.0) + spent
            if end_of_run:
                run.summary_metrics["artifacts_time_s"] = run.summary_metrics.get("artifacts_time_s", 0.0) + spent

    def on_failure(self, run: RunState, error: BaseException, status: str) -> None:
        try:
            self.salvage(run)
        except Exception as err:  # the tracker after us must still see the failure
            log.warning("could not write %s artifacts of the failed run: %s", type(self).__name__, err)

    def salvage(self, run: RunState) -> None:
        """What is still worth writing when the run fails or is interrupted (default: nothing)."""


class RunRecord(ArtifactCallback):
    """``config.json`` (the resolved configuration, enough for ``cnnbench train --config``) and
    ``model/summary.txt`` at run start."""

    def __init__(self, summary: bool = True) -> None:
        super().__init__()
        self.summary = summary

    @classmethod
    def from_config(cls, config: TrainConfig) -> "RunRecord":
        return cls(summary=config.artifacts.summary)

    def on_run_start(self, run: RunState) -> None:
        path = run.artifacts_dir / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        from cnnbench.tracking.store import recorded_config  # the tracking URI's password masked

        path.write_text(json.dumps(recorded_config(run.config), indent=2, default=str))
        if self.summary:
            target = run.artifacts_dir / "model" / "summary.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(model_summary_text(run))


def model_summary_text(run: RunState) -> str:
    """The ``cnnbench info`` table of the run's model on its input size and batch size.

    torchinfo walks a CPU copy (it moves what it walks to its device) in eval mode with the RNG
    state forked, so neither the model being trained nor the training random stream changes.
    """
    from cnnbench.models.summary import summary_text

    first = next(run.model.parameters(), None)
    model = run.model if first is None or first.device.type == "cpu" else copy.deepcopy(run.model).cpu()
    with torch.random.fork_rng(devices=[]), evaluating(model):
        cfg = run.config
        memory = {"device": run.device.type if run.device.type in ("cpu", "cuda") else "cpu",
                  "num_classes": len(run.data.classes), "grad_accum": cfg.optim.grad_accum, "amp": cfg.run.amp,
                  "channels_last": run.params.get("memory_format") == "channels_last", "lr": cfg.optim.lr, "momentum": cfg.optim.momentum}
        text = summary_text(model, (run.data.channels, *run.data.image_size), batch_size=cfg.optim.batch_size,
                            optimizers=tuple(dict.fromkeys([cfg.optim.optimizer, "sgd", "momentum", "adam"])),
                            memory_options=memory)
    return text + "\n"


class LearningCurves(ArtifactCallback):
    """``metrics/history.csv`` and ``plots/learning_curves.png`` from the run's epoch history."""

    @classmethod
    def from_config(cls, config: TrainConfig) -> "LearningCurves":
        return cls()

    def on_run_end(self, run: RunState, summary: dict[str, float]) -> None:
        with self.timed(run, "curves"):
            self.salvage(run)

    def salvage(self, run: RunState) -> None:
        if run.history:
            curves.write_history_csv(run.history, run.artifacts_dir / "metrics" / "history.csv")
            curves.plot_learning_curves(run.history, run.artifacts_dir / "plots" / "learning_curves.png")


class TestEvaluation(ArtifactCallback):
    """Confusion matrix, classification report, majority baseline, the predictions grid, and every
    test example's prediction (``eval/test_predictions.npz``, for the study report's McNemar test)."""

    def __init__(self, confusion: bool = True, predictions: bool = True) -> None:
        super().__init__()
        self.confusion = confusion
        self.predictions = predictions

    @classmethod
    def from_config(cls, config: TrainConfig) -> "TestEvaluation":
        return cls(confusion=config.artifacts.confusion, predictions=config.artifacts.predictions)

    def on_eval_end(self, run: RunState, result: EvalResult) -> None:
        if result.split != "test":
            return
        classes = run.data.classes
        out = run.artifacts_dir / "eval"
        with self.timed(run, "evaluation"):
            run.summary_metrics.update(evaluation.majority_baseline(run.data.train.labels, result.labels, len(classes)))
            run.summary_metrics["test_examples"] = float(len(result.labels))
            evaluation.write_test_predictions(run.data.test.images, result.labels, result.predictions,
                                              out / evaluation.PREDICTIONS_FILE)
            if self.confusion:
                evaluation.write_confusion(result.labels, result.predictions, classes, out)
                report = evaluation.write_classification_report(result.labels, result.predictions, classes, out)
                run.summary_metrics["test_macro_f1"] = float(report["macro avg"]["f1-score"])
            if self.predictions:
                evaluation.plot_predictions(run.data.test.images, result.labels, result.predictions, classes,
                                            out / "predictions.png")


class KernelSnapshots(ArtifactCallback):
    """``kernels/conv1_start.png``, ``conv1_end.png`` and ``conv1_epoch<NNN>.png`` every N epochs."""

    def __init__(self, every: int = 0) -> None:
        super().__init__()
        self.every = every

    @classmethod
    def from_config(cls, config: TrainConfig) -> "KernelSnapshots":
        return cls(every=config.artifacts.kernel_every)

    def _write(self, run: RunState, name: str) -> None:
        weight = first_conv_weight(run.model)
        if weight is not None:
            kernels.save_kernel_grid(weight, run.artifacts_dir / "kernels" / f"{name}.png")

    def on_run_start(self, run: RunState) -> None:
        if run.start_epoch == 0:  # a resumed run already has its start kernels
            self._write(run, "conv1_start")

    def on_epoch_end(self, run: RunState, epoch: int, metrics: dict[str, float]) -> None:
        if self.every and epoch % self.every == 0:
            self._write(run, f"conv1_epoch{epoch:03d}")

    def on_eval_end(self, run: RunState, result: EvalResult) -> None:
        with self.timed(run, "kernels"):
            self._write(run, "conv1_end")


class LatentMaps(ArtifactCallback):
    """``latent/tsne_<stage>.png|csv``: features of a fixed test subset (the classifier's input, or
    ``--tsne-layer``'s output) at the ``--tsne-epochs`` stages: ``begin`` (epoch 0, before
    training), ``middle``, ``epochNNN`` and ``end`` (the final, restored-best model). A stage the
    run never reaches (early stopping, fewer epochs) is named in a note instead."""

    def __init__(self, samples: int = 2000, epochs: str = "0,middle,end", layer: str | None = None,
                 perplexity: float = 30.0, iterations: int | None = None) -> None:
        super().__init__()
        self.samples = samples
        self.stages = [p.strip() for p in epochs.split(",")]
        self.layer = layer
        self.perplexity = perplexity
        self.iterations = latent.TSNE_ITERATIONS if iterations is None else iterations
        self.indices: torch.Tensor | None = None
        self.made: set[str] = set()

    @classmethod
    def from_config(cls, config: TrainConfig) -> "LatentMaps":
        a = config.artifacts
        return cls(samples=a.tsne_samples, epochs=a.tsne_epochs, layer=a.tsne_layer, perplexity=a.tsne_perplexity,
                   iterations=a.tsne_iterations)

    @staticmethod
    def middle_epoch(epochs: int) -> int:
        return max(1, (epochs + 1) // 2)

    def _epochs(self, run: RunState) -> dict[int, str]:
        """Training epoch -> stage name of the maps made after it."""
        out: dict[int, str] = {}
        for stage in self.stages:
            if stage == "middle":
                out[self.middle_epoch(run.config.run.epochs)] = "middle"
            elif stage.isdigit() and int(stage) > 0:
                out.setdefault(int(stage), f"epoch{int(stage):03d}")
        return out

    def _map(self, run: RunState, stage: str, title: str) -> None:
        if self.indices is None:
            self.indices = torch.as_tensor(latent.stratified_subset(run.data.test.labels, self.samples))
        if len(self.indices) < latent.MIN_POINTS:
            run.notes.append(f"t-SNE {stage} skipped: {len(self.indices)} test images are too few")
            return
        test = run.data.test
        which, modules = ((), (self.layer,)) if self.layer else (("penultimate",), ())
        feats = collect_features(run.model, test.images[self.indices], mean=run.data.mean, std=run.data.std,
                                 device=run.device, which=which, modules=modules)[self.layer or "penultimate"]
        coords = latent.tsne_embed(feats, seed=run.config.run.seed, perplexity=self.perplexity,
                                   iterations=self.iterations)
        latent.write_tsne(coords, test.labels[self.indices], self.indices.tolist(), run.data.classes,
                          run.artifacts_dir / "latent" / f"tsne_{stage}", title)
        self.made.add(stage)

    def _what(self) -> str:
        return f"{self.layer} outputs" if self.layer else "penultimate features"

    def on_run_start(self, run: RunState) -> None:
        if run.start_epoch == 0 and "0" in self.stages:
            with self.timed(run, "tsne_begin", end_of_run=False):
                self._map(run, "begin", f"{self._what()} before training (epoch 0)")

    def on_epoch_end(self, run: RunState, epoch: int, metrics: dict[str, float]) -> None:
        stage = self._epochs(run).get(epoch)
        if stage is not None:
            with self.timed(run, f"tsne_{stage}", end_of_run=False):
                self._map(run, stage, f"{self._what()} after epoch {epoch}")

    def on_eval_end(self, run: RunState, result: EvalResult) -> None:
        if result.split != "test":
            return
        for epoch, stage in sorted(self._epochs(run).items()):
            if epoch > run.epoch and stage not in self.made:
                why = "early stopping" if run.epoch < run.config.run.epochs else f"the run has {run.config.run.epochs} epochs"
                run.notes.append(f"t-SNE map {stage} (after epoch {epoch}) not made: training ended at epoch "
                                 f"{run.epoch} ({why})")
        if "end" in self.stages:
            with self.timed(run, "tsne_end"):
                self._map(run, "end", f"{self._what()} of the final model (epoch {run.epoch})")


class Retrieval(ArtifactCallback):
    """``retrieval/<class>.png`` and ``retrieval/summary.json`` (intermediate block, or the
    ``--retrieval-layer`` module flattened, vs output); metric ``retrieval_<layer>_same_class``."""

    def __init__(self, k: int = 10, layer: str | None = None) -> None:
        super().__init__()
        self.k = k
        self.layer = layer

    @classmethod
    def from_config(cls, config: TrainConfig) -> "Retrieval":
        return cls(k=config.artifacts.retrieval_k, layer=config.artifacts.retrieval_layer)

    def on_eval_end(self, run: RunState, result: EvalResult) -> None:
        if result.split != "test" or len(result.labels) < 2:
            return
        with self.timed(run, "retrieval"):
            test = run.data.test
            if self.layer:  # a named module's output, flattened without pooling
                inter = collect_features(run.model, test.images, mean=run.data.mean, std=run.data.std,
                                         device=run.device, which=(), modules=(self.layer,))[self.layer]
            else:
                inter = collect_features(run.model, test.images, mean=run.data.mean, std=run.data.std,
                                         device=run.device, which=("intermediate",))["intermediate"]
            layers = {self.layer or "intermediate": inter, "output": result.logits.float()}
            summary = retrieval.write_retrieval(test.images, result.labels, layers, run.data.classes, self.k,
                                                run.artifacts_dir / "retrieval")
            for name, stats in summary["layers"].items():
                run.summary_metrics[f"retrieval_{name}_same_class"] = stats["same_class_fraction"]


class MemoryMonitor(ArtifactCallback):
    """``memory/memory.csv`` every N optimizer steps (and at start and end); peak metrics."""

    def __init__(self, every: int = 50) -> None:
        super().__init__()
        self.every = max(1, every)
        self.log: memory.MemoryLog | None = None
        self.started = 0.0

    @classmethod
    def from_config(cls, config: TrainConfig) -> "MemoryMonitor":
        return cls(every=config.artifacts.memory_every)

    def sample(self, run: RunState) -> None:
        if self.log is None:
            self.log = memory.MemoryLog(cuda=memory.cuda_bytes(run.device) is not None)
            self.started = time.perf_counter()
        self.log.add(memory.memory_row(run.global_step, run.epoch, time.perf_counter() - self.started,
                                       memory.rss_bytes(), memory.cuda_bytes(run.device)))

    def on_run_start(self, run: RunState) -> None:
        self.sample(run)

    def on_step_end(self, run: RunState, step: int, loss) -> None:
        if step % self.every == 0:
            self.sample(run)

    def on_run_end(self, run: RunState, summary: dict[str, float]) -> None:
        with self.timed(run, "memory"):
            self.salvage(run)

    def salvage(self, run: RunState) -> None:
        self.sample(run)
        assert self.log is not None
        self.log.write(run.artifacts_dir / "memory" / "memory.csv")
        run.summary_metrics.update(self.log.peaks())
