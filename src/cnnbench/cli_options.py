"""The ``train`` options, declared once and shared by ``cnnbench train`` and ``cnnbench tune``,
and their translation into a :class:`~cnnbench.config.TrainConfig`."""

from __future__ import annotations

from typing import Any, Callable

import click

from cnnbench.config import DEVICES, OPTIMIZERS, PENALTY_TARGETS, SCHEDULERS, TrainConfig

AUGMENTATIONS = ("none", "flip-crop", "strong")  # mirrors cnnbench.data.augment (kept light to import)


class KernelSize(click.ParamType):
    """An odd or even positive int, or ``auto`` (the model's own default)."""

    name = "INT|auto"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() in ("auto", "", "none", "0"):
            return None
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not an integer kernel size or 'auto'", param, ctx)


# (cli name, config section, config field); a field of None means the cli name
FIELD_MAP: dict[str, tuple[str, str]] = {
    "model": ("model", "name"), "kernel_size": ("model", "kernel_size"),
    "dataset": ("data", "name"), "data_dir": ("data", "data_dir"), "val_split": ("data", "val_split"),
    "train_size": ("data", "train_size"), "image_size": ("data", "image_size"), "download": ("data", "download"), "augment": ("data", "augment"),
    "optimizer": ("optim", "optimizer"), "lr": ("optim", "lr"), "batch_size": ("optim", "batch_size"),
    "momentum": ("optim", "momentum"), "weight_decay": ("optim", "weight_decay"), "l1": ("optim", "l1"),
    "l2": ("optim", "l2"), "penalty_on": ("optim", "penalty_on"), "scheduler": ("optim", "scheduler"),
    "label_smoothing": ("optim", "label_smoothing"),
    "step_size": ("optim", "step_size"), "gamma": ("optim", "gamma"), "grad_accum": ("optim", "grad_accum"),
    "epochs": ("run", "epochs"), "patience": ("run", "patience"), "seed": ("run", "seed"),
    "device": ("run", "device"), "amp": ("run", "amp"), "channels_last": ("run", "channels_last"),
    "experiment": ("run", "experiment"), "run_name": ("run", "run_name"), "tracking_uri": ("run", "tracking_uri"),
    "quiet": ("run", "quiet"),
    "kernels": ("artifacts", "kernels"), "kernel_every": ("artifacts", "kernel_every"), "tsne": ("artifacts", "tsne"),
    "tsne_samples": ("artifacts", "tsne_samples"), "retrieval": ("artifacts", "retrieval"),
    "retrieval_k": ("artifacts", "retrieval_k"), "confusion": ("artifacts", "confusion"), "curves": ("artifacts", "curves"),
    "summary": ("artifacts", "summary"), "memory_every": ("artifacts", "memory_every"),
    "predictions": ("artifacts", "predictions"), "log_model": ("artifacts", "model"), "memory": ("artifacts", "memory"),
}

_D = TrainConfig()

TRAIN_OPTIONS: list[Callable] = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="JSON config (a run's config.json); flags given here override it"),
    click.option("--model", default=_D.model.name, show_default=True, help="model name (cnnbench list models)"),
    click.option("--dataset", default=_D.data.name, show_default=True, help="dataset name (cnnbench list datasets)"),
    click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE", help="model option (repeatable; cnnbench info MODEL lists them)"),
    click.option("--dataset-option", "dataset_options", multiple=True, metavar="KEY=VALUE", help="dataset option (repeatable)"),
    click.option("--epochs", type=int, default=_D.run.epochs, show_default=True, help="maximum number of epochs"),
    click.option("--batch-size", type=int, default=_D.optim.batch_size, show_default=True),
    click.option("--lr", type=float, default=_D.optim.lr, show_default=True, help="learning rate"),
    click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=_D.optim.optimizer, show_default=True),
    click.option("--momentum", type=float, default=_D.optim.momentum, show_default=True, help="momentum of momentum/nesterov"),
    click.option("--weight-decay", type=float, default=_D.optim.weight_decay, show_default=True),
    click.option("--l1", type=float, default=_D.optim.l1, show_default=True, help="L1 penalty weight"),
    click.option("--l2", type=float, default=_D.optim.l2, show_default=True, help="L2 penalty weight"),
    click.option("--penalty-on", type=click.Choice(PENALTY_TARGETS), default=_D.optim.penalty_on, show_default=True, help="head: the parameters the model marks; all: every weight"),
    click.option("--scheduler", type=click.Choice(SCHEDULERS), default=_D.optim.scheduler, show_default=True),
    click.option("--step-size", type=int, default=_D.optim.step_size, show_default=True, help="epochs between decays of --scheduler step"),
    click.option("--gamma", type=float, default=_D.optim.gamma, show_default=True, help="decay factor of --scheduler step"),
    click.option("--label-smoothing", type=float, default=_D.optim.label_smoothing, show_default=True),
    click.option("--grad-accum", type=int, default=_D.optim.grad_accum, show_default=True, help="optimizer step every N batches"),
    click.option("--patience", type=int, default=_D.run.patience, show_default=True, help="early stopping on val_accuracy (0: off)"),
    click.option("--kernel-size", type=KernelSize(), default=None, help="convolution kernel size (default: the model's)"),
    click.option("--seed", type=int, default=_D.run.seed, show_default=True),
    click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="dataset folder (default: $CNNBENCH_DATA or ~/.cache/cnnbench/data)"),
    click.option("--download/--no-download", default=True, help="download missing dataset files (when the network allows)"),
    click.option("--val-split", type=float, default=_D.data.val_split, show_default=True, help="fraction of train held out for validation"),
    click.option("--train-size", type=int, default=None, help="train on a stratified subset of N images"),
    click.option("--image-size", type=int, default=None, help="resize images to S x S"),
    click.option("--augment", type=click.Choice(AUGMENTATIONS), default=_D.data.augment, show_default=True),
    click.option("--device", type=click.Choice(DEVICES), default=_D.run.device, show_default=True),
    click.option("--amp/--no-amp", default=False, help="mixed precision (CUDA only)"),
    click.option("--channels-last/--no-channels-last", default=False, help="channels-last memory format (CUDA only)"),
    click.option("--experiment", default=_D.run.experiment, show_default=True, help="MLflow experiment name"),
    click.option("--run-name", default=None, help="MLflow run name"),
    click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else MLflow's default)"),
    click.option("--kernels/--no-kernels", default=True, help="log first-layer kernel images"),
    click.option("--kernel-every", type=int, default=0, help="also log kernels every N epochs"),
    click.option("--tsne/--no-tsne", default=True, help="log t-SNE of the latent space"),
    click.option("--tsne-samples", type=int, default=_D.artifacts.tsne_samples, show_default=True),
    click.option("--retrieval/--no-retrieval", default=True, help="log nearest-neighbour retrieval"),
    click.option("--retrieval-k", type=int, default=_D.artifacts.retrieval_k, show_default=True, help="neighbours per retrieval query"),
    click.option("--confusion/--no-confusion", default=True, help="log the confusion matrix and classification report"),
    click.option("--curves/--no-curves", default=True, help="log learning curves and history.csv"),
    click.option("--summary/--no-summary", default=True, help="log model/summary.txt"),
    click.option("--memory-every", type=int, default=_D.artifacts.memory_every, show_default=True, help="steps between memory samples"),
    click.option("--predictions/--no-predictions", default=True, help="log the predictions grid"),
    click.option("--memory/--no-memory", default=True, help="log memory use and MLflow system metrics"),
    click.option("--log-model/--no-log-model", default=True, help="log the trained model"),
    click.option("--quiet", is_flag=True, help="no progress output"),
]


def train_options(func: Callable) -> Callable:
    for option in reversed(TRAIN_OPTIONS):
        func = option(func)
    return func


def config_from_params(ctx: click.Context, params: dict[str, Any]) -> TrainConfig:
    """Build the TrainConfig: the ``--config`` file (if any) overlaid with every flag the user gave."""
    from cnnbench.registry import parse_key_values

    base = TrainConfig.load(params["config_file"]) if params.get("config_file") else TrainConfig()
    explicit = lambda name: ctx.get_parameter_source(name) not in (  # noqa: E731
        click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP, None
    )
    use_all = not params.get("config_file")
    sections: dict[str, dict[str, Any]] = {}
    for name, (section, field) in FIELD_MAP.items():
        if name in params and (use_all or explicit(name)):
            sections.setdefault(section, {})[field] = params[name]
    if params.get("model_options") or use_all:
        opts = dict(base.model.options) if not use_all else {}
        opts.update(parse_key_values(params.get("model_options", ()), flag="--model-option"))
        sections.setdefault("model", {})["options"] = opts
    if params.get("dataset_options") or use_all:
        opts = dict(base.data.options) if not use_all else {}
        opts.update(parse_key_values(params.get("dataset_options", ()), flag="--dataset-option"))
        sections.setdefault("data", {})["options"] = opts
    if sections.get("data", {}).get("data_dir") == "":
        sections["data"]["data_dir"] = None  # the MLproject passes "" for "not given"
    return base.replace(**sections)
