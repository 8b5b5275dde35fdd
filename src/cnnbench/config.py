"""The run configuration: frozen nested dataclasses, validated before any run is created.

``TrainConfig.flat_params()`` is what MLflow logs: every setting under its snake_case CLI name,
plugin options as ``model.<key>`` / ``data.<key>``. ``to_dict``/``from_dict`` round-trip the
``config.json`` artifact so ``cnnbench train --config config.json`` reproduces a run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnbench.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda", "mps")
PENALTY_TARGETS = ("head", "all")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lenet5"
    options: dict[str, Any] = field(default_factory=dict)  # resolved against the plugin's declaration
    kernel_size: int | None = None  # None: the model's own default (or it takes none)


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None  # None: $CNNBENCH_DATA or the per-user cache folder
    val_split: float = 0.1  # fraction of train held out for validation (stratified, by seed)
    train_size: int | None = None  # stratified subset of the remaining train images
    image_size: int | None = None  # resize every split to S x S
    augment: str = "none"  # none | flip-crop | strong
    download: bool = True


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 64
    momentum: float = 0.9  # sgd-family momentum (momentum/nesterov), rmsprop momentum is 0 unless set
    weight_decay: float = 0.0
    l1: float = 0.0  # L1 penalty weight added to the loss
    l2: float = 0.0  # L2 penalty weight (sum of squares) added to the loss
    penalty_on: str = "head"  # head: the parameters the model marks; all: every weight
    scheduler: str = "none"
    step_size: int = 10  # epochs between StepLR decays
    gamma: float = 0.1  # StepLR decay factor
    label_smoothing: float = 0.0
    grad_accum: int = 1  # optimizer step every N batches: effective batch = batch_size * N


@dataclass(frozen=True)
class ArtifactConfig:
    kernels: bool = True
    kernel_every: int = 0  # also every N epochs (0: start and end only)
    tsne: bool = True
    tsne_samples: int = 2000
    retrieval: bool = True
    retrieval_k: int = 10
    predictions: bool = True
    confusion: bool = True
    curves: bool = True
    memory: bool = True
    memory_every: int = 50  # steps between memory samples
    summary: bool = True
    model: bool = True  # log the trained model with mlflow.pytorch.log_model


@dataclass(frozen=True)
class RunConfig:
    epochs: int = 8  # the maximum number of epochs (early stopping may end sooner)
    patience: int = 0  # early stopping on val_accuracy; 0 disables
    seed: int = 0
    device: str = "auto"
    amp: bool = False  # CUDA only; a logged no-op elsewhere
    channels_last: bool = False  # CUDA only; a logged no-op elsewhere
    experiment: str = "cnnbench"
    run_name: str | None = None
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else MLflow's default
    quiet: bool = False
    resume: str | None = None  # run id to continue


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    artifacts: ArtifactConfig = field(default_factory=ArtifactConfig)

    def validate(self) -> "TrainConfig":
        """Check every plugin-independent value; raise ConfigError naming what is accepted."""
        o, r, d = self.optim, self.run, self.data
        _positive("--epochs", r.epochs)
        _positive("--batch-size", o.batch_size)
        _positive("--lr", o.lr)
        _positive("--grad-accum", o.grad_accum)
        if not 0.0 < d.val_split < 1.0:
            raise ConfigError(f"--val-split must lie strictly between 0 and 1; got {d.val_split}")
        if d.train_size is not None:
            _positive("--train-size", d.train_size)
        if d.image_size is not None:
            _positive("--image-size", d.image_size)
        if self.model.kernel_size is not None:
            _positive("--kernel-size", self.model.kernel_size)
        _choice("--optimizer", o.optimizer, OPTIMIZERS)
        _choice("--scheduler", o.scheduler, SCHEDULERS)
        _choice("--device", r.device, DEVICES)
        _choice("--penalty-on", o.penalty_on, PENALTY_TARGETS)
        for flag, value in (("--weight-decay", o.weight_decay), ("--l1", o.l1), ("--l2", o.l2),
                            ("--momentum", o.momentum), ("--patience", r.patience),
                            ("--label-smoothing", o.label_smoothing)):
            if value < 0:
                raise ConfigError(f"{flag} must be >= 0; got {value}")
        _positive("--step-size", o.step_size)
        _positive("--gamma", o.gamma)
        a = self.artifacts
        for flag, value in (("--tsne-samples", a.tsne_samples), ("--retrieval-k", a.retrieval_k), ("--memory-every", a.memory_every)):
            _positive(flag, value)
        if a.kernel_every < 0:
            raise ConfigError(f"--kernel-every must be >= 0; got {a.kernel_every}")
        if o.label_smoothing >= 1:
            raise ConfigError(f"--label-smoothing must be below 1; got {o.label_smoothing}")
        from cnnbench.data.augment import check_augmentation

        check_augmentation(d.augment)
        return self

    def flat_params(self) -> dict[str, Any]:
        """Every resolved setting under its snake_case CLI name (what MLflow logs as params)."""
        m, d, o, r = self.model, self.data, self.optim, self.run
        params: dict[str, Any] = {"model": m.name, "dataset": d.name, "kernel_size": m.kernel_size}
        params.update({k: v for k, v in dataclasses.asdict(d).items() if k not in ("name", "options")})
        params.update(dataclasses.asdict(o))
        params.update({k: v for k, v in dataclasses.asdict(r).items() if k not in ("tracking_uri", "quiet", "resume", "run_name", "experiment")})
        params["max_epochs"] = params.pop("epochs")
        params["epochs"] = r.epochs
        params["effective_batch_size"] = o.batch_size * o.grad_accum
        params.update({f"model.{k}": _fmt(v) for k, v in m.options.items() if k != "kernel_size"})
        params.update({f"data.{k}": _fmt(v) for k, v in d.options.items()})
        return {k: _fmt(v) for k, v in params.items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        """Build from a nested dict (as written to config.json); unknown keys are listed."""
        sections = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig, "artifacts": ArtifactConfig}
        unknown = sorted(set(raw) - set(sections))
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)}; valid: {', '.join(sections)}")
        built = {}
        for name, klass in sections.items():
            values = raw.get(name, {}) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: section {name!r} must be a mapping")
            valid = {f.name for f in dataclasses.fields(klass)}
            bad = sorted(set(values) - valid)
            if bad:
                raise ConfigError(f"{source}: unknown key(s) in {name}: {', '.join(bad)}; valid keys: {', '.join(sorted(valid))}")
            built[name] = klass(**values)
        return cls(**built)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"--config file {path} does not exist") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"--config file {path} is not valid JSON: {err}") from None
        return cls.from_dict(raw, source=str(path))

    def replace(self, **sections: Any) -> "TrainConfig":
        """Copy with some fields changed: ``cfg.replace(optim={"lr": 0.01}, run={"epochs": 2})``."""
        changed = {name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()}
        return dataclasses.replace(self, **changed)


def _fmt(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return ",".join(str(x) for x in v)
    return v


def _positive(flag: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{flag} must be positive; got {value}")


def _choice(flag: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(f"unknown {flag} value {value!r}; accepted: {', '.join(accepted)}")
