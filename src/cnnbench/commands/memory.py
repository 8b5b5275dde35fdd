"""``cnnbench memory MODEL``: training memory per optimizer and batch size, predicted before running.

Every input is checked before any work (one-line :class:`~cnnbench.errors.ConfigError`, exit 2):
optimizer names, batch sizes, the budget (not below the weights alone), ``--measure`` on a device
that is not there, the tracking store. See :mod:`cnnbench.memory` for what is predicted and measured.
"""

from __future__ import annotations

import json

import click

from cnnbench.cli_options import shared

from cnnbench.commands.info import force_option, input_options
from cnnbench.errors import ConfigError
from cnnbench.memory.guard import INT64_MAX

DEFAULT_BATCHES = "8,16,64"
DEFAULT_OPTIMIZERS = "sgd,momentum,adam"
DEFAULT_EXPERIMENT = "cnnbench-memory"


def parse_batch_sizes(text: str) -> list[int]:
    """``"8,16,64"`` -> [8, 16, 64]; each must be an integer >= 1."""
    sizes = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = int(part)
        except ValueError:
            value = 0
        if value < 1:
            raise ConfigError(f"--batch-sizes expects positive integers separated by commas, such as 8,16,64; got {part!r}")
        if value > INT64_MAX:
            raise ConfigError(f"--batch-sizes: {part} is beyond the largest size a tensor takes ({INT64_MAX:,})")
        sizes.append(value)
    return sorted(dict.fromkeys(sizes))


def parse_optimizers(text: str) -> list[str]:
    from cnnbench.memory.predict import check_optimizer

    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise ConfigError("--optimizers expects optimizer names separated by commas, such as sgd,momentum,adam")
    for name in names:
        try:
            check_optimizer(name)
        except ConfigError as err:
            raise ConfigError(f"--optimizers: {err}") from None
    return list(dict.fromkeys(names))


@click.command(name="memory")
@click.argument("model")
@input_options
@shared("model_options")
@click.option("--batch-sizes", default=DEFAULT_BATCHES, show_default=True, help="batch sizes to predict, comma-separated")
@click.option("--optimizers", default=DEFAULT_OPTIMIZERS, show_default=True, help="optimizers to predict, comma-separated")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True, help="learning rate")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True,
              help="micro-batches per optimizer step, as train --grad-accum")
@shared("device")  # predicted for (cuda needs no GPU) and --measure'd on
@click.option("--amp", is_flag=True, help="autocast as train --amp does (CUDA only, like train)")
@click.option("--channels-last", is_flag=True, help="NHWC model and batches, as train --channels-last (CUDA only)")
@click.option("--measure", is_flag=True, help="also run each step for real and report the measured peak and error")
@click.option("--budget-mb", type=float, default=None, metavar="MB",
              help="also report the largest batch per optimizer whose peak fits MB MiB")
@click.option("--max-batch", type=click.IntRange(min=1), default=65536, show_default=True,
              help="largest batch size --budget-mb searches")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the table")
@force_option
@click.option("--no-track", is_flag=True, help="do not log an MLflow run")
@shared("tracking_uri")
@shared("experiment", default=DEFAULT_EXPERIMENT)
def command(model: str, dataset, dataset_options, data_dir, input_shape, image_size, num_classes, model_options, batch_sizes: str,
            optimizers: str, lr: float, grad_accum: int, device: str, amp: bool, channels_last: bool, measure: bool,
            budget_mb: float | None, max_batch: int, as_json: bool, force: bool, no_track: bool,
            tracking_uri: str | None, experiment: str) -> None:
    """Predict (and with --measure, measure) the peak memory of training MODEL, per optimizer and batch size.

    The prediction runs the real training step (forward, loss, backward, optimizer step, twice so the
    optimizer state exists) on fake tensors: no data and no device are needed. Peaks are the
    allocator's (MiB), not device-level memory: the CUDA context (hundreds of MiB) comes on top.
    """
    from cnnbench.commands.info import input_spec
    from cnnbench.memory.measure import measure_device
    from cnnbench.memory.predict import target_device
    from cnnbench.models import resolve_model_options
    from cnnbench.registry import parse_key_values

    sizes = parse_batch_sizes(batch_sizes)
    names = parse_optimizers(optimizers)
    if budget_mb is not None and not budget_mb > 0:
        raise ConfigError(f"--budget-mb must be a positive number of MiB; got {budget_mb:g}")
    dev = target_device(device)
    if measure:
        measure_device(dev)
    shape, classes, origin = input_spec(model, dataset, dataset_options, input_shape, num_classes, data_dir)
    if image_size is not None:
        shape, origin = (shape[0], image_size, image_size), f"{origin}, resized by --image-size"
    _, resolved = resolve_model_options(model, parse_key_values(model_options, flag="--model-option"))
    if not force:  # predicted on fake tensors: refused before the workspace calibration or --measure allocates
        from cnnbench.memory.guard import check_prediction_command

        check_prediction_command(model, shape, sizes, names, measure=measure, budget_mb=budget_mb if measure else None,
                                 num_classes=classes, model_options=resolved, lr=lr, grad_accum=grad_accum,
                                 amp=amp, channels_last=channels_last, device=dev.type)
    uri = None
    if not no_track:
        from cnnbench.tracking.memory_run import prepare

        uri = prepare(tracking_uri)

    result = sweep(model, shape, classes, resolved, sizes, names, lr=lr, grad_accum=grad_accum, device=dev.type,
                   amp=amp, channels_last=channels_last, measure=measure, budget_mb=budget_mb, max_batch=max_batch)
    result["origin"] = origin
    if uri is not None:
        result["run_id"] = _log(result, uri, experiment)
        from cnnbench.tracking.store import mask_uri

        result["tracking_uri"] = mask_uri(uri)
    if as_json:
        click.echo(json.dumps(result))
        return
    _print(result)


def sweep(model: str, shape, classes: int, options: dict, sizes: list[int], optimizers: list[str], *, lr: float,
          grad_accum: int, device: str, amp: bool, channels_last: bool, measure: bool, budget_mb: float | None,
          max_batch: int) -> dict:
    """Predict (and measure) every optimizer x batch size; the largest fitting batch per optimizer."""
    from cnnbench.memory import fits, report
    from cnnbench.memory.measure import measure as run_measure
    from cnnbench.memory.predict import predict

    common = dict(num_classes=classes, model_options=options, lr=lr, grad_accum=grad_accum, amp=amp,
                  channels_last=channels_last, device=device)
    if budget_mb is not None:  # the weights-alone check first, before the sweep
        fits.check_budget(budget_mb, fits.smallest_step(predict, model, shape, optimizers[0], **common))
    rows, notes = [], []
    for optimizer in optimizers:
        for batch in sizes:
            pred = predict(model, shape, batch, optimizer, **common)
            meas = run_measure(model, shape, batch, optimizer, **common) if measure else None
            rows.append(report.row(pred, meas))
            for note in [*pred.notes, *(meas.notes if meas else [])]:
                if note not in notes:
                    notes.append(note)
    found = []
    if budget_mb is not None:
        for optimizer in optimizers:
            fit = fits.largest_batch(model, shape, budget_mb, optimizer, max_batch=max_batch, measure=measure,
                                     measure_device=device, **common)
            found.append(fit.to_dict())
    errors = [abs(r["error_pct"]) for r in rows if r["error_pct"] is not None]
    return {"model": model, "options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
            "input_shape": list(shape), "num_classes": classes, "device": device, "amp": amp,
            "channels_last": channels_last, "grad_accum": grad_accum, "lr": lr, "unit": "MiB", "rows": rows,
            "max_abs_error_pct": max(errors) if errors else None, "budget_mb": budget_mb, "fits": found, "notes": notes,
            "method": "prediction: the training step on fake tensors under a dispatch-mode tracker of live tensor bytes"}


def _log(result: dict, uri: str, experiment: str) -> str:
    from cnnbench.memory import report
    from cnnbench.tracking.memory_run import log_sweep

    shape = "x".join(map(str, result["input_shape"]))
    params = {"model": result["model"], "input_shape": shape, "num_classes": result["num_classes"],
              "device": result["device"], "amp": result["amp"], "channels_last": result["channels_last"],
              "grad_accum": result["grad_accum"], "lr": result["lr"],
              "optimizers": ",".join(dict.fromkeys(r["optimizer"] for r in result["rows"])),
              "batch_sizes": ",".join(map(str, sorted({r["batch_size"] for r in result["rows"]}))),
              "measured": any(r["measured_peak_mb"] is not None for r in result["rows"]),
              "budget_mb": result["budget_mb"], "unit": "MiB",
              **{f"model.{k}": v for k, v in result["options"].items()}}
    summary = {}
    if result["max_abs_error_pct"] is not None:
        summary["max_abs_error_pct"] = result["max_abs_error_pct"]
    for fit in result["fits"]:
        summary[f"largest_batch_{fit['optimizer']}"] = fit["batch_size"]
    title = f"{result['model']} on {shape}, {result['device']}" + (", amp" if result["amp"] else "")
    return log_sweep(tracking_uri=uri, experiment=experiment, run_name=f"memory {result['model']} {shape}",
                     params=params, rows=result["rows"], columns=report.COLUMNS, summary=summary,
                     write_plot=lambda path: report.plot(result["rows"], path, title=title))


def _print(result: dict) -> None:
    from cnnbench.memory import report

    measured = any(r["measured_peak_mb"] is not None for r in result["rows"])
    shape = "x".join(map(str, result["input_shape"]))
    click.echo(f"{result['model']}: input {shape}, {result['num_classes']} classes (from {result['origin']}); "
               f"predicted for {result['device']}" + (", amp" if result["amp"] else "")
               + (", channels-last" if result["channels_last"] else "")
               + (f", {result['grad_accum']} micro-batches per step" if result["grad_accum"] > 1 else ""))
    click.echo("Peak allocator memory of a training step in MiB (not device-level: the CUDA context comes on top); "
               "weights..kernel-ws = what is live at the peak (sums to predicted; kernel-ws: convolution workspaces)")
    click.echo(report.table(result["rows"], measured=measured))
    if measured:
        click.echo(f"largest |error|: {result['max_abs_error_pct']:.1f}%  (error = (predicted - measured) / measured)")
    for fit in result["fits"]:
        if fit["batch_size"]:
            extra = f", measured {fit['measured_peak_mb']:.1f}" if fit["measured_peak_mb"] is not None else ""
            peak = fit["predicted_peak_mb"]
            click.echo(f"largest batch within {result['budget_mb']:g} MiB with {fit['optimizer']}: {fit['batch_size']}"
                       + (f" (predicted {peak:.1f} MiB{extra})" if peak is not None else f" ({extra.lstrip(', ')} MiB)")
                       + (" (search capped by --max-batch)" if fit["capped"] else ""))
        else:
            click.echo(f"largest batch within {result['budget_mb']:g} MiB with {fit['optimizer']}: none ({fit['note']})")
    for note in result["notes"]:
        click.echo(f"note: {note}")
    if "run_id" in result:
        click.echo(f"MLflow run: {result['run_id']}  (tracking URI: {result['tracking_uri']})")
