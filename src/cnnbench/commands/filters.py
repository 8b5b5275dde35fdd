"""``cnnbench filters IMAGE --kernel ...``: hand-designed kernels applied to an image (R0-H, R4-J),
the figure logged to MLflow."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from cnnbench.cli_options import shared

KERNEL_NAMES = ("average3", "average6", "average9", "laplacian", "edge8", "edge4")  # kept light for --help


@click.command(name="filters")
@click.argument("image", type=click.Path(dir_okay=True))
@click.option("--kernel", "kernels", multiple=True, metavar="NAME|ROWS",
              help=f"kernel to apply, repeatable: {', '.join(KERNEL_NAMES)}, or rows such as 0,1,0;1,-4,1;0,1,0 "
                   f"[default: all named kernels]")
@click.option("--channel", type=click.Choice(("gray", "red", "green", "blue")), default="gray", show_default=True,
              help="the channel filtered (R0 used red)")
@click.option("--size", type=click.IntRange(min=3), default=None, help="resize to S x S first (R0: 200)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="also keep the files in this folder")
@shared("experiment", default="cnnbench-filters")
@shared("tracking_uri")
@click.option("--no-mlflow", is_flag=True, help="write the files only (needs --out)")
@click.option("--force", is_flag=True, help="filter even when the image and its filtered copies are predicted "
                                            "above the available memory")
def command(image: str, kernels: tuple[str, ...], channel: str, size: int | None, out_dir: str | None,
            experiment: str, tracking_uri: str | None, no_mlflow: bool, force: bool) -> None:
    """Convolve IMAGE with hand-designed kernels (averaging, Laplacian, the two 3x3 edge kernels of the
    Keras CIFAR report) and log the figure, one PNG per kernel and their statistics to MLflow."""
    from cnnbench.artifacts.filters import apply, load_image, parse_kernel, write
    from cnnbench.errors import ConfigError

    if no_mlflow and not out_dir:
        raise ConfigError("--no-mlflow writes the files only: give --out DIR")
    chosen = [parse_kernel(k) for k in (kernels or KERNEL_NAMES)]
    pixels = load_image(image, channel, size, kernels=None if force else len(chosen))
    if out_dir:
        _writable_folder(out_dir)  # after the input checks (a bad image leaves no folder), before any run
    uri = None
    if not no_mlflow:
        from cnnbench.tracking.files_run import prepare

        uri = prepare(tracking_uri)  # an unreachable store fails before any work
    results = {name: apply(pixels, k) for name, k in chosen}
    with tempfile.TemporaryDirectory(prefix="cnnbench-filters-") as tmp:
        folder = Path(out_dir) if out_dir else Path(tmp)
        title = f"{Path(image).name}, {channel} channel, {pixels.shape[1]}x{pixels.shape[0]}"
        try:
            stats = write(pixels, results, folder, title)
        except OSError as err:  # the disk filled up, or the folder went away meanwhile
            from cnnbench.errors import CnnbenchError

            raise CnnbenchError(f"cannot write the filter images to {folder}: {err.strerror or err}"
                                f"{f' ({err.filename})' if err.filename else ''}") from None
        for name, s in stats.items():
            click.echo(f"{name:<14} mean {s['mean']:9.2f}  min {s['min']:9.2f}  max {s['max']:9.2f}  |mean| {s['abs_mean']:8.2f}")
        if uri is not None:
            from cnnbench.tracking.files_run import log_folder

            params = {"image": Path(image).name, "channel": channel, "size": size or "native",
                      **{f"kernel.{name}": ";".join(",".join(f"{v:g}" for v in row) for row in k) for name, k in chosen}}
            metrics = {f"{name}_{key}": v for name, s in stats.items() for key, v in s.items()}
            run_id = log_folder(tracking_uri=uri, experiment=experiment, run_name=f"filters-{Path(image).stem}",
                                command="filters", params=params, metrics=metrics, folder=folder, artifact_path="filters")
            click.echo(f"MLflow run: {run_id}  (tracking URI: {uri}); figure at filters/filters.png")


def _writable_folder(out_dir: str) -> None:
    """Create ``--out`` (with its parents) and check it takes files, or one ConfigError line."""
    import os

    from cnnbench.errors import ConfigError

    folder = Path(out_dir).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out_dir}: cannot create the folder ({err.strerror or type(err).__name__}); "
                          f"give a folder you can write to") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out_dir}: the folder is not writable; give a folder you can write to")
