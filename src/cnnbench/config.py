"""The run configuration: frozen nested dataclasses whose fields declare every train option once.

Each field's metadata (written with :func:`option`) is the one declaration of that option: its flag,
help, type, default, check, help group, whether studies and ``tune`` may vary it, and whether (and
when) MLflow logs it. From it come the Click options of ``train``/``tune``/``study``
(``cnnbench.cli_options``), :data:`OPTIONS` (name -> :class:`TrainOption`), ``validate()`` and its
messages, :func:`apply_values` (the one path from ``name=value`` text or typed values to a config,
shared by ``tune``, ``study`` and the MLproject), ``flat_params()`` and the README's option table
(``python -m cnnbench.docs``). Nothing here imports torch.

Adding a train option = one field with :func:`option` metadata here, plus its use in the engine.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from cnnbench.errors import ConfigError
from cnnbench.values import convert


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer, declared once: the ``torch.optim`` class, fixed keyword arguments, whether it
    takes ``--momentum``, and how many copies of the trainable weights it keeps as state."""

    torch_class: str
    help: str
    momentum: bool = False
    kwargs: tuple[tuple[str, Any], ...] = ()
    state_copies: int = 0


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("SGD", "plain SGD"),
    "momentum": OptimizerSpec("SGD", "SGD with --momentum", momentum=True, state_copies=1),
    "nesterov": OptimizerSpec("SGD", "SGD with Nesterov --momentum", momentum=True, kwargs=(("nesterov", True),), state_copies=1),
    "rmsprop": OptimizerSpec("RMSprop", "RMSprop without momentum", state_copies=1),
    "adam": OptimizerSpec("Adam", "Adam", state_copies=2),
    "adamw": OptimizerSpec("AdamW", "Adam with decoupled weight decay", state_copies=2),
}
SCHEDULERS = ("none", "step", "cosine", "onecycle")
DEVICES = ("auto", "cpu", "cuda", "mps")
PENALTY_TARGETS = ("head", "all")
AUGMENTATIONS = ("none", "flip-crop", "strong")
TTA = ("none", "flip")
CHANNELS_LAST = ("auto", "on", "off")
GROUPS = ("model", "data", "optimisation", "run", "artifacts")  # the sections of `train --help`
OPTION_KINDS = ("int", "float", "bool", "str")
MAX_EXPERIMENT_NAME = 500  # MLflow refuses longer experiment names
ALIASES = {"kernel_size": "model.kernel_size"}  # shorthand accepted wherever names are given as text


@dataclass(frozen=True)
class TrainOption:
    """One train option: what the CLI, tune, study, validation, MLflow and the README know of it."""

    name: str  # the config / MLflow param name (snake_case of the flag)
    section: str  # TrainConfig section: model | data | optim | run | artifacts
    field: str  # the dataclass field in that section
    type: str  # int | float | bool | str
    default: Any
    help: str
    group: str  # where `train --help` lists it
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused
    high_open: bool = False
    nullable: bool = False  # None is accepted ("not set": the meaning is in the help)
    vary: bool = True  # studies and tune may vary / search it
    param: bool = True  # logged as an MLflow param
    applies: Callable[["TrainConfig"], bool] | None = None  # logged only when this holds
    check: Callable[[Any], str | None] | None = None  # extra check: the reason a value is refused
    metavar: str | None = None
    artifact: str | None = None  # for an artifact switch: the builder it turns on (a cnnbench.artifacts name)
    words: tuple[str, ...] = ()  # text values accepted besides the type (batch_size: "auto")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """What the option accepts, for error messages."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.words:
            return dataclasses.replace(self, words=()).describe() + " or " + " or ".join(self.words)
        kind = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}[self.type]
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {_show(self.low)}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {_show(self.high)}")
        return kind + (" " + " and ".join(bounds) if bounds else "")

    def parse(self, raw: Any, *, where: str = "", text: bool = True) -> Any:
        """``raw`` (text when ``text``, else an already-typed value from JSON/TOML) as this option's
        type, checked; a ConfigError saying what was given and what is accepted otherwise."""
        prefix = f"{where}: " if where else ""
        if raw is None or (text and isinstance(raw, str) and raw.strip().lower() in ("", "none") and self.nullable
                           and self.check is None):  # an option with its own check judges "" itself
            if self.nullable:
                return None
            raise ConfigError(f"{prefix}{self.flag} needs a value ({self.describe()}); got null")
        if isinstance(raw, str) and raw.strip().lower() in self.words:
            return raw.strip().lower()
        try:
            value = self._convert(raw, text)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{prefix}{self.flag} expects {self.describe()}; got {raw!r}") from None
        return self.validate(value, where=where)

    def validate(self, value: Any, *, where: str = "") -> Any:
        prefix = f"{where}: " if where else ""
        if value is None and self.nullable:
            return value
        if value in self.words:
            return value
        if self.choices and value not in self.choices:
            raise ConfigError(f"{prefix}unknown {self.flag} value {value!r}; accepted: {', '.join(map(str, self.choices))}")
        if self.type in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{prefix}{self.flag} expects {self.describe()}; got {value!r}")
            if isinstance(value, int) and not -(2**63) <= value <= 2**63 - 1:  # math.isfinite would overflow
                raise ConfigError(f"{prefix}{self.flag} expects {self.describe()}; got an integer beyond the 64-bit range")
            if not math.isfinite(value):
                raise ConfigError(f"{prefix}{self.flag} must be a finite number; got {value}")
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                raise ConfigError(f"{prefix}{self.flag} must {self._bound_text()}; got {value}")
            if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
                raise ConfigError(f"{prefix}{self.flag} must {self._bound_text()}; got {value}")
        if self.check is not None:
            reason = self.check(value)
            if reason:
                raise ConfigError(f"{prefix}{self.flag} {reason}; got {str(value)[:80]!r}")
        return value

    def _bound_text(self) -> str:
        if self.low == 0 and self.low_open and self.high is None:
            return "be positive"
        if self.low == 1 and not self.low_open and self.high is None and self.type == "int":
            return "be positive"
        if self.low is not None and self.high is not None:
            lo = "lie strictly between" if self.low_open and self.high_open else "lie between"
            if self.low_open != self.high_open:
                return f"be {'>' if self.low_open else '>='} {_show(self.low)} and {'<' if self.high_open else '<='} {_show(self.high)}"
            return f"{lo} {_show(self.low)} and {_show(self.high)}"
        return "be " + self.describe().split(" ", 2)[-1]

    def _convert(self, raw: Any, text: bool) -> Any:
        if self.type == "str" and not isinstance(raw, str):
            raise TypeError(raw)  # a train option's text is text, from a file too
        value = convert(self.type, raw, typed_source=not text)
        return value.strip() if self.type == "str" and self.choices else value


def read_user_file(path: str | Path, what: str, *, folder_hint: str, kind: str) -> str:
    """The UTF-8 text of a file the user named (``--config``, a study file), or a one-line ConfigError:
    ``{what} {path} does not exist`` / ``is a folder; {folder_hint}`` / ``is not {kind}``."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder; {folder_hint}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not {kind}") from None


def option(default: Any, help: str, *, type: str, group: str, **declared: Any) -> Any:
    """A dataclass field that declares a train option (see :class:`TrainOption` for the keywords)."""
    if type not in OPTION_KINDS:
        raise ValueError(f"option type must be one of {OPTION_KINDS}; got {type!r}")
    if group not in GROUPS:
        raise ValueError(f"option group must be one of {GROUPS}; got {group!r}")
    return field(default=default, metadata={"option": {"type": type, "group": group, "help": help, **declared}})


def _uses_momentum(c: "TrainConfig") -> bool:
    return OPTIMIZERS[c.optim.optimizer].momentum


def _crop_padding(value: str) -> str | None:
    parts = value.replace(" ", "").split(",")
    if len(parts) not in (1, 4) or not all(p.isdigit() for p in parts):
        return "must be one padding in pixels (4) or four, left,top,right,bottom (0,2,3,4)"
    if max(int(p) for p in parts) > 64:
        return "must be at most 64 pixels a side"
    return None


def _optimizer_list(value: str) -> str | None:
    names = [n.strip() for n in value.split(",")]
    bad = [n for n in names if n not in OPTIMIZERS]
    if value.strip() != "all" and (bad or not names):
        return f"must be all or a comma-separated list of optimizers ({', '.join(OPTIMIZERS)})"
    return None


TSNE_STAGES = ("middle", "end")  # besides epoch numbers (0: before training)


def _tsne_epochs(value: str) -> str | None:
    parts = [p.strip() for p in value.split(",")]
    if not parts or not all(p in TSNE_STAGES or p.isdigit() for p in parts):
        return "must be a comma-separated list of epochs (0 = before training), middle and end, e.g. 0,20,end"
    if len(set(parts)) != len(parts):
        return "lists an epoch twice"
    return None


def _preset_known(value: str) -> str | None:
    from cnnbench.registry import PRESETS

    entry = next((e for e in PRESETS.entries() if e.name == value), None)
    if entry is None:
        return f"is not a preset; accepted: {', '.join(PRESETS.names())} (cnnbench list presets)"
    if entry.plugin is None:
        return f"is a preset from {entry.distribution} that cannot be used: {entry.error}"
    return None


def _experiment_name(value: str) -> str | None:
    if not value.strip():
        return "must name an experiment (it is empty)"
    if len(value) > MAX_EXPERIMENT_NAME:
        return f"must be at most {MAX_EXPERIMENT_NAME} characters (MLflow's limit); it has {len(value)}"
    return None


@dataclass(frozen=True)
class ModelConfig:
    name: str = option("lenet5", "model name (cnnbench list models)", type="str", group="model", metavar="NAME")
    # The plugin's own options (kernel_size included), resolved against its declaration by api.resolve.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    name: str = option("digits", "dataset name (cnnbench list datasets)", type="str", group="data", metavar="NAME")
    options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = option(None, "dataset folder (default or auto: $CNNBENCH_DATA, else ~/.cache/cnnbench/data)",
                                  type="str", group="data", nullable=True, vary=False, metavar="DIR",
                                  applies=lambda c: c.data.data_dir is not None)
    val_split: float = option(0.1, "fraction of train held out for validation (stratified by seed)",
                              type="float", group="data", low=0, high=1, low_open=True, high_open=True)
    train_size: int | None = option(None, "train on a stratified subset of N images (default: all)", type="int",
                                    group="data", low=1, nullable=True, metavar="N")
    image_size: int | None = option(None, "resize every split to S x S (default: native size)", type="int",
                                    group="data", low=1, nullable=True, metavar="S")
    augment: str = option("none", "batched augmentation of training images: flip-crop (flip + 4-px padded crop), "
                          "strong (+ rotation, shear, scale)", type="str", group="data", choices=AUGMENTATIONS)
    crop_padding: str = option("4", "zero padding of the random crop: N pixels a side, or left,top,right,bottom "
                               "(torchvision's order; the CIFAR lab used 0,2,3,4)", type="str", group="data",
                               check=_crop_padding, applies=lambda c: c.data.augment != "none", metavar="PX")
    aug_rotation: float = option(15.0, "largest rotation of --augment strong, degrees either way", type="float",
                                 group="data", low=0, high=180, applies=lambda c: c.data.augment == "strong")
    aug_shear: float = option(10.0, "largest shear of --augment strong, degrees either way", type="float",
                              group="data", low=0, high=80, applies=lambda c: c.data.augment == "strong")
    aug_scale: float = option(0.1, "--augment strong scales by a factor in [1 - S, 1 + S]", type="float",
                              group="data", low=0, high=1, high_open=True, applies=lambda c: c.data.augment == "strong",
                              metavar="S")
    train_on: str = option("train", "train+val: train on the training and validation images together, with no "
                           "validation (early stopping is refused with it)", type="str", group="data",
                           choices=("train", "train+val"))
    test_from_train: float | None = option(None, "carve the test split out of the training images (this fraction, "
                                           "stratified by seed) instead of using the dataset's test split",
                                           type="float", group="data", low=0, high=1, low_open=True, high_open=True,
                                           nullable=True, metavar="FRACTION")
    tta: str = option("none", "test-time augmentation of validation and test: flip (the mean of each image's "
                      "and its mirror image's logits)", type="str", group="data", choices=TTA)
    download: bool = option(True, "download missing dataset files (when the network allows)", type="bool",
                            group="data", vary=False, param=False)


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = option("adam", "optimizer: " + ", ".join(f"{k} ({v.help})" for k, v in OPTIMIZERS.items()),
                            type="str", group="optimisation", choices=tuple(OPTIMIZERS))
    lr: float = option(1e-3, "learning rate", type="float", group="optimisation", low=0, low_open=True)
    lr_scale: str = option("none", "scale --lr with the batch size: linear trains with lr x batch size / "
                           "--lr-reference-batch (the linear scaling rule)", type="str", group="optimisation",
                           choices=("none", "linear"))
    lr_reference_batch: int = option(64, "the batch size --lr is meant for, with --lr-scale linear", type="int",
                                     group="optimisation", low=1, applies=lambda c: c.optim.lr_scale != "none")
    batch_size: int = option(64, "images per training batch, or auto: the largest whose predicted training-step "
                             "peak fits --memory-budget (see cnnbench memory)", type="int", group="optimisation",
                             low=1, metavar="N", words=("auto",))
    memory_budget: float | None = option(None, "MiB a training step may take (allocator peak, predicted before "
                                         "training): --batch-size auto picks the largest batch within it (default "
                                         "there: 90% of the free CUDA memory); with a fixed batch, a run predicted "
                                         "above it is refused", type="float", group="optimisation", low=0,
                                         low_open=True, nullable=True, vary=False, metavar="MB")
    momentum: float = option(0.9, "momentum of the momentum and nesterov optimizers (others ignore it)", type="float",
                             group="optimisation", low=0, applies=_uses_momentum)
    weight_decay: float = option(0.0, "weight decay of the optimizer (decoupled for adamw, in the gradient otherwise)",
                                 type="float", group="optimisation", low=0)
    weight_decay_on: str = option("all", "optimizers --weight-decay applies to: all, or a comma-separated list "
                                  "(adam: weight decay for Adam only, so an optimizer grid can give it to one)",
                                  type="str", group="optimisation", check=_optimizer_list,
                                  applies=lambda c: c.optim.weight_decay > 0, metavar="LIST")
    freeze: str = option("none", "parameters kept at their initial values: first_conv (the first convolution) "
                         "or features (everything but the classifier, the final linear layer)",
                         type="str", group="model", choices=("none", "first_conv", "features"))
    l1: float = option(0.0, "L1 penalty weight added to the loss (sum |w| over --penalty-on)", type="float",
                       group="optimisation", low=0)
    l2: float = option(0.0, "L2 penalty weight added to the loss (sum w^2 over --penalty-on)", type="float",
                       group="optimisation", low=0)
    penalty_on: str = option("head", "weights --l1/--l2 penalise: head (the ones the model marks, its classifier) "
                             "or all (every weight matrix and kernel)", type="str", group="optimisation",
                             choices=PENALTY_TARGETS, applies=lambda c: c.optim.l1 > 0 or c.optim.l2 > 0)
    scheduler: str = option("none", "learning-rate schedule: step (x --gamma every --step-size epochs), cosine, "
                            "onecycle", type="str", group="optimisation", choices=SCHEDULERS)
    step_size: int = option(10, "epochs between decays of --scheduler step", type="int", group="optimisation",
                            low=1, applies=lambda c: c.optim.scheduler == "step")
    gamma: float = option(0.1, "decay factor of --scheduler step", type="float", group="optimisation",
                          low=0, low_open=True, applies=lambda c: c.optim.scheduler == "step")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy loss", type="float",
                                    group="optimisation", low=0, high=1, high_open=True)
    grad_accum: int = option(1, "optimizer step every N batches (effective batch = batch size x N)", type="int",
                             group="optimisation", low=1, metavar="N")


def _recorded(default: Any, help: str, *, type: str = "bool", **declared: Any) -> Any:
    """An artifact option: it changes what is recorded, not what is trained (no param, not varied)."""
    return option(default, help, type=type, group="artifacts", vary=False, param=False, **declared)


@dataclass(frozen=True)
class ArtifactConfig:
    # A switch with ``artifact=`` turns that builder on (its name in the cnnbench.artifacts registry).
    kernels: bool = _recorded(True, "log first-layer kernel images", artifact="kernels")
    kernel_every: int = _recorded(0, "also log kernels every N epochs (0: start and end only)", type="int", low=0, metavar="N")
    tsne: bool = _recorded(True, "log t-SNE maps of the latent space (start, middle, end)", artifact="tsne")
    tsne_samples: int = _recorded(2000, "test images in each t-SNE map", type="int", low=1, metavar="N")
    retrieval: bool = _recorded(True, "log nearest-neighbour retrieval from the intermediate layer",
                                artifact="retrieval")
    retrieval_k: int = _recorded(10, "neighbours per retrieval query", type="int", low=1, metavar="N")
    retrieval_layer: str | None = _recorded(None, "module whose output (flattened, no pooling) retrieval compares "
                                            "with the output layer, e.g. features.1 (default: the model's "
                                            "intermediate block, pooled to 4x4)", type="str", nullable=True,
                                            metavar="NAME")
    tsne_layer: str | None = _recorded(None, "module whose output (flattened) the t-SNE maps show, e.g. head.5 "
                                       "(default: the classifier's input)", type="str", nullable=True, metavar="NAME")
    tsne_epochs: str = _recorded("0,middle,end", "when the t-SNE maps are made: epochs (0 = before training), "
                                 "middle, end (the final model)", type="str", check=_tsne_epochs, metavar="LIST")
    tsne_perplexity: float = _recorded(30.0, "t-SNE perplexity (capped at (points - 1) / 3)", type="float", low=1)
    tsne_iterations: int = _recorded(350, "t-SNE optimisation iterations", type="int", low=250, metavar="N")
    predictions: bool = _recorded(True, "log a grid of test predictions")
    confusion: bool = _recorded(True, "log the confusion matrix and classification report")
    curves: bool = _recorded(True, "log learning curves and history.csv", artifact="curves")
    memory: bool = _recorded(True, "log memory use and MLflow system metrics", artifact="memory")
    memory_every: int = _recorded(50, "steps between memory samples", type="int", low=1, metavar="N")
    summary: bool = _recorded(True, "log model/summary.txt")
    model: bool = _recorded(True, "log the trained model", name="log_model")


@dataclass(frozen=True)
class RunConfig:
    epochs: int = option(8, "maximum number of epochs (early stopping may end sooner)", type="int",
                         group="optimisation", low=1, metavar="N")
    time_budget: float | None = option(None, "train for a wall-clock budget: seconds from the start of api.train "
                                       "(its imports, data and setup included; the process start-up and store "
                                       "check before it, artifacts and model export after it not) to the test "
                                       "pass's end; the first "
                                       "steps' speed sets the step count (a fractional last epoch allowed) and "
                                       "onecycle / cosine decay to zero at the last step; --epochs stays an upper "
                                       "bound", type="float", group="optimisation", low=0, low_open=True,
                                       nullable=True, param=False, metavar="SECONDS",
                                       applies=lambda c: c.run.time_budget is not None)
    patience: int = option(0, "early stopping after N epochs without a better val_accuracy; the best "
                           "checkpoint is restored before testing (0: off)", type="int", group="optimisation",
                           low=0, metavar="N")
    test_every_epoch: bool = option(False, "also evaluate the test split after every epoch (epoch_test_accuracy, "
                                    "with run_time_s: seconds since the process started, these evaluations not "
                                    "counted): a time-to-accuracy curve, never used for model selection",
                                    type="bool", group="run", vary=False)
    seed: int = option(0, "random seed of weights, splits, shuffling and augmentation (same seed + CPU = "
                       "identical metrics)", type="int", group="run", low=0)
    device: str = option("auto", "device to train on (auto: cuda, else mps, else cpu)", type="str", group="run",
                         choices=DEVICES, vary=False)
    amp: bool = option(False, "mixed precision (CUDA only; a logged no-op elsewhere)", type="bool", group="run")
    channels_last: str = option("auto", "channels-last (NHWC) memory format: auto uses it on CUDA, and on CPU "
                                "for the models it is measured faster for there (cnnbench list models); the "
                                "layout used is logged as memory_format", type="str", group="run",
                                choices=CHANNELS_LAST)
    preset: str | None = option(None, "a named bundle of options (cnnbench list presets); flags given with it "
                                "override its values", type="str", group="run", nullable=True, check=_preset_known,
                                applies=lambda c: c.run.preset is not None, metavar="NAME")
    experiment: str | None = option(None, "MLflow experiment name (default: $MLFLOW_EXPERIMENT_NAME, else cnnbench)",
                                    type="str", group="run", nullable=True, vary=False, param=False,
                                    check=_experiment_name, metavar="NAME")
    run_name: str | None = option(None, "MLflow run name", type="str", group="run", nullable=True, vary=False, param=False)
    tracking_uri: str | None = option(None, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                      "sqlite:///mlflow.db)", type="str", group="run", nullable=True, vary=False,
                                      param=False, metavar="URI")
    quiet: bool = option(False, "no progress output: only errors and the final run lines", type="bool", group="run",
                         vary=False, param=False)
    verbose: bool = option(False, "show MLflow's INFO logs and library warnings", type="bool", group="run",
                           vary=False, param=False)
    register_model: str | None = option(None, "also register the logged model in the MLflow Model Registry under NAME",
                                        type="str", group="run", nullable=True, vary=False, param=False, metavar="NAME")


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig,
                             "artifacts": ArtifactConfig}


def _declarations() -> dict[str, TrainOption]:
    options: dict[str, TrainOption] = {}
    for section, klass in SECTIONS.items():
        for f in dataclasses.fields(klass):
            meta = dict(f.metadata.get("option", {}))
            if not meta:
                continue
            name = meta.pop("name", None) or {"model.name": "model", "data.name": "dataset"}.get(f"{section}.{f.name}", f.name)
            if name in options:
                raise ValueError(f"train option {name!r} is declared twice")
            options[name] = TrainOption(name=name, section=section, field=f.name, default=f.default, **meta)
    return options


OPTIONS: dict[str, TrainOption] = _declarations()
"""Every train option by its config / MLflow name, in declaration order."""


def variable_names() -> list[str]:
    """Options studies and tune may vary (plugin options ``model.<key>``/``data.<key>`` always may)."""
    return [name for name, o in OPTIONS.items() if o.vary]


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    artifacts: ArtifactConfig = field(default_factory=ArtifactConfig)

    def value(self, name: str) -> Any:
        o = OPTIONS[name]
        return getattr(getattr(self, o.section), o.field)

    def validate(self) -> "TrainConfig":
        """Check every declared option's value (type, range, choices, finiteness); raise a
        ConfigError naming the flag and what is accepted. Plugin options are checked by api.resolve."""
        for name, o in OPTIONS.items():
            o.validate(self.value(name))
        for section in ("model", "data"):
            if not isinstance(getattr(self, section).options, dict):
                raise ConfigError(f"{section}.options must be a mapping of option names to values")
        return self

    def flat_params(self) -> dict[str, Any]:
        """What MLflow logs: every declared option that is a param (and applies to this run) under
        its name, plugin options as ``model.<key>`` / ``data.<key>``, and ``effective_batch_size``
        when gradient accumulation makes it differ from the batch size."""
        params: dict[str, Any] = {}
        for name, o in OPTIONS.items():
            if o.param and (o.applies is None or o.applies(self)):
                params[name] = self.value(name)
        if self.optim.grad_accum > 1 and isinstance(self.optim.batch_size, int):
            params["effective_batch_size"] = self.optim.batch_size * self.optim.grad_accum
        params.update({f"model.{k}": v for k, v in self.model.options.items()})
        params.update({f"data.{k}": v for k, v in self.data.options.items()})
        return {k: _fmt(v) for k, v in params.items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "config") -> "TrainConfig":
        """Build from a nested dict (as written to config.json), every value type-checked: unknown
        sections/keys are listed, a wrong type names the key and what it accepts."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object with sections {', '.join(SECTIONS)}; got {type(raw).__name__}")
        unknown = sorted(map(str, set(raw) - set(SECTIONS)))
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {shown_names(unknown)}; valid: {', '.join(SECTIONS)}")
        by_field = {(o.section, o.field): o for o in OPTIONS.values()}
        built: dict[str, Any] = {}
        for section, klass in SECTIONS.items():
            values = dict(raw.get(section) or {}) if isinstance(raw.get(section) or {}, dict) else None
            if values is None:
                raise ConfigError(f"{source}: section {section!r} must be a mapping")
            _legacy(section, values, source)
            valid = {f.name for f in dataclasses.fields(klass)}
            bad = sorted(map(str, set(values) - valid))
            if bad:
                raise ConfigError(f"{source}: unknown key(s) in {section}: {shown_names(bad)}; valid keys: {', '.join(sorted(valid))}")
            typed = {}
            for key, value in values.items():
                if key == "options":
                    if not isinstance(value, dict):
                        raise ConfigError(f"{source}: {section}.options must be a mapping of option names to values; got {value!r}")
                    typed[key] = dict(value)
                else:
                    typed[key] = by_field[(section, key)].parse(value, where=f"{source}: {section}.{key}", text=False)
            built[section] = klass(**typed)
        return cls(**built)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        text = read_user_file(path, "--config file", folder_hint="give a run's config.json",
                              kind="text (expected a run's config.json)")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--config file {path} is not valid JSON: {err}") from None
        except ValueError:  # an integer of more than sys.get_int_max_str_digits() digits
            raise ConfigError(f"--config file {path} holds an integer of thousands of digits; no option accepts "
                              f"a number that large") from None
        return cls.from_dict(raw, source=str(path))

    def replace(self, **sections: Any) -> "TrainConfig":
        """Copy with some fields changed: ``cfg.replace(optim={"lr": 0.01}, run={"epochs": 2})``."""
        changed = {name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()}
        return dataclasses.replace(self, **changed)


def _legacy(section: str, values: dict[str, Any], source: str) -> None:
    """config.json files written by cnnbench 0.1 held ``model.kernel_size`` and ``run.resume``."""
    if section == "model" and "kernel_size" in values:
        kernel = values.pop("kernel_size")
        if kernel is not None:
            options = values.setdefault("options", {})
            if isinstance(options, dict):
                options.setdefault("kernel_size", kernel)
    if section == "run" and isinstance(values.get("channels_last"), bool):  # a bool before "auto" existed
        values["channels_last"] = "on" if values["channels_last"] else "off"
    if section == "run" and "resume" in values:
        if values.pop("resume") is not None:
            raise ConfigError(f"{source}: run.resume is not a setting a config can carry (it would train into an "
                              f"existing run); resume a run with cnnbench train --resume RUN_ID")


def apply_values(config: TrainConfig, values: Mapping[str, Any], *, where: str = "", text: bool = True,
                 varying: bool = False) -> TrainConfig:
    """``config`` with ``values`` set: keys are option names (:data:`OPTIONS`, or an alias such as
    ``kernel_size``) or plugin options ``model.<key>`` / ``data.<key>``; values are text (``text``)
    or typed (TOML/JSON). With ``varying``, only options studies/tune may vary are accepted.
    Plugin options are checked against their declaration later, by ``api.resolve``."""
    if values.get("preset") not in (None, "", "none"):  # the preset's values first, the others over them
        name = OPTIONS["preset"].parse(values["preset"], where=f"{where} preset".strip(), text=text)
        config = apply_values(config, preset_values(name), where=f"preset {name}", text=False)
    sections: dict[str, dict[str, Any]] = {}
    prefix = f"{where}: " if where else ""
    keyed = {ALIASES.get(k, k): (k, v) for k, v in values.items()}
    for plugin, name_key in (("model", "model"), ("data", "dataset")):
        # A plugin chosen here starts from its own defaults: another plugin's options do not carry over.
        if name_key in keyed and keyed[name_key][1] != getattr(config, plugin).name:
            sections[plugin] = {"options": {}}
    for key, (raw_key, value) in keyed.items():
        plugin, dot, sub = key.partition(".")
        if dot and plugin in ("model", "data") and sub:
            section = sections.setdefault(plugin, {})
            section.setdefault("options", dict(getattr(config, plugin).options))[sub] = value
            continue
        o = OPTIONS.get(key)
        if o is None or (varying and not o.vary):
            accepted = variable_names() if varying else list(OPTIONS)
            what = "unknown option" if o is None else "an option that cannot be varied:"
            raise ConfigError(f"{prefix}{what} {raw_key!r}; accepted: {', '.join(accepted)}, "
                              f"or a plugin option model.<key> / data.<key>")
        sections.setdefault(o.section, {})[o.field] = o.parse(value, where=f"{where} {raw_key}".strip(), text=text)
    return config.replace(**sections)


def preset_values(name: str) -> dict[str, Any]:
    """The typed option values of preset ``name`` (see :mod:`cnnbench.presets`)."""
    from cnnbench.registry import PRESETS

    return dict(PRESETS.get(name).values)


def shown_names(names: Iterable[Any]) -> str:
    """Names from a file or the command line as one line of an error message: as written, or quoted
    with escapes when a name holds a line break or another unprintable character."""
    return ", ".join(n if isinstance(n, str) and n.isprintable() else repr(n) for n in names)


def _show(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v)) if not isinstance(v, bool) else str(v)
    return str(v)


def _fmt(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return ",".join(str(x) for x in v)
    return v
