"""``cnnbench info MODEL``: options, layer table, parameters, MACs and training memory; no data is loaded.

The input shape comes from a dataset plugin's declared metadata (``--dataset``) or from
``--input-shape C,H,W``; bad names, options, kernel sizes and too-small inputs raise
:class:`cnnbench.errors.ConfigError` subclasses, which the command group turns into exit code 2.
"""

from __future__ import annotations

import json

import click

from cnnbench.cli_options import shared

from cnnbench.errors import ConfigError



def parse_shape(text: str) -> tuple[int, int, int]:
    """``"3,32,32"`` -> (3, 32, 32); anything else is a ConfigError saying what is accepted."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--input-shape expects three positive integers C,H,W such as 3,32,32; got {text!r}")
    from cnnbench.memory.guard import check_elements

    check_elements(f"--input-shape {text}", *shape)
    return shape


def input_spec(model: str, dataset: str | None, dataset_options: tuple[str, ...], input_shape: str | None,
               num_classes: int | None, data_dir: str | None = None) -> tuple[tuple[int, int, int], int, str]:
    """(C, H, W), number of classes, and a description of where they came from: the dataset's
    metadata, --input-shape, or the input the model declares it was designed for."""
    from pathlib import Path

    from cnnbench.registry import MODELS

    from cnnbench.registry import DATASETS, parse_key_values, resolve_options

    if dataset and input_shape:
        raise ConfigError("give --dataset or --input-shape, not both")
    if dataset_options and not dataset:
        raise ConfigError("--dataset-option needs --dataset")
    if dataset:
        plugin = DATASETS.get(dataset)
        given = parse_key_values(dataset_options, flag="--dataset-option")
        where = {}
        if plugin.needs_data_dir:
            if not data_dir:
                raise ConfigError(f"dataset {dataset!r} takes its shape and classes from its files: give --data-dir "
                                  f"(or --input-shape C,H,W --num-classes K instead of --dataset)")
            where = {"data_dir": Path(data_dir).expanduser()}
        meta = plugin.describe(**resolve_options(plugin.options, given, owner=f"dataset {dataset!r}"), **where)
        if min(meta.channels, meta.height, meta.width) < 1 or (meta.num_classes < 1 and not num_classes):
            raise ConfigError(f"dataset {dataset!r} does not declare its shape without its files; give --data-dir or --input-shape")
        classes = num_classes or meta.num_classes
        return (meta.channels, meta.height, meta.width), classes, f"dataset {dataset}"
    if input_shape:
        return parse_shape(input_shape), num_classes or 10, "--input-shape"
    plugin = MODELS.get(model)
    if plugin.natural_input is None:
        raise ConfigError(f"model {model!r} declares no natural input; give --dataset NAME or --input-shape C,H,W")
    return tuple(plugin.natural_input), num_classes or plugin.natural_classes or 10, "the model's natural input"


INPUT_OPTIONS = [
    click.option("--dataset", default=None, help="take the input shape and classes from this dataset's metadata"),
    click.option("--dataset-option", "dataset_options", multiple=True, metavar="KEY=VALUE",
                 help="dataset option that changes its shape (e.g. size=32); repeatable"),
    click.option("--data-dir", default=None, metavar="DIR",
                 help="the dataset's files, for datasets whose shape comes from them (imagefolder)"),
    click.option("--input-shape", default=None, metavar="C,H,W",
                 help="input shape when no --dataset is given [the model's natural input]"),
    click.option("--image-size", type=click.IntRange(min=1), default=None,
                 help="resize to S x S, as cnnbench train --image-size does"),
    click.option("--num-classes", type=click.IntRange(min=1), default=None,
                 help="number of classes [the dataset's, else 10]"),
]


force_option = click.option(
    "--force", is_flag=True,
    help="allocate even when the real allocations (the model, the workspace calibration, --measure) are "
         "predicted above the available memory")


def input_options(func):
    """The input-shape options ``info`` and ``memory`` share (read by :func:`input_spec`)."""
    for option in reversed(INPUT_OPTIONS):
        func = option(func)
    return func


@click.command(name="info")
@click.argument("model")
@input_options
@shared("model_options")
@shared("kernel_size")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="batch size of the training-memory prediction")
@shared("device")  # the memory prediction is for (cuda needs no GPU; see cnnbench memory)
@click.option("--depth", type=click.IntRange(min=1), default=None, help="show layers up to this nesting depth [all]")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the table")
@force_option
def command(model: str, dataset: str | None, dataset_options: tuple[str, ...], data_dir: str | None, input_shape: str | None,
            image_size: int | None, num_classes: int | None, model_options: tuple[str, ...], kernel_size: int | None, batch_size: int,
            device: str, depth: int | None, as_json: bool, force: bool) -> None:
    """Summarise MODEL: its options, layers (output shape, parameters, MACs), size and training memory.

    Nothing is downloaded or loaded: shapes come from the dataset's declared metadata or --input-shape.
    """
    from cnnbench.models.summary import format_info, model_info
    from cnnbench.models import build_model, resolve_model_options
    from cnnbench.memory.predict import target_device
    from cnnbench.registry import parse_key_values

    device = target_device(device).type  # auto: cuda when present; mps is refused in one line
    shape, classes, origin = input_spec(model, dataset, dataset_options, input_shape, num_classes, data_dir)
    if image_size is not None:
        shape, origin = (shape[0], image_size, image_size), f"{origin}, resized by --image-size"
    given = parse_key_values(model_options, flag="--model-option")
    if kernel_size is not None:
        given["kernel_size"] = kernel_size  # --kernel-size is shorthand for the model option
    plugin, resolved = resolve_model_options(model, given)
    if not force:  # predicted on fake tensors first: the real model and the workspace calibration must fit
        from cnnbench.config import OPTIMIZERS
        from cnnbench.memory.guard import check_prediction_command

        check_prediction_command(model, shape, [batch_size], list(OPTIMIZERS), real_model=True, num_classes=classes,
                                 model_options=resolved, device=device)
    net = build_model(model, num_classes=classes, in_channels=shape[0], image_size=shape[1:], options=resolved)
    info = model_info(net, shape, batch_size, memory_options={"device": device, "num_classes": classes})
    if as_json:
        click.echo(json.dumps({"model": model, "options": _jsonable(resolved), "num_classes": classes, **info}))
        return
    click.echo(f"{model}: {plugin.description}")
    click.echo(f"Input {'x'.join(map(str, shape))}, {classes} classes (from {origin})")
    for option in plugin.options:
        value = resolved[option.name]
        click.echo(f"  {option.name} = {_show(value)}  ({option.type}, default {_show(option.default)}): {option.help}")
    click.echo(format_info(info, max_depth=depth))


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _jsonable(options: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
