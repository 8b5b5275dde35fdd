"""The logged model: self-contained, with its preprocessing, class names and metrics.

What is logged (MLflow 3 logged model, named ``<model>-<dataset>``):

- artifact ``program``: a ``torch.export`` program of :class:`Classifier` = normalisation with the
  run's mean/std + the trained network + softmax; input float32 ``(N, C, H, W)`` in [0, 1], any N;
  output ``(N, K)`` probabilities. ``torch.export.load(path).module()`` runs it with torch alone.
- the pyfunc flavour from the models-from-code file ``classifier_pyfunc.py`` (images in — uint8
  ``(N, H, W, C)`` or ``(N, C, H, W)``, floats in [0, 1], flattened DataFrame rows — and a DataFrame
  with ``predicted_class`` and ``prob_<class>`` out; that file's docstring is the contract);
- metadata: class names, input shape, mean/std, what the input is; requirements with torch and
  MLflow pinned and nothing unpublished (no ``cnnbench``);
- the run's final test metrics linked to the model (``mlflow.log_metrics(model_id=...)``), so the
  Models page shows them; ``register_model`` also registers it in the Model Registry.

Why ``torch.export`` and models-from-code: loading then needs neither cnnbench's classes (a pickle
of the ``nn.Module`` imports ``cnnbench.models...``) nor a pickled Python object at all (so no
MLflow pickle warning, no cloudpickle version coupling). TorchScript would do the same but is
deprecated in torch 2.x (``torch.jit.trace`` warns). ``code_paths`` would ship cnnbench's source
instead, and with it every dependency of the package.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

if TYPE_CHECKING:
    import torch

    from cnnbench.events import RunState

CODE_FILE = Path(__file__).with_name("classifier_pyfunc.py")
EXAMPLE_IMAGES = 2  # images in the logged input example (serving_input_example.json)
INPUT_DOC = ("images: uint8 (N, H, W, C) or (N, C, H, W) pixels 0..255, or floats in [0, 1]; "
             "(N, H, W) for one channel; or a DataFrame with C*H*W columns (pixels flattened in (C, H, W) order)")


def classifier(net: "torch.nn.Module", mean, std) -> "torch.nn.Module":
    """``net`` behind its normalisation and a softmax: float (N, C, H, W) in [0, 1] -> probabilities."""
    import torch

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            c = len(mean)
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.net((x - self.mean) / self.std), dim=1)

    return Classifier().eval()


def export_program(net: "torch.nn.Module", mean, std, shape: tuple[int, int, int], path: Path) -> Path:
    """Export :func:`classifier` on CPU with a dynamic batch axis and save it to ``path`` (.pt2)."""
    import torch

    model = classifier(net, mean, std)
    example = torch.rand(2, *shape)  # 2, not 1: a batch of 1 would be specialised as a constant
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


def model_name(run: "RunState") -> str:
    """The logged model's name: ``<model>-<dataset>`` (what the Models page lists)."""
    return f"{run.config.model.name}-{run.config.data.name}"


def metadata(run: "RunState") -> dict[str, Any]:
    data = run.data
    return {
        "classes": [str(c) for c in data.classes],
        "input_shape": [data.channels, *data.image_size],  # C, H, W
        "mean": [float(v) for v in data.mean],  # per channel, in [0, 1] pixel units
        "std": [float(v) for v in data.std],
        "input": INPUT_DOC,
        "input_schema": input_schema(data.channels, *data.image_size),
        "output": "DataFrame: predicted_class, predicted_index, prob_<class> per class",
        "cnnbench_model": run.config.model.name,
        "cnnbench_dataset": run.config.data.name,
    }


def requirements() -> list[str]:
    import numpy
    import pandas
    import torch

    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={numpy.__version__}", f"pandas=={pandas.__version__}"]


def input_schema(channels: int, height: int, width: int) -> dict[str, Any]:
    """The canonical input as a tensor spec (what ``serving_input_example.json`` holds), recorded in
    the model's metadata. Not the signature's input schema: MLflow enforces a tensor spec strictly
    and would refuse the other documented layouts (NCHW, floats in [0, 1], every CSV); the pyfunc
    checks the input itself and refuses a bad one with one line naming shape and dtype."""
    return {"type": "tensor", "dtype": "uint8", "shape": [-1, height, width, channels], "layout": "NHWC",
            "also": [f"uint8 [-1, {channels}, {height}, {width}] (NCHW)", "float32 in [0, 1], either layout",
                     f"DataFrame/CSV with {channels * height * width} columns (C, H, W order)"]}


def signature(classes) -> "mlflow.models.ModelSignature":
    """Outputs only: the inputs take several layouts and dtypes (the pyfunc converts them and refuses
    the rest itself, see :func:`input_schema`), which one tensor spec cannot state; MLflow would
    refuse all but one (and every CSV)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    cols = [ColSpec("string", "predicted_class"), ColSpec("long", "predicted_index")]
    cols += [ColSpec("double", f"prob_{c}") for c in classes]
    return ModelSignature(inputs=None, outputs=Schema(cols))


def log_model_with_metrics(run: "RunState", metrics: dict[str, float], *, step: int,
                           register_model: str | None = None) -> str | None:
    """Log the model, then ``metrics`` (the final test metrics) on the run and linked to the model
    and the test dataset; return the model URI. A network ``torch.export`` cannot capture (a
    third-party model with data-dependent control flow) costs the model, not the run: the metrics
    are logged, the reason is tagged ``cnnbench.model_error`` and None returned."""
    from cnnbench.tracking import describe

    try:
        info = log_model(run, register_model=register_model)
    except ExportError as err:
        _log_metrics(metrics, step)
        mlflow.set_tag("cnnbench.model_error", str(err)[:4000])
        warnings.warn(str(err), stacklevel=2)
        return None
    except BaseException:
        _log_metrics(metrics, step)  # the results outlive a failed upload
        raise
    test = describe.dataset(run, "test") if len(run.data.test) else None
    _log_metrics(metrics, step, model_id=info.model_id, dataset=test)
    return info.model_uri


def _log_metrics(metrics: dict[str, float], step: int, **link) -> None:
    if metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, **link)


class ExportError(Exception):
    """``torch.export`` could not capture the network."""


def log_model(run: "RunState", *, register_model: str | None = None) -> Any:
    """Log the run's model (see the module docstring). Returns the ``ModelInfo`` (``.model_uri``,
    ``.model_id``, ``.registered_model_version``)."""
    import numpy as np

    model = run.model
    was_training = model.training
    device = next(model.parameters()).device
    model.eval().to("cpu")
    split = run.data.test if len(run.data.test) else run.data.train
    example = split.images[:EXAMPLE_IMAGES].permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)  # (N, H, W, C)
    meta = metadata(run)
    try:
        with tempfile.TemporaryDirectory(prefix="model-export-") as folder:
            try:
                program = export_program(model, run.data.mean, run.data.std, tuple(meta["input_shape"]),
                                         Path(folder) / "classifier.pt2")
            except Exception as err:
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ExportError(f"the model was not logged: torch.export cannot capture {run.config.model.name!r} ({first})") from err
            # MLflow prints "Successfully registered model ..." itself: --quiet keeps it off the console
            with contextlib.redirect_stderr(io.StringIO()) if run.config.run.quiet else contextlib.nullcontext():
                info = _log_pyfunc(run, program, meta, example, register_model)
    finally:
        model.to(device).train(was_training)
    return info


_PATCH_LOCK = threading.Lock()
_patch = {"depth": 0, "original": None}  # threads inside the block below; MLflow's helper meanwhile


@contextlib.contextmanager
def _pins_taken_from_this_environment():
    """MLflow checks every pip requirement of a logged model against the installed packages, which
    first maps all installed distributions to their modules (``packages_distributions()``: 0.3-0.7 s
    per process). :func:`requirements` pins exactly the versions this process imported, so the check
    cannot find a mismatch: skipped while logging. If MLflow renames the helper, nothing is patched
    and the check simply runs. Counted under a lock, so threads logging at once restore it once."""
    from mlflow.utils import environment

    if not callable(getattr(environment, "warn_dependency_requirement_mismatches", None)):
        yield
        return
    with _PATCH_LOCK:
        if _patch["depth"] == 0:
            _patch["original"] = environment.warn_dependency_requirement_mismatches
            environment.warn_dependency_requirement_mismatches = lambda requirements: None
        _patch["depth"] += 1
    try:
        yield
    finally:
        with _PATCH_LOCK:
            _patch["depth"] -= 1
            if _patch["depth"] == 0:
                environment.warn_dependency_requirement_mismatches = _patch["original"]


def _log_pyfunc(run: "RunState", program: Path, meta: dict[str, Any], example, register_model: str | None):
    with _pins_taken_from_this_environment():
        return mlflow.pyfunc.log_model(
            name=model_name(run),
            python_model=str(CODE_FILE),
            artifacts={"program": str(program)},
            model_config={"classes": meta["classes"], "input_shape": meta["input_shape"]},
            signature=signature(meta["classes"]),
            input_example=example,
            metadata=meta,
            pip_requirements=requirements(),
            registered_model_name=register_model,
            params={"model": run.config.model.name, "dataset": run.config.data.name},
        )
